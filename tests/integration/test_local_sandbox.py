"""The local (bubblewrap) sandbox, against the real ``bwrap``: its hardening, limits and host-side details.

What every backend promises is in ``tests/conformance``; this file keeps what only the local
backend does: each test makes a real attempt to break out or exhaust the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from sandcastle.config import Settings
from sandcastle.errors import DiskQuotaExceeded, SandboxError, SandboxGone
from sandcastle.sandbox import build_sandbox_provider, local_init
from sandcastle.sandbox.base import CommandResult, SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider, SandboxLimits

pytestmark = pytest.mark.bwrap


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Iterator[Path]:
    """Where the test's sandboxes live; every one left is killed afterwards (its workspace is a mount)."""
    root = tmp_path / "sandboxes"
    yield root
    cleaner = LocalSandboxProvider(root)
    for sandbox_dir in root.glob("lsb-*"):
        cleaner.kill(sandbox_dir.name)


@pytest.fixture
def provider(sandbox_root: Path) -> LocalSandboxProvider:
    return LocalSandboxProvider(sandbox_root)


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


# --- identity, privileges and environment ---


def test_command_runs_unprivileged_without_capabilities_or_the_hosts_environment(
    sandbox: LocalSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDCASTLE_HOST_ONLY", "leaked")

    result = _run(
        sandbox,
        'id -u; id -G; pwd; echo "$HOME|$LANG|${SANDCASTLE_HOST_ONLY:-unset}"; '
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status",
    )

    uid, groups, cwd, env, *status = result.stdout.decode().splitlines()
    assert uid != "0" and "0" not in groups.split()
    assert (cwd, env) == ("/home/user", "/home/user|C.UTF-8|unset")
    assert dict(line.split(":\t") for line in status) == {
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapBnd": "0000000000000000",
        "NoNewPrivs": "1",
    }


def test_missing_cwd_is_a_failed_command(sandbox: LocalSandbox) -> None:
    result = _run(sandbox, "pwd", cwd="no/such/dir")

    assert result.exit_code != 0
    assert b"no/such/dir" in result.stderr


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


# --- isolation: network and host files ---


def test_no_network_not_even_to_services_on_the_host(sandbox: LocalSandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the host itself can reach the server

        to_host_service = _run(sandbox, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")

    # No route exists in the sandbox's network namespace: this fails at once, nothing leaves the host.
    outside = _run(sandbox, "exec 3<>/dev/tcp/1.1.1.1/53 && echo connected", timeout_s=10)
    interfaces = _run(sandbox, "cat /proc/net/dev")

    assert to_host_service.exit_code != 0 and b"connected" not in to_host_service.stdout
    assert b"Connection refused" in to_host_service.stderr
    assert outside.exit_code != 0 and b"connected" not in outside.stdout
    assert b"Network is unreachable" in outside.stderr
    assert outside.duration_ms < 2000
    assert [line.split(b":")[0].strip() for line in interfaces.stdout.splitlines()[2:]] == [b"lo"]


def test_writing_outside_the_workspace_fails(sandbox: LocalSandbox) -> None:
    marker = f"sandcastle-was-here-{uuid.uuid4().hex}"
    targets = ["/", "/usr", "/etc", "/work", "/home"]

    results = {target: _run(sandbox, f"echo x > {target}/{marker}") for target in targets}

    for target, result in results.items():
        assert result.exit_code != 0, target
        assert not Path(target, marker).exists(), target
    assert b"Read-only file system" in results["/usr"].stderr
    assert b"Read-only file system" in results["/etc"].stderr
    assert _run(sandbox, f"echo x > /tmp/{marker} && cat /tmp/{marker}").stdout == b"x\n"  # its own /tmp
    assert not Path("/tmp", marker).exists()


def test_host_files_outside_the_workspace_cannot_be_read(sandbox: LocalSandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("tmp secret")
    readable_to_all = [outside, Path("/etc/shadow")]
    root_secret = Path("/root", f".sandcastle-test-secret-{uuid.uuid4().hex}")
    if os.geteuid() == 0:
        root_secret.write_text("root secret")
        readable_to_all.append(root_secret)
    try:
        results = {path: _run(sandbox, f"cat {path}") for path in readable_to_all}
    finally:
        root_secret.unlink(missing_ok=True)

    for path, result in results.items():
        assert result.exit_code != 0 and result.stdout == b"", path
    assert b"No such file or directory" in results[outside].stderr
    assert b"Permission denied" in results[Path("/etc/shadow")].stderr


# --- limits ---


def _host_process_count() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


@pytest.mark.parametrize("use_cgroups", [True, False], ids=["cgroup-or-rlimit", "rlimit-only"])
def test_a_fork_bomb_is_contained_and_the_host_stays_usable(sandbox_root: Path, use_cgroups: bool) -> None:
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(max_processes=64), use_cgroups=use_cgroups)
    sandbox = provider.create(SandboxSpec(run_id="run-bomb", tenant="acme", timeout_s=600))
    before = _host_process_count()
    outcome: list[CommandResult] = []
    # The trailing sleep keeps the command (and so its PID namespace) alive while the bomb forks.
    bomb = threading.Thread(target=lambda: outcome.append(_run(sandbox, ":(){ :|:& };:; sleep 30", timeout_s=3)))

    bomb.start()
    time.sleep(1)
    started = time.monotonic()
    subprocess.run(["true"], check=True)
    spawn_s = time.monotonic() - started
    bomb.join(timeout=20)

    assert not bomb.is_alive() and outcome[0].timed_out
    assert b"Resource temporarily unavailable" in outcome[0].stderr  # the process limit bit
    assert spawn_s < 0.5
    deadline = time.monotonic() + 5
    while _host_process_count() > before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_process_count() <= before + 5
    assert _run(sandbox, "echo survived").stdout == b"survived\n"
    provider.kill(sandbox.sandbox_id)


def test_a_memory_hog_gets_memory_error_and_the_sandbox_keeps_working(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(memory_mb=256))
    sandbox = provider.create(SandboxSpec(run_id="run-mem", tenant="acme", timeout_s=600))

    result = _run(sandbox, "python3 -c 'data = bytearray(1024 << 20)'")  # 4 x the limit

    assert result.exit_code != 0
    assert b"MemoryError" in result.stderr
    assert _run(sandbox, "echo still fine").stdout == b"still fine\n"


def test_memory_beyond_the_sandboxs_cgroup_is_oom_killed_with_a_readable_note_and_the_sandbox_lives_on(
    sandbox_root: Path,
) -> None:
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(memory_mb=256, file_size_mb=512))
    if provider.cgroups is None:
        pytest.skip("no writable memory+pids cgroup on this host: only the per-process rlimit applies")
    sandbox = provider.create(SandboxSpec(run_id="run-oom", tenant="acme", timeout_s=600))
    server = sandbox.start_process("exec sleep 600")

    # Each part fits under the per-process limit; together (tmpfs pages count too) they do not.
    result = _run(
        sandbox, "head -c 200M /dev/zero > /tmp/fill && exec python3 -c 'data = bytearray(150 << 20); print(1)'"
    )

    assert result.exit_code == 137
    assert b"killed: memory limit 256 MB exceeded" in result.stderr
    assert _run(sandbox, "echo still fine").stdout == b"still fine\n"
    assert sandbox.list_processes() == [server]  # the hog died, not the sandbox's other processes


def test_a_file_size_hog_is_stopped(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(file_size_mb=16))
    sandbox = provider.create(SandboxSpec(run_id="run-fsize", tenant="acme", timeout_s=600))

    in_home = _run(sandbox, "head -c 2G /dev/zero > big")
    in_tmp = _run(sandbox, "head -c 2G /dev/zero > /tmp/big")

    assert in_home.exit_code == 153
    assert b"killed: file size limit 16 MB exceeded" in in_home.stderr
    assert (sandbox.workspace / "big").stat().st_size == 16 << 20
    assert in_tmp.exit_code != 0


def test_a_cpu_hog_is_killed_at_the_cpu_time_limit(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(cpu_seconds=1))
    sandbox = provider.create(SandboxSpec(run_id="run-cpu", tenant="acme", timeout_s=600))

    result = _run(sandbox, "while :; do :; done", timeout_s=20)

    assert result.timed_out is False
    assert result.exit_code == 152
    assert b"killed: CPU time limit 1 s exceeded" in result.stderr
    assert result.duration_ms < 5000


def test_background_processes_live_until_the_sandbox_is_killed_and_then_none_survives(
    provider: LocalSandboxProvider, sandbox: LocalSandbox
) -> None:
    lives_on, timed_out_child = _unique_sleep_seconds(), _unique_sleep_seconds()

    finished = _run(sandbox, f"(sleep {lives_on}) > /dev/null 2>&1 & echo launched")
    timed_out = _run(sandbox, f"(sleep {timed_out_child}) & sleep {timed_out_child}", timeout_s=1)

    assert finished.stdout == b"launched\n" and timed_out.timed_out
    assert len(_host_processes_matching(f"sleep {lives_on}")) == 1  # a machine: it outlives its command
    assert _host_processes_matching(f"sleep {timed_out_child}") == []  # the timeout killed its process group
    assert b"sleep " + lives_on.encode() in _run(sandbox, "ps -eo args").stdout  # seen by later commands

    provider.kill(sandbox.sandbox_id)

    assert _host_processes_matching(f"sleep {lives_on}") == []
    assert sandbox.init_pid is None


def test_a_command_ends_when_its_shell_does_even_if_a_background_child_keeps_its_output_open(
    sandbox: LocalSandbox,
) -> None:
    seconds = _unique_sleep_seconds()

    result = _run(sandbox, f"sleep {seconds} & echo done", timeout_s=10)

    assert (result.timed_out, result.exit_code, result.stdout) == (False, 0, b"done\n")
    assert len(_host_processes_matching(f"sleep {seconds}")) == 1


def test_a_spawned_command_can_be_given_a_stdin_pipe(sandbox: LocalSandbox) -> None:
    process = sandbox.spawn(["/bin/cat"], stdin=True)

    process.stdin.write(b"fed through stdin\n")
    process.stdin.close()

    assert process.stdout.read() == b"fed through stdin\n"
    assert process.wait() == 0
    with pytest.raises(ValueError, match="started without stdin"):
        _ = sandbox.spawn(["/bin/true"]).stdin


def test_a_command_on_a_terminal_has_it_as_its_controlling_terminal(sandbox: LocalSandbox) -> None:
    master, slave = os.openpty()
    try:
        # /dev/tty opens only for a process with a controlling terminal (sh, unlike bash -i, takes none itself).
        process = sandbox.spawn(
            ["/bin/sh", "-c", "[ -t 0 ] && echo through-the-tty > /dev/tty; exit 5"], terminal=slave
        )
    finally:
        os.close(slave)
    exit_code = process.wait()
    output = bytearray()
    with suppress(OSError):  # EIO once the buffered output is read and no slave is left open
        while chunk := os.read(master, 4096):
            output += chunk
    os.close(master)

    assert (exit_code, bytes(output)) == (5, b"through-the-tty\r\n")
    with pytest.raises(ValueError, match="goes to its terminal"):
        _ = process.stdout
    with pytest.raises(ValueError, match="reads its input from it"):
        sandbox.spawn(["/bin/true"], stdin=True, terminal=0)


def test_a_command_whose_caller_went_away_is_killed(sandbox: LocalSandbox) -> None:
    seconds = _unique_sleep_seconds()
    process = sandbox.spawn(["/bin/sleep", seconds])
    _wait_for(lambda: bool(_host_processes_matching(f"sleep {seconds}")))

    process._connection.close()  # as when the host process that started it dies

    _wait_for(lambda: not _host_processes_matching(f"sleep {seconds}"))


def test_a_server_started_by_one_command_answers_the_next_on_localhost(sandbox: LocalSandbox) -> None:
    sandbox.write_file("site/index.html", b"hello from the sandbox\n")

    started = _run(sandbox, "cd site && (python3 -m http.server 8123 > /tmp/server.log 2>&1 &) && echo started")
    fetched = _run(
        sandbox,
        "for i in $(seq 50); do curl -sf http://127.0.0.1:8123/index.html && exit 0; sleep 0.1; done; exit 1",
    )

    assert started.stdout == b"started\n"
    assert fetched.exit_code == 0, fetched.stderr
    assert fetched.stdout == b"hello from the sandbox\n"
    assert b"GET /index.html" in _run(sandbox, "cat /tmp/server.log").stdout  # /tmp is the sandbox's, not the command's


def test_the_sandbox_user_is_called_user_and_owns_what_it_creates(sandbox: LocalSandbox) -> None:
    sandbox.write_file("from_tool.txt", b"x")

    result = _run(
        sandbox, "whoami; id -un; id -gn; echo ~; touch made; ls -ln made | cut -d' ' -f3; ls -l made from_tool.txt"
    )

    lines = result.stdout.decode().splitlines()
    assert lines[:4] == ["user", "user", "user", "/home/user"]
    assert all(line.split()[2:4] == ["user", "user"] for line in lines[5:7]), lines
    assert (sandbox.workspace / "made").stat().st_uid == (65534 if os.geteuid() == 0 else os.getuid())


def test_pause_freezes_every_process_and_resume_continues_them(
    provider: LocalSandboxProvider, sandbox: LocalSandbox
) -> None:
    counter = sandbox.start_process("i=0; while :; do i=$((i+1)); echo $i > ~/count; sleep 0.05; done")
    _wait_for(lambda: sandbox.workspace.joinpath("count").exists())

    sandbox.pause()
    frozen_at = sandbox.workspace.joinpath("count").read_text()
    time.sleep(0.5)
    still = sandbox.workspace.joinpath("count").read_text()
    with pytest.raises(SandboxError, match="is paused; resume it"):
        _run(sandbox, "true")
    resumed = provider.connect(sandbox.sandbox_id)  # connecting resumes, as on E2B

    assert still == frozen_at
    _wait_for(lambda: sandbox.workspace.joinpath("count").read_text() != frozen_at)
    assert sandbox.paused is False and counter in resumed.list_processes()
    assert _run(resumed, "echo after").stdout == b"after\n"


def test_pause_without_a_freezer_stops_every_process_of_the_sandbox(sandbox_root: Path) -> None:
    provider = LocalSandboxProvider(sandbox_root, use_cgroups=False)
    sandbox = provider.create(SandboxSpec(run_id="run-stop", tenant="acme", timeout_s=600))
    sandbox.start_process("while :; do date +%s%N > ~/tick; sleep 0.05; done")
    _wait_for(lambda: sandbox.workspace.joinpath("tick").exists())

    sandbox.pause()
    frozen_at = sandbox.workspace.joinpath("tick").read_text()
    time.sleep(0.5)
    still = sandbox.workspace.joinpath("tick").read_text()
    sandbox.resume()

    assert still == frozen_at
    _wait_for(lambda: sandbox.workspace.joinpath("tick").read_text() != frozen_at)
    provider.kill(sandbox.sandbox_id)


def test_a_sandbox_made_on_a_thread_that_has_ended_keeps_running(provider: LocalSandboxProvider) -> None:
    made: list[LocalSandbox] = []
    maker = threading.Thread(target=lambda: made.append(provider.create(SandboxSpec("run-t", "acme", 600))))
    maker.start()
    maker.join()
    init_pid = made[0].init_pid
    time.sleep(0.2)  # bwrap --die-with-parent fires when the thread that started it ends

    assert made[0].init_pid == init_pid is not None
    assert _run(made[0], "echo alive").stdout == b"alive\n"
    provider.kill(made[0].sandbox_id)


def test_a_killed_init_is_started_again_and_the_workspace_is_kept(sandbox: LocalSandbox) -> None:
    sandbox.write_file("kept.txt", b"kept")

    died = _run(sandbox, "kill -KILL $PPID; sleep 5")  # the init is every command's parent

    assert died.exit_code == 137 and b"the sandbox's init ended" in died.stderr
    assert _run(sandbox, "cat kept.txt").stdout == b"kept"


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_limits_and_uid_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        sandbox_backend="local",
        sandbox_root=tmp_path,
        sandbox_cpu_seconds=7,
        sandbox_memory_mb=300,
        sandbox_file_size_mb=30,
        sandbox_max_processes=40,
        sandbox_uid=12345,
        sandbox_disk_quota_mb=48,
        sandbox_mount_root=Path(f"/run/sandcastle-test-{uuid.uuid4().hex}"),  # its ancestors are searchable
    )

    provider = build_sandbox_provider(settings)

    assert isinstance(provider, LocalSandboxProvider)
    assert provider.limits == SandboxLimits(cpu_seconds=7, memory_mb=300, file_size_mb=30, max_processes=40)
    assert provider.sandbox_uid == (12345 if os.geteuid() == 0 else None)
    if os.geteuid() == 0:
        sandbox = provider.create(SandboxSpec(run_id="run-q", tenant="acme", timeout_s=60))
        try:
            assert sandbox.disk_quota_mb == 48
            assert sandbox.workspace.parent.parent == settings.sandbox_mount_root
            assert _run(sandbox, "id -u").stdout == b"12345\n"
        finally:
            provider.kill(sandbox.sandbox_id)
            settings.sandbox_mount_root.rmdir()


# --- run options: envs, keep-alive, idempotent create ---


def test_spec_envs_apply_to_every_command_and_survive_reconnects(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create(SandboxSpec(run_id="run-env", tenant="acme", timeout_s=600, envs={"TZ": "UTC"}))

    reconnected = provider.connect(sandbox.sandbox_id)

    assert _run(sandbox, 'echo "$TZ"').stdout == b"UTC\n"
    assert _run(reconnected, 'echo "$TZ/$EXTRA"', env={"EXTRA": "x"}).stdout == b"UTC/x\n"
    assert _run(reconnected, 'echo "$TZ"', env={"TZ": "Europe/Paris"}).stdout == b"Europe/Paris\n"


def test_connect_with_keep_alive_extends_the_expiry(provider: LocalSandboxProvider) -> None:
    sandbox = provider.create(SandboxSpec(run_id="run-keep", tenant="acme", timeout_s=1))

    provider.connect(sandbox.sandbox_id, keep_alive_s=600)
    time.sleep(1.1)

    assert _run(provider.connect(sandbox.sandbox_id), "echo alive").stdout == b"alive\n"


def test_create_with_the_same_idempotency_key_returns_the_same_sandbox(provider: LocalSandboxProvider) -> None:
    spec = SandboxSpec(run_id="run-idem", tenant="acme", timeout_s=600, idempotency_key="run-idem")

    first, again = provider.create(spec), provider.create(spec)
    provider.kill(first.sandbox_id)
    after_kill = provider.create(spec)

    assert again.sandbox_id == first.sandbox_id
    assert after_kill.sandbox_id != first.sandbox_id
    provider.kill(after_kill.sandbox_id)
    assert list(provider.root.iterdir()) == []


def test_internet_access_is_refused_by_the_local_backend(provider: LocalSandboxProvider) -> None:
    with pytest.raises(SandboxError, match="no network; use sandbox_backend=e2b"):
        provider.create(SandboxSpec(run_id="run-net", tenant="acme", timeout_s=60, allow_internet_access=True))


# --- files: symlinks (the local backend resolves paths on the host) ---


def test_symlinks_inside_the_workspace_are_followed(sandbox: LocalSandbox) -> None:
    _run(sandbox, "mkdir real && echo linked > real/target.txt && ln -s real alias && ln -s /home/user/real abs")

    assert sandbox.read_file("alias/target.txt") == b"linked\n"
    assert sandbox.read_file("abs/target.txt") == b"linked\n"
    sandbox.write_file("abs/written.txt", b"via absolute link")
    assert _run(sandbox, "cat real/written.txt").stdout == b"via absolute link"


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
    assert sandbox.workspace == provider.workspace_of(sandbox.sandbox_id)
    assert sandbox.workspace.stat().st_mode & 0o777 == 0o700
    assert '"run_id": "run-9"' in meta and '"tenant": "acme"' in meta and '"purpose": "test"' in meta
    assert "expires_at" in meta
    provider.kill(sandbox.sandbox_id)


def test_kill_removes_the_directory_and_the_old_handle_is_gone(
    provider: LocalSandboxProvider, sandbox: LocalSandbox
) -> None:
    sandbox.write_file("work.txt", b"data")

    provider.kill(sandbox.sandbox_id)

    assert not (provider.root / sandbox.sandbox_id).exists()
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


def test_a_missing_system_python_for_the_init_is_reported_at_create(
    provider: LocalSandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        "sandcastle.sandbox.local_sandbox.shutil.which",
        lambda name, path=None: None if name == "python3" else real_which(name, path=path),
    )

    with pytest.raises(SandboxError, match="init runs on the system's python3, which is missing"):
        provider.create(SandboxSpec(run_id="run-1", tenant="acme", timeout_s=60))


def test_missing_bwrap_is_reported_at_create(
    provider: LocalSandboxProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(SandboxError, match=r"bubblewrap \(bwrap\) is not installed; run `make setup`"):
        provider.create(SandboxSpec(run_id="run-1", tenant="acme", timeout_s=60))


# --- privilege: nothing a tool call sets runs with privilege, and nothing inside is host root ---

_PLANTED_HELPER = """#!/bin/sh
{ echo "uid $(id -u)"; grep CapEff /proc/self/status; } > "/home/user/ran-$(basename "$0")-$$"
exec "/usr/bin/$(basename "$0")" "$@"
"""

_PLANTED_LIBRARY = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    char path[64], line[256], comm[64] = "";
    FILE *name = fopen("/proc/self/comm", "r");
    if (name) { fgets(comm, sizeof comm, name); fclose(name); comm[strcspn(comm, "\n")] = 0; }
    snprintf(path, sizeof path, "/home/user/ran-preload-%s-%d", comm, (int)getpid());
    FILE *out = fopen(path, "w"), *status = fopen("/proc/self/status", "r");
    if (!out || !status) return;
    fprintf(out, "uid %d\n", (int)geteuid());
    while (fgets(line, sizeof line, status)) if (!strncmp(line, "CapEff:", 7)) fputs(line, out);
    fclose(out);
    fclose(status);
}
"""


def test_planted_helpers_and_loader_variables_never_run_with_privilege(sandbox: LocalSandbox) -> None:
    sandbox.write_file("planted.c", _PLANTED_LIBRARY.encode())
    helpers = ["setpriv", "prlimit", "env", "bash", "sh", "timeout", "bwrap"]
    for helper in helpers:
        sandbox.write_file(f"bin/{helper}", _PLANTED_HELPER.encode())
    built = _run(sandbox, "chmod +x bin/* && gcc -shared -fPIC -o planted.so planted.c", timeout_s=60)
    assert built.exit_code == 0, built.stderr
    sandbox.write_file("bash_env.sh", b'echo "uid $(id -u)" > /home/user/ran-bash-env-$$\n')
    hostile = {
        "PATH": "/home/user/bin:/usr/bin:/bin",
        "LD_PRELOAD": "/home/user/planted.so",
        "BASH_ENV": "/home/user/bash_env.sh",
        "ENV": "/home/user/bash_env.sh",
    }

    result = _run(sandbox, "true", env=hostile)

    assert result.exit_code == 0, result.stderr
    markers = {path.name: path.read_text() for path in sandbox.workspace.glob("ran-*")}
    assert markers, "the final command itself runs with the caller's variables"
    for name, content in markers.items():
        assert "uid 0\n" not in content, (name, content)
        assert "CapEff:\t0000000000000000" in content or "CapEff" not in content, (name, content)
    helpers_that_ran = [name for name in markers if name.split("-")[1 if "preload" not in name else 2] in helpers[:3]]
    assert helpers_that_ran == []  # the caller's variables reach the final command only


@pytest.mark.skipif(os.geteuid() != 0, reason="as a non-root user the sandbox runs as that user")
def test_seen_from_the_host_a_command_is_the_sandbox_uid_in_a_user_namespace_of_its_own(
    sandbox: LocalSandbox,
) -> None:
    seconds = _unique_sleep_seconds()
    runner = threading.Thread(target=_run, args=(sandbox, f"sleep {seconds}"), kwargs={"timeout_s": 60})
    runner.start()
    try:
        deadline = time.monotonic() + 10
        found: list[str] = []
        while not found and time.monotonic() < deadline:
            found = [line for line in _host_processes_matching(f"sleep {seconds}") if line.split()[1] == "sleep"]
            time.sleep(0.05)
        pid = found[0].split()[0]
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
        user_ns = os.readlink(f"/proc/{pid}/ns/user")
    finally:
        if found:
            os.kill(int(found[0].split()[0]), signal.SIGKILL)
        runner.join(timeout=30)

    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].split() == []
    assert uid_map == ["65534", "65534", "1"]  # only the sandbox uid exists in there; host root does not
    assert user_ns != os.readlink("/proc/self/ns/user")


_SYSCALL_PROBE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
machine = os.uname().machine
numbers = {
    "x86_64": {"setns": 308, "umount2": 166, "mount": 165, "settimeofday": 164, "clock_settime": 227, "clone3": 435},
    "aarch64": {"setns": 268, "umount2": 39, "mount": 40, "settimeofday": 170, "clock_settime": 112, "clone3": 435},
}[machine]
class timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]
class timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
# Arguments the kernel would reject with another errno (EBADF, EINVAL, ENOENT) were the call let through.
calls = {
    "setns": (-1, 0),
    "umount2": (b"/home/user", 0x7FFF0000),
    "mount": (b"none", b"/no/such/dir", b"tmpfs", 0, None),
    "settimeofday": (ctypes.byref(timeval(0, 5_000_000)), None),
    "clock_settime": (1, ctypes.byref(timespec(0, 0))),
    "clone3": (None, 0),
}
for name, args in calls.items():
    ctypes.set_errno(0)
    libc.syscall(numbers[name], *args)
    print(name, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
"""


def test_namespaces_mounts_devices_and_the_clock_are_refused_inside(sandbox: LocalSandbox) -> None:
    sandbox.write_file("probe.py", _SYSCALL_PROBE.encode())

    new_userns = _run(sandbox, "unshare -U -r id -u")
    nested_mount = _run(sandbox, "unshare -U -r --mount mount -t tmpfs none /tmp")
    mount = _run(sandbox, "mount -t tmpfs none /tmp")
    mknod = _run(sandbox, "mknod ~/zero c 1 5")
    set_clock = _run(sandbox, "date -s '2001-01-01 00:00:00'")
    probe = _run(sandbox, "python3 probe.py")
    threads_still_work = _run(
        sandbox, "python3 -c 'import threading; t = threading.Thread(target=print, args=(7,)); t.start()'"
    )

    assert new_userns.exit_code != 0 and b"Operation not permitted" in new_userns.stderr, new_userns
    assert nested_mount.exit_code != 0 and b"Operation not permitted" in nested_mount.stderr, nested_mount
    assert mount.exit_code != 0
    assert mknod.exit_code != 0 and b"Operation not permitted" in mknod.stderr
    assert set_clock.exit_code != 0 and b"Operation not permitted" in set_clock.stderr
    assert dict(line.split() for line in probe.stdout.decode().splitlines()) == {
        "setns": "EPERM",
        "umount2": "EPERM",
        "mount": "EPERM",
        "settimeofday": "EPERM",
        "clock_settime": "EPERM",
        "clone3": "ENOSYS",  # so the C library falls back to clone, whose flags the filter reads
    }, probe.stderr
    assert threads_still_work.stdout == b"7\n"


def test_the_host_environment_never_reaches_the_init_or_its_commands(
    provider: LocalSandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDCASTLE_HOST_SECRET", "do-not-leak")
    sandbox = provider.create(SandboxSpec(run_id="run-env", tenant="acme", timeout_s=600))
    seconds = _unique_sleep_seconds()
    process = sandbox.spawn(["/bin/sleep", seconds])
    try:
        _wait_for(lambda: bool(_host_processes_matching(f"sleep {seconds}")))
        assert sandbox.init_pid is not None
        pids = local_init.descendants(sandbox.init_pid)
        environs = [Path(f"/proc/{pid}/environ").read_bytes() for pid in pids]
    finally:
        process.kill()
        process.wait()

    assert len(pids) >= 4  # bwrap, bwrap's pid 1, the init, the command
    assert all(b"do-not-leak" not in environ for environ in environs)


@pytest.mark.skipif(os.geteuid() != 0, reason="as a non-root user there is no disk quota to get around")
def test_the_inits_host_side_log_cannot_be_written_from_inside(sandbox: LocalSandbox) -> None:
    # The init's stdout/stderr is a file of the host (outside the quota'd workspace), reachable by
    # path through /proc/<pid>/fd; it is root's, so the sandbox cannot grow it.
    result = _run(sandbox, "for fd in /proc/[12]/fd/[12]; do echo grown >> $fd && echo wrote $fd; done")

    assert b"wrote" not in result.stdout
    assert b"Permission denied" in result.stderr


# --- disk quota ---


@pytest.fixture
def small_quota_sandbox(sandbox_root: Path) -> LocalSandbox:
    if os.geteuid() != 0:
        pytest.skip("a disk quota needs root (a mounted workspace filesystem)")
    provider = LocalSandboxProvider(sandbox_root, SandboxLimits(file_size_mb=512), disk_quota_mb=32)
    return provider.create(SandboxSpec(run_id="run-disk", tenant="acme", timeout_s=600))


def test_a_disk_hog_fills_only_its_quota_and_is_told_why(small_quota_sandbox: LocalSandbox) -> None:
    sandbox = small_quota_sandbox

    hog = _run(sandbox, "head -c 200M /dev/zero > big")

    assert hog.exit_code != 0
    assert b"No space left on device" in hog.stderr
    assert b"disk quota exceeded: the workspace /home/user is full (its quota is 32 MB)" in hog.stderr
    assert (sandbox.workspace / "big").stat().st_size <= 32 << 20
    with pytest.raises(DiskQuotaExceeded, match="disk quota exceeded"):
        sandbox.write_file("more.bin", b"x" * (1 << 20))
    assert _run(sandbox, "rm big && echo freed > note && cat note").stdout == b"freed\n"
    sandbox.write_file("more.bin", b"x" * (1 << 20))


def test_kill_and_the_reapers_listing_unmount_workspace_filesystems(sandbox_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("workspaces are mounted only when root")
    provider = LocalSandboxProvider(sandbox_root, disk_quota_mb=16)
    killed = provider.create(SandboxSpec(run_id="run-a", tenant="acme", timeout_s=600))
    deleted = provider.create(SandboxSpec(run_id="run-b", tenant="acme", timeout_s=600))
    portals = {sandbox.sandbox_id: sandbox.workspace.parent for sandbox in (killed, deleted)}
    assert all(_is_mounted(portal) for portal in portals.values())

    provider.kill(killed.sandbox_id)
    shutil.rmtree(provider.root / deleted.sandbox_id)  # deleted by hand, never killed
    provider.list_sandboxes()

    assert not any(_is_mounted(portal) or portal.exists() for portal in portals.values())


def _is_mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


# --- files: FIFOs and devices ---


def test_reading_or_writing_a_fifo_is_refused_at_once(sandbox: LocalSandbox) -> None:
    _run(sandbox, "mkfifo pipe && ln -s pipe pipe_link")
    outcome: list[BaseException] = []

    def touch_fifo() -> None:
        for attempt in (lambda: sandbox.read_file("pipe"), lambda: sandbox.write_file("pipe_link", b"x")):
            try:
                attempt()
            except ValueError as error:
                outcome.append(error)

    worker = threading.Thread(target=touch_fifo, daemon=True)
    worker.start()
    worker.join(timeout=30)

    assert not worker.is_alive(), "a file operation on a FIFO hung"
    assert [str(error) for error in outcome] == [
        "path 'pipe' is a FIFO, not a regular file; file tools read and write files",
        "path 'pipe_link' is a FIFO, not a regular file; file tools read and write files",
    ]


@pytest.mark.parametrize(
    ("mode", "owner", "message"),
    [(0o777, 0, "must not be writable by other users"), (0o711, 65534, "must be a directory owned by root")],
)
def test_a_mount_root_others_could_tamper_with_is_refused(
    sandbox_root: Path, tmp_path: Path, mode: int, owner: int, message: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("workspaces are mounted only when root")
    mount_root = tmp_path / "mounts"
    mount_root.mkdir()
    os.chmod(mount_root, mode)
    os.chown(mount_root, owner, owner)
    provider = LocalSandboxProvider(sandbox_root, mount_root=mount_root)

    with pytest.raises(SandboxError, match=message):
        provider.create(SandboxSpec(run_id="run-m", tenant="acme", timeout_s=60))
    assert list(sandbox_root.iterdir()) == []


def test_a_private_mount_root_is_opened_for_the_sandbox_uid_to_pass(sandbox_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("workspaces are mounted only when root")
    mount_root = Path(f"/run/sandcastle-test-{uuid.uuid4().hex}")  # its ancestors are searchable
    mount_root.mkdir(mode=0o700)
    provider = LocalSandboxProvider(sandbox_root, mount_root=mount_root, disk_quota_mb=16)
    try:
        sandbox = provider.create(SandboxSpec(run_id="run-p", tenant="acme", timeout_s=60))
        reached = _run(sandbox, "echo reachable")
        provider.kill(sandbox.sandbox_id)
    finally:
        mount_root.rmdir()

    assert reached.stdout == b"reachable\n", reached.stderr
