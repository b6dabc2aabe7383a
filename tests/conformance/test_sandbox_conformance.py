"""What every sandbox backend promises (``sandcastle.sandbox.base``), checked against each of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from sandcastle.errors import ProcessNotFound, SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, ProcessOutput, Sandbox, SandboxProvider


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


def test_a_background_child_outlives_its_command_as_on_a_machine(sandbox: Sandbox) -> None:
    result = _run(sandbox, "(sleep 1; touch ~/late) > /dev/null 2>&1 & echo launched")

    assert result.exit_code == 0
    assert result.stdout == b"launched\n"
    assert result.duration_ms < 1000
    _wait_for(lambda: _run(sandbox, "ls ~/late 2>/dev/null || echo no-late-file").stdout == b"/home/user/late\n")


def test_tmp_belongs_to_the_sandbox_not_to_one_command(sandbox: Sandbox) -> None:
    _run(sandbox, "echo kept > /tmp/between-commands")

    assert _run(sandbox, "cat /tmp/between-commands").stdout == b"kept\n"


def test_the_sandbox_user_is_user_and_owns_the_files_it_writes(sandbox: Sandbox) -> None:
    sandbox.write_file("by_tool.txt", b"x")

    result = _run(sandbox, "whoami; touch by_command.txt; stat -c %U by_tool.txt by_command.txt")

    assert result.stdout == b"user\nuser\nuser\n", result.stderr


# --- background processes (the Sandbox port) ---


def test_a_background_server_answers_a_later_command_on_localhost(sandbox: Sandbox) -> None:
    sandbox.write_file("site/index.html", b"served\n")

    server = sandbox.start_process("python3 -m http.server 8765", cwd="site")
    fetched = _run(
        sandbox,
        "for i in $(seq 100); do curl -sf http://127.0.0.1:8765/index.html && exit 0; sleep 0.1; done; exit 1",
    )

    assert fetched.stdout == b"served\n", fetched.stderr
    assert server in sandbox.list_processes()
    _wait_for(lambda: b"GET /index.html" in sandbox.process_output(server).stderr)
    assert sandbox.kill_process(server) is True
    ended = sandbox.process_output(server)
    assert (ended.running, ended.exit_code) == (False, 137)
    assert server not in sandbox.list_processes()
    assert sandbox.kill_process(server) is False  # it was no longer running


def test_process_output_returns_what_is_new_then_the_exit_code(provider: SandboxProvider, sandbox: Sandbox) -> None:
    process_id = sandbox.start_process("echo one; sleep 1; echo two >&2; exit 4")

    _wait_for(lambda: sandbox.process_output(process_id).stdout == b"one\n")
    ended = _until(lambda: provider.connect(sandbox.sandbox_id).process_output(process_id), lambda out: not out.running)

    assert (ended.stdout, ended.stderr, ended.exit_code) == (b"", b"two\n", 4)


def test_write_stdin_reaches_a_background_process(sandbox: Sandbox) -> None:
    process_id = sandbox.start_process("read name; echo hello $name")

    sandbox.write_stdin(process_id, b"sandbox\n")
    ended = _until(lambda: sandbox.process_output(process_id), lambda out: not out.running)

    assert (ended.stdout, ended.exit_code) == (b"hello sandbox\n", 0)
    with pytest.raises(ProcessNotFound):
        sandbox.write_stdin(process_id, b"again\n")


def test_an_unknown_process_id_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(ProcessNotFound):
        sandbox.process_output("proc-0123456789ab")
    with pytest.raises(ProcessNotFound):
        sandbox.process_output("../../etc/passwd")


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def _until(read: Callable[[], ProcessOutput], done: Callable[[ProcessOutput], bool]) -> ProcessOutput:
    """Read until ``done``, concatenating what each read returned (each read returns only what is new)."""
    stdout, stderr = b"", b""
    deadline = time.monotonic() + 20
    while True:
        seen = read()
        stdout, stderr = stdout + seen.stdout, stderr + seen.stderr
        if done(seen):
            return ProcessOutput(seen.process_id, stdout, stderr, seen.running, seen.exit_code)
        assert time.monotonic() < deadline, "the process did not end in time"
        time.sleep(0.1)


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
