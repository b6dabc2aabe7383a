"""The local E2B server as a machine: background processes, stdin, PTYs, watches, pause/resume, snapshots,
templates, metrics, file metadata — driven by the real e2b SDK (sync and async clients) over real HTTP.

The cases follow E2B's own SDK tests (e2b-dev/E2B ``packages/python-sdk/tests``), rewritten for what a
Sandcastle user notices; the refusals (bad input) are driven with raw HTTP where the SDK validates first.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FilesystemEventType,
    FileType,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b import exceptions as e2b_errors
from e2b.sandbox.commands.command_handle import PtySize

from sandcastle.cli import main as sandcastle_main
from sandcastle.e2b_server import SandboxServer

pytestmark = pytest.mark.bwrap

API_KEY = "local-test-key"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2b-machine")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[SandboxServer]:
    with SandboxServer(home / "sandboxes", api_key=API_KEY) as running:
        yield running


@pytest.fixture
def connection(server: SandboxServer) -> dict[str, Any]:
    return {"api_key": API_KEY, "api_url": server.url, "sandbox_url": server.url}


@pytest.fixture
def make_sandbox(connection: dict[str, Any]) -> Iterator[Callable[..., Sandbox]]:
    created: list[Sandbox] = []

    def make(template: str = "base", **options: Any) -> Sandbox:
        sandbox = Sandbox.create(template, **{"timeout": 120, **options}, **connection)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        Sandbox.kill(sandbox.sandbox_id, **connection)


@pytest.fixture
def sbx(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _process_states(server: SandboxServer, sandbox_id: str) -> set[str]:
    """The kernel states (R, S, T...) of every host process of the sandbox's commands."""
    from sandcastle.e2b_server.pausing import process_tree

    states = set()
    for pid in process_tree(server.registry.get(sandbox_id).process_roots):
        try:
            states.add(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return states


# --- background commands and stdin ---


def test_a_background_command_reads_the_stdin_it_is_sent_and_ends_at_its_eof(sbx: Sandbox) -> None:
    cat = sbx.commands.run("cat", background=True, stdin=True)

    cat.send_stdin("Hello,\n")
    sbx.commands.send_stdin(cat.pid, b"World!")
    cat.close_stdin()

    result = cat.wait()
    assert (result.exit_code, result.stdout) == (0, "Hello,\nWorld!")


def test_stdin_to_a_command_started_without_it_is_refused_clearly(sbx: Sandbox) -> None:
    sleeper = sbx.commands.run("sleep 30", background=True)

    with pytest.raises(e2b_errors.SandboxException, match="start it with stdin=True"):
        sbx.commands.send_stdin(sleeper.pid, "ignored")


def test_background_commands_outlive_their_handle_and_are_found_again_by_pid(sbx: Sandbox) -> None:
    counter = sbx.commands.run("read go; echo counted", background=True, stdin=True)
    counter.disconnect()

    assert [process.pid for process in sbx.commands.list()] == [counter.pid]
    joined = sbx.commands.connect(counter.pid)
    sbx.commands.send_stdin(counter.pid, "go\n")
    assert joined.wait().stdout == "counted\n"
    assert sbx.commands.list() == []


def test_a_sandbox_killed_mid_command_fails_the_stream_as_e2b_does(make_sandbox: Callable[..., Sandbox]) -> None:
    sbx = make_sandbox()
    sleeper = sbx.commands.run("sleep 60", background=True)

    sbx.kill()

    with pytest.raises(e2b_errors.SandboxNotRunningException, match="killed or reached its end of life"):
        sleeper.wait()


@pytest.mark.anyio
async def test_the_async_client_drives_background_commands_stdin_and_a_killed_sandbox(
    connection: dict[str, Any],
) -> None:
    sbx = await AsyncSandbox.create(timeout=120, **connection)
    try:
        cat = await sbx.commands.run("cat", background=True, stdin=True)
        await sbx.commands.send_stdin(cat.pid, "async hello")
        await sbx.commands.close_stdin(cat.pid)
        assert (await cat.wait()).stdout == "async hello"

        sleeper = await sbx.commands.run("sleep 60", background=True)
        assert [process.pid for process in await sbx.commands.list()] == [sleeper.pid]
    finally:
        await sbx.kill()
    with pytest.raises(e2b_errors.SandboxNotRunningException):
        await sleeper.wait()


# --- PTY ---


def test_a_pty_is_a_real_terminal_that_can_be_resized_and_killed(sbx: Sandbox) -> None:
    def session(script: bytes, resize_to: PtySize | None = None) -> tuple[int, str]:
        terminal = sbx.pty.create(PtySize(cols=80, rows=24), envs={"GREETING": "hi"})
        if resize_to is not None:
            sbx.pty.resize(terminal.pid, resize_to)
        sbx.pty.send_stdin(terminal.pid, script)
        output: list[bytes] = []
        try:
            return terminal.wait(on_pty=output.append).exit_code, b"".join(output).decode()
        except CommandExitException as ended:
            return ended.exit_code, b"".join(output).decode()

    plain = session(b"[ -t 0 ] && [ -t 1 ] && echo on-a-terminal; tput cols; echo $GREETING; exit 3\n")
    resized = session(b"tput cols; stty size; exit\n", resize_to=PtySize(cols=132, rows=40))

    assert plain[0] == 3 and "on-a-terminal" in plain[1] and re.search(r"\s80\r\n", plain[1]) and "hi" in plain[1]
    assert resized[0] == 0 and re.search(r"\s132\r\n", resized[1]) and "40 132" in resized[1]
    killed = sbx.pty.create(PtySize(cols=80, rows=24))
    assert sbx.pty.kill(killed.pid) is True
    assert sbx.pty.kill(killed.pid) is False


def test_pty_input_and_stdin_input_are_not_mixed_up(sbx: Sandbox) -> None:
    terminal = sbx.pty.create(PtySize(cols=80, rows=24))
    plain = sbx.commands.run("sleep 30", background=True, stdin=True)

    with pytest.raises(e2b_errors.InvalidArgumentException, match="takes input.pty"):
        sbx.commands.send_stdin(terminal.pid, "echo nope\n")
    with pytest.raises(e2b_errors.InvalidArgumentException, match="takes input.stdin"):
        sbx.pty.send_stdin(plain.pid, b"nope")
    with pytest.raises(e2b_errors.SandboxException, match="not a PTY"):
        sbx.pty.resize(plain.pid, PtySize(cols=100, rows=30))


@pytest.mark.anyio
async def test_the_async_client_reconnects_to_a_pty(connection: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(timeout=120, **connection)
    try:
        first: list[bytes] = []
        again: list[bytes] = []
        terminal = await sbx.pty.create(PtySize(80, 24), on_data=first.append, envs={"FOO": "bar"})
        await terminal.disconnect()
        reconnected = await sbx.pty.connect(terminal.pid, on_data=again.append)
        await sbx.pty.send_stdin(terminal.pid, b"echo $FOO\nexit\n")
        await reconnected.wait()

        assert reconnected.exit_code == 0
        assert "bar" in b"".join(again).decode()
    finally:
        await sbx.kill()


# --- directory watches ---


def test_a_recursive_watch_sees_new_directories_and_the_files_written_in_them(sbx: Sandbox) -> None:
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched", recursive=True, include_entry=True)

    sbx.files.make_dir("watched/nested")
    sbx.files.write("watched/nested/file.txt", "content")
    sbx.commands.run("echo gone > watched/top.txt; rm watched/top.txt")
    events = [(event.type, event.name) for event in handle.get_new_events()]
    handle.stop()

    assert events[0] == (FilesystemEventType.CREATE, "nested")
    assert (FilesystemEventType.WRITE, "nested/file.txt") in events
    assert events[-1] == (FilesystemEventType.REMOVE, "top.txt")


def test_a_watch_reports_a_new_file_as_envd_does_and_names_its_entry(sbx: Sandbox) -> None:
    sbx.files.make_dir("plain")
    handle = sbx.files.watch_dir("plain", include_entry=True)

    sbx.files.write("plain/new.txt", "x")
    events = handle.get_new_events()
    handle.stop()

    assert [event.type for event in events] == [
        FilesystemEventType.CREATE,
        FilesystemEventType.CHMOD,
        FilesystemEventType.WRITE,
    ]
    assert events[-1].entry is not None and events[-1].entry.path == "/home/user/plain/new.txt"


def test_watching_what_is_not_a_workspace_directory_is_refused(sbx: Sandbox) -> None:
    sbx.files.write("a-file.txt", "x")
    sbx.commands.run("ln -s /etc escape")

    with pytest.raises(e2b_errors.FileNotFoundException):
        sbx.files.watch_dir("missing")
    with pytest.raises(e2b_errors.InvalidArgumentException, match="not a directory"):
        sbx.files.watch_dir("a-file.txt")
    with pytest.raises(e2b_errors.InvalidArgumentException, match="outside the sandbox workspace"):
        sbx.files.watch_dir("escape")


@pytest.mark.anyio
async def test_the_async_client_streams_watch_events(connection: dict[str, Any]) -> None:
    import anyio

    sbx = await AsyncSandbox.create(timeout=120, **connection)
    try:
        await sbx.files.make_dir("streamed")
        seen = anyio.Event()
        names: list[str] = []

        def on_event(event: Any) -> None:
            names.append(event.name)
            if event.name == "done.txt" and event.type == FilesystemEventType.WRITE:
                seen.set()

        handle = await sbx.files.watch_dir("streamed", on_event=on_event)
        await sbx.files.write("streamed/done.txt", "ok")
        with anyio.fail_after(30):
            await seen.wait()
        await handle.stop()
        assert names[0] == "done.txt"
    finally:
        await sbx.kill()


# --- pause and resume ---


def test_pause_freezes_processes_keeps_files_and_connect_resumes_them(
    make_sandbox: Callable[..., Sandbox], server: SandboxServer, connection: dict[str, Any]
) -> None:
    sbx = make_sandbox()
    sbx.files.write("kept.txt", "still here")
    waiter = sbx.commands.run("read line; echo resumed: $line", background=True, stdin=True)

    assert sbx.pause() is True
    assert _process_states(server, sbx.sandbox_id) == {"T"}
    assert sbx.is_running() is False
    assert Sandbox.get_info(sbx.sandbox_id, **connection).state == SandboxState.PAUSED
    assert sbx.pause() is False  # already paused
    with pytest.raises(e2b_errors.SandboxException):
        sbx.files.read("kept.txt")

    resumed = Sandbox.connect(sbx.sandbox_id, **connection)
    assert "T" not in _process_states(server, sbx.sandbox_id)
    assert resumed.files.read("kept.txt") == "still here"
    resumed.commands.send_stdin(waiter.pid, "yes\n")
    assert waiter.wait().stdout == "resumed: yes\n"
    assert Sandbox.get_info(sbx.sandbox_id, **connection).state == SandboxState.RUNNING


def test_a_paused_sandbox_outlives_its_timeout_and_a_timeout_of_zero_ends_one_now(
    make_sandbox: Callable[..., Sandbox], server: SandboxServer, connection: dict[str, Any]
) -> None:
    paused = make_sandbox(timeout=1)
    paused.pause()
    ended = make_sandbox()
    auto = make_sandbox(lifecycle={"on_timeout": "pause"})

    ended.set_timeout(0)
    auto.set_timeout(0)
    server.registry.reap_expired()

    assert Sandbox.get_info(paused.sandbox_id, **connection).state == SandboxState.PAUSED
    with pytest.raises(e2b_errors.SandboxNotFoundException):
        Sandbox.get_info(ended.sandbox_id, **connection)
    assert Sandbox.get_info(auto.sandbox_id, **connection).state == SandboxState.PAUSED
    time.sleep(1.2)  # the paused sandbox's own timeout (1 s) is long past
    Sandbox.connect(paused.sandbox_id, **connection)
    assert Sandbox.get_info(paused.sandbox_id, **connection).state == SandboxState.RUNNING  # it got a new one


@pytest.mark.anyio
async def test_the_async_client_pauses_and_resumes(connection: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(timeout=120, **connection)
    try:
        await sbx.files.write("a.txt", "a")
        await sbx.pause()
        assert await sbx.is_running() is False
        resumed = await AsyncSandbox.connect(sbx.sandbox_id, **connection)
        assert await resumed.files.read("a.txt") == "a"
    finally:
        await sbx.kill()


# --- listing ---


def test_the_list_is_newest_first_and_filters_by_state_start_time_and_template(
    make_sandbox: Callable[..., Sandbox], connection: dict[str, Any], server: SandboxServer
) -> None:
    tag = uuid.uuid4().hex
    older = make_sandbox(metadata={"suite": tag})
    newer = make_sandbox(metadata={"suite": tag})
    newer_started = Sandbox.get_info(newer.sandbox_id, **connection).started_at
    older.pause()

    def listed(**query: Any) -> list[str]:
        items = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, **query), **connection).next_items()
        return [item.sandbox_id for item in items]

    assert listed() == [newer.sandbox_id, older.sandbox_id]
    assert listed(state=[SandboxState.PAUSED]) == [older.sandbox_id]
    assert listed(started_after=newer_started) == [newer.sandbox_id]
    assert listed(template="base") == [newer.sandbox_id, older.sandbox_id]
    assert listed(template="no-such-template") == []
    oldest_first = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), order="asc", **connection)
    assert [item.sandbox_id for item in oldest_first.next_items()] == [older.sandbox_id, newer.sandbox_id]
    bad = httpx.get(f"{server.url}/v2/sandboxes", params={"state": "sleeping"}, headers={"X-API-Key": API_KEY})
    assert bad.status_code == 400 and "running or paused" in bad.json()["message"]


