"""Directory watches (``files.watch_dir``): inotify on the workspace, reported as envd's filesystem events.

``inotify_simple`` (a thin ctypes wrapper, kept up to date on PyPI) gives the kernel's inotify
queue; what it does not do — and envd does — is done here: recursive watches (a watch per
directory, one added for every directory created later, whose existing entries are reported as
created since they may have appeared before the watch did), names relative to the watched
directory, and envd's event kinds (CREATE, WRITE, REMOVE, RENAME, CHMOD).
watchfiles was not picked: it debounces and folds events into added/modified/deleted sets, so
the order and kind of events the SDK's callers read would be lost.

No watch reaches outside the workspace: every directory is opened through the workspace's own
walk (``O_NOFOLLOW`` at each step) and watched through ``/proc/self/fd/<fd>``, the inode itself,
never a host path a swapped-in symlink could redirect.

A thread per watch takes events in as they come (so a directory created later gets its own watch
within moments), and every read drains the kernel's queue first: a write made through this server
is queued before its HTTP answer leaves, so ``GetWatcherEvents`` right after it sees it.
"""

from __future__ import annotations

import os
import posixpath
import select
import stat
import threading
import uuid
from collections.abc import Callable
from contextlib import suppress

from e2b.envd.filesystem import filesystem_pb as pb
from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

_MASK = (
    inotify_flags.CREATE
    | inotify_flags.MODIFY
    | inotify_flags.ATTRIB
    | inotify_flags.DELETE
    | inotify_flags.DELETE_SELF
    | inotify_flags.MOVED_FROM
    | inotify_flags.MOVED_TO
)
_KINDS = (
    (inotify_flags.CREATE | inotify_flags.MOVED_TO, pb.EventType.CREATE),
    (inotify_flags.MODIFY, pb.EventType.WRITE),
    (inotify_flags.DELETE | inotify_flags.DELETE_SELF, pb.EventType.REMOVE),
    (inotify_flags.MOVED_FROM, pb.EventType.RENAME),
    (inotify_flags.ATTRIB, pb.EventType.CHMOD),
)
_PUMP_INTERVAL_S = 0.5
MAX_PENDING_EVENTS = 10_000
"""Events kept for a non-streaming watcher between two reads; older ones are dropped past it."""

OpenDirectory = Callable[[str], int]
"""Opens a sandbox directory (a path relative to the watched one, ``""`` for itself) safely: an fd."""
EntryFor = Callable[[str], pb.EntryInfo | None]
"""The entry info of a sandbox path (absolute), or None when it is gone."""


class DirectoryWatcher:
    """One watch of a sandbox directory (and its subdirectories when ``recursive``)."""

    def __init__(
        self,
        sandbox_path: str,
        open_directory: OpenDirectory,
        *,
        recursive: bool,
        entry_for: EntryFor | None,
    ) -> None:
        self.watcher_id = uuid.uuid4().hex
        self.sandbox_path = sandbox_path
        self._open_directory = open_directory
        self._recursive = recursive
        self._entry_for = entry_for
        self._inotify = INotify()
        self._directories: dict[int, str] = {}
        """inotify watch descriptor → the directory's path relative to the watched one."""
        self._lock = threading.Lock()
        self._pending: list[pb.FilesystemEvent] = []
        self._closed = False
        self._has_events = threading.Condition(self._lock)
        try:
            with self._lock:
                self._watch("", report=False)
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._pump, daemon=True, name=f"watch-{self.watcher_id[:8]}").start()

    def fileno(self) -> int:
        """The inotify fd (readable when events are queued)."""
        return self._inotify.fileno()

    def read(self, timeout_s: float = 0) -> list[pb.FilesystemEvent]:
        """The events since the last read, waiting up to ``timeout_s`` for one when there are none.

        What the kernel has queued is taken in first, so a change made before this call is in it.
        """
        with self._lock:
            if self._closed:
                return []
            self._drain()
            if not self._pending and timeout_s > 0:
                self._has_events.wait(timeout_s)
                if not self._closed:
                    self._drain()
            events, self._pending = self._pending, []
            return events

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._inotify.close()
                self._has_events.notify_all()

    def _pump(self) -> None:
        """Take events in as they come, so directories created later are watched within moments."""
        while True:
            try:
                ready, _, _ = select.select([self._inotify], [], [], _PUMP_INTERVAL_S)
            except (OSError, ValueError):  # closed
                return
            with self._lock:
                if self._closed:
                    return
                if ready:
                    self._drain()
                    if self._pending:
                        self._has_events.notify_all()

    def _drain(self) -> None:
        """Translate every queued inotify event (caller holds the lock)."""
        for event in self._inotify.read(timeout=0):
            self._translate(event)

    def _watch(self, relative: str, *, report: bool) -> None:
        """Watch the directory ``relative`` (and below, when recursive); report what is in it as created."""
        fd = self._open_directory(relative)
        try:
            wd = self._inotify.add_watch(f"/proc/self/fd/{fd}", _MASK)
            self._directories[wd] = relative
            if not self._recursive and not report:
                return
            names = sorted(os.listdir(fd))
            for name in names:
                try:
                    mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                child = posixpath.join(relative, name) if relative else name
                if report:
                    self._add(child, pb.EventType.CREATE)
                    if stat.S_ISREG(mode) and os.stat(name, dir_fd=fd, follow_symlinks=False).st_size:
                        self._add(child, pb.EventType.WRITE)
                if self._recursive and stat.S_ISDIR(mode):
                    try:
                        self._watch(child, report=report)
                    except (FileNotFoundError, NotADirectoryError, ValueError):
                        continue
        finally:
            os.close(fd)

    def _translate(self, event: object) -> None:
        wd, mask, name = event.wd, event.mask, event.name  # type: ignore[attr-defined]
        if mask & inotify_flags.IGNORED:
            self._directories.pop(wd, None)
            return
        directory = self._directories.get(wd)
        if directory is None:
            return
        relative = posixpath.join(directory, name) if name else directory
        for flag, kind in _KINDS:
            if mask & flag:
                self._add(relative, kind)
                break
        if self._recursive and mask & (inotify_flags.CREATE | inotify_flags.MOVED_TO) and mask & inotify_flags.ISDIR:
            with suppress(FileNotFoundError, NotADirectoryError, ValueError):
                self._watch(relative, report=True)

    def _add(self, relative: str, kind: pb.EventType) -> None:
        entry = None
        if self._entry_for is not None and kind not in (pb.EventType.REMOVE, pb.EventType.RENAME):
            entry = self._entry_for(posixpath.join(self.sandbox_path, relative))
        self._pending.append(pb.FilesystemEvent(name=relative, type=kind, entry=entry))
        del self._pending[:-MAX_PENDING_EVENTS]
