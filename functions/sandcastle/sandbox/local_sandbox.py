"""The ``local`` sandbox backend: bubblewrap on this machine, for development and CI.

Each sandbox is a directory ``<root>/<id>/`` holding ``meta.json`` and ``home/``, the workspace
mounted as ``/home/user``. Every command runs in a fresh ``bwrap`` with all namespaces unshared
(network: only a loopback of its own; its own PID namespace, so nothing a command starts outlives
it), a read-only view of the system directories and nothing else of the host.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from sandcastle.errors import SandboxError, SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, SandboxSpec

_BWRAP_MISSING = "bubblewrap (bwrap) is not installed; run `make setup` or apt-get install bubblewrap"
_SANDBOX_UID_AND_GID = "1000"
_SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
_MAX_SYMLINK_HOPS = 40

_live_commands: dict[str, set[subprocess.Popen[bytes]]] = {}
"""Running ``bwrap`` processes per sandbox id, so ``kill`` can end them."""
_live_commands_lock = threading.Lock()
"""Guards ``_live_commands`` and the existence of sandbox directories while commands start."""


class LocalSandboxProvider:
    """Creates, reconnects to and kills bubblewrap sandboxes whose workspaces live under ``root``."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self, spec: SandboxSpec) -> LocalSandbox:
        """Create a sandbox: a private workspace and its ``meta.json``. Needs ``bwrap`` installed."""
        bwrap = _find_bwrap()
        sandbox_id = f"lsb-{uuid.uuid4().hex}"
        sandbox_dir = self.root / sandbox_id
        created_at = datetime.now(UTC)
        expires_at = created_at + timedelta(seconds=spec.timeout_s)
        self.root.mkdir(parents=True, exist_ok=True)
        sandbox_dir.mkdir(mode=0o700)
        (sandbox_dir / "home").mkdir(mode=0o755)
        meta = {
            "run_id": spec.run_id,
            "tenant": spec.tenant,
            "created_at": created_at.isoformat(),
            "expires_at": expires_at.isoformat(),
            "metadata": spec.metadata,
        }
        (sandbox_dir / "meta.json").write_text(json.dumps(meta, indent=2))
        return LocalSandbox(sandbox_id, sandbox_dir, expires_at, bwrap, self)

    def connect(self, sandbox_id: str) -> LocalSandbox:
        """Reconnect to a sandbox. Raises ``SandboxGone`` when it was killed, expired or never existed."""
        if not _is_local_sandbox_id(sandbox_id):
            raise SandboxGone(f"{sandbox_id!r} is not a local sandbox id")
        sandbox_dir = self.root / sandbox_id
        try:
            meta = json.loads((sandbox_dir / "meta.json").read_text())
        except FileNotFoundError:
            raise SandboxGone(f"sandbox {sandbox_id} does not exist (killed or never created)") from None
        sandbox = LocalSandbox(sandbox_id, sandbox_dir, datetime.fromisoformat(meta["expires_at"]), _find_bwrap(), self)
        sandbox.ensure_alive()
        return sandbox

    def kill(self, sandbox_id: str) -> bool:
        """Kill every running command of the sandbox and delete its directory.

        Idempotent: returns False when the sandbox was already gone.
        """
        if not _is_local_sandbox_id(sandbox_id):
            return False
        sandbox_dir = self.root / sandbox_id
        tombstone = self.root / f".{sandbox_id}.killed"
        with _live_commands_lock:
            processes = _live_commands.pop(sandbox_id, set())
            try:
                sandbox_dir.rename(tombstone)
            except FileNotFoundError:
                existed = False
            else:
                existed = True
        for process in processes:
            _kill_process_group(process)
        if existed:
            shutil.rmtree(tombstone, ignore_errors=True)
        return existed


