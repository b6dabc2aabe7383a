"""The approval gate and decisions as domain steps, with a fake model and sandbox: each step, and each step twice."""

from __future__ import annotations

import pytest

from sandcastle.errors import ApprovalConflict
from sandcastle.runs.approvals import await_approval, decide
from sandcastle.runs.lifecycle import prepare_run
from sandcastle.runs.payloads import StepState
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.transcript import EventKind
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel


class RecordingTaskTokens:
    def __init__(self) -> None:
        self.resumed: list[str] = []

    def resume(self, task_token: str) -> bool:
        self.resumed.append(task_token)
        return True


@pytest.fixture
def tokens(deps: Dependencies) -> RecordingTaskTokens:
    deps.task_tokens = tokens = RecordingTaskTokens()
    return tokens


def _waiting_run(deps: Dependencies, model: FakeModel) -> tuple[str, StepState]:
    model.then_tools(("run_command", {"command": "make deploy"}), ("run_command", {"command": "ls"}))
    policy = [{"tool": "run_command", "match": {"command": "deploy"}, "action": "ask", "reason": "deploys"}]
    run_id = submit_run(RunRequest(instructions="Ship it.", policy=policy), deps).run_id
    prepare_run(run_id, deps)
    step = agent_step(StepState(run_id=run_id, inline_tool_call=True), deps, time_left_s=600)
    return run_id, step


def _calls(deps: Dependencies, run_id: str) -> list:
    return [e for e in deps.store.list_events(run_id) if e.kind is EventKind.ASSISTANT][0].data.tool_calls


def _kinds(deps: Dependencies, run_id: str) -> list[str]:
    return [event.kind.value for event in deps.store.list_events(run_id)]


def test_a_turn_waits_and_a_retried_step_asks_nothing_twice(deps: Dependencies, model: FakeModel) -> None:
    run_id, step = _waiting_run(deps, model)

    again = agent_step(StepState(run_id=run_id, inline_tool_call=True), deps, time_left_s=600)

    assert step.next == again.next == "approve" and step.step == again.step == 0  # the same turn, again later
    [approval] = deps.approvals.list(run_id)
    assert step.tool_call_ids == [approval.tool_call_id] and approval.reason == "deploys"
    assert _kinds(deps, run_id).count(EventKind.APPROVAL_REQUESTED.value) == 1
    assert EventKind.TOOL_RESULT.value not in _kinds(deps, run_id)  # the allowed `ls` waits with it


def test_the_first_decision_stands(deps: Dependencies, model: FakeModel, tokens: RecordingTaskTokens) -> None:
    run_id, step = _waiting_run(deps, model)
    [call_id] = step.tool_call_ids
    tenant = deps.store.get_run(run_id).tenant

    first = decide(run_id, call_id, tenant, deps, decision="reject", by="key_a", comment="no")
    same = decide(run_id, call_id, tenant, deps, decision="reject", by="key_b", comment="again")
    with pytest.raises(ApprovalConflict, match="already rejected; it cannot be approved"):
        decide(run_id, call_id, tenant, deps, decision="approve", by="key_b", comment=None)

    assert same == first and (first.decided_by, first.comment) == ("key_a", "no")
    assert _kinds(deps, run_id).count(EventKind.APPROVAL_DECIDED.value) == 1


def test_a_turn_decided_before_its_token_is_stored_goes_on_by_itself(
    deps: Dependencies, model: FakeModel, tokens: RecordingTaskTokens
) -> None:
    run_id, step = _waiting_run(deps, model)
    [call_id] = step.tool_call_ids
    decide(run_id, call_id, "default", deps, decision="approve", by="key_a", comment=None)
    assert tokens.resumed == []  # nothing waits yet

    await_approval(run_id, step.step + 1, "token-1", deps)

    assert tokens.resumed == ["token-1"]
    assert deps.store.get_run(run_id).status is RunStatus.AWAITING_APPROVAL  # until AgentStep takes the turn again
    resumed = agent_step(StepState(run_id=run_id, inline_tool_call=True), deps, time_left_s=600)
    assert resumed.next == "tools" and len(resumed.tool_call_ids) == 2  # both calls run, in the Map
    assert deps.store.get_run(run_id).status is RunStatus.RUNNING
    assert deps.approvals.task_token(run_id) is None


def test_a_decision_once_the_token_is_stored_sends_it_back(
    deps: Dependencies, model: FakeModel, tokens: RecordingTaskTokens, events
) -> None:
    run_id, step = _waiting_run(deps, model)
    await_approval(run_id, step.step + 1, "token-1", deps)
    await_approval(run_id, step.step + 1, "token-1", deps)  # a retried AwaitApproval
    assert tokens.resumed == []
    assert [e["DetailType"] for e in events.entries if e["DetailType"] == "Run Waiting"] == ["Run Waiting"]

    decide(run_id, step.tool_call_ids[0], "default", deps, decision="reject", by="key_a", comment="not today")

    assert tokens.resumed == ["token-1"]
    resumed = agent_step(StepState(run_id=run_id, inline_tool_call=True), deps, time_left_s=600)
    # the Map runs only the call left (ls); the rejected one has its refusal, which the model reads
    assert resumed.next == "tools" and resumed.tool_call_ids == [c.id for c in _calls(deps, run_id)][1:]
    [refusal] = [e.data for e in deps.store.list_events(run_id) if e.kind is EventKind.TOOL_RESULT]
    assert refusal.tool_call_id == step.tool_call_ids[0] and "not today" in (refusal.error or "")


def test_the_terminal_shows_a_waiting_call_and_how_to_decide_it(deps: Dependencies, model: FakeModel) -> None:
    import io

    from sandcastle.cli.printer import EventPrinter

    run_id, step = _waiting_run(deps, model)
    out = io.StringIO()
    for event in deps.store.list_events(run_id):
        EventPrinter(out).event(event)

    assert f"⏸ approval needed (deploys): {step.tool_call_ids[0]} run_command make deploy" in out.getvalue()
    assert f"sandcastle approve|reject {run_id} {step.tool_call_ids[0]}" in out.getvalue()