# --- snapshots and templates ---


def test_a_snapshot_copies_the_workspace_into_new_sandboxes_until_deleted(
    make_sandbox: Callable[..., Sandbox], connection: dict[str, Any]
) -> None:
    source = make_sandbox()
    source.files.write("app/config.json", '{"env": "test"}')
    snapshot = source.create_snapshot(name=f"snap-{uuid.uuid4().hex[:8]}")

    first, second = make_sandbox(snapshot.snapshot_id), make_sandbox(snapshot.names[0])
    first.files.write("app/config.json", "changed")
    listed = Sandbox.list_snapshots(sandbox_id=source.sandbox_id, **connection).next_items()

    assert second.files.read("app/config.json") == '{"env": "test"}'
    assert first.commands.run("stat -c %U app/config.json").stdout.strip() == second.files.get_info("app").owner
    assert [item.snapshot_id for item in listed] == [snapshot.snapshot_id]
    assert Sandbox.delete_snapshot(snapshot.snapshot_id, **connection) is True
    assert Sandbox.delete_snapshot(snapshot.snapshot_id, **connection) is False
    with pytest.raises(e2b_errors.SandboxException, match="was not found"):
        make_sandbox(snapshot.snapshot_id)


def test_a_template_built_from_a_directory_fills_new_sandboxes_and_starts_its_command(
    home: Path, make_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = home / "template-src"
    (source / "app").mkdir(parents=True)
    (source / "app" / "main.py").write_text("print('hi')\n")
    (source / "app" / "link").symlink_to("/etc/passwd")
    os.mkfifo(source / "app" / "pipe")  # not carried over: only files, directories and links are
    monkeypatch.setenv("SANDCASTLE_HOME", str(home))

    code = sandcastle_main(
        ["templates", "build", "pyapp", "--from", str(source), "--start-cmd", "echo started > started.txt"]
    )
    sbx = make_sandbox("pyapp")

    assert code == 0
    assert sbx.commands.run("python3 app/main.py").stdout == "hi\n"
    assert sorted(entry.name for entry in sbx.files.list("app")) == ["link", "main.py"]
    with pytest.raises(e2b_errors.SandboxException, match="outside the sandbox workspace"):
        sbx.files.read("app/link")
    waited = sbx.commands.run("for i in $(seq 200); do [ -f started.txt ] && break; sleep 0.05; done; cat started.txt")
    assert waited.stdout == "started\n"


def test_an_unknown_template_and_an_unsafe_tarball_are_refused_clearly(
    home: Path, make_sandbox: Callable[..., Sandbox], server: SandboxServer
) -> None:
    archive = home / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"bad"))

    with pytest.raises(e2b_errors.SandboxException, match="sandcastle templates build nope"):
        make_sandbox("nope")
    with pytest.raises(tarfile.OutsideDestinationError):
        server.registry.templates.build("evil", archive)
    assert not (server.registry.templates.root / "outside.txt").exists()
    assert [info.template_id for info in server.registry.templates.list()].count("evil") == 0


