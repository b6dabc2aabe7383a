"""The files of a local sandbox's workspace, reached from the host without ever leaving it.

``LocalSandbox``'s file operations (and through it the local E2B server's filesystem service) go
through here. A sandbox path is read as the sandbox would: relative to ``/home/user``, symlinks
followed *inside the workspace* (an absolute target is relative to the sandbox's root). The walk
goes one component at a time through directory file descriptors opened with ``O_NOFOLLOW`` and
interprets every symlink itself, so neither ``..``, a planted symlink, nor one swapped in while the
walk runs leads outside the workspace; a path that would is a ``ValueError`` naming it. Only
regular files are read or written (a FIFO or a device is refused, opened non-blocking first).

Not ``local_workspace``: that module makes the workspace directory itself (a size-capped
filesystem of its own, mounted); this one works on the files inside it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from sandcastle.sandbox.base import SANDBOX_HOME

__all__ = [
    "list_dir",
    "make_dir",
    "move_path",
    "open_directory",
    "read_file",
    "read_metadata",
    "remove_path",
    "resolved_path",
    "stat_path",
    "write_file",
    "write_metadata",
]

_MAX_SYMLINK_HOPS = 40


def write_file(workspace: Path, path: str, data: bytes, *, owner: int | None) -> None:
    """Write a file, creating parent directories; the file and new directories go to ``owner``.

    ``ValueError`` when the path leads outside the workspace or names something other than a
    regular file (a FIFO, a socket); the ``OSError`` of a full disk propagates.
    """
    with _resolve_in_workspace(workspace, path, create_parents=True, owner=owner) as (parent_fd, name):
        # O_NONBLOCK: opening a FIFO must not wait for a reader (it is refused just below).
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = _open_regular_file(name, flags, parent_fd, path)
        with os.fdopen(fd, "wb") as file:
            if os.fstat(file.fileno()).st_size:  # a new file is not truncated: watchers see no extra WRITE
                os.ftruncate(file.fileno(), 0)
            if owner is not None:
                os.fchown(file.fileno(), owner, owner)
            file.write(data)


def read_file(workspace: Path, path: str) -> bytes:
    """Read a file; ``FileNotFoundError`` when it does not exist.

    ``ValueError`` when the path leads outside the workspace or names something other than a
    regular file: a FIFO or a device would never end.
    """
    with _resolve_in_workspace(workspace, path, create_parents=False) as (parent_fd, name):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = _open_regular_file(name, flags, parent_fd, path)
        with os.fdopen(fd, "rb") as file:
            return file.read()


def stat_path(workspace: Path, path: str) -> os.stat_result:
    """``stat`` a path (symlinks followed inside the workspace); ``FileNotFoundError`` when missing."""
    if _is_workspace_root(path):
        return os.stat(workspace)
    with _resolve_in_workspace(workspace, path, create_parents=False) as (parent_fd, name):
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory in the sandbox", path) from None


def list_dir(workspace: Path, path: str, *, depth: int = 1) -> list[tuple[str, os.stat_result]]:
    """The entries under a directory, ``depth`` levels deep: ``(sandbox path, lstat)`` pairs.

    Symlinks are listed, never followed (so a listing never leaves the workspace).
    """
    base = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    entries: list[tuple[str, os.stat_result]] = []
    with _open_directory(workspace, path) as directory_fd:
        _list_directory(directory_fd, base, max(1, depth), entries)
    return entries


def make_dir(workspace: Path, path: str, *, owner: int | None) -> bool:
    """Create a directory (and its parents), given to ``owner``. False when it already existed."""
    if _is_workspace_root(path):
        return False
    with _resolve_in_workspace(workspace, path, create_parents=True, owner=owner) as (parent_fd, name):
        try:
            os.mkdir(name, mode=0o755, dir_fd=parent_fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise
            return False
        if owner is not None:
            os.chown(name, owner, owner, dir_fd=parent_fd, follow_symlinks=False)
        return True


def remove_path(workspace: Path, path: str) -> None:
    """Remove a file, symlink or directory tree; ``FileNotFoundError`` when missing.

    A final symlink is removed, not what it points to; the workspace itself is a ``ValueError``.
    """
    if _is_workspace_root(path):
        raise ValueError(f"refusing to remove the sandbox workspace {SANDBOX_HOME} itself")
    with _resolve_in_workspace(workspace, path, create_parents=False, follow_final=False) as (parent_fd, name):
        try:
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory in the sandbox", path) from None
        if stat.S_ISDIR(mode):
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)


def move_path(workspace: Path, source: str, destination: str, *, owner: int | None) -> None:
    """Rename a path to another; parents of the destination are created and given to ``owner``."""
    with (
        _resolve_in_workspace(workspace, source, create_parents=False, follow_final=False) as (
            source_fd,
            source_name,
        ),
        _resolve_in_workspace(workspace, destination, create_parents=True, owner=owner) as (
            destination_fd,
            destination_name,
        ),
    ):
        try:
            os.rename(source_name, destination_name, src_dir_fd=source_fd, dst_dir_fd=destination_fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory in the sandbox", source) from None


@contextmanager
def _open_directory(workspace: Path, path: str) -> Iterator[int]:
    """A file descriptor of a workspace directory, reached without leaving the workspace."""
    if _is_workspace_root(path):
        fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        with _resolve_in_workspace(workspace, path, create_parents=False) as (parent_fd, name):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = _open_no_follow(name, flags, parent_fd, path)
            except NotADirectoryError:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _is_workspace_root(path: str) -> bool:
    """True when ``path`` names ``/home/user`` itself (``ValueError`` when it points outside it)."""
    return not _workspace_relative_parts(path)


def _list_directory(directory_fd: int, base: str, depth: int, entries: list[tuple[str, os.stat_result]]) -> None:
    """Append ``(path, lstat)`` of each entry under ``directory_fd`` (recursing ``depth - 1`` levels)."""
    for name in sorted(os.listdir(directory_fd)):
        with suppress(FileNotFoundError):
            info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
            entries.append((posixpath.join(base, name), info))
            if depth > 1 and stat.S_ISDIR(info.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                child_fd = os.open(name, flags, dir_fd=directory_fd)
                try:
                    _list_directory(child_fd, posixpath.join(base, name), depth - 1, entries)
                finally:
                    os.close(child_fd)


def _workspace_relative_parts(path: str) -> list[str]:
    """The components of a sandbox path relative to ``/home/user``.

    Raises ``ValueError`` when the path, read literally, points outside ``/home/user``.
    """
    lexical = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if lexical != SANDBOX_HOME and not lexical.startswith(SANDBOX_HOME + "/"):
        raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
    return list(PurePosixPath(posixpath.join(SANDBOX_HOME, path)).relative_to(SANDBOX_HOME).parts)


@contextmanager
def _resolve_in_workspace(
    workspace: Path,
    path: str,
    *,
    create_parents: bool,
    owner: int | None = None,
    follow_final: bool = True,
    trail: list[str] | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield ``(parent_dir_fd, name)`` for a sandbox path, following symlinks as the sandbox would.

    The walk goes one component at a time through directory file descriptors opened with
    ``O_NOFOLLOW``, and interprets each symlink itself (absolute targets relative to the
    sandbox's root), so neither ``..``, a planted symlink, nor a symlink swapped in while the walk
    runs can lead it outside the workspace. The final name is returned unopened and is not a
    symlink at the time of the walk; callers open it with ``O_NOFOLLOW``. Directories it creates
    are given to ``owner`` (uid and gid) when set, so the sandbox user can write into them.
    With ``follow_final=False`` a final symlink is returned as it is (to remove or rename the link).
    ``trail`` (when given) receives the names of the directories walked into, workspace-relative.
    """
    directory_fds = [os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        name = _walk_to_final_name(directory_fds, path, create_parents, owner, follow_final, trail)
        yield directory_fds[-1], name
    finally:
        for fd in directory_fds:
            os.close(fd)


def _walk_to_final_name(
    directory_fds: list[int],
    path: str,
    create_parents: bool,
    owner: int | None,
    follow_final: bool = True,
    trail: list[str] | None = None,
) -> str:
    """Descend ``directory_fds`` (workspace first) to the directory holding ``path``'s final name."""
    trail = [] if trail is None else trail
    pending = deque(_workspace_relative_parts(path))
    symlink_hops = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if len(directory_fds) == 1:
                raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
            os.close(directory_fds.pop())
            trail.pop()
            continue
        try:
            mode = os.stat(part, dir_fd=directory_fds[-1], follow_symlinks=False).st_mode
        except FileNotFoundError:
            if not pending:
                return part
            if not create_parents:
                raise FileNotFoundError(errno.ENOENT, "no such directory in the sandbox", path) from None
            os.mkdir(part, mode=0o755, dir_fd=directory_fds[-1])
            if owner is not None:
                os.chown(part, owner, owner, dir_fd=directory_fds[-1], follow_symlinks=False)
            mode = stat.S_IFDIR
        if stat.S_ISLNK(mode):
            if not pending and not follow_final:
                return part
            symlink_hops += 1
            if symlink_hops > _MAX_SYMLINK_HOPS:
                raise ValueError(f"path {path!r} has too many levels of symbolic links")
            target = os.readlink(part, dir_fd=directory_fds[-1])
            if target.startswith("/"):
                try:
                    target_parts = _workspace_relative_parts(target)
                except ValueError:
                    raise ValueError(
                        f"path {path!r} leads outside the sandbox workspace {SANDBOX_HOME} "
                        f"through a symlink to {target!r}"
                    ) from None
                while len(directory_fds) > 1:
                    os.close(directory_fds.pop())
                trail.clear()
            else:
                target_parts = [part for part in target.split("/") if part not in ("", ".")]
            pending.extendleft(reversed(target_parts))
            continue
        if not pending:
            return part
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, "a path component is not a directory", path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        directory_fds.append(_open_no_follow(part, flags, directory_fds[-1], path))
        trail.append(part)
    raise IsADirectoryError(errno.EISDIR, "the path names a directory, not a file", path)


def _open_regular_file(name: str, flags: int, dir_fd: int, path: str) -> int:
    """Open ``name`` like ``_open_no_follow``, then refuse anything but a regular file.

    A FIFO or a device would make a read never end (or a write block); callers pass
    ``O_NONBLOCK`` so that opening one returns at once, and this refuses it.
    """
    try:
        fd = _open_no_follow(name, flags, dir_fd, path)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a FIFO opened for writing without a reader
            raise ValueError(f"path {path!r} is a FIFO, not a regular file; file tools read and write files") from None
        raise
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "the path names a directory, not a file", path)
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise ValueError(f"path {path!r} is {kind}, not a regular file; file tools read and write files")