class LocalSandbox:
    """A live bubblewrap sandbox: its workspace persists across the run's commands."""

    def __init__(
        self,
        sandbox_id: str,
        sandbox_dir: Path,
        expires_at: datetime,
        bwrap: str,
        provider: LocalSandboxProvider,
    ) -> None:
        self._sandbox_id = sandbox_id
        self._sandbox_dir = sandbox_dir
        self._workspace = sandbox_dir / "home"
        self._expires_at = expires_at
        self._bwrap = bwrap
        self._provider = provider

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id (``lsb-<hex>``)."""
        return self._sandbox_id

    @property
    def workspace(self) -> Path:
        """The host directory mounted as ``/home/user`` inside the sandbox."""
        return self._workspace

    def ensure_alive(self) -> None:
        """Raise ``SandboxGone`` when the sandbox was killed or has expired (an expired one is killed)."""
        self._ensure_not_killed()
        if datetime.now(UTC) >= self._expires_at:
            self._provider.kill(self._sandbox_id)
            raise SandboxGone(
                f"sandbox {self._sandbox_id} expired at {self._expires_at.isoformat()}; "
                "create it with a longer timeout_s"
            )

    def run(
        self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run ``bash -lc command`` in a fresh bwrap; on timeout kill it all and return what it printed."""
        started = time.monotonic()
        with self._registered_process(self._bwrap_argv(command, cwd, env or {})) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_process_group(process)
                # The PID namespace died with bwrap, so the pipes close and this returns promptly.
                stdout, stderr = process.communicate()
                return CommandResult(
                    exit_code=None,
                    stdout=stdout,
                    stderr=stderr,
                    duration_ms=_elapsed_ms(started),
                    timed_out=True,
                )
        self.ensure_alive()
        exit_code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        return CommandResult(exit_code=exit_code, stdout=stdout, stderr=stderr, duration_ms=_elapsed_ms(started))

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file in the workspace, creating parent directories.

        Raises ``ValueError`` when the path (symlinks followed) leads outside ``/home/user``.
        """
        self.ensure_alive()
        with _resolve_in_workspace(self._workspace, path, create_parents=True) as (parent_fd, name):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = _open_no_follow(name, flags, parent_fd, path)
            with os.fdopen(fd, "wb") as file:
                file.write(data)

    def read_file(self, path: str) -> bytes:
        """Read a file of the workspace; raises ``FileNotFoundError`` when it does not exist.

        Raises ``ValueError`` when the path (symlinks followed) leads outside ``/home/user``.
        """
        self.ensure_alive()
        with _resolve_in_workspace(self._workspace, path, create_parents=False) as (parent_fd, name):
            fd = _open_no_follow(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, parent_fd, path)
            with os.fdopen(fd, "rb") as file:
                return file.read()

    def _ensure_not_killed(self) -> None:
        if not (self._sandbox_dir / "meta.json").exists():
            raise SandboxGone(f"sandbox {self._sandbox_id} was killed")

    @contextmanager
    def _registered_process(self, argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
        """Start bwrap while the sandbox provably exists, and keep it findable by ``kill``."""
        self.ensure_alive()
        with _live_commands_lock:
            self._ensure_not_killed()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            _live_commands.setdefault(self._sandbox_id, set()).add(process)
        try:
            yield process
        finally:
            with _live_commands_lock:
                processes = _live_commands.get(self._sandbox_id)
                if processes is not None:
                    processes.discard(process)
                    if not processes:
                        del _live_commands[self._sandbox_id]

    def _bwrap_argv(self, command: str, cwd: str | None, env: dict[str, str]) -> list[str]:
        argv = [
            self._bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandcastle",
        ]
        argv += _system_mount_args()
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        argv += ["--bind", str(self._workspace), SANDBOX_HOME]
        argv += ["--chdir", str(PurePosixPath(SANDBOX_HOME, cwd or "."))]
        argv += ["--clearenv"]
        for name, value in {"HOME": SANDBOX_HOME, "PATH": _SANDBOX_PATH, "LANG": "C.UTF-8", **env}.items():
            argv += ["--setenv", name, value]
        argv += ["--uid", _SANDBOX_UID_AND_GID, "--gid", _SANDBOX_UID_AND_GID, "--cap-drop", "ALL"]
        shell = ["bash", "-lc"] if shutil.which("bash") else ["/bin/sh", "-c"]
        return argv + ["--", *shell, command]


def _is_local_sandbox_id(sandbox_id: str) -> bool:
    return sandbox_id.startswith("lsb-") and "/" not in sandbox_id and "\0" not in sandbox_id


def _find_bwrap() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(_BWRAP_MISSING)
    return bwrap


@functools.cache
def _system_mount_args() -> tuple[str, ...]:
    """Read-only binds of the system directories, with root-only files in /etc masked.

    As root, the sandbox user is mapped to host root for ownership checks, so a file such as
    ``/etc/shadow`` would be readable: every file or directory under /etc that is not
    world-readable is hidden behind an empty, unreadable mount.
    """
    args: list[str] = []
    for system_dir in _SYSTEM_DIRS:
        if os.path.islink(system_dir):
            args += ["--symlink", os.readlink(system_dir), system_dir]
        elif os.path.isdir(system_dir):
            args += ["--ro-bind", system_dir, system_dir]
    for directory, subdirs, files in os.walk("/etc"):
        for name in list(subdirs):
            path = os.path.join(directory, name)
            if _is_private(path):
                args += ["--tmpfs", path, "--remount-ro", path]
                subdirs.remove(name)
        for name in files:
            path = os.path.join(directory, name)
            if _is_private(path):
                args += ["--ro-bind", "/dev/null", path]
    return tuple(args)


def _is_private(path: str) -> bool:
    mode = os.lstat(path).st_mode
    return not stat.S_ISLNK(mode) and not mode & stat.S_IROTH


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL bwrap's process group; the sandbox's PID namespace dies with it (``--die-with-parent``).

    A process already reaped is skipped: its pid (and so its group id) may belong to someone else.
    """
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _workspace_relative_parts(path: str) -> list[str]:
    """The components of a sandbox path relative to ``/home/user``.

    Raises ``ValueError`` when the path, read literally, points outside ``/home/user``.
    """
    lexical = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if lexical != SANDBOX_HOME and not lexical.startswith(SANDBOX_HOME + "/"):
        raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
    return list(PurePosixPath(posixpath.join(SANDBOX_HOME, path)).relative_to(SANDBOX_HOME).parts)