# --- metrics ---


def test_metrics_describe_the_sandbox_within_the_asked_time_range(sbx: Sandbox, server: SandboxServer) -> None:
    import datetime

    sbx.commands.run("sleep 30", background=True)
    created = Sandbox.get_info(sbx.sandbox_id, api_key=API_KEY, api_url=server.url).started_at

    [metric] = sbx.get_metrics()
    before = sbx.get_metrics(end=created - datetime.timedelta(minutes=30))

    assert metric.mem_total == server.registry.provider.limits.memory_mb * 1024 * 1024
    assert metric.mem_used > 0 and metric.disk_total > 0 and metric.cpu_count >= 1
    assert before == []


# --- files: encoding, metadata, symlinks, removal ---


def test_gzip_uploads_metadata_symlink_targets_and_removing_a_missing_path(sbx: Sandbox) -> None:
    info = sbx.files.write("meta.txt", "zipped", gzip=True, metadata={"Author": "mish"})
    sbx.files.rename("meta.txt", "moved.txt")
    sbx.commands.run("mkdir -p d && ln -s ../moved.txt d/link")

    assert info.metadata == {"author": "mish"}
    assert sbx.files.read("moved.txt") == "zipped"
    assert sbx.files.get_info("moved.txt").metadata == {"author": "mish"}
    linked = sbx.files.get_info("d/link")
    assert (linked.type, linked.symlink_target) == (FileType.FILE, "/home/user/moved.txt")
    [listed] = sbx.files.list("d")
    assert (listed.type, listed.symlink_target) == (FileType.SYMLINK, "/home/user/moved.txt")
    assert sbx.files.write("moved.txt", "plain").metadata is None
    assert sbx.files.get_info("moved.txt").metadata is None  # an overwrite clears stale metadata
    sbx.files.remove("never-was-there.txt")  # removing a missing path succeeds, as in E2B