def _open_no_follow(name: str, flags: int, dir_fd: int, path: str) -> int:
    """Open ``name`` under ``dir_fd``; a symlink swapped in since the walk is refused as an escape."""
    try:
        return os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"path {path!r} changed into a symlink while being resolved") from None
        if error.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no such file in the sandbox", path) from None
        raise


# --- where a symlink leads, and file metadata (extended attributes) ---

METADATA_XATTR_PREFIX = "user.e2b."
"""User metadata of a file lives in its ``user.e2b.<key>`` extended attributes (E2B's convention)."""


def resolved_path(workspace: Path, path: str) -> str | None:
    """Where ``path`` leads when it is a symlink (the absolute sandbox path, links followed); else None.

    ``ValueError`` when it leads outside the workspace, ``FileNotFoundError`` when it does not exist.
    """
    if _is_workspace_root(path):
        return None
    with _resolve_in_workspace(workspace, path, create_parents=False, follow_final=False) as (parent_fd, name):
        if not stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            return None
    trail: list[str] = []
    try:
        with _resolve_in_workspace(workspace, path, create_parents=False, trail=trail) as (_, name):
            return posixpath.join(SANDBOX_HOME, *trail, name)
    except IsADirectoryError:  # it leads to /home/user itself
        return SANDBOX_HOME


