"""Guards that only the real ASL executing can show: the RunTools Map's MaxConcurrency (fed from the
TOOL_CONCURRENCY setting), and a model reply with repeated tool-call ids ending the run before any
tool runs. The local runtime: moto executing the state machine, the real handlers, the real e2b SDK
against the local sandbox server (bubblewrap), and a fake OpenAI-compatible model over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import EventKind
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap

TOOL_CONCURRENCY = 2
PROBE = "# in-flight probe"


class InFlightRecorder:
    """Wraps the real sandbox provider: counts the probe commands executing at once.

    A probe waits until ``limit`` of them are in flight together (so reaching the limit is certain
    when the Map allows it), then gives a call beyond the limit a moment to arrive before it runs.
    The wait for the limit returns as soon as it is reached; only a broken limit (the setting not
    reaching the Map) makes one probe wait its full, generous timeout — and the test then fails on
    the count.
    """

    def __init__(self, provider: Any, limit: int) -> None:
        self._provider = provider
        self._limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        self.most_in_flight = 0
        self.probes = 0
        self._reached = threading.Event()
        self._overflow = threading.Event()

    def connect(self, sandbox_id: str, **kwargs: Any) -> Any:
        return _RecordedSandbox(self._provider.connect(sandbox_id, **kwargs), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    def run(self, sandbox: Any, command: str, **kwargs: Any) -> Any:
        if PROBE not in command:
            return sandbox.run(command, **kwargs)
        with self._lock:
            self.probes += 1
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            if self._in_flight >= self._limit:
                self._reached.set()
            if self._in_flight > self._limit:
                self._overflow.set()
        try:
            if not self._reached.wait(timeout=20):
                self._reached.set()  # the limit was never reached: the count already says so; wait no more
            self._overflow.wait(timeout=0.5)
            return sandbox.run(command, **kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1


class _RecordedSandbox:
    def __init__(self, sandbox: Any, recorder: InFlightRecorder) -> None:
        self._sandbox = sandbox
        self._recorder = recorder

    def run(self, command: str, **kwargs: Any) -> Any:
        return self._recorder.run(self._sandbox, command, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sandbox, name)


@pytest.fixture
def limited_runtime(
    tmp_path: Path, fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalRuntime]:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("SANDBOX_BACKEND", raising=False)
    with LocalRuntime(home=tmp_path / "home", environment={"TOOL_CONCURRENCY": str(TOOL_CONCURRENCY)}) as local:
        yield local


def test_a_turn_never_has_more_tool_calls_in_flight_than_tool_concurrency(
    limited_runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    recorder = InFlightRecorder(limited_runtime.deps.sandboxes, TOOL_CONCURRENCY)
    limited_runtime.deps.__dict__["sandboxes"] = recorder  # the handlers' own dependencies, in this process
    fake_openai.reply_tool_calls([("run_command", {"command": f"echo {n} {PROBE}"}) for n in range(5)])
    fake_openai.reply_text("Five echoes.")

    submitted = limited_runtime.submit(RunRequest(instructions="Echo five numbers at once."))
    run = limited_runtime.wait(submitted.run_id, timeout_s=180)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert recorder.probes == 5 and run.usage.tool_calls == 5
    assert recorder.most_in_flight == TOOL_CONCURRENCY
    results = [
        e.data.model_dump(mode="json", exclude_none=True)
        for e in limited_runtime.events(run.run_id)
        if e.kind is EventKind.TOOL_RESULT
    ]
    assert sorted(r["output"]["stdout"]["text"] for r in results) == [f"{n}\n" for n in range(5)]


def test_repeated_tool_call_ids_fail_the_run_before_any_tool_runs(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    same_id = [("write_file", {"path": f"{name}.txt", "content": name}, "c1") for name in ("a", "b")]
    fake_openai.reply_tool_calls(same_id)

    submitted = runtime.submit(RunRequest(instructions="Write two files."))
    run = runtime.wait(submitted.run_id, timeout_s=120)

    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "ModelReplyInvalid"
    assert "distinct, non-empty ids; got ['c1', 'c1']" in run.error.message
    kinds = [e.kind for e in runtime.events(run.run_id)]
    assert EventKind.ASSISTANT not in kinds and EventKind.TOOL_RESULT not in kinds
    assert run.usage.tool_calls == 0 and len(fake_openai.requests) == 1
    assert not sandbox_root.exists() or not any(sandbox_root.iterdir())