def test_bad_uploads_are_refused_with_a_message(sbx: Sandbox, server: SandboxServer) -> None:
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token or ""}
    url = f"{server.url}/files"

    def post(body: bytes, **extra: str) -> httpx.Response:
        return httpx.post(url, params={"path": "f.txt"}, content=body, headers={**headers, **extra})

    corrupt = post(b"not gzip", **{"Content-Encoding": "gzip"})
    truncated = post(gzip.compress(b"x" * 1000)[:20], **{"Content-Encoding": "gzip"})
    unknown = post(b"x", **{"Content-Encoding": "br"})
    bad_value = post(b"x", **{"X-Metadata-Key": "tab\tinside"})

    assert (corrupt.status_code, truncated.status_code, unknown.status_code) == (400, 400, 400)
    assert "corrupt" in corrupt.json()["message"] and "truncated" in truncated.json()["message"]
    assert "not supported" in unknown.json()["message"]
    assert bad_value.status_code == 400 and "printable US-ASCII" in bad_value.json()["message"]
    assert sbx.files.exists("f.txt") is False


def test_signed_file_urls_open_without_headers_and_only_while_valid(make_sandbox: Callable[..., Sandbox]) -> None:
    sbx = make_sandbox(secure=True)
    sbx.files.write("shared.txt", "signed")

    good = httpx.get(sbx.download_url("shared.txt", "user"))
    expired = httpx.get(sbx.download_url("shared.txt", "user", use_signature_expiration=-120))
    forged = httpx.get(sbx.download_url("shared.txt", "user").replace("signature=v1_", "signature=v1_x"))
    other_path = httpx.get(sbx.download_url("shared.txt", "user").replace("shared.txt", "kept.txt"))

    assert (good.status_code, good.text) == (200, "signed")
    assert expired.status_code == 401 and expired.json() == {"code": 401, "message": "signature is already expired"}
    assert forged.status_code == 401 and other_path.status_code == 401


