"""The E2B backend against a fake at the SDK boundary that raises the SDK's real exceptions."""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from e2b import CommandExitException
from e2b import CommandResult as E2BCommandResult
from e2b import exceptions as e2b_errors

from sandcastle.config import Settings
from sandcastle.errors import DiskQuotaExceeded, SandboxError, SandboxGone, SandboxUnavailable
from sandcastle.sandbox import build_sandbox_provider
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.e2b_sandbox import E2BSandbox, E2BSandboxProvider
from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

API_KEY = "e2b_test_key_0123456789abcdef"
SPEC = SandboxSpec(run_id="run-42", tenant="acme", timeout_s=1020, metadata={"purpose": "unit"})


@dataclass
class ScriptedCommand:
    """What the fake sandbox does with the next command it is given."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    exit_code: int = 0
    takes_s: float = 0.0
    raises: Exception | None = None
    """Raised by ``wait`` after the output was streamed (e.g. the SDK's stream timeout)."""


class FakeCommandHandle:
    def __init__(self, pid: int, script: ScriptedCommand) -> None:
        self.pid = pid
        self._script = script

    def wait(self, on_stdout=None, on_stderr=None) -> E2BCommandResult:
        for chunk in self._script.stdout:
            on_stdout(chunk)
        for chunk in self._script.stderr:
            on_stderr(chunk)
        time.sleep(self._script.takes_s)
        stdout, stderr = "".join(self._script.stdout), "".join(self._script.stderr)
        if self._script.raises is not None:
            raise self._script.raises
        if self._script.exit_code != 0:
            raise CommandExitException(stdout=stdout, stderr=stderr, exit_code=self._script.exit_code, error=None)
        return E2BCommandResult(stdout=stdout, stderr=stderr, exit_code=0, error=None)


class FakeCommands:
    def __init__(self) -> None:
        self.scripts: deque[ScriptedCommand] = deque()
        self.started: list[dict[str, Any]] = []
        self.killed_pids: list[int] = []

    def run(self, cmd: str, background: bool = False, envs=None, cwd=None, timeout: float = 60):
        assert background is True, "the adapter needs the handle's pid to be able to kill it"
        self.started.append({"cmd": cmd, "envs": envs, "cwd": cwd, "timeout": timeout})
        return FakeCommandHandle(pid=100 + len(self.started), script=self.scripts.popleft())

    def kill(self, pid: int) -> bool:
        self.killed_pids.append(pid)
        return True


class FakeFiles:
    def __init__(self) -> None:
        self.contents: dict[str, bytes] = {}
        self.fail_with: Exception | None = None

    def write(self, path: str, data: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.contents[path] = data

    def read(self, path: str, format: str = "text") -> bytearray:
        assert format == "bytes"
        if path not in self.contents:
            raise e2b_errors.FileNotFoundException(f"path '{path}' does not exist")
        return bytearray(self.contents[path])


class FakeE2BSandbox:
    """Stands in for ``e2b.Sandbox``; each test gets a subclass with its own state."""

    live: ClassVar[dict[str, FakeE2BSandbox]]
    calls: ClassVar[list[tuple[str, dict[str, Any]]]]
    fail_next: ClassVar[Exception | None]

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.commands = FakeCommands()
        self.files = FakeFiles()
        self.timeouts: list[int] = []

    def set_timeout(self, timeout: int) -> None:
        self.timeouts.append(timeout)

    @classmethod
    def _record(cls, method: str, **kwargs: Any) -> None:
        cls.calls.append((method, kwargs))
        if cls.fail_next is not None:
            error, cls.fail_next = cls.fail_next, None
            raise error

    @classmethod
    def create(cls, **kwargs: Any) -> FakeE2BSandbox:
        cls._record("create", **kwargs)
        sandbox = cls(f"sbx-{len(cls.live) + 1}")
        cls.live[sandbox.sandbox_id] = sandbox
        return sandbox

    @classmethod
    def connect(cls, sandbox_id: str, **kwargs: Any) -> FakeE2BSandbox:
        cls._record("connect", sandbox_id=sandbox_id, **kwargs)
        if sandbox_id not in cls.live:
            raise e2b_errors.SandboxNotFoundException(f"sandbox {sandbox_id} not found")
        return cls.live[sandbox_id]

    @classmethod
    def kill(cls, sandbox_id: str, **kwargs: Any) -> bool:
        cls._record("kill", sandbox_id=sandbox_id, **kwargs)
        return cls.live.pop(sandbox_id, None) is not None


@pytest.fixture
def fake_e2b() -> type[FakeE2BSandbox]:
    class PerTestFakeE2BSandbox(FakeE2BSandbox):
        live = {}
        calls = []
        fail_next = None

    return PerTestFakeE2BSandbox


@pytest.fixture
def provider(fake_e2b: type[FakeE2BSandbox]) -> E2BSandboxProvider:
    return E2BSandboxProvider(API_KEY, "sandcastle-template", sandbox_factory=fake_e2b)


@pytest.fixture
def sandbox(provider: E2BSandboxProvider) -> E2BSandbox:
    return provider.create(SPEC)


def _fake_of(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> FakeE2BSandbox:
    return fake_e2b.live[sandbox.sandbox_id]


# --- lifecycle ---


def test_create_asks_for_an_offline_sandbox_tagged_with_the_run(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    sandbox = provider.create(SPEC)

    assert sandbox.sandbox_id == "sbx-1"
    assert fake_e2b.calls == [
        (
            "create",
            {
                "template": "sandcastle-template",
                "timeout": 1020,
                "metadata": {"purpose": "unit", "app": "sandcastle", "run_id": "run-42", "tenant": "acme"},
                "envs": None,
                "api_key": API_KEY,
                "allow_internet_access": False,
            },
        )
    ]


def test_create_passes_the_runs_sandbox_options_and_idempotency_key(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    spec = SandboxSpec(
        run_id="run-7",
        tenant="acme",
        timeout_s=300,
        template="python-data",
        allow_internet_access=True,
        envs={"TZ": "UTC"},
        idempotency_key="run-7",
    )
    provider.create(spec)

    call = fake_e2b.calls[0][1]
    assert call["template"] == "python-data" and call["allow_internet_access"] is True
    assert call["envs"] == {"TZ": "UTC"} and call["idempotency_key"] == "run-7"


def test_connect_with_keep_alive_resets_the_sandbox_timeout(
    provider: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    provider.connect(sandbox.sandbox_id, keep_alive_s=845)
    provider.connect(sandbox.sandbox_id)

    assert fake_e2b.live[sandbox.sandbox_id].timeouts == [845]


def test_run_metadata_cannot_override_the_tenant_tag(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    provider.create(SandboxSpec(run_id="run-1", tenant="acme", timeout_s=60, metadata={"tenant": "other"}))

    assert fake_e2b.calls[0][1]["metadata"]["tenant"] == "acme"


def test_connect_and_kill_use_the_api_key(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    provider = E2BSandboxProvider(API_KEY, "sandcastle-template", sandbox_factory=fake_e2b)  # another container's
    reconnected = provider.connect(sandbox.sandbox_id)

    assert reconnected.sandbox_id == sandbox.sandbox_id
    assert provider.kill(sandbox.sandbox_id) is True
    assert provider.kill(sandbox.sandbox_id) is False
    assert [call for call in fake_e2b.calls if call[0] != "create"] == [
        ("connect", {"sandbox_id": "sbx-1", "api_key": API_KEY}),
        ("kill", {"sandbox_id": "sbx-1", "api_key": API_KEY}),
        ("kill", {"sandbox_id": "sbx-1", "api_key": API_KEY}),
    ]


# --- a container keeps its connected sandboxes ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def container(fake_e2b: type[FakeE2BSandbox], clock: FakeClock) -> E2BSandboxProvider:
    """A provider of a container that did not create the sandbox (another Lambda's PrepareRun did)."""
    return E2BSandboxProvider(API_KEY, "sandcastle-template", sandbox_factory=fake_e2b, clock=clock)


def _sdk_calls(fake_e2b: type[FakeE2BSandbox], sandbox_id: str) -> list[str]:
    return [name for name, call in fake_e2b.calls if call.get("sandbox_id") == sandbox_id]


def test_tool_calls_in_one_container_connect_once_and_keep_the_sandbox_alive_once(
    container: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox], clock: FakeClock
) -> None:
    # Given a run with 900 s left, whose tool calls this container runs one after another
    for call in range(10):
        fake_e2b.live[sandbox.sandbox_id].commands.scripts.append(ScriptedCommand(stdout=["ok\n"]))
        connected = container.connect(sandbox.sandbox_id, keep_alive_s=900 - 10 * call)
        assert connected.run("true", timeout_s=5).stdout == b"ok\n"
        clock.now += 10

    # Then one connect and one keep-alive served all ten
    assert _sdk_calls(fake_e2b, sandbox.sandbox_id) == ["connect"]
    assert fake_e2b.live[sandbox.sandbox_id].timeouts == [900]


def test_the_keep_alive_is_sent_again_when_less_than_half_of_it_remains(
    container: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox], clock: FakeClock
) -> None:
    timeouts = fake_e2b.live[sandbox.sandbox_id].timeouts
    container.connect(sandbox.sandbox_id, keep_alive_s=600)
    clock.now += 299  # 301 s of 600 left: more than half
    container.connect(sandbox.sandbox_id, keep_alive_s=600)
    assert timeouts == [600]

    clock.now += 2  # 299 s left: less than half of the 600 asked
    container.connect(sandbox.sandbox_id, keep_alive_s=600)
    assert timeouts == [600, 600]
    assert _sdk_calls(fake_e2b, sandbox.sandbox_id) == ["connect"]


def test_a_sandbox_whose_timeout_passed_is_connected_again(
    container: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox], clock: FakeClock
) -> None:
    container.connect(sandbox.sandbox_id, keep_alive_s=60)
    clock.now += 61
    del fake_e2b.live[sandbox.sandbox_id]  # E2B ended it

    with pytest.raises(SandboxGone):
        container.connect(sandbox.sandbox_id)
    assert _sdk_calls(fake_e2b, sandbox.sandbox_id) == ["connect", "connect"]


def test_a_sandbox_this_container_killed_is_never_served_again(
    container: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    container.connect(sandbox.sandbox_id)
    container.kill(sandbox.sandbox_id)

    with pytest.raises(SandboxGone):
        container.connect(sandbox.sandbox_id)


def test_a_sandbox_found_gone_is_dropped_and_connected_again(
    container: E2BSandboxProvider, sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    # Given a sandbox this container holds, killed elsewhere (the reaper, a cancel, another container)
    held = container.connect(sandbox.sandbox_id)
    fake = fake_e2b.live.pop(sandbox.sandbox_id)
    fake.commands.scripts.append(ScriptedCommand(raises=e2b_errors.SandboxNotRunningException("sandbox not running")))

    # When a tool call uses it, it is gone, as a fresh connect would have said
    with pytest.raises(SandboxGone):
        held.run("true", timeout_s=5)

    # Then the next connect asks E2B again instead of serving the dead one
    with pytest.raises(SandboxGone):
        container.connect(sandbox.sandbox_id)
    assert _sdk_calls(fake_e2b, sandbox.sandbox_id) == ["connect", "connect"]


def test_a_container_keeps_a_bounded_number_of_sandboxes(
    container: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    ids = [container.create(SPEC).sandbox_id for _ in range(40)]

    container.connect(ids[-1])
    container.connect(ids[0])

    assert _sdk_calls(fake_e2b, ids[-1]) == []
    assert _sdk_calls(fake_e2b, ids[0]) == ["connect"]


def test_connect_to_a_vanished_sandbox_raises_gone(provider: E2BSandboxProvider) -> None:
    with pytest.raises(SandboxGone, match="no longer exists"):
        provider.connect("sbx-missing")


def test_kill_of_a_sandbox_e2b_reports_not_found_is_false(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    fake_e2b.fail_next = e2b_errors.SandboxNotFoundException("sandbox sbx-9 not found")

    assert provider.kill("sbx-9") is False


# --- commands ---


def test_run_wraps_the_command_under_an_in_sandbox_deadline(
    sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    fake = _fake_of(sandbox, fake_e2b)
    fake.commands.scripts.append(ScriptedCommand(stdout=["hello ", "wörld\n"], stderr=["note\n"]))

    result = sandbox.run("echo 'hello wörld'", timeout_s=2.5, cwd="project", env={"GREETING": "hi"})

    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello wörld\n".encode(), b"note\n")
    assert result.timed_out is False
    assert fake.commands.started == [
        {
            "cmd": "timeout -s KILL 3 bash -c 'echo '\"'\"'hello wörld'\"'\"''; exit $?",
            "envs": {"GREETING": "hi"},
            "cwd": "/home/user/project",
            "timeout": 8,
        }
    ]


def test_non_zero_exit_is_a_result_not_an_error(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    _fake_of(sandbox, fake_e2b).commands.scripts.append(
        ScriptedCommand(stdout=["partial\n"], stderr=["boom\n"], exit_code=2)
    )

    result = sandbox.run("make test", timeout_s=30)

    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (
        2,
        b"partial\n",
        b"boom\n",
        False,
    )


def test_sdk_stream_timeout_kills_the_command_and_reports_partial_output(
    sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    fake = _fake_of(sandbox, fake_e2b)
    fake.commands.scripts.append(
        ScriptedCommand(stdout=["started\n"], raises=e2b_errors.TimeoutException("context deadline exceeded"))
    )

    result = sandbox.run("sleep 1000", timeout_s=1)

    assert (result.exit_code, result.timed_out, result.stdout) == (None, True, b"started\n")
    assert fake.commands.killed_pids == [101]


def test_sigkill_at_the_in_sandbox_deadline_is_a_timeout(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    fake = _fake_of(sandbox, fake_e2b)
    fake.commands.scripts.append(ScriptedCommand(stdout=["tick\n"], exit_code=137, takes_s=1.0))

    result = sandbox.run("while true; do echo tick; sleep 5; done", timeout_s=0.5)

    assert (result.exit_code, result.timed_out, result.stdout) == (None, True, b"tick\n")
    assert result.duration_ms >= 1000
    assert fake.commands.killed_pids == []


def test_sigkill_before_the_deadline_is_an_exit_code(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    _fake_of(sandbox, fake_e2b).commands.scripts.append(ScriptedCommand(exit_code=137))

    result = sandbox.run("kill -9 $$", timeout_s=30)

    assert (result.exit_code, result.timed_out) == (137, False)


@pytest.mark.parametrize(
    ("sdk_error", "our_error"),
    [
        (e2b_errors.SandboxNotRunningException("sandbox was not found"), SandboxGone),
        (e2b_errors.SandboxUnreachableException("port is not open"), SandboxUnavailable),
    ],
)
def test_losing_the_sandbox_mid_command_is_not_a_timeout(
    sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox], sdk_error: Exception, our_error: type[Exception]
) -> None:
    fake = _fake_of(sandbox, fake_e2b)
    fake.commands.scripts.append(ScriptedCommand(raises=sdk_error))

    with pytest.raises(our_error):
        sandbox.run("sleep 5", timeout_s=30)
    assert fake.commands.killed_pids == []


# --- files ---


def test_files_round_trip_under_home(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    payload = bytes(range(256))

    sandbox.write_file("data/blob.bin", payload)

    assert _fake_of(sandbox, fake_e2b).files.contents == {"/home/user/data/blob.bin": payload}
    assert sandbox.read_file("/home/user/data/blob.bin") == payload
    assert sandbox.read_file("data/../data/blob.bin") == payload


def test_reading_a_missing_file_raises_file_not_found(sandbox: E2BSandbox) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        sandbox.read_file("nope.txt")

    assert missing.value.filename == "nope.txt"


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "/home/userx/file"])
def test_paths_outside_home_are_rejected(sandbox: E2BSandbox, path: str) -> None:
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.read_file(path)
    with pytest.raises(ValueError, match="outside the sandbox workspace"):
        sandbox.write_file(path, b"x")


# --- error mapping ---


@pytest.mark.parametrize(
    ("sdk_error", "our_error", "message"),
    [
        (e2b_errors.RateLimitException("Rate limit exceeded"), SandboxUnavailable, "rate limiting or busy"),
        (e2b_errors.ServiceBusyException("no capacity"), SandboxUnavailable, "rate limiting or busy"),
        (e2b_errors.AuthenticationException("Invalid API key"), SandboxError, "rejected the API key"),
        (e2b_errors.SandboxNotFoundException("sandbox gone"), SandboxGone, "no longer exists"),
        (e2b_errors.NotFoundException("not found"), SandboxGone, "no longer exists"),
        (e2b_errors.TimeoutException("Request timed out"), SandboxUnavailable, "could not be reached"),
        (httpx.ConnectError("connection refused"), SandboxUnavailable, "could not be reached"),
        (e2b_errors.SandboxException("internal", status_code=500), SandboxUnavailable, "transiently"),
        (e2b_errors.SandboxException("bad gateway", status_code=502), SandboxUnavailable, "transiently"),
        (e2b_errors.InvalidArgumentException("bad template", status_code=400), SandboxError, "refused"),
        (e2b_errors.TemplateException("template too old"), SandboxError, "refused"),
    ],
)
def test_e2b_errors_become_ours(
    provider: E2BSandboxProvider,
    fake_e2b: type[FakeE2BSandbox],
    sdk_error: Exception,
    our_error: type[Exception],
    message: str,
) -> None:
    fake_e2b.fail_next = sdk_error

    with pytest.raises(our_error, match=message):
        provider.create(SPEC)


def test_authentication_failure_says_what_to_check(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    fake_e2b.fail_next = e2b_errors.AuthenticationException("Invalid API key")

    with pytest.raises(SandboxError) as rejected:
        provider.connect("sbx-1")

    assert str(rejected.value) == "E2B rejected the API key; check E2B_API_KEY / the E2B secret"


@pytest.mark.parametrize(
    "sdk_error",
    [
        e2b_errors.AuthenticationException(f"Invalid API key {API_KEY}"),
        e2b_errors.RateLimitException(f"key {API_KEY} is over its limit"),
        e2b_errors.SandboxException(f"request with X-API-Key: {API_KEY} failed", status_code=400),
        e2b_errors.SandboxException(f"upstream echoed {API_KEY}", status_code=503),
    ],
)
def test_the_api_key_never_reaches_our_errors(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox], sdk_error: Exception
) -> None:
    fake_e2b.fail_next = sdk_error

    with pytest.raises((SandboxError, SandboxUnavailable)) as raised:
        provider.create(SPEC)

    logged = "".join(traceback.format_exception(raised.value))
    assert API_KEY not in logged
    assert API_KEY not in repr(raised.value)


def test_errors_without_the_key_keep_their_cause_for_debugging(
    provider: E2BSandboxProvider, fake_e2b: type[FakeE2BSandbox]
) -> None:
    fake_e2b.fail_next = e2b_errors.RateLimitException("Rate limit exceeded")

    with pytest.raises(SandboxUnavailable) as raised:
        provider.create(SPEC)

    assert isinstance(raised.value.__cause__, e2b_errors.RateLimitException)


def test_file_write_errors_are_translated(sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]) -> None:
    _fake_of(sandbox, fake_e2b).files.fail_with = e2b_errors.NotEnoughSpaceException("disk full")

    with pytest.raises(DiskQuotaExceeded, match="disk quota exceeded: the sandbox's disk is full"):
        sandbox.write_file("big.bin", b"x")


def test_a_path_envd_refuses_is_a_value_error_for_the_model(
    sandbox: E2BSandbox, fake_e2b: type[FakeE2BSandbox]
) -> None:
    _fake_of(sandbox, fake_e2b).files.fail_with = e2b_errors.InvalidArgumentException(
        "400: path 'escape' leads outside the sandbox workspace /home/user"
    )

    with pytest.raises(ValueError, match="^path 'escape' leads outside the sandbox workspace"):
        sandbox.write_file("escape", b"x")


# --- building the provider from settings ---


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("E2B_API_KEY", "E2B_API_KEY_SECRET_ARN", "SANDBOX_BACKEND", "E2B_TEMPLATE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_build_local_provider(tmp_path: Path) -> None:
    provider = build_sandbox_provider(Settings(sandbox_backend="local", sandbox_root=tmp_path))

    assert isinstance(provider, LocalSandboxProvider)
    assert provider.root == tmp_path


@pytest.mark.usefixtures("clean_env")
def test_build_e2b_provider_from_the_key_setting() -> None:
    provider = build_sandbox_provider(Settings(sandbox_backend="e2b", e2b_api_key=API_KEY))

    assert isinstance(provider, E2BSandboxProvider)
    assert provider.name == "e2b"


@pytest.mark.usefixtures("clean_env")
def test_build_e2b_provider_reads_the_key_from_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    from aws_lambda_powertools.utilities import parameters

    fetched: list[tuple[str, int | None]] = []

    def fake_get_secret(name: str, max_age: int | None = None) -> str:
        fetched.append((name, max_age))
        return API_KEY

    monkeypatch.setattr(parameters, "get_secret", fake_get_secret)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:e2b-AbCdEf"

    provider = build_sandbox_provider(Settings(sandbox_backend="e2b", e2b_api_key_secret_arn=arn))

    assert isinstance(provider, E2BSandboxProvider)
    assert fetched == [(arn, 300)]


@pytest.mark.usefixtures("clean_env")
def test_build_e2b_provider_without_a_key_names_the_setting() -> None:
    with pytest.raises(SandboxError, match="E2B_API_KEY"):
        build_sandbox_provider(Settings(sandbox_backend="e2b"))


def test_importing_the_sandbox_package_does_not_import_e2b() -> None:
    probe = "import sys, sandcastle.sandbox; print('e2b' in sys.modules)"

    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert imported.stdout.strip() == "False"
