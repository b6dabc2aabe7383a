"""Freezing a paused sandbox's processes, behind a small interface so the mechanism can change.

``Sandbox.pause()`` keeps a sandbox's files and stops its processes where they stand; a later
``Sandbox.connect`` resumes them. ``ProcessTreeFreezer`` does it with ``SIGSTOP``/``SIGCONT`` to
every host process under each of the sandbox's registered commands (found through ``/proc``,
repeated until no unstopped descendant is left, so a process forking while the freeze runs is
caught too). A backend that can freeze a sandbox as a whole (a cgroup freezer, or
``LocalSandbox.pause()``/``resume()``) replaces it by implementing ``Freezer``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Protocol

_MAX_ROUNDS = 20


class Freezer(Protocol):
    """Stops and restarts every process of a sandbox, given the host pids at the top of its commands."""

    def freeze(self, roots: Iterable[int]) -> None: ...

    def thaw(self, roots: Iterable[int]) -> None: ...


class ProcessTreeFreezer:
    """``SIGSTOP`` / ``SIGCONT`` to each root and all of its descendants."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc

    def _tree(self, roots: list[int]) -> set[int]:
        return process_tree(roots, self._proc)

    def freeze(self, roots: Iterable[int]) -> None:
        stopped: set[int] = set()
        roots = list(roots)
        for _ in range(_MAX_ROUNDS):
            pending = self._tree(roots) - stopped
            if not pending:
                return
            for pid in pending:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= pending

    def thaw(self, roots: Iterable[int]) -> None:
        for pid in self._tree(list(roots)):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def process_tree(roots: Iterable[int], proc: Path = Path("/proc")) -> set[int]:
    """The roots and every descendant of them (by parent pid, read from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid for pid in roots if (proc / str(pid)).exists()]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    return found
