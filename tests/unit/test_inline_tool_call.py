"""A turn with exactly one tool call runs it in AgentStep (``runs/turns.py``): one invocation per step.

The fake model and sandbox count what was asked of them; a retry is the same call made again, as the
state machine's ``Retry`` would make it after a failure.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sandcastle.errors import ConditionFailed, SandboxUnavailable
from sandcastle.runs.lifecycle import end_run, finish_run, prepare_run
from sandcastle.runs.payloads import StepState
from sandcastle.runs.records import RunStatus, StopReason, utcnow
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.transcript import EventKind, Transcript
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider

LAMBDA_TIME_S = 890.0
"""What AgentStep has left at its start (its 900 s Timeout less the handler's margin)."""


def _prepared(deps: Dependencies, **fields: Any) -> str:
    run_id = submit_run(RunRequest.model_validate({"instructions": "Do it.", **fields}), deps).run_id
    prepare_run(run_id, deps)
    return run_id


def _step(run_id: str, step: int = 0) -> StepState:
    return StepState(run_id=run_id, step=step, inline_tool_call=True)


def _commands(sandboxes: FakeSandboxProvider) -> list[str]:
    return [c for c in sandboxes.sandboxes["fake-1"].commands if c != "mkdir -p ~/output"]


def test_a_turn_with_one_call_runs_it_in_the_same_step(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo hi"})).then_text("It printed hi.")

    state = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert (state.next, state.step, state.tool_call_ids) == ("agent", 1, ["call_1_0"])
    assert _commands(sandboxes) == ["echo hi"]
    assert [e.kind for e in deps.store.list_events(run_id)][-2:] == [EventKind.ASSISTANT, EventKind.TOOL_RESULT]
    assert deps.store.get_run(run_id).usage.tool_calls == 1
    # and the next turn reads the result
    final = agent_step(state, deps, time_left_s=LAMBDA_TIME_S)
    assert final.next == "finish" and final.stop_reason is StopReason.COMPLETED
    (result,) = model.calls[1].results(1)
    assert "ran: echo hi" in result.model_view()


def test_a_turn_with_several_calls_goes_to_the_map(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo a"}), ("run_command", {"command": "echo b"}))

    state = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert state.next == "tools" and state.tool_call_ids == ["call_1_0", "call_1_1"]
    assert _commands(sandboxes) == []


def test_a_state_machine_that_does_not_ask_for_it_gets_the_map(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    # An execution of a definition whose Choice knows no "agent" move must never be answered one.
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo hi"}))

    state = agent_step(StepState(run_id=run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert state.next == "tools" and _commands(sandboxes) == []


def test_too_little_time_left_for_the_call_sends_it_to_run_tool(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    # Given a run with 900 s left and a command limit of 600 s, and an invocation with 300 s left
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo hi"}))

    state = agent_step(_step(run_id), deps, time_left_s=300)

    assert state.next == "tools" and state.tool_call_ids == ["call_1_0"]
    assert _commands(sandboxes) == []


def test_a_retry_after_the_result_was_recorded_asks_nobody_and_runs_nothing(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    # max_tool_calls 1: the retry must not count the call it already ran against the budget
    run_id = _prepared(deps, budgets={"max_tool_calls": 1})
    model.then_tools(("run_command", {"command": "echo once"}))
    first = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)
    events = deps.store.list_events(run_id)

    again = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert again == first and again.next == "agent"
    assert len(model.calls) == 1 and _commands(sandboxes) == ["echo once"]
    assert deps.store.list_events(run_id) == events
    assert deps.store.get_run(run_id).usage.tool_calls == 1


class _UnavailableOnce:
    """The fake provider, whose first connection fails as a busy E2B would (``SandboxUnavailable``)."""

    def __init__(self, provider: FakeSandboxProvider) -> None:
        self._provider = provider
        self.failed = False

    def connect(self, sandbox_id: str, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise SandboxUnavailable("E2B is rate limiting or busy")
        return self._provider.connect(sandbox_id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)


def test_a_retry_after_the_reply_was_recorded_runs_the_call_without_asking_the_model_again(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo once"}))
    deps.sandboxes = _UnavailableOnce(sandboxes)  # type: ignore[assignment]
    with pytest.raises(SandboxUnavailable):  # the state machine retries AgentStep on it
        agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)
    assert [e.kind for e in deps.store.list_events(run_id)][-1] is EventKind.ASSISTANT

    state = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert state.next == "agent" and len(model.calls) == 1
    assert _commands(sandboxes) == ["echo once"]
    usage = deps.store.get_run(run_id).usage
    assert (usage.steps, usage.tool_calls) == (1, 1)


class _SlowModel(FakeModel):
    """Answers after ``effect`` happened, as if it happened while the model was thinking."""

    def __init__(self, effect: Any) -> None:
        super().__init__()
        self._effect = effect

    def complete(self, transcript: Transcript, tools: list[dict[str, Any]], **kwargs: Any) -> Any:
        self._effect()
        return super().complete(transcript, tools, **kwargs)


def test_the_deadline_still_applies_to_the_inline_call(
    deps: Dependencies, sandboxes: FakeSandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _prepared(deps)
    deadline = deps.store.get_run(run_id).deadline
    assert deadline is not None
    clock = [utcnow()]
    for module in ("turns", "tool_calls"):
        monkeypatch.setattr(f"sandcastle.runs.{module}.utcnow", lambda: clock[0])
    # Given a model that answers after the run's deadline
    deps._model = model = _SlowModel(lambda: clock.__setitem__(0, deadline + timedelta(seconds=1)))  # type: ignore[assignment]
    model.then_tools(("run_command", {"command": "echo too late"}))

    state = agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert state.next == "agent" and _commands(sandboxes) == []
    result = deps.store.list_events(run_id)[-1]
    assert result.data.error == "the run's deadline has passed; the call was not executed"
    stop = agent_step(state, deps, time_left_s=LAMBDA_TIME_S)
    finish_run(stop, deps)
    assert stop.stop_reason is StopReason.TIMEOUT and deps.store.get_run(run_id).status is RunStatus.TIMED_OUT


def test_a_run_cancelled_while_the_model_answered_never_runs_the_call(
    deps: Dependencies, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    deps._model = model = _SlowModel(  # type: ignore[assignment]
        lambda: end_run(deps.store.get_run(run_id), deps, status=RunStatus.CANCELLED)
    )
    model.then_tools(("run_command", {"command": "rm -rf ~/work"}))

    with pytest.raises(ConditionFailed):  # the reply is recorded only while the run is RUNNING
        agent_step(_step(run_id), deps, time_left_s=LAMBDA_TIME_S)

    assert _commands(sandboxes) == []
    assert EventKind.TOOL_RESULT not in [e.kind for e in deps.store.list_events(run_id)]
