"""Resource limits for the ``local`` sandbox: rlimits for every command, cgroups where the host allows.

Two mechanisms, layered:

- **rlimits**, set by util-linux ``prlimit`` inside the sandbox just before the command (never with
  ``resource.setrlimit`` in a ``preexec_fn``: that is not safe while other threads run). They are
  per process: ``RLIMIT_CPU`` (CPU seconds, SIGXCPU then SIGKILL), ``RLIMIT_DATA`` (writable
  private memory, so an allocation beyond it fails with a clean ``MemoryError``/``ENOMEM``),
  ``RLIMIT_FSIZE`` (largest file, SIGXFSZ) and, when there is no pids cgroup, ``RLIMIT_NPROC``
  (counted per host uid, so it only bites for an unprivileged uid).
- **a cgroup per command** (v1 ``memory`` + ``pids`` hierarchies, or v2 with both controllers),
  when this process may create one next to its own cgroup: ``pids.max`` bounds the whole process
  tree (a fork bomb), and the memory limit bounds the tree's total, ``/tmp`` (tmpfs) included.
  The kernel's OOM killer then ends the command, and ``oom_killed`` tells the caller why.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_GROUP_NAME = "sandcastle"
_CGROUP_REMOVE_WAIT_S = 2.0
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """What one command of a local sandbox may consume (from ``Settings.sandbox_*``)."""

    cpu_seconds: int = 300
    """CPU time per process; past it the process gets SIGXCPU, one second later SIGKILL."""
    memory_mb: int = 2048
    """Memory per process (``RLIMIT_DATA``) and, with cgroups, for the command's whole tree."""
    file_size_mb: int = 512
    """Largest file a command may write; also the size of its ``/tmp`` (a tmpfs)."""
    max_processes: int = 256
    """Processes (and threads) per command with cgroups; per sandbox uid without."""

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
    """Where this host lets us create command cgroups: one parent directory per controller."""

    version: int
    memory_parent: Path
    pids_parent: Path

    @contextmanager
    def command_cgroup(self, limits: SandboxLimits, label: str) -> Iterator[CommandCgroup]:
        """A fresh cgroup with ``limits`` for one command, removed (and emptied) afterwards."""
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        memory_dir, pids_dir = self.memory_parent / name, self.pids_parent / name
        cgroup = CommandCgroup(self.version, memory_dir, pids_dir)
        try:
            memory_dir.mkdir()
            if pids_dir != memory_dir:
                pids_dir.mkdir()
            cgroup.apply(limits)
            yield cgroup
        finally:
            cgroup.remove()


@dataclass(frozen=True)
class CommandCgroup:
    """The cgroup (one directory on v2, one per hierarchy on v1) a single command runs in."""

    version: int
    memory_dir: Path
    pids_dir: Path

    @property
    def _dirs(self) -> tuple[Path, ...]:
        return (self.memory_dir,) if self.memory_dir == self.pids_dir else (self.memory_dir, self.pids_dir)

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
        every process the command starts is born inside the cgroup.
        """
        joins = " && ".join(f"echo $$ > {shlex.quote(str(path / 'cgroup.procs'))}" for path in self._dirs)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sandcastle-cgroup-join"]

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer ended a process of this command (its memory limit)."""
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            lines = (self.memory_dir / events).read_text().splitlines()
        except OSError:
            return False
        counts = dict(line.split(maxsplit=1) for line in lines if " " in line)
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self) -> None:
        """Kill whatever is left in the cgroup and delete it (waiting briefly for exits)."""
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
        with support.command_cgroup(SandboxLimits(), "probe"):
            pass
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
    return CgroupSupport(version=1, memory_parent=parents[0], pids_parent=parents[1])


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
