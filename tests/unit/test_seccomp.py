"""The local sandbox's seccomp program, run through a classic-BPF interpreter for each architecture."""

from __future__ import annotations

import errno
import struct

import pytest

from sandcastle.errors import UnsupportedArchitecture
from sandcastle.sandbox.seccomp import REFUSED_SYSCALLS, sandbox_filter

ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
I386 = 0x40000003
CLONE = {"x86_64": 56, "aarch64": 220}
UNSHARE = {"x86_64": 272, "aarch64": 97}
CLONE3 = {"x86_64": 435, "aarch64": 435}
EVERYDAY = {"x86_64": {"read": 0, "write": 1, "openat": 257, "execve": 59}, "aarch64": {"read": 63, "openat": 56}}
THREAD_FLAGS = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000, 0x40000000, 0x80


def run_filter(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Evaluate a classic-BPF seccomp program the way the kernel does (the opcodes it uses)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    instructions = [struct.unpack_from("=HBBI", program, offset) for offset in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        if code == 0x20:  # ld w abs
            accumulator = struct.unpack_from("=I", data, k)[0]
        elif code == 0x15:  # jeq
            pc += jt if accumulator == k else jf
        elif code == 0x35:  # jge
            pc += jt if accumulator >= k else jf
        elif code == 0x45:  # jset
            pc += jt if accumulator & k else jf
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("syscall", sorted(REFUSED_SYSCALLS))
def test_every_listed_syscall_is_refused_with_eperm(machine: str, syscall: str) -> None:
    assert run_filter(sandbox_filter(machine), ARCH[machine], REFUSED_SYSCALLS[syscall][machine]) == EPERM


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_list_covers_namespaces_mounts_modules_clock_and_reboot(machine: str) -> None:
    assert {
        "setns", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
        "fspick", "mount_setattr", "open_tree_attr", "init_module", "finit_module", "delete_module",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "reboot", "kexec_load", "kexec_file_load",
    } <= set(REFUSED_SYSCALLS)  # fmt: skip


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_namespace_flags_are_refused_but_threads_and_forks_are_not(machine: str) -> None:
    program, arch = sandbox_filter(machine), ARCH[machine]

    for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET):
        assert run_filter(program, arch, CLONE[machine], THREAD_FLAGS | flag) == EPERM
        assert run_filter(program, arch, UNSHARE[machine], flag) == EPERM
    assert run_filter(program, arch, UNSHARE[machine], CLONE_NEWTIME) == EPERM
    assert run_filter(program, arch, CLONE[machine], THREAD_FLAGS) == ALLOW
    assert run_filter(program, arch, CLONE[machine], 17) == ALLOW  # fork: SIGCHLD as the exit signal
    assert run_filter(program, arch, UNSHARE[machine], 0x400) == ALLOW  # CLONE_FILES
    assert run_filter(program, arch, CLONE3[machine]) == ENOSYS


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_everyday_syscalls_are_allowed(machine: str) -> None:
    for number in EVERYDAY[machine].values():
        assert run_filter(sandbox_filter(machine), ARCH[machine], number) == ALLOW


def test_other_abis_are_refused_whole() -> None:
    program = sandbox_filter("x86_64")

    assert run_filter(program, I386, 11) == EPERM  # execve through int 0x80
    assert run_filter(program, ARCH["x86_64"], 0x40000000 | 272) == EPERM  # unshare through the x32 ABI
    assert run_filter(program, ARCH["aarch64"], 0) == EPERM


def test_an_unknown_architecture_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsupportedArchitecture, match="knows x86_64 and aarch64, not riscv64"):
        sandbox_filter("riscv64")
