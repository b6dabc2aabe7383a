"""Resource limits for the ``local`` sandbox: rlimits for every command, cgroups where the host allows.

Two mechanisms, layered:

- **rlimits**, set by util-linux ``prlimit`` inside the sandbox just before the command (never with
  ``resource.setrlimit`` in a ``preexec_fn``: that is not safe while other threads run). They are
  per process: ``RLIMIT_CPU`` (CPU seconds, SIGXCPU then SIGKILL), ``RLIMIT_DATA`` (writable
  private memory, so an allocation beyond it fails with a clean ``MemoryError``/``ENOMEM``),
  ``RLIMIT_FSIZE`` (largest file, SIGXFSZ) and, when there is no pids cgroup, ``RLIMIT_NPROC``
  (counted per host uid, so it only bites for an unprivileged uid).
- **a cgroup per sandbox** (v1 ``memory`` + ``pids`` (+ ``freezer``) hierarchies, or v2 with both
  controllers), when this process may create one next to its own cgroup: the sandbox's init and so
  every process of the sandbox lives in it. ``pids.max`` bounds all of them (a fork bomb), and the
  memory limit their total, ``/tmp`` (tmpfs) included. The kernel's OOM killer then ends the
  largest process — the hog, not the init (host root sets the init's ``oom_score_adj`` to -1000) —
  and the ``oom_kill`` count tells the caller why. The freezer pauses the whole sandbox.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_GROUP_NAME = "sandcastle"
_CGROUP_REMOVE_WAIT_S = 2.0
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """What a local sandbox (memory, processes) and each of its processes (CPU, file size) may consume."""

    cpu_seconds: int = 300
    """CPU time per process; past it the process gets SIGXCPU, one second later SIGKILL."""
    memory_mb: int = 2048
    """Memory per process (``RLIMIT_DATA``) and, with cgroups, for the whole sandbox."""
    file_size_mb: int = 512
    """Largest file a command may write; also the size of its ``/tmp`` (a tmpfs)."""
    max_processes: int = 256
    """Processes (and threads) per sandbox with cgroups; per sandbox uid without."""

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_mb", "file_size_mb", "max_processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"sandbox limit {name} must be at least 1, got {getattr(self, name)}")

    def prlimit_argv(self, *, with_nproc: bool) -> list[str]:
        """``prlimit`` options that set these limits on the command it executes."""
        argv = [
            f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 1}",
            f"--data={self.memory_mb * _MIB}",
            f"--fsize={self.file_size_mb * _MIB}",
            "--core=0",
        ]
        if with_nproc:
            argv.append(f"--nproc={self.max_processes}")
        return argv

    def explain_exit(self, exit_code: int, *, oom_killed: bool) -> str | None:
        """A note for the model when a limit (visibly) ended the command, else None."""
        if oom_killed:
            return f"killed: memory limit {self.memory_mb} MB exceeded (exit {exit_code}; OOM killer)"
        if exit_code == 128 + signal.SIGXCPU:
            return f"killed: CPU time limit {self.cpu_seconds} s exceeded (SIGXCPU, exit {exit_code})"
        if exit_code == 128 + signal.SIGXFSZ:
            return f"killed: file size limit {self.file_size_mb} MB exceeded (SIGXFSZ, exit {exit_code})"
        return None


@dataclass(frozen=True)
class CgroupSupport:
    """Where this host lets us create sandbox cgroups: one parent directory per controller.

    ``freezer_parent`` is the v1 ``freezer`` hierarchy's (None on v2, where every cgroup has
    ``cgroup.freeze``, or where v1 has no freezer).
    """

    version: int
    memory_parent: Path
    pids_parent: Path
    freezer_parent: Path | None = None

    def sandbox_cgroup(self, label: str) -> SandboxCgroup:
        """The cgroup of the sandbox ``label`` (it exists once ``create`` made it)."""
        freezer = self.freezer_parent / label if self.freezer_parent is not None else None
        return SandboxCgroup(self.version, self.memory_parent / label, self.pids_parent / label, freezer)


@dataclass(frozen=True)
class SandboxCgroup:
    """The cgroup (one directory on v2, one per hierarchy on v1) that every process of one sandbox runs in.

    Made once when the sandbox is created and reused by each of its commands (a fresh cgroup per
    command cost ~8 ms); removed, with whatever is left in it, when the sandbox is killed.
    """

    version: int
    memory_dir: Path
    pids_dir: Path
    freezer_dir: Path | None = None

    @property
    def _dirs(self) -> tuple[Path, ...]:
        dirs = [self.memory_dir] + ([self.pids_dir] if self.pids_dir != self.memory_dir else [])
        return tuple(dirs + ([self.freezer_dir] if self.freezer_dir is not None else []))

    def create(self, limits: SandboxLimits) -> None:
        """Make the directories and write the limits (an existing cgroup is reused)."""
        for directory in self._dirs:
            directory.mkdir(exist_ok=True)
        self.apply(limits)

    def apply(self, limits: SandboxLimits) -> None:
        """Write the memory (swap included, where the kernel accounts it) and process limits."""
        memory = str(limits.memory_mb * _MIB)
        if self.version == 2:
            _write(self.memory_dir / "memory.max", memory)
            with suppress(OSError):  # no swap accounting on this kernel
                _write(self.memory_dir / "memory.swap.max", "0")
        else:
            _write(self.memory_dir / "memory.limit_in_bytes", memory)
            with suppress(OSError):
                _write(self.memory_dir / "memory.memsw.limit_in_bytes", memory)
        _write(self.pids_dir / "pids.max", str(limits.max_processes))

    def join_argv(self) -> list[str]:
        """An argv prefix: a root shell that moves itself into this cgroup, then execs the rest.

        Joining from inside the child keeps ``subprocess.Popen`` free of a ``preexec_fn``, and
        every process the sandbox starts is born inside the cgroup.
        """
        joins = " && ".join(f"echo $$ > {shlex.quote(str(path / 'cgroup.procs'))}" for path in self._dirs)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sandcastle-cgroup-join"]

    def oom_kills(self) -> int:
        """How many processes of the sandbox the kernel's OOM killer has ended (its memory limit)."""
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            lines = (self.memory_dir / events).read_text().splitlines()
        except OSError:
            return 0
        counts = dict(line.split(maxsplit=1) for line in lines if " " in line)
        return int(counts.get("oom_kill", "0"))

    def members(self) -> list[int]:
        """The host pids of every process in the sandbox."""
        try:
            return [int(pid) for pid in (self.pids_dir / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    @property
    def can_freeze(self) -> bool:
        return self.version == 2 or self.freezer_dir is not None

    def freeze(self, frozen: bool) -> None:
        """Freeze (or thaw) every process of the sandbox at once: the cgroup freezer."""
        if self.version == 2:
            _write(self.memory_dir / "cgroup.freeze", "1" if frozen else "0")
        elif self.freezer_dir is not None:
            _write(self.freezer_dir / "freezer.state", "FROZEN" if frozen else "THAWED")
        else:
            raise OSError("this host's cgroups have no freezer")

    def remove(self) -> None:
        """Kill whatever is left in the cgroup and delete it (waiting briefly for exits)."""
        if self.can_freeze:
            with suppress(OSError):
                self.freeze(False)  # a frozen process never dies of SIGKILL
        deadline = time.monotonic() + _CGROUP_REMOVE_WAIT_S
        for directory in self._dirs:
            while directory.exists():
                _kill_members(directory)
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break  # a process refuses to die: leave the (tiny) group behind
                    time.sleep(0.002)


@functools.cache
def detect_cgroup_support() -> CgroupSupport | None:
    """Whether (and where) commands can run in their own memory+pids cgroup, probed once.

    Needs write access to the cgroup filesystem (root, or a delegated subtree). The parent is
    ``sandcastle/`` under this process's own cgroup, so a container's limits still apply above
    ours. Returns None when anything is missing: the rlimits then stand alone.
    """
    try:
        support = _cgroup_v2_support() if (_CGROUP_ROOT / "cgroup.controllers").exists() else _cgroup_v1_support()
        if support is None:
            return None
        probe = support.sandbox_cgroup(f"probe-{uuid.uuid4().hex[:8]}")
        try:
            probe.create(SandboxLimits())
        finally:
            probe.remove()
        return support
    except (OSError, ValueError):
        return None


def _cgroup_v1_support() -> CgroupSupport | None:
    own = _own_cgroups()
    parents = []
    for controller in ("memory", "pids"):
        if controller not in own or not (_CGROUP_ROOT / controller / "cgroup.procs").exists():
            return None
        parent = _CGROUP_ROOT / controller / own[controller].lstrip("/") / _CGROUP_GROUP_NAME
        parent.mkdir(exist_ok=True)
        parents.append(parent)
    freezer = None
    if "freezer" in own and (_CGROUP_ROOT / "freezer" / "cgroup.procs").exists():
        with suppress(OSError):
            freezer = _CGROUP_ROOT / "freezer" / own["freezer"].lstrip("/") / _CGROUP_GROUP_NAME
            freezer.mkdir(exist_ok=True)
    return CgroupSupport(version=1, memory_parent=parents[0], pids_parent=parents[1], freezer_parent=freezer)


def _cgroup_v2_support() -> CgroupSupport | None:
    own = _own_cgroups().get("")
    if own is None:
        return None
    base = _CGROUP_ROOT / own.lstrip("/")
    if not {"memory", "pids"} <= set((base / "cgroup.controllers").read_text().split()):
        return None
    # Fails with EBUSY unless ``base`` is the root cgroup or holds no processes ("no internal
    # processes"): the probe then reports no support rather than moving this process around.
    _write(base / "cgroup.subtree_control", "+memory +pids")
    parent = base / _CGROUP_GROUP_NAME
    parent.mkdir(exist_ok=True)
    _write(parent / "cgroup.subtree_control", "+memory +pids")
    return CgroupSupport(version=2, memory_parent=parent, pids_parent=parent)


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per controller (``""`` is the v2 unified hierarchy)."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own[controller.removeprefix("name=")] = path
    return own


def _kill_members(directory: Path) -> None:
    with suppress(OSError):
        for pid in (directory / "cgroup.procs").read_text().split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)