def read_metadata(workspace: Path, path: str) -> dict[str, str]:
    """The ``user.e2b.*`` attributes of a file or directory (symlinks followed), prefix stripped."""
    with _opened_entry(workspace, path) as fd:
        if fd is None:
            return {}
        metadata = {}
        for attribute in os.listxattr(fd):
            if attribute.startswith(METADATA_XATTR_PREFIX):
                with suppress(OSError):
                    value = os.getxattr(fd, attribute)
                    metadata[attribute[len(METADATA_XATTR_PREFIX) :]] = value.decode("utf-8", "replace")
        return metadata


def write_metadata(workspace: Path, path: str, metadata: dict[str, str]) -> None:
    """Replace a file's ``user.e2b.*`` attributes with ``metadata`` (keys lowercased); {} removes them all.

    ``OSError`` (``ENOTSUP``) when the workspace's filesystem has no user extended attributes.
    """
    with _opened_entry(workspace, path) as fd:
        if fd is None:
            raise ValueError(f"path {path!r} is neither a file nor a directory; it cannot carry metadata")
        wanted = {METADATA_XATTR_PREFIX + key.lower(): value.encode() for key, value in metadata.items()}
        try:
            present = [attribute for attribute in os.listxattr(fd) if attribute.startswith(METADATA_XATTR_PREFIX)]
        except OSError as error:
            if error.errno == errno.ENOTSUP and not wanted:
                return
            raise
        for attribute in present:
            if attribute not in wanted:
                with suppress(OSError):
                    os.removexattr(fd, attribute)
        for attribute, value in wanted.items():
            os.setxattr(fd, attribute, value)


@contextmanager
def _opened_entry(workspace: Path, path: str) -> Iterator[int | None]:
    """A read-only fd of a regular file or directory of the workspace (None for anything else)."""
    if _is_workspace_root(path):
        fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        with _resolve_in_workspace(workspace, path, create_parents=False) as (parent_fd, name):
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                yield None
                return
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = _open_no_follow(name, flags, parent_fd, path)
    try:
        yield fd
    finally:
        os.close(fd)


def open_directory(workspace: Path, path: str) -> int:
    """A file descriptor (the caller closes it) of a workspace directory, reached without leaving the workspace.

    ``FileNotFoundError`` when missing, ``NotADirectoryError`` when not a directory, ``ValueError``
    when the path leads outside the workspace.
    """
    with _open_directory(workspace, path) as fd:
        return os.dup(fd)
