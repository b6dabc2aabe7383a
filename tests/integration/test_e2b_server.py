"""The local E2B-compatible sandbox server, driven by the real e2b SDK over real HTTP."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import CommandExitException, Sandbox, SandboxQuery
from e2b import exceptions as e2b_errors

from sandcastle.e2b_server import SandboxServer
from sandcastle.errors import SandboxError
from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap

API_KEY = "local-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with SandboxServer(tmp_path_factory.mktemp("e2b-server") / "sandboxes", api_key=API_KEY) as running:
        yield running


@pytest.fixture
def connection(server: SandboxServer) -> dict[str, Any]:
    """The SDK options that point it at the server."""
    return {"api_key": API_KEY, "api_url": server.url, "sandbox_url": server.url}


@pytest.fixture
def make_sandbox(connection: dict[str, Any]) -> Iterator[Callable[..., Sandbox]]:
    created: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        sandbox = Sandbox.create(**{"timeout": 120, **options}, **connection)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        Sandbox.kill(sandbox.sandbox_id, **connection)


@pytest.fixture
def sbx(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


# --- commands ---


def test_commands_report_output_exit_codes_cwd_and_envs(make_sandbox: Callable[..., Sandbox]) -> None:
    sbx = make_sandbox(envs={"FROM_CREATE": "created"})
    sbx.files.make_dir("project")

    result = sbx.commands.run('pwd; echo "$FROM_CREATE $FROM_RUN"', cwd="/home/user/project", envs={"FROM_RUN": "ran"})
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo oops >&2; exit 7")

    assert (result.exit_code, result.stdout) == (0, "/home/user/project\ncreated ran\n")
    assert (failed.value.exit_code, failed.value.stderr) == (7, "oops\n")


def test_output_streams_while_the_command_runs(sbx: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()

    sbx.commands.run("echo first; sleep 1; echo second", on_stdout=lambda out: seen.append((time.monotonic(), out)))

    assert [text for _, text in seen] == ["first\n", "second\n"]
    assert seen[0][0] - started < 0.8  # the first line arrived before the command ended


def _served(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    """The requests the server logged so far, by method and path (sandbox ids left out)."""
    messages = (r.getMessage() for r in caplog.records if r.name == "sandcastle.e2b_server.server")
    lines = [message for message in messages if message.startswith('sandbox server: "')]  # the request log
    return Counter(
        re.sub(r"/sandboxes/[^/ ]+", "/sandboxes/{id}", line.split('"')[1].rsplit(" ", 1)[0]) for line in lines
    )


def _when_served(caplog: pytest.LogCaptureFixture, expected: Counter[str]) -> Counter[str]:
    """The requests served, once at least ``expected`` were (the request log is written just after each answer)."""
    for _ in range(200):
        served = _served(caplog)
        if all(served[route] >= count for route, count in expected.items()):
            break
        time.sleep(0.05)
    time.sleep(0.2)  # anything more would land now
    return _served(caplog)


def test_tool_calls_in_one_container_make_one_connect_and_one_keep_alive_over_http(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server of this test's own, a sandbox another container created, and this container's provider
    caplog.set_level(logging.DEBUG, logger="sandcastle.e2b_server.server")
    with SandboxServer(tmp_path / "sandboxes", api_key=API_KEY) as server:
        options = {"api_url": server.url, "sandbox_url": server.url}
        created = E2BSandboxProvider(API_KEY, "base", **options).create(
            SandboxSpec(run_id="run-http-count", tenant="acme", timeout_s=120)
        )
        _when_served(caplog, Counter({"POST /v2/sandboxes": 1}))
        caplog.clear()
        container = E2BSandboxProvider(API_KEY, "base", **options)

        # When it runs 8 tool calls, each connecting with the run's keep-alive as RunTool does
        for call in range(8):
            sandbox = container.connect(created.sandbox_id, keep_alive_s=300 - call)
            assert sandbox.run("true", timeout_s=10).exit_code == 0

        # Then the server saw one connect, one timeout and the 8 commands
        expected = Counter(
            {"POST /v2/sandboxes/{id}/connect": 1, "POST /sandboxes/{id}/timeout": 1, "POST /process.Process/Start": 8}
        )
        assert _when_served(caplog, expected) == expected
        container.kill(created.sandbox_id)


def test_large_and_non_utf8_output_survive_byte_exact_through_the_adapter(connection: dict[str, Any]) -> None:
    provider = E2BSandboxProvider(API_KEY, "base", api_url=connection["api_url"], sandbox_url=connection["api_url"])
    sandbox = provider.create(SandboxSpec(run_id="big", tenant="tests", timeout_s=120))
    try:
        result = sandbox.run("head -c 3000000 /dev/urandom > blob.bin && cat blob.bin", timeout_s=60)

        assert result.exit_code == 0, result.stderr
        assert len(result.stdout) == 3_000_000
        assert result.stdout == sandbox.read_file("blob.bin")
    finally:
        provider.kill(sandbox.sandbox_id)


def test_a_command_timeout_kills_its_whole_tree(sbx: Sandbox) -> None:
    with pytest.raises(e2b_errors.TimeoutException):
        sbx.commands.run("(sleep 2; touch ~/late) & sleep 60", timeout=1)

    time.sleep(2.5)
    assert sbx.commands.list() == []
    assert sbx.files.exists("late") is False


def test_background_commands_can_be_listed_joined_and_killed(sbx: Sandbox) -> None:
    sleeper = sbx.commands.run("sleep 30", background=True)
    counter = sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.3; done", background=True)

    assert {process.pid for process in sbx.commands.list()} == {sleeper.pid, counter.pid}
    assert sbx.commands.connect(counter.pid).wait().stdout.endswith("3\n")
    assert sleeper.kill() is True
    with pytest.raises(CommandExitException) as killed:
        sleeper.wait()
    assert killed.value.exit_code == -1
    assert sbx.commands.list() == []
    assert sbx.commands.kill(sleeper.pid) is False


# --- files ---


def test_files_write_read_list_stat_rename_and_remove(sbx: Sandbox) -> None:
    binary = bytes(range(256)) * 64
    large = uuid.uuid4().bytes * (8 * 1024 * 1024 // 16)

    sbx.files.write("data/binary.bin", binary)
    sbx.files.write("/home/user/data/large.bin", large)
    sbx.files.write("data/deeper/note.txt", "héllo")

    assert bytes(sbx.files.read("data/binary.bin", format="bytes")) == binary
    assert bytes(sbx.files.read("data/large.bin", format="bytes")) == large
    assert sbx.files.read("data/deeper/note.txt") == "héllo"
    assert [entry.name for entry in sbx.files.list("data")] == ["binary.bin", "deeper", "large.bin"]
    assert {entry.path for entry in sbx.files.list("data", depth=2)} >= {"/home/user/data/deeper/note.txt"}
    assert sbx.files.get_info("data/large.bin").size == len(large)
    assert sbx.commands.run("wc -c < data/large.bin").stdout.strip() == str(len(large))
    assert sbx.files.make_dir("made/here") is True
    assert sbx.files.make_dir("made/here") is False
    sbx.files.rename("data/deeper/note.txt", "made/here/moved.txt")
    assert sbx.files.read("made/here/moved.txt") == "héllo"
    sbx.files.remove("data")
    assert sbx.files.exists("data") is False
    with pytest.raises(e2b_errors.FileNotFoundException):
        sbx.files.read("data/binary.bin")


def test_files_outside_the_workspace_or_through_symlinks_out_are_refused(sbx: Sandbox) -> None:
    sbx.commands.run("ln -s /etc escape")

    with pytest.raises(e2b_errors.SandboxException, match="outside the sandbox workspace"):
        sbx.files.read("/etc/hostname")
    with pytest.raises(e2b_errors.SandboxException, match="outside the sandbox workspace"):
        sbx.files.read("escape/passwd")
    with pytest.raises(e2b_errors.InvalidArgumentException, match="outside the sandbox workspace"):
        sbx.files.list("escape")


# --- lifecycle ---


def test_list_by_metadata_get_info_and_kill(make_sandbox: Callable[..., Sandbox], connection: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex
    first = make_sandbox(metadata={"suite": tag, "which": "first"})
    second = make_sandbox(metadata={"suite": tag, "which": "second"})
    make_sandbox(metadata={"suite": "other"})

    def listed(**metadata: str) -> list[str]:
        paginator = Sandbox.list(query=SandboxQuery(metadata=metadata), limit=1, **connection)
        ids = []
        while paginator.has_next:
            ids += [info.sandbox_id for info in paginator.next_items()]
        return ids

    assert listed(suite=tag) == [second.sandbox_id, first.sandbox_id]  # newest first, as E2B lists them
    assert listed(suite=tag, which="second") == [second.sandbox_id]
    info = Sandbox.get_info(first.sandbox_id, **connection)
    assert info.metadata == {"suite": tag, "which": "first"}
    assert Sandbox.kill(first.sandbox_id, **connection) is True
    assert Sandbox.kill(first.sandbox_id, **connection) is False
    assert listed(suite=tag) == [second.sandbox_id]
    with pytest.raises(e2b_errors.SandboxNotFoundException):
        Sandbox.connect(first.sandbox_id, **connection)


def test_a_sandbox_really_ends_at_its_timeout(make_sandbox: Callable[..., Sandbox], server: SandboxServer) -> None:
    sbx = make_sandbox(timeout=1)
    sbx.commands.run("sleep 30", background=True)
    workspace = server.registry.get(sbx.sandbox_id).sandbox.workspace

    time.sleep(2)  # the reaper ends it without anyone asking

    assert not workspace.exists()
    with pytest.raises(e2b_errors.SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=API_KEY, api_url=server.url, sandbox_url=server.url)
    with pytest.raises(e2b_errors.SandboxNotRunningException):
        sbx.commands.run("true")


def test_set_timeout_and_connect_extend_a_sandbox(make_sandbox: Callable[..., Sandbox], server: SandboxServer) -> None:
    sbx = make_sandbox(timeout=2)
    sbx.set_timeout(60)
    time.sleep(2.5)

    assert sbx.commands.run("echo alive").stdout == "alive\n"
    reconnected = Sandbox.connect(
        sbx.sandbox_id, timeout=600, api_key=API_KEY, api_url=server.url, sandbox_url=server.url
    )
    assert reconnected.files.exists(".") is True


def test_a_create_retried_with_its_idempotency_key_returns_the_same_sandbox(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    key = f"run-{uuid.uuid4().hex}"

    assert make_sandbox(idempotency_key=key).sandbox_id == make_sandbox(idempotency_key=key).sandbox_id


def test_internet_access_is_refused_clearly(connection: dict[str, Any]) -> None:
    with pytest.raises(e2b_errors.SandboxException, match="no network"):
        Sandbox.create(allow_internet_access=True, **connection)


def test_a_full_server_answers_rate_limited(tmp_path: Path) -> None:
    with SandboxServer(tmp_path / "sandboxes", max_sandboxes=1) as small:
        options = {"api_key": "any", "api_url": small.url, "sandbox_url": small.url}
        Sandbox.create(**options)

        with pytest.raises(e2b_errors.RateLimitException, match="kill one or retry later"):
            Sandbox.create(**options)


def test_a_wrong_api_key_is_refused(server: SandboxServer) -> None:
    with pytest.raises(e2b_errors.AuthenticationException):
        Sandbox.create(api_key="not-the-key", api_url=server.url, sandbox_url=server.url)


def test_the_adapter_turns_the_refusals_into_sandcastle_errors(server: SandboxServer) -> None:
    provider = E2BSandboxProvider(API_KEY, "base", api_url=server.url, sandbox_url=server.url)

    with pytest.raises(SandboxError, match="no network"):
        provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=60, allow_internet_access=True))


# --- isolation ---


def test_two_sandboxes_see_neither_each_others_files_nor_processes(make_sandbox: Callable[..., Sandbox]) -> None:
    first, second = make_sandbox(), make_sandbox()
    first.files.write("secret.txt", b"first's")
    first.commands.run("sleep 30", background=True)

    assert second.files.exists("secret.txt") is False
    assert second.commands.list() == []
    assert "sleep" not in second.commands.run("ps -eo comm").stdout
    assert second.commands.run("ls -A ~").stdout == ""


def test_envd_calls_need_the_sandboxs_own_access_token(sbx: Sandbox, server: SandboxServer) -> None:
    sbx.files.write("secret.txt", b"mine")
    url = f"{server.url}/files"

    stolen = httpx.get(url, params={"path": "secret.txt"}, headers={"E2b-Sandbox-Id": sbx.sandbox_id})
    unknown = httpx.get(url, params={"path": "secret.txt"}, headers={"E2b-Sandbox-Id": "lsb-nope"})

    assert stolen.status_code == 401
    assert unknown.status_code == 502 and "was not found" in unknown.json()["message"]


# --- the local runtime ---


def test_the_local_runtime_runs_tool_calls_through_the_sdk_and_its_sandbox_server(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "printf '\\377ok'; ls -d ~"})])
    fake_openai.reply_text("Done.")
    seen: list[str] = []
    original_get = runtime.sandbox_server.registry.get

    def recording_get(sandbox_id: str) -> Any:
        seen.append(sandbox_id)
        return original_get(sandbox_id)

    runtime.sandbox_server.registry.get = recording_get  # type: ignore[method-assign]
    run = runtime.wait(runtime.submit(RunRequest(instructions="Print.")).run_id, timeout_s=120)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert runtime.deps.sandboxes.name == "e2b"
    assert seen and all(sandbox_id.startswith("lsb-") for sandbox_id in seen)
    assert runtime.sandbox_server.registry.list() == []  # the run killed its sandbox
