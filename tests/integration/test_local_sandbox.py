"""The local (bubblewrap) sandbox, against the real ``bwrap``: what a command can and cannot do."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandcastle.errors import SandboxError, SandboxGone
from sandcastle.sandbox.base import CommandResult, SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider

pytestmark = pytest.mark.bwrap


@pytest.fixture
def provider(tmp_path: Path) -> LocalSandboxProvider:
    return LocalSandboxProvider(tmp_path / "sandboxes")


@pytest.fixture
def sandbox(provider: LocalSandboxProvider):
    sandbox = provider.create(SandboxSpec(run_id="run-1", tenant="acme", timeout_s=600))
    yield sandbox
    provider.kill(sandbox.sandbox_id)


def _unique_sleep_seconds() -> str:
    """A sleep duration no other process on the host uses, so ``pgrep -f`` finds only ours."""
    return f"30.{uuid.uuid4().int % 10**8:08d}"


def _host_processes_matching(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def _run(sandbox: LocalSandbox, command: str, **kwargs) -> CommandResult:
    return sandbox.run(command, timeout_s=kwargs.pop("timeout_s", 20), **kwargs)


# --- commands ---


def test_exit_code_stdout_and_stderr_come_back_separately(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, "echo out; echo err >&2; exit 3")

    assert result == CommandResult(
        exit_code=3, stdout=b"out\n", stderr=b"err\n", duration_ms=result.duration_ms, timed_out=False
    )
    assert result.duration_ms > 0


def test_non_utf8_output_bytes_survive(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, r"printf '\377\376ok\200'; printf '\351' >&2")

    assert result.stdout == b"\xff\xfeok\x80"
    assert result.stderr == b"\xe9"


def test_command_runs_as_uid_1000_in_home_with_only_its_own_environment(
    sandbox: LocalSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDCASTLE_HOST_ONLY", "leaked")

    result = _run(sandbox, 'id -u; pwd; echo "$HOME|$LANG|${SANDCASTLE_HOST_ONLY:-unset}"')

    assert result.stdout.decode().splitlines() == ["1000", "/home/user", "/home/user|C.UTF-8|unset"]


def test_cwd_and_env_are_applied(sandbox: LocalSandbox) -> None:
    _run(sandbox, "mkdir -p project/src")

    relative = _run(sandbox, 'pwd; echo "$GREETING"', cwd="project", env={"GREETING": "hello there"})
    absolute = _run(sandbox, "pwd", cwd="/home/user/project/src")

    assert relative.stdout == b"/home/user/project\nhello there\n"
    assert absolute.stdout == b"/home/user/project/src\n"


def test_missing_cwd_is_a_failed_command(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, "pwd", cwd="no/such/dir")

    assert result.exit_code != 0
    assert b"no/such/dir" in result.stderr


def test_workspace_persists_across_commands_and_reconnects(
    provider: LocalSandboxProvider, sandbox: LocalSandbox
) -> None:
    _run(sandbox, "echo 'first command' > notes.txt")

    assert _run(sandbox, "cat ~/notes.txt").stdout == b"first command\n"
    reconnected = provider.connect(sandbox.sandbox_id)
    assert reconnected.read_file("notes.txt") == b"first command\n"
    assert _run(reconnected, "cat notes.txt").stdout == b"first command\n"


def test_concurrent_commands_from_threads_share_one_sandbox(sandbox: LocalSandbox) -> None:
    results: dict[int, CommandResult] = {}

    def run_numbered(number: int) -> None:
        results[number] = _run(sandbox, f"echo {number} > file{number}; sleep 0.5; cat file{number}")

    threads = [threading.Thread(target=run_numbered, args=(number,)) for number in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {number: result.stdout for number, result in results.items()} == {
        number: f"{number}\n".encode() for number in range(4)
    }
    assert time.monotonic() - started < 4 * 0.5 + 1.5
    assert sorted(_run(sandbox, "ls").stdout.split()) == [b"file0", b"file1", b"file2", b"file3"]


# --- timeouts and process lifetime ---


def test_timeout_kills_the_tree_and_keeps_partial_output(sandbox: LocalSandbox) -> None:
    seconds = _unique_sleep_seconds()

    result = _run(sandbox, f"echo started; echo warming >&2; (sleep {seconds}) & sleep {seconds}", timeout_s=1)

    assert result.timed_out is True
    assert result.exit_code is None
    assert result.stdout == b"started\n"
    assert result.stderr == b"warming\n"
    assert 1000 <= result.duration_ms < 5000
    assert _host_processes_matching(f"sleep {seconds}") == []
    assert _run(sandbox, "echo still usable").stdout == b"still usable\n"


def test_background_process_does_not_outlive_its_command(sandbox: LocalSandbox) -> None:
    seconds = _unique_sleep_seconds()

    result = _run(sandbox, f"(sleep {seconds}; touch ~/late) & echo launched")

    assert result.exit_code == 0
    assert result.stdout == b"launched\n"
    assert result.duration_ms < 5000
    assert _host_processes_matching(f"sleep {seconds}") == []
    assert _run(sandbox, "pgrep -c sleep || true").stdout == b"0\n"


# --- isolation ---


def test_no_network_not_even_to_services_on_the_host(sandbox: LocalSandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the host itself can reach the server

        to_host_service = _run(sandbox, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")

    outside = _run(sandbox, "exec 3<>/dev/tcp/1.1.1.1/53 && echo connected", timeout_s=10)
    dns = _run(sandbox, "getent hosts example.com", timeout_s=10)
    interfaces = _run(sandbox, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")

    assert to_host_service.exit_code != 0 and b"connected" not in to_host_service.stdout
    assert outside.exit_code != 0 and b"connected" not in outside.stdout
    assert dns.exit_code != 0 and dns.stdout == b""
    assert b"eth" not in interfaces.stdout


def test_host_files_are_invisible(sandbox: LocalSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("host secret")

    result = _run(sandbox, f"cat {secret}; ls /work; ls /root; ls {tmp_path}")

    assert b"host secret" not in result.stdout
    assert result.stdout == b""
    assert result.stderr.count(b"No such file or directory") == 4


def test_root_only_host_files_stay_unreadable(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, "cat /etc/shadow")

    assert result.exit_code != 0
    assert result.stdout == b""


def test_system_directories_are_read_only(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, "touch /usr/sandcastle-was-here; echo x > /etc/sandcastle-was-here")

    assert result.exit_code != 0
    assert result.stderr.count(b"Read-only file system") == 2
    assert not Path("/usr/sandcastle-was-here").exists()
    assert not Path("/etc/sandcastle-was-here").exists()


def test_two_sandboxes_cannot_see_each_others_files(provider: LocalSandboxProvider) -> None:
    first = provider.create(SandboxSpec(run_id="run-a", tenant="acme", timeout_s=600))
    second = provider.create(SandboxSpec(run_id="run-b", tenant="acme", timeout_s=600))
    try:
        first.write_file("mine.txt", b"first's data")

        from_second = _run(second, f"cat ~/mine.txt; ls /home; cat {first.workspace}/mine.txt")

        assert b"first's data" not in from_second.stdout
        assert from_second.stdout == b"user\n"
        with pytest.raises(FileNotFoundError):
            second.read_file("mine.txt")
    finally:
        provider.kill(first.sandbox_id)
        provider.kill(second.sandbox_id)


# --- files ---


def test_write_then_read_round_trips_binary_and_creates_parents(sandbox: LocalSandbox) -> None:
    payload = bytes(range(256)) * 4

    sandbox.write_file("deep/nested/dir/blob.bin", payload)
    sandbox.write_file("/home/user/readme.md", b"# hi\n")

    assert sandbox.read_file("/home/user/deep/nested/dir/blob.bin") == payload
    assert sandbox.read_file("readme.md") == b"# hi\n"
    assert _run(sandbox, "wc -c < deep/nested/dir/blob.bin").stdout == b"1024\n"


def test_sandbox_user_can_modify_files_the_host_wrote(sandbox: LocalSandbox) -> None:
    sandbox.write_file("data/input.txt", b"from host\n")

    result = _run(sandbox, "echo 'from sandbox' >> data/input.txt && touch data/new.txt && ls data")

    assert result.exit_code == 0
    assert result.stdout == b"input.txt\nnew.txt\n"
    assert sandbox.read_file("data/input.txt") == b"from host\nfrom sandbox\n"


def test_reading_a_missing_file_raises_file_not_found(sandbox: LocalSandbox) -> None:
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("nope.txt")
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("no/such/dir/nope.txt")


def test_symlinks_inside_the_workspace_are_followed(sandbox: LocalSandbox) -> None:
    _run(sandbox, "mkdir real && echo linked > real/target.txt && ln -s real alias && ln -s /home/user/real abs")

    assert sandbox.read_file("alias/target.txt") == b"linked\n"
    assert sandbox.read_file("abs/target.txt") == b"linked\n"
    sandbox.write_file("abs/written.txt", b"via absolute link")
    assert _run(sandbox, "cat real/written.txt").stdout == b"via absolute link"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "notes/../../outside", "/home/userx/f"])
def test_paths_outside_the_workspace_are_rejected(sandbox: LocalSandbox, path: str) -> None:
    with pytest.raises(ValueError, match="outside the sandbox workspace") as read_error:
        sandbox.read_file(path)
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.write_file(path, b"x")

    assert repr(path) in str(read_error.value)


def test_symlinks_planted_to_escape_are_rejected(sandbox: LocalSandbox, tmp_path: Path) -> None:
    host_secret = tmp_path / "host-secret.txt"
    host_secret.write_text("host secret")
    os.symlink(host_secret, sandbox.workspace / "host_link")
    _run(sandbox, "ln -s /etc/passwd passwd_link; ln -s /etc etc_dir; ln -s ../../../.. up; ln -s loop loop")

    for path in ["host_link", "passwd_link", "etc_dir/passwd", "up/etc/passwd"]:
        with pytest.raises(ValueError, match="outside the sandbox workspace"):
            sandbox.read_file(path)
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.write_file("etc_dir/sandcastle-was-here", b"x")
    with pytest.raises(ValueError, match="symbolic links"):
        sandbox.read_file("loop")
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.write_file("host_link", b"overwritten")
    assert host_secret.read_text() == "host secret"
    assert not Path("/etc/sandcastle-was-here").exists()


# --- lifecycle ---


def test_create_records_meta_and_a_private_workspace(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create(SandboxSpec(run_id="run-9", tenant="acme", timeout_s=600, metadata={"purpose": "test"}))

    sandbox_dir = provider.root / sandbox.sandbox_id
    meta = (sandbox_dir / "meta.json").read_text()
    assert sandbox.sandbox_id.startswith("lsb-")
    assert sandbox.workspace == sandbox_dir / "home"
    assert '"run_id": "run-9"' in meta and '"tenant": "acme"' in meta and '"purpose": "test"' in meta
    assert "expires_at" in meta
    provider.kill(sandbox.sandbox_id)


def test_kill_removes_the_sandbox_and_is_idempotent(provider: LocalSandboxProvider, sandbox: LocalSandbox) -> None:
    sandbox.write_file("work.txt", b"data")

    assert provider.kill(sandbox.sandbox_id) is True
    assert provider.kill(sandbox.sandbox_id) is False
    assert not (provider.root / sandbox.sandbox_id).exists()
    with pytest.raises(SandboxGone):
        provider.connect(sandbox.sandbox_id)
    with pytest.raises(SandboxGone):
        _run(sandbox, "true")
    with pytest.raises(SandboxGone):
        sandbox.read_file("work.txt")


def test_kill_ends_a_command_running_in_another_thread(provider: LocalSandboxProvider, sandbox: LocalSandbox) -> None:
    seconds = _unique_sleep_seconds()
    outcome: list[BaseException | CommandResult] = []

    def run_long_command() -> None:
        try:
            outcome.append(_run(sandbox, f"sleep {seconds}", timeout_s=60))
        except SandboxGone as gone:
            outcome.append(gone)

    runner = threading.Thread(target=run_long_command)
    runner.start()
    deadline = time.monotonic() + 10
    while not _host_processes_matching(f"sleep {seconds}") and time.monotonic() < deadline:
        time.sleep(0.05)

    assert provider.kill(sandbox.sandbox_id) is True
    runner.join(timeout=10)

    assert not runner.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxGone)
    assert _host_processes_matching(f"sleep {seconds}") == []


def test_connect_to_unknown_or_expired_sandbox_raises_gone(provider: LocalSandboxProvider) -> None:
    expired = provider.create(SandboxSpec(run_id="run-x", tenant="acme", timeout_s=0))

    with pytest.raises(SandboxGone, match="does not exist"):
        provider.connect("lsb-0000")
    with pytest.raises(SandboxGone, match="expired"):
        provider.connect(expired.sandbox_id)
    assert not (provider.root / expired.sandbox_id).exists()
    assert provider.kill("not-a-local-id/..") is False


def test_missing_bwrap_is_reported_at_create(
    provider: LocalSandboxProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(SandboxError, match=r"bubblewrap \(bwrap\) is not installed; run `make setup`"):
        provider.create(SandboxSpec(run_id="run-1", tenant="acme", timeout_s=60))
