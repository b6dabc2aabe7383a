"""What one agent step costs the state machine, counted on the real ASL executing (moto): a turn with one
tool call is one AgentStep invocation and two state transitions (AgentStep, NextMove); a turn with several
goes through the RunTools map. And AgentStep retried after its reply or its call's result was recorded asks
the model once and runs the tool once. The local runtime: the real handlers, the real e2b SDK against the
local sandbox server (bubblewrap), a fake OpenAI-compatible model over HTTP."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import Run, RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import Event, EventKind
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap

STEPS = 4


def _run(runtime: LocalRuntime) -> Run:
    submitted = runtime.submit(RunRequest(instructions="Do the task."))
    return runtime.wait(submitted.run_id, timeout_s=120)


def _history(runtime: LocalRuntime, run_id: str) -> list[dict[str, Any]]:
    client = runtime.deps.executions.client
    arguments: dict[str, Any] = {"executionArn": runtime.execution(run_id)["executionArn"], "maxResults": 1000}
    events: list[dict[str, Any]] = []
    while True:
        page = client.get_execution_history(**arguments)
        events += page["events"]
        if not page.get("nextToken"):
            return events
        arguments["nextToken"] = page["nextToken"]


def _entered(history: list[dict[str, Any]]) -> Counter[str]:
    """How many times each state was entered (a state transition each, as Standard Workflows bill them)."""
    return Counter(e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered"))


def _results(runtime: LocalRuntime, run_id: str) -> list[str]:
    return [
        e.data.command().stdout.text
        for e in runtime.events(run_id)
        if e.kind is EventKind.TOOL_RESULT and e.data.output
    ]


def test_a_turn_with_one_tool_call_is_two_transitions_and_one_invocation(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    for n in range(STEPS):
        fake_openai.reply_tool_calls([("run_command", {"command": f"echo {n}"})])
    fake_openai.reply_text("Counted.")
    runtime.stats.reset()

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert _results(runtime, run.run_id) == [f"{n}\n" for n in range(STEPS)]
    history = _history(runtime, run.run_id)
    turns = STEPS + 1  # the last turn answers
    assert _entered(history) == {"PrepareRun": 1, "AgentStep": turns, "NextMove": turns, "FinishRun": 1}
    # so each tool step is exactly AgentStep + NextMove: 2 transitions
    assert sum(_entered(history).values()) == 2 * STEPS + 2 * 1 + 2
    invocations = [e for e in history if e["type"] == "TaskScheduled"]
    assert len(invocations) == 1 + turns + 1  # PrepareRun, one AgentStep per turn, FinishRun
    assert runtime.stats.invocations == {"PrepareRunFunction": 1, "AgentStepFunction": turns, "FinishRunFunction": 1}


def test_a_turn_with_several_tool_calls_goes_through_the_map(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": f"echo {n}"}) for n in range(3)])
    fake_openai.reply_tool_calls([("run_command", {"command": "echo alone"})])
    fake_openai.reply_text("Done.")
    runtime.stats.reset()

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert sorted(_results(runtime, run.run_id)) == sorted(["0\n", "1\n", "2\n", "alone\n"])
    entered = _entered(_history(runtime, run.run_id))
    assert (entered["AgentStep"], entered["NextMove"], entered["RunTools"], entered["RunTool"]) == (3, 3, 1, 3)
    assert runtime.stats.invocations["RunToolFunction"] == 3 and runtime.stats.invocations["AgentStepFunction"] == 3


LambdaServiceException = type("Lambda.ServiceException", (Exception,), {})
"""What Step Functions reports when Lambda fails to hand back a function's answer: retried by every task."""


class _FailsOnceAfter:
    """The handlers' store, whose first write of a ``kind`` event succeeds and then fails the invocation."""

    def __init__(self, store: Any, kind: EventKind) -> None:
        self._store = store
        self._kind = kind
        self.failed = False

    def append_event(self, event: Event, *args: Any, **kwargs: Any) -> bool:
        written = self._store.append_event(event, *args, **kwargs)
        if event.kind is self._kind and not self.failed:
            self.failed = True
            raise LambdaServiceException(f"injected after the {self._kind.value} event was written")
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("kind", [EventKind.ASSISTANT, EventKind.TOOL_RESULT])
def test_agent_step_retried_after_recording_asks_the_model_once_and_runs_the_tool_once(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, kind: EventKind
) -> None:
    failing = _FailsOnceAfter(runtime.deps.store, kind)
    runtime.deps.__dict__["store"] = failing  # the handlers' own dependencies, in this process
    fake_openai.reply_tool_calls([("run_command", {"command": "echo ran >> log.txt; cat log.txt"})])
    fake_openai.reply_tool_calls([("run_command", {"command": "cat log.txt"})])
    fake_openai.reply_text("It ran once.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert failing.failed
    failures = [
        e["taskFailedEventDetails"]["error"] for e in _history(runtime, run.run_id) if e["type"] == "TaskFailed"
    ]
    assert failures == ["Lambda.ServiceException"]  # AgentStep failed once and was retried
    assert len(fake_openai.requests) == 3  # one request per turn: the retry did not ask again
    assert _results(runtime, run.run_id) == ["ran\n", "ran\n"]  # the command appended once
    assert (run.usage.steps, run.usage.tool_calls) == (3, 2)
