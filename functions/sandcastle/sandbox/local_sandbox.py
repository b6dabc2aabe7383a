"""The ``local`` sandbox backend: bubblewrap on this machine, for development and CI.

Each sandbox is a directory ``<root>/<id>/`` holding ``meta.json``, and a workspace mounted as
``/home/user`` inside. Every command runs in a fresh ``bwrap``: no network (a loopback of its own),
its own PID namespace (nothing a command starts outlives it), a read-only view of the system
directories and nothing else of the host, as an unprivileged uid without capabilities, under a
seccomp filter (``seccomp``) and the limits of ``SandboxLimits`` (see ``local_limits``).

Nothing in a sandbox ever runs with privilege. When this process is root, it drops to
``sandbox_uid`` (``setpriv``, on the host) *before* ``bwrap`` starts; ``bwrap`` then runs as
that uid in a user namespace of its own, which maps only that uid: the sandbox's "root", were a
command to become it, is host uid ``sandbox_uid`` with capabilities over nothing but its own
namespaces. Every helper (``setpriv``, ``bwrap``, ``prlimit``, ``env``, the shell) is resolved to an
absolute host path before the sandbox starts, and the caller's environment (``spec.envs``, ``env``)
is applied by ``env -i`` only to the final command: no tool-call variable (``PATH``,
``LD_PRELOAD``, ``BASH_ENV``...) reaches a helper. The workspace of a root-run sandbox is a
size-capped filesystem of its own (``local_workspace``), mounted where the sandbox uid can reach it.
When this process is not root, ``bwrap`` runs as this user in a user namespace, and the workspace
is a plain directory under ``<root>/<id>/home`` with no disk quota.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO

from aws_lambda_powertools import Logger

from sandcastle.errors import DiskQuotaExceeded, SandboxError, SandboxGone
from sandcastle.sandbox import workspace_files
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, SandboxSpec
from sandcastle.sandbox.listing import SandboxInfo
from sandcastle.sandbox.local_limits import CgroupSupport, CommandCgroup, SandboxLimits, detect_cgroup_support
from sandcastle.sandbox.local_workspace import (
    WorkspaceMounts,
    is_out_of_space,
    quota_exceeded_message,
    workspace_is_full,
)
from sandcastle.sandbox.seccomp import filter_fd, sandbox_filter

__all__ = ["LocalSandbox", "LocalSandboxProvider", "SandboxLimits", "SandboxProcess"]

_BWRAP_MISSING = "bubblewrap (bwrap) is not installed; run `make setup` or apt-get install bubblewrap"
_UTIL_LINUX_MISSING = "{tool} (util-linux) is not installed; apt-get install util-linux"
_DEFAULT_SANDBOX_UID = 65534
_DEFAULT_DISK_QUOTA_MB = 4096
_DEFAULT_MOUNT_ROOT = Path("/run/sandcastle")
_HELPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""The whole environment of the host-side helpers (``setpriv``, ``bwrap``): nothing of ours leaks in."""
_SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BASE_ENV = {"HOME": SANDBOX_HOME, "PATH": _SANDBOX_PATH, "LANG": "C.UTF-8"}
"""What every command starts from; the run's and the call's variables go on top, for the command only."""
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")

logger = Logger(child=True)

_live_commands: dict[str, set[subprocess.Popen[bytes]]] = {}
"""Running ``bwrap`` processes per sandbox id, so ``kill`` can end them."""
_live_commands_lock = threading.Lock()
"""Guards ``_live_commands`` and the existence of sandbox directories while commands start."""


