"""Each handler invoked twice with the same input, through the emulated Lambda API — as a Lambda or
Step Functions retry would — with the real bubblewrap sandbox: nothing duplicated, nothing changed,
no second sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap


class _NoExecution:
    """Executions that start nothing: this test drives the handlers itself."""

    def start(self, run_id: str) -> None:
        return None


def _snapshot(runtime: LocalRuntime, run_id: str) -> list[tuple[str, str, dict]]:
    return [(e.key, e.at.isoformat(), e.data.model_dump(mode="json")) for e in runtime.events(run_id)]


def test_every_handler_invoked_twice_writes_once(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    deps = Dependencies(runtime.deps.settings, executions=_NoExecution())
    run_id = submit_run(RunRequest(instructions="Create hello.txt"), deps).run_id
    fake_openai.reply_tool_calls([("run_command", {"command": "echo hello >> hello.txt && cat hello.txt"})])
    fake_openai.reply_text("hello.txt says hello.")

    def twice(function: str, payload: dict) -> dict:
        first = runtime.invoke(function, payload)
        before = _snapshot(runtime, run_id)
        second = runtime.invoke(function, payload)
        assert second == first, function
        assert _snapshot(runtime, run_id) == before, f"{function} changed the transcript when retried"
        return first

    state = twice("PrepareRunFunction", {"run_id": run_id})
    assert len(list(sandbox_root.iterdir())) == 1

    turn = twice("AgentStepFunction", state)
    assert turn["next"] == "tools" and len(fake_openai.requests) == 1

    result = twice(
        "RunToolFunction", {"run_id": run_id, "step": turn["step"], "tool_call_id": turn["tool_call_ids"][0]}
    )
    assert result["tool_call_id"] == turn["tool_call_ids"][0]
    tool_result = runtime.events(run_id)[-1].data
    assert tool_result.command().stdout.text == "hello\n"  # appended once, not twice

    final = twice("AgentStepFunction", turn)
    assert final["next"] == "finish" and len(fake_openai.requests) == 2

    twice("FinishRunFunction", final)
    twice("FailRunFunction", {"run_id": run_id, "error": {"Error": "States.Runtime", "Cause": "late duplicate"}})

    run = runtime.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.result == "hello.txt says hello."
    assert (run.usage.steps, run.usage.tool_calls) == (2, 1)
    assert not any(sandbox_root.iterdir())


def test_agent_step_running_its_turns_one_call_invoked_twice_runs_it_once(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    deps = Dependencies(runtime.deps.settings, executions=_NoExecution())
    run_id = submit_run(RunRequest(instructions="Create hello.txt"), deps).run_id
    fake_openai.reply_tool_calls([("run_command", {"command": "echo hello >> hello.txt && cat hello.txt"})])
    fake_openai.reply_text("hello.txt says hello.")
    state = runtime.invoke("PrepareRunFunction", {"run_id": run_id})

    # As the state machine invokes it: the turn's one call runs in AgentStep
    first = runtime.invoke("AgentStepFunction", {**state, "inline_tool_call": True})
    before = _snapshot(runtime, run_id)
    second = runtime.invoke("AgentStepFunction", {**state, "inline_tool_call": True})

    assert first == second and first["next"] == "agent"
    assert _snapshot(runtime, run_id) == before, "AgentStep changed the transcript when retried"
    assert len(fake_openai.requests) == 1
    assert runtime.events(run_id)[-1].data.command().stdout.text == "hello\n"  # appended once, not twice
    assert runtime.get_run(run_id).usage.tool_calls == 1
    final = runtime.invoke("AgentStepFunction", {**first, "inline_tool_call": True})
    runtime.invoke("FinishRunFunction", final)
    assert runtime.get_run(run_id).status is RunStatus.SUCCEEDED and not any(sandbox_root.iterdir())