@contextmanager
def _resolve_in_workspace(workspace: Path, path: str, *, create_parents: bool) -> Iterator[tuple[int, str]]:
    """Yield ``(parent_dir_fd, name)`` for a sandbox path, following symlinks as the sandbox would.

    The walk goes one component at a time through directory file descriptors opened with
    ``O_NOFOLLOW``, and interprets each symlink itself (absolute targets relative to the
    sandbox's root), so neither ``..``, a planted symlink, nor a symlink swapped in while the walk
    runs can lead it outside the workspace. The final name is returned unopened and is not a
    symlink at the time of the walk; callers open it with ``O_NOFOLLOW``.
    """
    directory_fds = [os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        name = _walk_to_final_name(directory_fds, path, create_parents)
        yield directory_fds[-1], name
    finally:
        for fd in directory_fds:
            os.close(fd)


def _walk_to_final_name(directory_fds: list[int], path: str, create_parents: bool) -> str:
    """Descend ``directory_fds`` (workspace first) to the directory holding ``path``'s final name."""
    pending = deque(_workspace_relative_parts(path))
    symlink_hops = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if len(directory_fds) == 1:
                raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
            os.close(directory_fds.pop())
            continue
        try:
            mode = os.stat(part, dir_fd=directory_fds[-1], follow_symlinks=False).st_mode
        except FileNotFoundError:
            if not pending:
                return part
            if not create_parents:
                raise FileNotFoundError(errno.ENOENT, "no such directory in the sandbox", path) from None
            os.mkdir(part, mode=0o755, dir_fd=directory_fds[-1])
            mode = stat.S_IFDIR
        if stat.S_ISLNK(mode):
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
    raise IsADirectoryError(errno.EISDIR, "the path names a directory, not a file", path)


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