# --- what the server does not do ---


def test_routes_the_server_does_not_implement_answer_501_naming_them(sbx: Sandbox, server: SandboxServer) -> None:
    answer = httpx.post(f"{server.url}/sandboxes/{sbx.sandbox_id}/fork", json={}, headers={"X-API-Key": API_KEY})

    assert answer.status_code == 501
    assert "POST /sandboxes/" in answer.json()["message"] and "not implemented" in answer.json()["message"]


# --- every refusal names what was wrong ---


def test_bad_lifecycle_queries_are_refused_with_a_message(sbx: Sandbox, server: SandboxServer) -> None:
    headers = {"X-API-Key": API_KEY}

    def message(path: str, **params: str) -> tuple[int, str]:
        answer = httpx.get(f"{server.url}{path}", params=params, headers=headers)
        return answer.status_code, answer.json()["message"]

    assert message("/v2/sandboxes", order="sideways") == (
        400,
        "invalid request: order must be asc or desc, got 'sideways'",
    )
    assert message("/v2/sandboxes", startedAfter="yesterday")[1].endswith(
        "startedAfter must be an ISO 8601 date-time, got 'yesterday'"
    )
    assert message("/v2/sandboxes", limit="0")[1].endswith("limit must be 1 or more, got 0")
    assert message(f"/sandboxes/{sbx.sandbox_id}/metrics", start="-5")[1].endswith("start must not be negative, got -5")
    assert message(f"/sandboxes/{sbx.sandbox_id}/metrics", end="soon")[1].endswith(
        "end must be a Unix time in seconds, got 'soon'"
    )
    with pytest.raises(e2b_errors.SandboxException, match="snapshot name 'Not Allowed!'"):
        sbx.create_snapshot(name="Not Allowed!")


