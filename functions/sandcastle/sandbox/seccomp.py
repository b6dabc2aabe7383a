"""The local sandbox's seccomp filter: syscalls no sandboxed command may make, refused with ``EPERM``.

Every command's process tree runs under this filter (``bwrap --seccomp``, loaded just before the
command is executed, so every helper and the command itself are bound by it). It refuses:

- **namespace creation**: ``unshare`` and ``clone`` with any ``CLONE_NEW*`` flag, ``setns``;
  ``clone3`` gets ``ENOSYS`` (its flags sit behind a pointer a filter cannot read), so the C
  library falls back to ``clone``, whose flags are checked;
- **mounting**: ``mount``, ``umount2``, ``pivot_root`` and the new mount API (``open_tree``,
  ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``, ``mount_setattr``,
  ``open_tree_attr``);
- **kernel modules**: ``init_module``, ``finit_module``, ``delete_module``;
- **the clock**: ``settimeofday``, ``clock_settime``, ``clock_adjtime``, ``adjtimex``;
- **reboot and kexec**: ``reboot``, ``kexec_load``, ``kexec_file_load``.

Syscalls of another ABI than the machine's own (i386 through ``int 0x80`` on x86_64, the x32
ABI) are refused as a whole, since the numbers above would not match them.

Why classic BPF written here rather than libseccomp: the filter is a fixed list of about twenty
syscalls on two architectures, so the program is a few dozen instructions built once per
process; libseccomp's Python binding is not on PyPI as a wheel (it is built from the C library's
source tree) and a ctypes wrapper would add a native dependency to get the same bytes. The format
is the kernel's ``struct sock_filter`` array, which is what ``bwrap --seccomp FD`` reads.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct

from sandcastle.errors import UnsupportedArchitecture

__all__ = ["REFUSED_SYSCALLS", "sandbox_filter"]

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARG0_LOW_OFFSET = 16  # the low 32 bits of args[0] (little-endian on both architectures)

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06

_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000

_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080  # unshare only: in clone's flags these bits are the exit signal
_CLONE_NAMESPACES = (
    _CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET
)

REFUSED_SYSCALLS: dict[str, dict[str, int]] = {
    # name: {machine: number}; x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h
    "setns": {"x86_64": 308, "aarch64": 268},
    "mount": {"x86_64": 165, "aarch64": 40},
    "umount2": {"x86_64": 166, "aarch64": 39},
    "pivot_root": {"x86_64": 155, "aarch64": 41},
    "open_tree": {"x86_64": 428, "aarch64": 428},
    "move_mount": {"x86_64": 429, "aarch64": 429},
    "fsopen": {"x86_64": 430, "aarch64": 430},
    "fsconfig": {"x86_64": 431, "aarch64": 431},
    "fsmount": {"x86_64": 432, "aarch64": 432},
    "fspick": {"x86_64": 433, "aarch64": 433},
    "mount_setattr": {"x86_64": 442, "aarch64": 442},
    "open_tree_attr": {"x86_64": 467, "aarch64": 467},
    "init_module": {"x86_64": 175, "aarch64": 105},
    "finit_module": {"x86_64": 313, "aarch64": 273},
    "delete_module": {"x86_64": 176, "aarch64": 106},
    "settimeofday": {"x86_64": 164, "aarch64": 170},
    "clock_settime": {"x86_64": 227, "aarch64": 112},
    "clock_adjtime": {"x86_64": 305, "aarch64": 266},
    "adjtimex": {"x86_64": 159, "aarch64": 171},
    "reboot": {"x86_64": 169, "aarch64": 142},
    "kexec_load": {"x86_64": 246, "aarch64": 104},
    "kexec_file_load": {"x86_64": 320, "aarch64": 294},
}
"""Refused outright, whatever their arguments."""

_UNSHARE = {"x86_64": 272, "aarch64": 97}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = {"x86_64": 435, "aarch64": 435}


def sandbox_filter(machine: str | None = None) -> bytes:
    """The compiled filter for ``machine`` (default: this one) as ``bwrap --seccomp`` reads it."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        raise UnsupportedArchitecture(
            f"the local sandbox's seccomp filter knows x86_64 and aarch64, not {machine}; use sandbox_backend=e2b"
        )
    return _compiled(machine)


@functools.cache
def _compiled(machine: str) -> bytes:
    program = _Program()
    program.load(_ARCH_OFFSET)
    program.jump_unless_equal(_AUDIT_ARCH[machine], "refuse")
    program.load(_NR_OFFSET)
    if machine == "x86_64":
        program.jump_if_at_least(_X32_SYSCALL_BIT, "refuse")
    for numbers in REFUSED_SYSCALLS.values():
        program.jump_if_equal(numbers[machine], "refuse")
    program.jump_if_equal(_CLONE3[machine], "no_such_syscall")
    program.jump_if_equal(_UNSHARE[machine], "unshare")
    program.jump_if_equal(_CLONE[machine], "clone")
    program.ret(_SECCOMP_RET_ALLOW)
    program.label("unshare")
    program.load(_ARG0_LOW_OFFSET)
    program.jump_if_any_bit(_CLONE_NAMESPACES | _CLONE_NEWTIME, "refuse")
    program.ret(_SECCOMP_RET_ALLOW)
    program.label("clone")
    program.load(_ARG0_LOW_OFFSET)
    program.jump_if_any_bit(_CLONE_NAMESPACES, "refuse")
    program.ret(_SECCOMP_RET_ALLOW)
    program.label("no_such_syscall")
    program.ret(_SECCOMP_RET_ERRNO | errno.ENOSYS)
    program.label("refuse")
    program.ret(_SECCOMP_RET_ERRNO | errno.EPERM)
    return program.assemble()


class _Program:
    """A tiny classic-BPF assembler: forward jumps to named labels, resolved at ``assemble``."""

    def __init__(self) -> None:
        self._instructions: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self._instructions.append((_BPF_LD_W_ABS, None, None, offset))

    def jump_if_equal(self, value: int, target: str) -> None:
        self._instructions.append((_BPF_JEQ_K, target, None, value))

    def jump_unless_equal(self, value: int, target: str) -> None:
        self._instructions.append((_BPF_JEQ_K, None, target, value))

    def jump_if_at_least(self, value: int, target: str) -> None:
        self._instructions.append((_BPF_JGE_K, target, None, value))

    def jump_if_any_bit(self, mask: int, target: str) -> None:
        self._instructions.append((_BPF_JSET_K, target, None, mask))

    def ret(self, action: int) -> None:
        self._instructions.append((_BPF_RET_K, None, None, action))

    def label(self, name: str) -> None:
        self._labels[name] = len(self._instructions)

    def assemble(self) -> bytes:
        def offset(position: int, target: str | None) -> int:
            if target is None:
                return 0
            distance = self._labels[target] - position - 1
            assert 0 <= distance <= 255, "classic BPF jumps forward at most 255 instructions"
            return distance

        return b"".join(
            struct.pack("=HBBI", code, offset(position, true), offset(position, false), k)
            for position, (code, true, false, k) in enumerate(self._instructions)
        )


def filter_fd(program: bytes) -> int:
    """An in-memory file holding ``program``, positioned at its start, for ``bwrap --seccomp``."""
    fd = os.memfd_create("sandcastle-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
