"""The ``local`` sandbox backend: bubblewrap on this machine, for development and CI.

A sandbox is a machine: a directory ``<root>/<id>/`` (``meta.json``, the init's socket and
record) and one set of namespaces for its whole life — network (a loopback of its own), PID, IPC,
UTS, mount, user — held by a small init (``sandbox_init``) that ``bwrap`` starts when the sandbox
is created. Every command and background process of the sandbox is started *by that init*, so it
inherits everything the init was given: the sandbox uid, no capabilities, ``no_new_privs``, the
seccomp filter (``seccomp``), the sandbox's cgroup (``local_limits``), its ``/tmp`` and its view
of the host (read-only system directories and nothing else). A server started in the background
by one command answers the next one on localhost; every process dies with the sandbox.

Nothing in a sandbox ever runs with privilege. When this process is root, it drops to
``sandbox_uid`` (``setpriv``, on the host) *before* ``bwrap`` starts; ``bwrap`` then runs as
that uid in a user namespace of its own, which maps only that uid: the sandbox's "root", were a
command to become it, is host uid ``sandbox_uid`` with capabilities over nothing but its own
namespaces. That uid is called ``user`` inside (an ``/etc/passwd`` and ``/etc/group`` of the
sandbox's own). Every helper (``setpriv``, ``bwrap``, ``prlimit``, ``env``, the shell, the init's
``python3``) is resolved to an absolute host path before the sandbox starts, and the caller's
environment (``spec.envs``, ``env``) is applied by ``env -i`` only to the final command: no
tool-call variable (``PATH``, ``LD_PRELOAD``, ``BASH_ENV``...) reaches a helper. The workspace of a
root-run sandbox is a size-capped filesystem of its own (``local_workspace``), mounted where the
sandbox uid can reach it. When this process is not root, ``bwrap`` runs as this user in a user
namespace, and the workspace is a plain directory under ``<root>/<id>/home`` with no disk quota.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any

from aws_lambda_powertools import Logger

from sandcastle.errors import DiskQuotaExceeded, InitUnreachable, ProcessNotFound, SandboxError, SandboxGone
from sandcastle.sandbox import background, local_init, sandbox_init, workspace_files
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, ProcessOutput, SandboxSpec
from sandcastle.sandbox.listing import SandboxInfo
from sandcastle.sandbox.local_limits import CgroupSupport, SandboxCgroup, SandboxLimits, detect_cgroup_support
from sandcastle.sandbox.local_workspace import (
    WorkspaceMounts,
    is_out_of_space,
    quota_exceeded_message,
    workspace_is_full,
)
from sandcastle.sandbox.seccomp import filter_fd, sandbox_filter

__all__ = ["SANDBOX_USER", "LocalSandbox", "LocalSandboxProvider", "SandboxLimits", "SandboxProcess"]

SANDBOX_USER = "user"
"""The sandbox uid's name inside (E2B's convention): ``whoami`` prints it, ``ls -l`` shows it."""
_BWRAP_MISSING = "bubblewrap (bwrap) is not installed; run `make setup` or apt-get install bubblewrap"
_UTIL_LINUX_MISSING = "{tool} (util-linux) is not installed; apt-get install util-linux"
_PYTHON_MISSING = (
    "the local sandbox's init runs on the system's python3, which is missing from /usr/bin; apt-get install python3"
)
_DEFAULT_SANDBOX_UID = 65534
_DEFAULT_DISK_QUOTA_MB = 4096
_DEFAULT_MOUNT_ROOT = Path("/run/sandcastle")
_HELPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""The whole environment of the host-side helpers (``setpriv``, ``bwrap``): nothing of ours leaks in."""
_SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BASE_ENV = {"HOME": SANDBOX_HOME, "PATH": _SANDBOX_PATH, "LANG": "C.UTF-8", "USER": SANDBOX_USER}
"""What every command starts from; the run's and the call's variables go on top, for the command only."""
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
_READ_CHUNK_BYTES = 64 * 1024
_KILL_WAIT_S = 10.0
_INIT_START_TIMEOUT_S = 30.0
_INIT_GONE_NOTE = "killed: the sandbox's init ended, and every process of the sandbox with it"
_PAUSED_MARKER = "paused"

logger = Logger(child=True)


