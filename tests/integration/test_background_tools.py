"""Background processes through the real tools and the real run loop, on both local sandbox backends.

Each tool call is its own ``RunTool`` invocation (the real ASL in moto, a fresh sandbox connection
each time): a server started in the background by one call answers ``curl`` in the next, its
output is read by a third, and it dies with the sandbox when the run ends.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import EventKind
from tests.fakes.openai_server import FakeOpenAIServer, fake_openai  # noqa: F401

pytestmark = pytest.mark.bwrap


@pytest.fixture(params=["local", "e2b-local"])
def runtime(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LocalRuntime]:
    """The local runtime with the ``local`` backend, or with the local E2B server (its default)."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("MODEL_MAX_RETRIES", "0")
    for name in ("OPENAI_API_KEY", "E2B_API_KEY", "E2B_API_URL", "SANDBOX_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "local":
        monkeypatch.setenv("SANDBOX_BACKEND", "local")
    with LocalRuntime(home=tmp_path / "home") as local:
        assert (local.sandbox_server is None) == (request.param == "local")
        yield local


def _host_processes_matching(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def test_a_server_started_in_the_background_answers_curl_in_the_next_tool_call(
    runtime: LocalRuntime,
    fake_openai: FakeOpenAIServer,  # noqa: F811
) -> None:
    port = 20000 + uuid.uuid4().int % 20000
    server = f"python3 -m http.server {port} --bind 127.0.0.1"
    fake_openai.reply_tool_calls(
        [("write_file", {"path": "site/index.html", "content": "hello from the background\n"})]
    )
    fake_openai.reply_tool_calls([("run_command", {"command": server, "cwd": "site", "background": True})])
    fake_openai.reply_tool_calls(
        [
            (
                "run_command",
                {"command": f"for i in $(seq 50); do curl -sf http://127.0.0.1:{port}/ && exit; sleep 0.1; done"},
            )
        ]
    )
    fake_openai.reply_text("It answers.")

    run = runtime.wait(runtime.submit(RunRequest(instructions="Serve the site and test it.")).run_id, timeout_s=120)

    results = [event.data for event in runtime.events(run.run_id) if event.kind is EventKind.TOOL_RESULT]
    started, fetched = results[1].output, results[2].output
    assert run.status.value == "SUCCEEDED", run.error
    assert started.process_id.startswith("proc-") and started.running is True, started
    assert fetched.exit_code == 0 and fetched.stdout.text == "hello from the background\n", fetched
    assert _host_processes_matching(server) == []  # the run ended: the sandbox, and the server, are gone
