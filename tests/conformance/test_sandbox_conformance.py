"""What every sandbox backend promises (``sandcastle.sandbox.base``), checked against each of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from sandcastle.errors import SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, Sandbox, SandboxProvider


def _run(sandbox: Sandbox, command: str, **kwargs) -> CommandResult:
    return sandbox.run(command, timeout_s=kwargs.pop("timeout_s", 30), **kwargs)


# --- commands ---


def test_exit_code_stdout_and_stderr_come_back_separately(sandbox: Sandbox) -> None:
    result = _run(sandbox, "echo out; echo err >&2; exit 3")

    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, b"out\n", b"err\n", False)
    assert result.duration_ms >= 0
    assert _run(sandbox, "true").exit_code == 0


def test_non_utf8_output_bytes_survive(sandbox: Sandbox) -> None:
    result = _run(sandbox, r"printf '\377\376ok\200'; printf '\351' >&2")

    assert result.stdout == b"\xff\xfeok\x80"
    assert result.stderr == b"\xe9"


def test_cwd_and_env_are_applied(sandbox: Sandbox) -> None:
    _run(sandbox, "mkdir -p project/src")

    relative = _run(sandbox, 'pwd; echo "$GREETING"', cwd="project", env={"GREETING": "hello there"})
    absolute = _run(sandbox, "pwd", cwd=f"{SANDBOX_HOME}/project/src")
    default = _run(sandbox, 'pwd; echo "$HOME"')

    assert relative.stdout == f"{SANDBOX_HOME}/project\nhello there\n".encode()
    assert absolute.stdout == f"{SANDBOX_HOME}/project/src\n".encode()
    assert default.stdout == f"{SANDBOX_HOME}\n{SANDBOX_HOME}\n".encode()


def test_workspace_persists_across_commands_and_reconnects(provider: SandboxProvider, sandbox: Sandbox) -> None:
    _run(sandbox, "echo 'first command' > notes.txt")

    assert _run(sandbox, "cat ~/notes.txt").stdout == b"first command\n"
    reconnected = provider.connect(sandbox.sandbox_id)
    assert reconnected.sandbox_id == sandbox.sandbox_id
    assert reconnected.read_file("notes.txt") == b"first command\n"
    assert _run(reconnected, "cat notes.txt").stdout == b"first command\n"


# --- files ---


@pytest.mark.parametrize(
    "payload",
    [b"plain text\n", bytes(range(256)) * 4, bytes(uuid.uuid4().bytes) * (1024 * 1024 // 16)],
    ids=["text", "binary", "1MiB"],
)
def test_write_then_read_round_trips_and_the_command_sees_the_same_bytes(sandbox: Sandbox, payload: bytes) -> None:
    sandbox.write_file("deep/nested/blob.bin", payload)

    assert sandbox.read_file(f"{SANDBOX_HOME}/deep/nested/blob.bin") == payload
    assert _run(sandbox, "wc -c < deep/nested/blob.bin").stdout.strip() == str(len(payload)).encode()


def test_files_a_command_writes_are_readable_and_host_files_are_writable_by_commands(sandbox: Sandbox) -> None:
    sandbox.write_file("data/input.txt", b"from host\n")

    result = _run(sandbox, "echo 'from sandbox' >> data/input.txt && printf made > data/new.txt && ls data")

    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"input.txt\nnew.txt\n"
    assert sandbox.read_file("data/input.txt") == b"from host\nfrom sandbox\n"
    assert sandbox.read_file("data/new.txt") == b"made"


def test_reading_a_missing_file_raises_file_not_found(file_sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundError):
        file_sandbox.read_file("nope.txt")


def test_a_written_file_reads_back_by_relative_and_absolute_path(file_sandbox: Sandbox) -> None:
    file_sandbox.write_file("notes/today.txt", b"first")
    file_sandbox.write_file(f"{SANDBOX_HOME}/notes/../notes/today.txt", b"second")

    assert file_sandbox.read_file("notes/today.txt") == b"second"
    assert file_sandbox.read_file(f"{SANDBOX_HOME}/notes/today.txt") == b"second"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "notes/../../outside", "/home/userx/f", ".."])
def test_paths_outside_the_workspace_are_rejected(file_sandbox: Sandbox, path: str) -> None:
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        file_sandbox.read_file(path)
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        file_sandbox.write_file(path, b"x")


def test_symlinks_that_resolve_inside_the_workspace_work(sandbox: Sandbox) -> None:
    made = _run(
        sandbox, "mkdir -p real && echo linked > real/t.txt && ln -s real rel && ln -s ~/real abs && ln -s t.txt real/f"
    )

    assert made.exit_code == 0, made.stderr
    for path in ["rel/t.txt", "abs/t.txt", "real/f", "rel/f"]:
        assert sandbox.read_file(path) == b"linked\n", path
    sandbox.write_file("abs/new.txt", b"via link")
    assert _run(sandbox, "cat real/new.txt").stdout == b"via link"


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../etc/passwd", "/dev/zero", "/etc"])
def test_symlinks_that_resolve_outside_the_workspace_are_a_path_error(sandbox: Sandbox, link: str) -> None:
    assert _run(sandbox, f"ln -s {link} escape").exit_code == 0
    target = "escape/passwd" if link == "/etc" else "escape"

    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.read_file(target)
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.write_file(target, b"overwritten")


def test_a_fifo_is_refused_not_waited_on(sandbox: Sandbox) -> None:
    assert _run(sandbox, "mkfifo pipe").exit_code == 0

    with pytest.raises(ValueError, match="FIFO"):
        sandbox.read_file("pipe")
    with pytest.raises(ValueError, match="FIFO"):
        sandbox.write_file("pipe", b"x")


# --- timeouts and process lifetime ---


def test_timeout_kills_the_tree_reports_output_so_far_and_the_sandbox_stays_usable(sandbox: Sandbox) -> None:
    result = _run(sandbox, "echo started; echo warming >&2; (sleep 2; touch ~/late) & sleep 60", timeout_s=1)

    assert result.timed_out is True
    assert result.exit_code is None
    assert result.stdout == b"started\n"
    assert result.stderr == b"warming\n"
    assert 1000 <= result.duration_ms < 10_000
    time.sleep(1.5)  # the background child would have touched ~/late by now, had it survived
    assert _run(sandbox, "echo still usable; ls ~/late 2>/dev/null || echo no-late-file").stdout == (
        b"still usable\nno-late-file\n"
    )


def test_background_process_does_not_outlive_its_command(sandbox: Sandbox) -> None:
    result = _run(sandbox, "(sleep 1; touch ~/late) > /dev/null 2>&1 & echo launched")

    assert result.exit_code == 0
    assert result.stdout == b"launched\n"
    assert result.duration_ms < 1000
    time.sleep(1.5)
    assert _run(sandbox, "ls ~/late 2>/dev/null || echo no-late-file").stdout == b"no-late-file\n"


# --- lifecycle and isolation ---


def test_kill_then_connect_raises_gone_and_kill_is_idempotent(provider: SandboxProvider, sandbox: Sandbox) -> None:
    sandbox.write_file("work.txt", b"data")

    assert provider.kill(sandbox.sandbox_id) is True
    assert provider.kill(sandbox.sandbox_id) is False
    with pytest.raises(SandboxGone):
        provider.connect(sandbox.sandbox_id)


def test_two_sandboxes_cannot_see_each_others_files(make_sandbox: Callable[[], Sandbox]) -> None:
    first, second = make_sandbox(), make_sandbox()
    first.write_file("mine.txt", b"first's data")

    from_second = _run(second, "cat ~/mine.txt; ls ~")

    assert b"first's data" not in from_second.stdout
    assert from_second.stdout == b""
    with pytest.raises(FileNotFoundError):
        second.read_file("mine.txt")