def test_a_pty_size_must_be_a_real_size(sbx: Sandbox) -> None:
    terminal = sbx.pty.create(PtySize(cols=80, rows=24))

    with pytest.raises(e2b_errors.InvalidArgumentException, match="1-65535 columns and rows, got 0x24"):
        sbx.pty.resize(terminal.pid, PtySize(cols=0, rows=24))


def test_a_stopped_watch_is_gone(sbx: Sandbox) -> None:
    handle = sbx.files.watch_dir(".")
    handle.stop()
    handle._closed = False  # the SDK refuses a stopped handle itself: ask the server anyway

    with pytest.raises(e2b_errors.NotFoundException, match="watcher .* was not found"):
        handle.get_new_events()


def test_an_empty_metadata_key_and_a_bad_signature_expiration_are_refused(
    make_sandbox: Callable[..., Sandbox], server: SandboxServer
) -> None:
    sbx = make_sandbox(secure=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token or ""}

    empty_key = httpx.post(
        f"{server.url}/files", params={"path": "f"}, content=b"x", headers={**headers, "X-Metadata-": "v"}
    )
    odd_expiry = httpx.get(
        f"{server.url}/files", params={"path": "f", "signature": "v1_x", "signature_expiration": "later"}
    )

    assert empty_key.status_code == 400 and "metadata key ''" in empty_key.json()["message"]
    assert odd_expiry.status_code == 401 and "Unix time" in odd_expiry.json()["message"]