class LocalSandboxProvider:
    """Creates, reconnects to and kills bubblewrap sandboxes whose workspaces live under ``root``.

    ``limits`` bound every command; ``sandbox_uid`` is the host uid (and gid) commands run as when
    this process is root (ignored otherwise: an unprivileged process cannot switch users).
    ``use_cgroups=False`` forces the rlimit-only fallback even where cgroups work.
    ``disk_quota_mb`` caps each sandbox's workspace (0: no cap); its filesystem is mounted under
    ``mount_root``. Both need root: without it the workspace is a plain directory, uncapped.
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
        """The cgroups commands run in, or None when only rlimits apply (probed once per process)."""
        return detect_cgroup_support() if self._use_cgroups else None

    def create(self, spec: SandboxSpec) -> LocalSandbox:
        """Create a sandbox: a private workspace and its ``meta.json``. Needs ``bwrap`` installed.

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
        except BaseException:
            self.kill(sandbox_id)
            raise
        if spec.idempotency_key:
            winner = self._sandbox_for_key(spec.idempotency_key)
            if winner is not None and winner.sandbox_id != sandbox_id:  # a concurrent create got there first
                self.kill(sandbox_id)
                return winner
        return LocalSandbox(sandbox_id, sandbox_dir, expires_at, tools, self, spec.envs, meta["disk_quota_mb"])

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> LocalSandbox:
        """Reconnect to a sandbox. Raises ``SandboxGone`` when it was killed, expired or never existed.

        With ``keep_alive_s`` the sandbox now expires that many seconds from now.
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
    """A live bubblewrap sandbox: its workspace persists across the run's commands."""

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

    def run(
        self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run ``bash -lc command`` in a fresh bwrap; on timeout kill it all and return what it printed.

        A command a limit ended gets a ``killed: ...`` line appended to its stderr, so the model
        reads why (e.g. ``killed: memory limit 2048 MB exceeded (exit 137)``).
        """
        started = time.monotonic()
        limits = self._provider.limits
        cgroups = self._provider.cgroups
        with ExitStack() as stack:
            cgroup = stack.enter_context(cgroups.command_cgroup(limits, self._sandbox_id)) if cgroups else None
            envs = {**self._envs, **(env or {})}
            seccomp_fd = filter_fd(sandbox_filter())
            argv = (cgroup.join_argv() if cgroup else []) + self._bwrap_argv(
                command, cwd, envs, cgroup is None, seccomp_fd
            )
            process = stack.enter_context(self._registered_process(argv, seccomp_fd))
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
            oom_killed = cgroup.oom_killed() if cgroup else False
        self.ensure_alive()
        exit_code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        note = self._exit_note(exit_code, oom_killed)
        if note:
            stderr += (b"" if not stderr or stderr.endswith(b"\n") else b"\n") + note.encode() + b"\n"
        return CommandResult(exit_code=exit_code, stdout=stdout, stderr=stderr, duration_ms=_elapsed_ms(started))

    def _exit_note(self, exit_code: int, oom_killed: bool) -> str | None:
        """Why a command failed, when a limit (or the full workspace) visibly caused it; else None."""
        if not exit_code and not oom_killed:
            return None
        note = self._provider.limits.explain_exit(exit_code, oom_killed=oom_killed)
        if note is None and self._disk_quota_mb and workspace_is_full(self._workspace):
            note = quota_exceeded_message(self._disk_quota_mb)
        return note

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

    def spawn(
        self,
        program: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        terminal: int | None = None,
    ) -> SandboxProcess:
        """Start ``program`` (an argv) in a fresh bwrap, under the same isolation and limits as ``run``.

        Unlike ``run`` it returns at once: the caller streams ``stdout``/``stderr`` while the
        command runs, then calls ``wait`` (which releases its cgroup). ``kill`` ends the whole
        tree, and so does ``LocalSandboxProvider.kill`` of the sandbox. Used by the E2B-compatible
        sandbox server (``sandcastle.e2b_server``), whose clients stream output and send signals.
        ``stdin=True`` gives the command a pipe (``SandboxProcess.stdin``) instead of /dev/null;
        ``terminal`` (the slave fd of a pty the caller opened) becomes its stdin, stdout and stderr.
        """
        limits = self._provider.limits
        cgroups = self._provider.cgroups
        stack = ExitStack()
        try:
            cgroup = stack.enter_context(cgroups.command_cgroup(limits, self._sandbox_id)) if cgroups else None
            envs = {**self._envs, **(env or {})}
            seccomp_fd = filter_fd(sandbox_filter())
            argv = (cgroup.join_argv() if cgroup else []) + self._bwrap_argv(
                "", cwd, envs, cgroup is None, seccomp_fd, program=list(program)
            )
            process = stack.enter_context(self._registered_process(argv, seccomp_fd, stdin=stdin, terminal=terminal))
        except BaseException:
            stack.close()
            raise
        return SandboxProcess(process, stack, cgroup, self._exit_note)

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

    @contextmanager
    def _registered_process(
        self, argv: list[str], seccomp_fd: int, *, stdin: bool = False, terminal: int | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Start bwrap while the sandbox provably exists, and keep it findable by ``kill``.

        Its environment is ``_HELPER_ENV`` alone, and only the seccomp filter's fd is passed on
        (this closes it: bwrap holds its own copy once started). Its stdin is /dev/null, or a pipe
        (``stdin``), or all three streams are ``terminal``.
        """
        try:
            self.ensure_alive()
            with _live_commands_lock:
                self._ensure_not_killed()
                pipes = (subprocess.PIPE if stdin else subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE)
                process = subprocess.Popen(
                    argv,
                    stdin=pipes[0] if terminal is None else terminal,
                    stdout=pipes[1] if terminal is None else terminal,
                    stderr=pipes[2] if terminal is None else terminal,
                    start_new_session=True,
                    env=_HELPER_ENV,
                    pass_fds=(seccomp_fd,),
                )
                _live_commands.setdefault(self._sandbox_id, set()).add(process)
        finally:
            os.close(seccomp_fd)
        try:
            yield process
        finally:
            with _live_commands_lock:
                processes = _live_commands.get(self._sandbox_id)
                if processes is not None:
                    processes.discard(process)
                    if not processes:
                        del _live_commands[self._sandbox_id]

    def _bwrap_argv(
        self,
        command: str,
        cwd: str | None,
        env: dict[str, str],
        rlimit_nproc: bool,
        seccomp_fd: int,
        program: list[str] | None = None,
    ) -> list[str]:
        """The full argv: (setpriv), bwrap, its flags, prlimit, ``env -i`` and the caller's
        variables, then ``bash -lc command`` (or ``program`` as given). Every helper is an absolute path."""
        tools = self._tools
        uid = self._provider.sandbox_uid
        limits = self._provider.limits
        # Why each flag:
        # setpriv (host)       root: become the unprivileged sandbox uid/gid, without supplementary
        #                      groups, before bwrap starts: nothing inside ever is (or was) host root.
        # --unshare-user       a user namespace that maps only that uid: capabilities bwrap holds while
        #                      it sets up apply to its own namespaces, never to the host.
        # --unshare-net        a network namespace with only its own loopback: no host service on
        #                      127.0.0.1 and no outside address is reachable (connects fail at once).
        # --unshare-pid        its own PID namespace: it sees and signals only its own processes, and
        #                      all of them die when its init (bwrap) does, so nothing outlives it.
        # --unshare-ipc/-uts   no shared memory or semaphores with the host; its own hostname.
        # --unshare-cgroup-try its cgroup paths (and so the host's layout) stay hidden.
        # --die-with-parent    if this process dies, the sandbox dies with it (no orphans).
        # --new-session        a new terminal session: no TIOCSTI keystroke injection into ours.
        # read-only binds      the system directories, read-only; the rest of the host does not exist.
        # --proc/--dev         a procfs of its own PID namespace; a minimal /dev (null, zero, urandom...).
        # --tmpfs /tmp        a private, world-writable /tmp, capped at the file size limit (it is memory).
        # --bind workspace     the only writable host directory: the run's workspace as $HOME.
        # --remount-ro /       the sandbox's root (a tmpfs its own user owns) read-only: no writes
        #                      outside /tmp and $HOME, so none that no limit bounds.
        # --seccomp            no namespaces, mounts, modules, clock changes or reboot (``seccomp``).
        # --clearenv/--setenv  the helpers see a fixed environment: nothing of this process's
        #                      (credentials!) and nothing of the caller's (PATH, LD_PRELOAD...).
        #                      bwrap drops every capability and sets no_new_privs before exec.
        # prlimit (inside)     CPU time, memory, file size (and processes without a pids cgroup).
        # env -i (inside)      the caller's environment, for the final command only.
        argv: list[str] = []
        if uid is not None:
            argv += [tools.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        argv += [tools.bwrap, "--unshare-user", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--hostname", "sandcastle", "--die-with-parent", "--new-session"]
        argv += _system_mount_args()
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777"]
        if _bwrap_has_tmpfs_size(tools.bwrap):
            argv += ["--size", str(limits.file_size_mb * 1024 * 1024)]
        argv += ["--tmpfs", "/tmp"]
        argv += ["--perms", "0755", "--dir", PurePosixPath(SANDBOX_HOME).parent.as_posix()]
        argv += ["--bind", str(self._workspace), SANDBOX_HOME]
        argv += ["--remount-ro", "/"]
        argv += ["--chdir", str(PurePosixPath(SANDBOX_HOME, cwd or "."))]
        argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--clearenv"]
        for name, value in _BASE_ENV.items():
            argv += ["--setenv", name, value]
        argv += ["--", tools.prlimit, *limits.prlimit_argv(with_nproc=rlimit_nproc), "--"]
        argv += [tools.env, "-i", "--", *_assignments({**_BASE_ENV, **env})]
        if program is not None:
            return argv + program
        return argv + [*tools.shell, command]


class SandboxProcess:
    """A command started by ``LocalSandbox.spawn``: read its pipes while it runs, then ``wait``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        resources: ExitStack,
        cgroup: CommandCgroup | None,
        exit_note: Callable[[int, bool], str | None],
    ) -> None:
        self._process = process
        self._resources = resources
        self._cgroup = cgroup
        self._exit_note = exit_note
        self._lock = threading.Lock()
        self._exit_code: int | None = None
        self.limit_note: str | None = None
        """Why a limit ended the command (e.g. ``killed: memory limit ...``), once it has exited."""

    @property
    def pid(self) -> int:
        """The host pid of the command's outermost helper (its process tree hangs below it)."""
        return self._process.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        """The command's standard input (a pipe) when spawned with ``stdin=True``, else None."""
        return self._process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        """The command's standard output (a pipe)."""
        assert self._process.stdout is not None
        return self._process.stdout

    @property
    def stderr(self) -> IO[bytes]:
        """The command's standard error (a pipe)."""
        assert self._process.stderr is not None
        return self._process.stderr

    def kill(self) -> None:
        """SIGKILL the command and everything it started (its PID namespace dies with bwrap)."""
        _kill_process_group(self._process)

    def wait(self) -> int:
        """Wait for the command to end; its exit code (128+n for a signal n), its cgroup released.

        Safe to call more than once and from several threads.
        """
        returncode = self._process.wait()
        with self._lock:
            if self._exit_code is None:
                oom_killed = self._cgroup.oom_killed() if self._cgroup else False
                self._resources.close()
                exit_code = returncode if returncode >= 0 else 128 - returncode
                self.limit_note = self._exit_note(exit_code, oom_killed)
                self._exit_code = exit_code
            return self._exit_code


def _write_meta(sandbox_dir: Path, meta: dict[str, object]) -> None:
    """Replace ``meta.json`` atomically, so a concurrent reader never sees half of it."""
    partial = sandbox_dir / f".meta-{uuid.uuid4().hex}.json"
    partial.write_text(json.dumps(meta, indent=2))
    partial.replace(sandbox_dir / "meta.json")


def _is_local_sandbox_id(sandbox_id: str) -> bool:
    return sandbox_id.startswith("lsb-") and "/" not in sandbox_id and "\0" not in sandbox_id


@dataclass(frozen=True)
class _HostTools:
    """The absolute host paths of every helper a command runs through, resolved before it starts."""

    bwrap: str
    setpriv: str
    prlimit: str
    env: str
    shell: tuple[str, ...]
    """``bash -lc`` (or ``sh -c`` where bash is missing)."""


def _find_tools() -> _HostTools:
    """Resolve the helpers on this process's ``PATH`` (never a sandbox's) to absolute paths."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(_BWRAP_MISSING)
    found = {}
    for tool in ("setpriv", "prlimit"):
        found[tool] = shutil.which(tool)
        if found[tool] is None:
            raise SandboxError(_UTIL_LINUX_MISSING.format(tool=tool))
    env = shutil.which("env")
    if env is None:
        raise SandboxError("env (coreutils) is not installed; apt-get install coreutils")
    bash = shutil.which("bash")
    shell = (os.path.abspath(bash), "-lc") if bash else ("/bin/sh", "-c")
    return _HostTools(
        bwrap=os.path.abspath(bwrap),
        setpriv=os.path.abspath(found["setpriv"] or ""),
        prlimit=os.path.abspath(found["prlimit"] or ""),
        env=os.path.abspath(env),
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


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL bwrap's process group; the sandbox's PID namespace dies with it (``--die-with-parent``).

    A process already reaped is skipped: its pid (and so its group id) may belong to someone else.
    """
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