class LocalSandboxProvider:
    """Creates, reconnects to and kills bubblewrap sandboxes whose workspaces live under ``root``.

    ``limits`` bound each sandbox (memory, processes) and each of its processes (CPU time, file
    size); ``sandbox_uid`` is the host uid (and gid) its processes run as when this process is root
    (ignored otherwise: an unprivileged process cannot switch users). ``use_cgroups=False`` forces
    the rlimit-only fallback even where cgroups work. ``disk_quota_mb`` caps each sandbox's
    workspace (0: no cap); its filesystem is mounted under ``mount_root``. Both need root: without
    it the workspace is a plain directory, uncapped.
    """

    name = "local"

    def __init__(
        self,
        root: Path,
        limits: SandboxLimits | None = None,
        *,
        sandbox_uid: int = _DEFAULT_SANDBOX_UID,
        use_cgroups: bool = True,
        disk_quota_mb: int = _DEFAULT_DISK_QUOTA_MB,
        mount_root: Path = _DEFAULT_MOUNT_ROOT,
    ) -> None:
        self.root = Path(root)
        self.limits = limits or SandboxLimits()
        self.sandbox_uid: int | None = sandbox_uid if os.geteuid() == 0 else None
        """The uid commands run as, or None when they run as this (unprivileged) process's user."""
        if self.sandbox_uid == 0:
            raise SandboxError("sandbox_uid must not be 0; pick an unprivileged uid such as 65534")
        self._use_cgroups = use_cgroups
        if disk_quota_mb < 0:
            raise SandboxError(f"disk_quota_mb must be 0 (no quota) or more, got {disk_quota_mb}")
        self._mounts = WorkspaceMounts(Path(mount_root), disk_quota_mb) if self.sandbox_uid is not None else None
        """Mounts each workspace (root only); None when workspaces are plain directories."""
        if self._mounts is None and disk_quota_mb:
            logger.warning(
                "local sandboxes get no disk quota: this process is not root, so it cannot mount a "
                f"size-capped workspace; a run can fill the disk under {self.root}"
            )

    @property
    def cgroups(self) -> CgroupSupport | None:
        """Where sandbox cgroups are made, or None when only rlimits apply (probed once per process)."""
        return detect_cgroup_support() if self._use_cgroups else None

    def cgroup_of(self, sandbox_id: str) -> SandboxCgroup | None:
        """The cgroup every process of the sandbox runs in (None without cgroups)."""
        cgroups = self.cgroups
        return cgroups.sandbox_cgroup(sandbox_id) if cgroups is not None else None

    def create(self, spec: SandboxSpec) -> LocalSandbox:
        """Create a sandbox: a private workspace, its ``meta.json``, its cgroup, and its running init.

        ``spec.envs`` apply to every command. A create retried with the same
        ``spec.idempotency_key`` returns the sandbox the first attempt made while it lives.
        The local backend has no network, so ``allow_internet_access`` is refused.
        """
        if spec.allow_internet_access:
            raise SandboxError("the local sandbox backend has no network; use sandbox_backend=e2b for internet access")
        if spec.template not in (None, "base"):
            raise SandboxError(
                f"the local sandbox backend has no templates (asked for {spec.template!r}); use sandbox_backend=e2b "
                "with `sandcastle sandbox-server`, whose templates `sandcastle templates build` makes"
            )
        tools = _find_tools()
        if spec.idempotency_key:
            existing = self._sandbox_for_key(spec.idempotency_key)
            if existing is not None:
                return existing
        sandbox_id = f"lsb-{uuid.uuid4().hex}"
        sandbox_dir = self.root / sandbox_id
        created_at = datetime.now(UTC)
        expires_at = created_at + timedelta(seconds=spec.timeout_s)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._mounts is not None:
            self._mounts.sweep_orphans()
        sandbox_dir.mkdir(mode=0o700)
        meta: dict[str, object] = {
            "run_id": spec.run_id,
            "tenant": spec.tenant,
            "created_at": created_at.isoformat(),
            "expires_at": expires_at.isoformat(),
            "metadata": spec.metadata,
            "envs": spec.envs,
            "idempotency_key": spec.idempotency_key,
            "disk_quota_mb": None,
        }
        _write_meta(sandbox_dir, meta)  # before any mount: a portal without meta.json is an orphan
        try:
            # The workspace belongs to the sandbox uid alone (0700): no other local user can enter it.
            if self._mounts is not None:
                assert self.sandbox_uid is not None
                meta["disk_quota_mb"] = self._mounts.mount(sandbox_id, sandbox_dir, self.sandbox_uid)
                _write_meta(sandbox_dir, meta)
            else:
                (sandbox_dir / "home").mkdir(mode=0o700)
            cgroup = self.cgroup_of(sandbox_id)
            if cgroup is not None:
                cgroup.create(self.limits)
            sandbox = LocalSandbox(sandbox_id, sandbox_dir, expires_at, tools, self, spec.envs, meta["disk_quota_mb"])
            sandbox.start_init()
        except BaseException:
            self.kill(sandbox_id)
            raise
        if spec.idempotency_key:
            winner = self._sandbox_for_key(spec.idempotency_key)
            if winner is not None and winner.sandbox_id != sandbox_id:  # a concurrent create got there first
                self.kill(sandbox_id)
                return winner
        return sandbox

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> LocalSandbox:
        """Reconnect to a sandbox (resuming it if paused, as E2B's connect does).

        Raises ``SandboxGone`` when it was killed, expired or never existed. With ``keep_alive_s``
        the sandbox now expires that many seconds from now.
        """
        if not _is_local_sandbox_id(sandbox_id):
            raise SandboxGone(f"{sandbox_id!r} is not a local sandbox id")
        sandbox_dir = self.root / sandbox_id
        try:
            meta = json.loads((sandbox_dir / "meta.json").read_text())
        except FileNotFoundError:
            raise SandboxGone(f"sandbox {sandbox_id} does not exist (killed or never created)") from None
        expires_at = datetime.fromisoformat(meta["expires_at"])
        sandbox = LocalSandbox(
            sandbox_id, sandbox_dir, expires_at, _find_tools(), self, meta.get("envs", {}), meta.get("disk_quota_mb")
        )
        sandbox.ensure_alive()
        if self._mounts is not None:
            self._mounts.ensure_mounted(sandbox_id, sandbox_dir)
        if keep_alive_s is not None:
            sandbox.keep_alive(keep_alive_s)
        if sandbox.paused:
            sandbox.resume()
        return sandbox

    def workspace_of(self, sandbox_id: str) -> Path:
        """The host directory a sandbox's ``/home/user`` is (on its own filesystem when root)."""
        if self._mounts is not None:
            return self._mounts.portal(sandbox_id) / "home"
        return self.root / sandbox_id / "home"

    def _sandbox_for_key(self, idempotency_key: str) -> LocalSandbox | None:
        """The oldest live sandbox created with this idempotency key, if any.

        Scans the sandboxes' ``meta.json`` files: there are few on one machine, and keeping the
        key in the sandbox's own directory means nothing outlives a kill.
        """
        holders = []
        for meta_file in self.root.glob("lsb-*/meta.json"):
            with suppress(OSError, ValueError):
                meta = json.loads(meta_file.read_text())
                if meta.get("idempotency_key") == idempotency_key:
                    holders.append((meta["created_at"], meta_file.parent.name))
        for _, sandbox_id in sorted(holders):
            with suppress(SandboxGone):
                return self.connect(sandbox_id)
        return None

    def kill(self, sandbox_id: str) -> bool:
        """Kill every process of the sandbox (its init, and so its namespaces) and delete its directory.

        Idempotent: returns False when the sandbox was already gone.
        """
        if not _is_local_sandbox_id(sandbox_id):
            return False
        sandbox_dir = self.root / sandbox_id
        tombstone = self.root / f".{sandbox_id}.killed"
        try:
            with _flocked(sandbox_dir):  # waits for an init being started: none starts after this
                sandbox_dir.rename(tombstone)
        except (SandboxGone, FileNotFoundError):
            existed = False
        else:
            existed = True
        cgroup = self.cgroup_of(sandbox_id)
        if existed:
            _kill_init(tombstone, cgroup)
        if cgroup is not None:
            cgroup.remove()
        if self._mounts is not None:
            self._mounts.unmount(sandbox_id)
        if existed:
            shutil.rmtree(tombstone, ignore_errors=True)
        return existed

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox under ``root`` (for the reaper), read from each one's ``meta.json``.

        A sandbox killed while it is being listed is left out. Workspace filesystems left mounted
        by sandboxes whose directory was deleted without a kill are unmounted on the way.
        """
        if self._mounts is not None:
            self._mounts.sweep_orphans()
        infos = []
        for meta_file in sorted(self.root.glob("lsb-*/meta.json")):
            with suppress(OSError, ValueError, KeyError):
                meta = json.loads(meta_file.read_text())
                infos.append(
                    SandboxInfo(
                        sandbox_id=meta_file.parent.name,
                        run_id=meta.get("run_id"),
                        created_at=datetime.fromisoformat(meta["created_at"]),
                        expires_at=datetime.fromisoformat(meta["expires_at"]),
                        metadata=dict(meta.get("metadata") or {}),
                    )
                )
        return infos


class LocalSandbox:
    """A live bubblewrap sandbox: one init, one set of namespaces, one workspace for the run's life."""

    def __init__(
        self,
        sandbox_id: str,
        sandbox_dir: Path,
        expires_at: datetime,
        tools: _HostTools,
        provider: LocalSandboxProvider,
        envs: dict[str, str] | None = None,
        disk_quota_mb: int | None = None,
    ) -> None:
        self._sandbox_id = sandbox_id
        self._sandbox_dir = sandbox_dir
        self._workspace = provider.workspace_of(sandbox_id)
        self._expires_at = expires_at
        self._tools = tools
        self._provider = provider
        self._envs = dict(envs or {})
        self._disk_quota_mb = disk_quota_mb
        self._cgroup = provider.cgroup_of(sandbox_id)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id (``lsb-<hex>``)."""
        return self._sandbox_id

    @property
    def workspace(self) -> Path:
        """The host directory mounted as ``/home/user`` inside the sandbox."""
        return self._workspace

    @property
    def disk_quota_mb(self) -> int | None:
        """The workspace's size cap in MiB, or None when it has none (not root, or no loop device)."""
        return self._disk_quota_mb

    def owner_names(self, uid: int, gid: int) -> tuple[str, str]:
        """The names the sandbox's own ``/etc/passwd`` and ``/etc/group`` give a uid and gid (the number when none)."""
        passwd, group = _identity_files(self._provider.sandbox_uid)
        return _name_in(passwd, uid), _name_in(group, gid)

    @property
    def init_pid(self) -> int | None:
        """The host pid of the sandbox's init (its outermost ``bwrap``), while it runs."""
        return local_init.recorded_init_pid(self._sandbox_dir)

    def ensure_alive(self) -> None:
        """Raise ``SandboxGone`` when the sandbox was killed or has expired (an expired one is killed)."""
        self._ensure_not_killed()
        if datetime.now(UTC) >= self._expires_at:
            self._provider.kill(self._sandbox_id)
            raise SandboxGone(
                f"sandbox {self._sandbox_id} expired at {self._expires_at.isoformat()}; "
                "create it with a longer timeout_s"
            )

    def keep_alive(self, seconds: int) -> None:
        """Let the sandbox live ``seconds`` from now (instead of its current expiry)."""
        self._ensure_not_killed()
        meta = json.loads((self._sandbox_dir / "meta.json").read_text())
        self._expires_at = datetime.now(UTC) + timedelta(seconds=max(1, seconds))
        meta["expires_at"] = self._expires_at.isoformat()
        _write_meta(self._sandbox_dir, meta)

    # --- the init ---

    def start_init(self) -> None:
        """Start the sandbox's init unless one runs (after a host restart, a new one: the workspace is kept).

        Serialised across threads and processes by an ``flock`` on the sandbox directory, which
        ``kill`` takes too: no init starts for a sandbox being killed.
        """
        with _flocked(self._sandbox_dir):
            self._ensure_not_killed()
            with suppress(InitUnreachable):
                local_init.request(self._sandbox_dir, {"op": "ping"}, timeout_s=_INIT_START_TIMEOUT_S)
                return
            self._launch_init()

    def _launch_init(self) -> None:
        listener = local_init.listening_socket(self._sandbox_dir)
        seccomp_fd = filter_fd(sandbox_filter())
        identity_fds = [_data_fd(data) for data in _identity_files(self._provider.sandbox_uid)]
        try:
            argv = (self._cgroup.join_argv() if self._cgroup else []) + self._bwrap_argv(
                seccomp_fd, identity_fds, listener.fileno()
            )
            process = local_init.launch(
                argv,
                pass_fds=(seccomp_fd, listener.fileno(), *identity_fds),
                env=_HELPER_ENV,
                log=self._sandbox_dir / "init.log",
            )
        finally:
            listener.close()  # the init holds its own copy; the host never accepts
            for fd in (seccomp_fd, *identity_fds):
                os.close(fd)
        local_init.record_init(self._sandbox_dir, process.pid)
        try:
            local_init.request(self._sandbox_dir, {"op": "ping"}, timeout_s=_INIT_START_TIMEOUT_S)
        except InitUnreachable:
            log = (self._sandbox_dir / "init.log").read_text(errors="replace")[-2000:]
            raise SandboxError(f"the sandbox's init did not start: {log.strip() or 'no output'}") from None

    def _init_request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the init, starting it again first if it is gone."""
        self._ensure_usable()
        try:
            return local_init.request(self._sandbox_dir, message)
        except InitUnreachable:
            self.start_init()
            return local_init.request(self._sandbox_dir, message)

    # --- pause / resume ---

    @property
    def paused(self) -> bool:
        return (self._sandbox_dir / _PAUSED_MARKER).exists()

    def pause(self) -> None:
        """Freeze every process of the sandbox (the cgroup freezer, else SIGSTOP to each); files are kept.

        Commands and background processes stop where they are until ``resume``; a paused sandbox
        refuses new commands (``SandboxError``) — ``LocalSandboxProvider.connect`` resumes it.
        """
        self._ensure_not_killed()
        (self._sandbox_dir / _PAUSED_MARKER).touch()
        if self._cgroup is not None and self._cgroup.can_freeze:
            self._cgroup.freeze(True)
            return
        for pid in self.host_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let every process of a paused sandbox continue."""
        self._ensure_not_killed()
        if self._cgroup is not None and self._cgroup.can_freeze:
            self._cgroup.freeze(False)
        else:
            for pid in reversed(self.host_pids()):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        (self._sandbox_dir / _PAUSED_MARKER).unlink(missing_ok=True)

    def host_pids(self) -> list[int]:
        """Every host pid of the sandbox: its cgroup's members, else the init and its descendants."""
        if self._cgroup is not None:
            return self._cgroup.members()
        pid = self.init_pid
        return local_init.descendants(pid) if pid is not None else []

    def _ensure_usable(self) -> None:
        self.ensure_alive()
        if self.paused:
            raise SandboxError(f"sandbox {self._sandbox_id} is paused; resume it (or connect to it) first")

    # --- commands ---

    def run(
        self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run ``bash -lc command`` in the sandbox; on timeout kill its process group and return what it printed.

        Processes it starts in the background (``&``) live on, as on a machine, until they exit
        or the sandbox is killed. A command a limit ended gets a ``killed: ...`` line appended to
        its stderr, so the model reads why (e.g. ``killed: memory limit 2048 MB exceeded``).
        """
        started = time.monotonic()
        process = self.spawn([*self._tools.shell, command], cwd=cwd, env=env)
        stdout, stderr = bytearray(), bytearray()
        timed_out = not process.communicate(stdout, stderr, deadline=started + timeout_s)
        if timed_out:
            process.kill()
            process.communicate(stdout, stderr, deadline=time.monotonic() + _KILL_WAIT_S)
        exit_code = process.wait()
        self.ensure_alive()
        if timed_out:
            return CommandResult(
                exit_code=None,
                stdout=bytes(stdout),
                stderr=bytes(stderr),
                duration_ms=_elapsed_ms(started),
                timed_out=True,
            )
        if process.limit_note:
            if stderr and not stderr.endswith(b"\n"):
                stderr += b"\n"
            stderr += process.limit_note.encode() + b"\n"
        return CommandResult(
            exit_code=exit_code, stdout=bytes(stdout), stderr=bytes(stderr), duration_ms=_elapsed_ms(started)
        )

    def spawn(
        self,
        program: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        terminal: int | None = None,
    ) -> SandboxProcess:
        """Start ``program`` (an argv) in the sandbox, under the same isolation and limits as ``run``.

        Unlike ``run`` it returns at once: the caller streams ``stdout``/``stderr`` while the
        command runs (and writes ``stdin``, a pipe, when asked for), then calls ``wait``.
        ``kill`` ends its process group; ``LocalSandboxProvider.kill`` of the sandbox ends
        everything. Used by ``run`` and by the E2B-compatible sandbox server (``sandcastle.e2b_server``).

        ``terminal`` (the slave side of a pty whose master the caller keeps and reads) is instead the
        command's stdin, stdout and stderr, and its controlling terminal: ``setsid --ctty`` makes
        the command the leader of a session of its own, so ``tput``, job control and ``SIGWINCH``
        on a resize work. Such a command has no pipes; the caller still owns (and closes) the fd.
        """
        argv = self._command_argv(program, cwd, {**self._envs, **(env or {})})
        if terminal is not None:
            if stdin:
                raise ValueError("a command on a terminal reads its input from it: pass stdin=False")
            argv = [self._tools.setsid, "--ctty", *argv]
            ours: list[int] = []
            theirs, lent = [terminal] * 3, []  # the caller's fd, passed on three times: not ours to close
        else:
            stdin_read, stdin_write = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
            stdout_read, stdout_write = os.pipe()
            stderr_read, stderr_write = os.pipe()
            ours = [stdin_write, stdout_read, stderr_read]
            theirs = lent = [stdin_read, stdout_write, stderr_write]
        try:
            oom_kills = self._cgroup.oom_kills() if self._cgroup else 0
            connection = self._start_command(argv, theirs, terminal=terminal is not None)
        except BaseException:
            for fd in ours:
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in lent:
                os.close(fd)
        exit_note = functools.partial(self._exit_note, oom_kills_before=oom_kills)
        if terminal is not None:
            return SandboxProcess(connection, stdin=None, stdout=None, stderr=None, exit_note=exit_note)
        return SandboxProcess(
            connection,
            stdin=os.fdopen(stdin_write, "wb", buffering=0) if stdin else None,
            stdout=os.fdopen(stdout_read, "rb", buffering=0),
            stderr=os.fdopen(stderr_read, "rb", buffering=0),
            exit_note=exit_note,
        )

    def _start_command(self, argv: list[str], fds: list[int], *, terminal: bool = False) -> socket.socket:
        """Hand ``argv`` and its stdin/stdout/stderr to the init; the connection then carries its end.

        ``terminal``: the three are a pty, and ``argv`` starts with ``setsid --ctty`` (the init
        then leaves the new session to it)."""
        self._ensure_usable()
        for attempt in (1, 2):
            try:
                connection = local_init.connect(self._sandbox_dir, timeout_s=_INIT_START_TIMEOUT_S)
            except InitUnreachable:
                if attempt == 2:
                    raise
                self.start_init()
                continue
            try:
                request = {"op": "run", "argv": argv, "terminal": terminal}
                socket.send_fds(connection, [json.dumps(request).encode()], fds)
                reply = local_init.read_message(connection)
            except BaseException:
                connection.close()
                raise
            if "pid" not in reply:
                connection.close()
                raise SandboxError(f"the sandbox could not start the command: {reply.get('error', reply)}")
            connection.settimeout(None)
            return connection
        raise AssertionError("unreachable")

    def _exit_note(self, exit_code: int, *, oom_kills_before: int) -> str | None:
        """Why a command failed, when a limit (or the full workspace) visibly caused it; else None."""
        if not exit_code:
            return None
        killed = exit_code == 128 + signal.SIGKILL
        oom_killed = killed and self._cgroup is not None and self._cgroup.oom_kills() > oom_kills_before
        note = self._provider.limits.explain_exit(exit_code, oom_killed=oom_killed)
        if note is None and self._disk_quota_mb and workspace_is_full(self._workspace):
            note = quota_exceeded_message(self._disk_quota_mb)
        return note

    # --- background processes (their state lives in the sandbox: ``background``) ---

    def start_process(self, command: str, *, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
        """Start ``command`` in the background through the init, which keeps its stdin; returns its id."""
        process_id = background.new_process_id()
        directory = background.process_dir(process_id)
        self.write_file(f"{directory}/command", command.encode())
        argv = self._command_argv(
            [*self._tools.shell, background.wrapper(process_id, command)], cwd, {**self._envs, **(env or {})}
        )
        reply = self._init_request({"op": "start", "id": process_id, "argv": argv})
        if "pid" not in reply:
            raise SandboxError(f"the sandbox could not start the process: {reply.get('error', reply)}")
        return process_id

    def process_output(self, process_id: str) -> ProcessOutput:
        """New output since the last read, and the exit status once it ended."""
        running = process_id in self.list_processes()
        return background.read_output(
            process_id, read=self.read_file, write=self.write_file, running=running, read_from=self._read_from
        )

    def _read_from(self, path: str, offset: int) -> bytes:
        self.ensure_alive()
        return workspace_files.read_file(self._workspace, path, offset=offset)

    def write_stdin(self, process_id: str, data: bytes) -> None:
        """Write ``data`` to the process's stdin (a pipe the init holds)."""
        background.process_dir(process_id)
        reply = self._init_request({"op": "stdin", "id": process_id, "data": base64.b64encode(data).decode()})
        if not reply.get("ok"):
            raise ProcessNotFound(f"process {process_id} is not running ({reply.get('error', 'unknown')})")

    def kill_process(self, process_id: str) -> bool:
        """SIGKILL the process's group; its exit status reads 137."""
        directory = background.process_dir(process_id)
        killed = bool(self._init_request({"op": "kill", "id": process_id}).get("killed"))
        if killed:
            with suppress(FileNotFoundError, ValueError):
                self.read_file(f"{directory}/exit")
                return True
            self.write_file(f"{directory}/exit", f"{background.KILLED_EXIT_CODE}\n".encode())
        return killed

    def list_processes(self) -> list[str]:
        """The ids of the background processes still running."""
        processes = self._init_request({"op": "list"}).get("processes") or []
        return [str(entry.get("id")) for entry in processes if isinstance(entry, dict)]

    # --- files (the workspace, walked on the host) ---

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file in the workspace, creating parent directories, owned by the sandbox user.

        Raises ``ValueError`` when the path (symlinks followed) leads outside ``/home/user`` or
        names something other than a regular file (a FIFO, a socket), and ``DiskQuotaExceeded``
        when the workspace is full.
        """
        self.ensure_alive()
        try:
            workspace_files.write_file(self._workspace, path, data, owner=self._provider.sandbox_uid)
        except OSError as error:
            if is_out_of_space(error):
                raise DiskQuotaExceeded(quota_exceeded_message(self._disk_quota_mb)) from None
            raise

    def read_file(self, path: str) -> bytes:
        """Read a file of the workspace; raises ``FileNotFoundError`` when it does not exist.

        Raises ``ValueError`` when the path (symlinks followed) leads outside ``/home/user`` or
        names something other than a regular file: a FIFO or a device would never end.
        """
        self.ensure_alive()
        return workspace_files.read_file(self._workspace, path)

    def stat_path(self, path: str) -> os.stat_result:
        """``stat`` a path of the workspace (symlinks followed inside it); ``FileNotFoundError`` when missing.

        Raises ``ValueError`` when the path (symlinks followed) leads outside ``/home/user``.
        """
        self.ensure_alive()
        return workspace_files.stat_path(self._workspace, path)

    def list_dir(self, path: str, *, depth: int = 1) -> list[tuple[str, os.stat_result]]:
        """The entries under a workspace directory, ``depth`` levels deep: ``(sandbox path, lstat)`` pairs.

        Symlinks are listed, never followed (so a listing never leaves the workspace).
        """
        self.ensure_alive()
        return workspace_files.list_dir(self._workspace, path, depth=depth)

    def make_dir(self, path: str) -> bool:
        """Create a directory (and its parents), owned by the sandbox user. False when it already existed."""
        self.ensure_alive()
        return workspace_files.make_dir(self._workspace, path, owner=self._provider.sandbox_uid)

    def remove_path(self, path: str) -> None:
        """Remove a file, symlink or directory tree of the workspace; ``FileNotFoundError`` when missing."""
        self.ensure_alive()
        workspace_files.remove_path(self._workspace, path)

    def move_path(self, source: str, destination: str) -> None:
        """Rename a workspace path to another (parents of the destination are created)."""
        self.ensure_alive()
        workspace_files.move_path(self._workspace, source, destination, owner=self._provider.sandbox_uid)

    def _ensure_not_killed(self) -> None:
        if not (self._sandbox_dir / "meta.json").exists():
            raise SandboxGone(f"sandbox {self._sandbox_id} was killed")

    def _command_argv(self, program: list[str], cwd: str | None, env: dict[str, str]) -> list[str]:
        """What the init executes for a command: prlimit, then ``env -i`` with the caller's variables
        in ``cwd``, then ``program``. Every helper is an absolute host path."""
        tools = self._tools
        limits = self._provider.limits
        directory = str(PurePosixPath(SANDBOX_HOME, cwd or "."))
        argv = [tools.prlimit, *limits.prlimit_argv(with_nproc=self._cgroup is None), "--"]
        argv += [tools.env, "-i", "-C", directory, "--", *_assignments({**_BASE_ENV, **env})]
        return argv + program

    def _bwrap_argv(self, seccomp_fd: int, identity_fds: list[int], listen_fd: int) -> list[str]:
        """The init's argv: (setpriv), bwrap and its flags, then the system ``python3`` running ``sandbox_init``."""
        tools = self._tools
        uid = self._provider.sandbox_uid
        limits = self._provider.limits
        # Why each flag:
        # setpriv (host)       root: become the unprivileged sandbox uid/gid, without supplementary
        #                      groups, before bwrap starts: nothing inside ever is (or was) host root.
        # --unshare-user       a user namespace that maps only that uid: capabilities bwrap holds while
        #                      it sets up apply to its own namespaces, never to the host.
        # --unshare-net        a network namespace with only its own loopback: no host service on
        #                      127.0.0.1 and no outside address is reachable (connects fail at once);
        #                      the sandbox's own servers answer each other on it.
        # --unshare-pid        its own PID namespace: it sees and signals only its own processes, and
        #                      all of them die when its init does (kill), so nothing outlives it.
        # --unshare-ipc/-uts   no shared memory or semaphores with the host; its own hostname.
        # --unshare-cgroup-try its cgroup paths (and so the host's layout) stay hidden.
        # --die-with-parent    if this process dies, the sandbox dies with it (no orphans).
        # --new-session        a new terminal session: no TIOCSTI keystroke injection into ours.
        # read-only binds      the system directories, read-only; the rest of the host does not exist.
        # --ro-bind-data       an /etc/passwd and /etc/group naming the sandbox uid ``user``.
        # --proc/--dev         a procfs of its own PID namespace; a minimal /dev (null, zero, urandom...).
        # --tmpfs /tmp        the sandbox's private, world-writable /tmp, capped at the file size
        #                      limit (it is memory, counted in the sandbox's cgroup).
        # --bind workspace     the only writable host directory: the run's workspace as $HOME.
        # --remount-ro /       the sandbox's root (a tmpfs its own user owns) read-only: no writes
        #                      outside /tmp and $HOME, so none that no limit bounds.
        # --seccomp            no namespaces, mounts, modules, clock changes or reboot (``seccomp``);
        #                      the init and everything it starts inherit the filter.
        # --clearenv/--setenv  the init sees a fixed environment: nothing of this process's
        #                      (credentials!) and nothing of the caller's (PATH, LD_PRELOAD...).
        #                      bwrap drops every capability and sets no_new_privs before exec.
        # python3 -I -S        the init: no user site, no environment variables, no site module.
        # Each command then gets, from the init: prlimit (CPU time, memory, file size, and processes
        # without a pids cgroup), ``env -i`` (the caller's environment, for the final command only).
        argv: list[str] = []
        if uid is not None:
            argv += [tools.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        argv += [tools.bwrap, "--unshare-user", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--hostname", "sandcastle", "--die-with-parent", "--new-session"]
        argv += _system_mount_args()
        passwd_fd, group_fd = identity_fds
        argv += ["--ro-bind-data", str(passwd_fd), "/etc/passwd", "--ro-bind-data", str(group_fd), "/etc/group"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777"]
        if _bwrap_has_tmpfs_size(tools.bwrap):
            argv += ["--size", str(limits.file_size_mb * 1024 * 1024)]
        argv += ["--tmpfs", "/tmp"]
        argv += ["--perms", "0755", "--dir", PurePosixPath(SANDBOX_HOME).parent.as_posix()]
        argv += ["--bind", str(self._workspace), SANDBOX_HOME]
        argv += ["--remount-ro", "/"]
        argv += ["--chdir", SANDBOX_HOME]
        argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--clearenv"]
        for name, value in _BASE_ENV.items():
            argv += ["--setenv", name, value]
        return argv + ["--", tools.python, "-I", "-S", "-c", _init_source(), str(listen_fd)]


class SandboxProcess:
    """A command the sandbox's init started: read its pipes while it runs, then ``wait``."""

    def __init__(
        self,
        connection: socket.socket,
        *,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes] | None,
        exit_note: Callable[[int], str | None],
    ) -> None:
        self._connection = connection
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._exit_note = exit_note
        self._lock = threading.Lock()
        self._exit_code: int | None = None
        self.limit_note: str | None = None
        """Why a limit ended the command (e.g. ``killed: memory limit ...``), once it has exited."""

    @property
    def stdin(self) -> IO[bytes]:
        """The command's standard input (a pipe; ``spawn(stdin=True)`` only): close it for EOF."""
        if self._stdin is None:
            raise ValueError("this command was started without stdin (its input is /dev/null)")
        return self._stdin

    @property
    def has_stdin(self) -> bool:
        """Whether the command was given a stdin pipe (``spawn(stdin=True)``)."""
        return self._stdin is not None

    @property
    def stdout(self) -> IO[bytes]:
        """The command's standard output (a pipe; a command on a terminal has none)."""
        if self._stdout is None:
            raise ValueError("this command's output goes to its terminal")
        return self._stdout

    @property
    def stderr(self) -> IO[bytes]:
        """The command's standard error (a pipe; a command on a terminal has none)."""
        if self._stderr is None:
            raise ValueError("this command's output goes to its terminal")
        return self._stderr

    def kill(self, number: int = signal.SIGKILL) -> None:
        """Signal the command's process group (SIGKILL by default)."""
        with suppress(OSError):
            self._connection.send(json.dumps({"signal": int(number)}).encode())

    def communicate(self, stdout: bytearray, stderr: bytearray, *, deadline: float) -> bool:
        """Read both pipes into the buffers until the command ends; False when ``deadline`` passed first.

        Output a background child prints after the command ended is not waited for: what the
        command printed before it ended is in the pipes already, and is all read.
        """
        selector = selectors.DefaultSelector()
        targets = {pipe.fileno(): buffer for pipe, buffer in ((self._stdout, stdout), (self._stderr, stderr)) if pipe}
        for fd in targets:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(self._connection, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for key, _ in selector.select(remaining):
                    if key.fileobj is self._connection:
                        self._drain(targets)
                        return True
                    chunk = os.read(key.fd, _READ_CHUNK_BYTES)
                    if chunk:
                        targets[key.fd] += chunk
                    else:
                        selector.unregister(key.fd)
        finally:
            selector.close()

    @staticmethod
    def _drain(targets: dict[int, bytearray]) -> None:
        for fd, buffer in targets.items():
            os.set_blocking(fd, False)
            with suppress(BlockingIOError, OSError):
                while chunk := os.read(fd, _READ_CHUNK_BYTES):
                    buffer += chunk

    def wait(self) -> int:
        """Wait for the command to end; its exit code (128+n for a signal n).

        A sandbox killed (or whose init died) meanwhile ends it with 137. Safe to call more than
        once and from several threads; it closes the pipes of a command that ended.
        """
        with self._lock:
            if self._exit_code is None:
                self._connection.settimeout(None)
                try:
                    returncode = int(local_init.read_message(self._connection)["exit"])
                    exit_code = returncode if returncode >= 0 else 128 - returncode
                    self.limit_note = self._exit_note(exit_code)
                except (InitUnreachable, KeyError, TypeError, ValueError):
                    exit_code = 128 + signal.SIGKILL
                    self.limit_note = _INIT_GONE_NOTE
                self._connection.close()
                if self._stdin is not None:
                    with suppress(OSError):
                        self._stdin.close()
                self._exit_code = exit_code
            return self._exit_code


def _kill_init(sandbox_dir: Path, cgroup: SandboxCgroup | None) -> None:
    """SIGKILL the sandbox's init and every process below it: its PID namespace dies with it."""
    pid = local_init.recorded_init_pid(sandbox_dir)
    if cgroup is not None and cgroup.can_freeze:
        with suppress(OSError):
            cgroup.freeze(False)  # a frozen process never dies of SIGKILL
    if pid is not None:
        for member in local_init.descendants(pid):
            with suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)  # when this process started it: no zombie left


@contextmanager
def _flocked(directory: Path) -> Iterator[None]:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SandboxGone(f"sandbox directory {directory} is gone (killed)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _identity_files(uid: int | None) -> tuple[bytes, bytes]:
    """The sandbox's ``/etc/passwd`` and ``/etc/group``: its uid is ``user``, at home in ``/home/user``."""
    uid = os.getuid() if uid is None else uid
    gid = uid if os.geteuid() == 0 else os.getgid()
    passwd = f"root:x:0:0:root:/root:/usr/sbin/nologin\n{SANDBOX_USER}:x:{uid}:{gid}::{SANDBOX_HOME}:/bin/bash\n"
    group = f"root:x:0:\n{SANDBOX_USER}:x:{gid}:\n"
    if uid != 65534:
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    if gid != 65534:
        group += "nogroup:x:65534:\n"
    return passwd.encode(), group.encode()


def _name_in(table: bytes, number: int) -> str:
    """The name of ``number`` in a passwd or group file's text (``name:x:number:...`` lines)."""
    for line in table.decode().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == str(number):
            return fields[0]
    return str(number)


def _data_fd(data: bytes) -> int:
    """An in-memory file holding ``data`` at offset 0, for ``bwrap --ro-bind-data``."""
    fd = os.memfd_create("sandcastle-etc", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.cache
def _init_source() -> str:
    """The init's program (``sandbox_init``), passed to the sandbox's ``python3 -c``."""
    return Path(sandbox_init.__file__).read_text()


def _write_meta(sandbox_dir: Path, meta: dict[str, object]) -> None:
    """Replace ``meta.json`` atomically, so a concurrent reader never sees half of it."""
    partial = sandbox_dir / f".meta-{uuid.uuid4().hex}.json"
    partial.write_text(json.dumps(meta, indent=2))
    partial.replace(sandbox_dir / "meta.json")


def _is_local_sandbox_id(sandbox_id: str) -> bool:
    return sandbox_id.startswith("lsb-") and "/" not in sandbox_id and "\0" not in sandbox_id


@dataclass(frozen=True)
class _HostTools:
    """The absolute host paths of every helper a sandbox runs through, resolved before it starts."""

    bwrap: str
    setpriv: str
    prlimit: str
    setsid: str
    """util-linux ``setsid``: ``--ctty`` gives a command on a pty its controlling terminal."""
    env: str
    python: str
    """The system's python3 (under ``/usr``, which the sandbox sees), for the init."""
    shell: tuple[str, ...]
    """``bash -lc`` (or ``sh -c`` where bash is missing)."""


def _find_tools() -> _HostTools:
    """Resolve the helpers on this process's ``PATH`` (never a sandbox's) to absolute paths."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(_BWRAP_MISSING)
    found = {}
    for tool in ("setpriv", "prlimit", "setsid"):
        found[tool] = shutil.which(tool)
        if found[tool] is None:
            raise SandboxError(_UTIL_LINUX_MISSING.format(tool=tool))
    env = shutil.which("env")
    if env is None:
        raise SandboxError("env (coreutils) is not installed; apt-get install coreutils")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        raise SandboxError(_PYTHON_MISSING)
    bash = shutil.which("bash")
    shell = (os.path.abspath(bash), "-lc") if bash else ("/bin/sh", "-c")
    return _HostTools(
        bwrap=os.path.abspath(bwrap),
        setpriv=os.path.abspath(found["setpriv"] or ""),
        prlimit=os.path.abspath(found["prlimit"] or ""),
        setsid=os.path.abspath(found["setsid"] or ""),
        env=os.path.abspath(env),
        python=python,
        shell=shell,
    )


def _assignments(env: dict[str, str]) -> list[str]:
    """``NAME=value`` arguments for ``env -i --``."""
    return [f"{name}={value}" for name, value in env.items()]


@functools.cache
def _bwrap_has_tmpfs_size(bwrap: str) -> bool:
    """``--size`` (for ``--tmpfs``) arrived in bubblewrap 0.8; older ones get an unbounded /tmp."""
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, check=False).stdout
    return "--size" in help_text


@functools.cache
def _system_mount_args() -> tuple[str, ...]:
    """Read-only binds of the system directories (symlinks, as in merged-/usr systems, stay symlinks).

    Root-only files such as ``/etc/shadow`` stay unreadable by permission: commands never run as
    host root.
    """
    args: list[str] = []
    for system_dir in _SYSTEM_DIRS:
        if os.path.islink(system_dir):
            args += ["--symlink", os.readlink(system_dir), system_dir]
        elif os.path.isdir(system_dir):
            args += ["--ro-bind", system_dir, system_dir]
    return tuple(args)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