def test_templates_refuse_bad_names_and_sources(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sandcastle.e2b_server.templates import TemplateStore
    from sandcastle.errors import InvalidSandboxRequest

    store = TemplateStore(home / "refusals")
    (home / "plain.txt").write_text("not a tree")
    monkeypatch.setenv("SANDCASTLE_HOME", str(home))

    with pytest.raises(InvalidSandboxRequest, match="template name 'Bad Name' must be"):
        store.build("Bad Name", home)
    with pytest.raises(InvalidSandboxRequest, match="no such directory or tarball"):
        store.build("ok", home / "missing")
    with pytest.raises(InvalidSandboxRequest, match="neither a directory nor a tar archive"):
        store.build("ok", home / "plain.txt")
    assert sandcastle_main(["templates", "build", "base", "--from", str(home)]) == 2
    assert "not 'base'" in capsys.readouterr().err
    assert store.list() == []


def test_the_plain_local_backend_refuses_a_template_it_cannot_apply(tmp_path: Path) -> None:
    from sandcastle.errors import SandboxError
    from sandcastle.sandbox.base import SandboxSpec
    from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

    provider = LocalSandboxProvider(tmp_path)

    with pytest.raises(SandboxError, match="no templates .*sandcastle sandbox-server"):
        provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=60, template="pyapp"))
    provider.kill(provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=60, template="base")).sandbox_id)


@pytest.mark.anyio
async def test_a_streaming_watch_ends_when_its_sandbox_is_killed(connection: dict[str, Any]) -> None:
    import anyio

    sbx = await AsyncSandbox.create(timeout=120, **connection)
    failures: list[Exception] = []
    handle = await sbx.files.watch_dir(".", on_event=lambda event: None, on_exit=failures.append)

    await sbx.kill()
    with anyio.fail_after(30):
        while not failures:
            await anyio.sleep(0.05)
    await handle.stop()
    assert isinstance(failures[0], e2b_errors.SandboxException)


def test_streamed_input_must_first_name_its_process(sbx: Sandbox) -> None:
    from e2b.envd.process import process_pb
    from protobuf import Oneof

    data = process_pb.StreamInputRequest.DataEvent(input=process_pb.ProcessInput(input=Oneof("stdin", b"x")))
    requests = iter([process_pb.StreamInputRequest(event=Oneof("data", data))])

    with pytest.raises(Exception, match="must start with an event naming the process"):
        sbx.commands._rpc.stream_input(requests)


def test_input_streamed_in_chunks_reaches_the_command_in_order(sbx: Sandbox) -> None:
    cat = sbx.commands.run("cat", background=True, stdin=True)

    sbx.commands.stream_input(cat.pid, [b"one ", "two ", b"three"])
    cat.close_stdin()

    assert cat.wait().stdout == "one two three"


def test_a_killed_sandbox_leaves_no_watch_open(make_sandbox: Callable[..., Sandbox], server: SandboxServer) -> None:
    sbx = make_sandbox()
    sbx.files.watch_dir(".")
    [watcher] = server.registry.get(sbx.sandbox_id).watchers.values()
    inotify_fd = watcher.fileno()

    sbx.kill()

    with pytest.raises(OSError):
        os.fstat(inotify_fd)


# --- the run option ---


def test_a_run_asking_for_a_template_gets_a_sandbox_made_from_it(runtime: Any, tmp_path: Path) -> None:
    from sandcastle.runs.records import RunStatus
    from sandcastle.runs.requests import PlaybookCall, RunRequest
    from sandcastle.runs.transcript import EventKind

    (tmp_path / "tpl" / "tools").mkdir(parents=True)
    (tmp_path / "tpl" / "tools" / "hello.sh").write_text("echo from the template\n")
    runtime.sandbox_server.registry.templates.build("tooling", tmp_path / "tpl")
    playbook = [PlaybookCall(tool="run_command", arguments={"command": "bash tools/hello.sh"})]

    run = runtime.wait(
        runtime.submit(RunRequest(instructions="x", playbook=playbook, sandbox={"template": "tooling"})).run_id,
        timeout_s=120,
    )
    missing = runtime.wait(
        runtime.submit(RunRequest(instructions="x", playbook=playbook, sandbox={"template": "absent"})).run_id,
        timeout_s=120,
    )

    [result] = [e.data.model_dump(mode="json") for e in runtime.events(run.run_id) if e.kind is EventKind.TOOL_RESULT]
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert result["output"]["stdout"]["text"] == "from the template\n"
    assert missing.status is RunStatus.FAILED
    assert "template 'absent' was not found" in missing.error.message
