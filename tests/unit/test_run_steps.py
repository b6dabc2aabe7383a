"""The run loop's domain steps, with a fake sandbox and a fake model: each step, and each step twice."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest, ModelReplyInvalid, ModelRequestRejected, SandboxGone
from sandcastle.runs.lifecycle import fail_run, finish_run, prepare_run
from sandcastle.runs.payloads import FailInput, StepState, ToolTask
from sandcastle.runs.records import RunStatus, StopReason
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tool_calls import run_tool
from sandcastle.runs.transcript import EventKind
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider


def _submit(deps: Dependencies, **fields) -> str:
    request = RunRequest.model_validate({"instructions": "Count the lines of ~/input/data.csv", **fields})
    return submit_run(request, deps).run_id


def _executions(deps: Dependencies) -> list[dict]:
    return deps.executions.client.list_executions(stateMachineArn=deps.settings.state_machine_arn)["executions"]


def _table_items(deps: Dependencies) -> list[dict]:
    return boto3.client("dynamodb").scan(TableName=deps.settings.table_name)["Items"]


def _kinds(deps: Dependencies, run_id: str) -> list[str]:
    return [event.kind.value for event in deps.store.list_events(run_id)]


# --- submit ---


def test_submit_stores_the_run_queued_and_starts_its_execution_named_by_the_run_id(deps: Dependencies) -> None:
    data = base64.b64encode(b"a,b\n1,2\n").decode()
    run_id = _submit(deps, files=[{"name": "data.csv", "content_base64": data}], budgets={"max_steps": 5})

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.QUEUED
    assert run.budgets.max_steps == 5 and run.budgets.max_tool_calls == deps.settings.default_max_tool_calls
    assert run.model_backend == "openai" and run.model == deps.settings.default_model
    assert [f.name for f in run.files] == ["data.csv"]
    assert deps.objects.get(run.files[0].s3_key) == b"a,b\n1,2\n"
    assert [e["name"] for e in _executions(deps)] == [run_id]


def test_submitting_the_same_run_id_twice_starts_one_execution(deps: Dependencies) -> None:
    request = RunRequest(instructions="hello")
    first = submit_run(request, deps, run_id="run-fixed")
    second = submit_run(request, deps, run_id="run-fixed")
    assert first.run_id == second.run_id == "run-fixed"
    assert len(_executions(deps)) == 1


@pytest.mark.parametrize(
    ("fields", "field_named"),
    [
        ({"instructions": "   "}, "instructions"),
        ({"instructions": "x", "colour": "blue"}, "colour"),
        ({"instructions": "x", "budgets": {"max_steps": 0}}, "budgets.max_steps"),
        ({"instructions": "x", "budgets": {"max_stepz": 3}}, "budgets.max_stepz"),
        ({"instructions": "x", "files": [{"name": "../etc/passwd", "content_base64": "eA=="}]}, "files.0.name"),
    ],
)
def test_a_malformed_request_is_rejected_naming_the_field(fields: dict, field_named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunRequest.model_validate(fields)
    assert field_named in {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}


def test_a_missing_instructions_field_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        RunRequest.model_validate({"playbook": [{"tool": "run_command", "arguments": {"command": "ls"}}]})
    assert caught.value.errors()[0]["loc"] == ("instructions",)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"budgets": {"max_steps": 51}}, "budgets.max_steps", "at most 50"),
        ({"files": [{"name": "x.csv", "s3_key": "uploads/default/up-1/x.csv"}]}, "files[0].s3_key", "does not exist"),
        ({"files": [{"name": "x.csv", "s3_key": "nowhere/x.csv"}]}, "files[0].s3_key", "under uploads/default/"),
        ({"files": [{"name": "x", "content_base64": "@@@"}]}, "files[0].content_base64", "not valid base64"),
        ({"files": [{"name": "x"}]}, "files[0]", "exactly one of"),
    ],
)
def test_bad_input_gets_a_clear_error_and_nothing_is_written(
    deps: Dependencies, fields: dict, field: str, message: str
) -> None:
    with pytest.raises(InvalidRunRequest) as caught:
        _submit(deps, **fields)
    assert caught.value.field == field and message in str(caught.value)
    assert _table_items(deps) == []
    assert _executions(deps) == []


def test_a_run_without_playbook_needs_a_model_endpoint(deps: Dependencies) -> None:
    deps.settings = deps.settings.model_copy(update={"openai_base_url": None})
    with pytest.raises(InvalidRunRequest, match="OPENAI_API_KEY or OPENAI_BASE_URL"):
        _submit(deps)
    assert _table_items(deps) == []


# --- each step, twice: a retry rewrites nothing, duplicates nothing, creates no second sandbox ---


def _prepared(deps: Dependencies, **fields) -> str:
    run_id = _submit(deps, **fields)
    prepare_run(run_id, deps)
    return run_id


def test_prepare_twice_creates_one_sandbox_and_one_opening(deps: Dependencies, sandboxes: FakeSandboxProvider) -> None:
    data = base64.b64encode(b"1\n2\n").decode()
    run_id = _submit(deps, files=[{"name": "data.csv", "content_base64": data}])

    first = prepare_run(run_id, deps)
    events = deps.store.list_events(run_id)
    second = prepare_run(run_id, deps)

    assert first == second
    assert sandboxes.created == ["fake-1"]
    assert deps.store.list_events(run_id) == events
    assert [e.kind for e in events] == [EventKind.SYSTEM, EventKind.USER]
    assert "~/input/data.csv" in events[1].data.text
    assert sandboxes.sandboxes["fake-1"].files["input/data.csv"] == b"1\n2\n"
    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.RUNNING and run.sandbox_id == "fake-1" and run.deadline is not None


def test_agent_step_twice_asks_the_model_once_and_counts_usage_once(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "wc -l input/data.csv"}), ("read_file", {"path": "notes.txt"}))

    first = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)
    second = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)

    assert first == second
    assert first.next == "tools" and first.step == 1 and first.tool_call_ids == ["call_1_0", "call_1_1"]
    assert len(model.calls) == 1
    assert _kinds(deps, run_id) == ["system", "user", "assistant"]
    usage = deps.store.get_run(run_id).usage
    assert (usage.steps, usage.input_tokens, usage.output_tokens) == (1, 11, 5)


def test_the_model_sees_the_transcript_rebuilt_from_the_store(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo hi"})).then_text("It printed hi.")
    state = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)
    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    final = agent_step(state, deps, time_left_s=60)

    assert final.next == "finish" and final.stop_reason is StopReason.COMPLETED
    seen = model.calls[1]
    assert [e.kind for e in seen] == [EventKind.SYSTEM, EventKind.USER, EventKind.ASSISTANT, EventKind.TOOL_RESULT]
    (reply,) = seen.replies()
    assert reply.tool_calls[0].name == "run_command"
    (result,) = seen.results(1)
    assert "ran: echo hi" in result.model_view()


def test_run_tool_twice_executes_once(deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo once"}))
    state = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)
    task = ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0])

    run_tool(task, deps)
    events = deps.store.list_events(run_id)
    run_tool(task, deps)

    assert sandboxes.sandboxes["fake-1"].commands.count("echo once") == 1
    # the sandbox was kept alive for the rest of the run (its budget) plus the margin
    ((sandbox_id, keep_alive),) = sandboxes.keep_alives
    margin = deps.settings.sandbox_timeout_margin_s
    assert sandbox_id == "fake-1" and 0 < keep_alive - margin <= deps.settings.default_timeout_s
    assert deps.store.list_events(run_id) == events
    assert deps.store.get_run(run_id).usage.tool_calls == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (("run_command", '{"command": "ls"'), "not valid JSON"),
        (("launch_rockets", {"count": 3}), "unknown tool 'launch_rockets'"),
        (("run_command", {"cmd": "ls"}), "invalid arguments for run_command: command: Field required"),
        (("read_file", {"path": "a", "limit": -1}), "limit"),
    ],
)
def test_a_bad_tool_call_becomes_an_error_the_model_sees_and_is_never_executed(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider, call: tuple, error: str
) -> None:
    run_id = _prepared(deps)
    model.then_tools(call)
    state = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)

    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    result = deps.store.list_events(run_id)[-1]
    assert result.kind is EventKind.TOOL_RESULT and error in (result.data.error or "")
    assert sandboxes.connected == [] and sandboxes.sandboxes["fake-1"].commands == ["mkdir -p ~/output"]


def test_finish_twice_ends_the_run_once_and_kills_its_sandbox(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_text("All done: 2 lines.")
    state = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)

    finish_run(state, deps)
    events = deps.store.list_events(run_id)
    finish_run(state, deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.result == "All done: 2 lines."
    assert run.stop_reason is StopReason.COMPLETED and run.ended_at is not None
    assert deps.store.list_events(run_id) == events
    assert events[-1].kind is EventKind.END and events[-1].data.usage.steps == 1
    assert sandboxes.live == []


def test_fail_twice_records_the_error_once_and_kills_the_sandbox(
    deps: Dependencies, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    cause = '{"errorType": "ModelRequestRejected", "errorMessage": "model endpoint rejected the request (400): bad"}'
    failure = FailInput.model_validate({"run_id": run_id, "error": {"Error": "ModelRequestRejected", "Cause": cause}})

    fail_run(failure, deps)
    events = deps.store.list_events(run_id)
    fail_run(failure, deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "ModelRequestRejected" and "(400): bad" in run.error.message
    assert [e.kind.value for e in events][-2:] == ["error", "end"]
    assert deps.store.list_events(run_id) == events
    assert sandboxes.live == []


def test_fail_after_finish_changes_nothing(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_text("done")
    finish_run(agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60), deps)
    fail_run(FailInput.model_validate({"run_id": run_id, "error": {"Error": "States.Runtime"}}), deps)
    assert deps.store.get_run(run_id).status is RunStatus.SUCCEEDED


# --- budgets and bad replies ---


def test_the_step_budget_ends_the_run_budget_exceeded_with_the_last_answer(
    deps: Dependencies, model: FakeModel
) -> None:
    run_id = _prepared(deps, budgets={"max_steps": 2})
    model.then_tools(("run_command", {"command": "ls"}))
    model.replies.append(model.replies[0])
    state = StepState(run_id=run_id)
    for _ in range(2):
        state = agent_step(state, deps, time_left_s=60)
        run_tool(ToolTask(run_id=run_id, step=state.step, tool_call_id=state.tool_call_ids[0]), deps)

    stop = agent_step(state, deps, time_left_s=60)
    finish_run(stop, deps)

    assert stop.next == "finish" and stop.stop_reason is StopReason.MAX_STEPS
    assert len(model.calls) == 2
    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.BUDGET_EXCEEDED and run.stop_reason is StopReason.MAX_STEPS


def test_a_turn_asking_for_more_tool_calls_than_left_stops_the_run(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps, budgets={"max_tool_calls": 2})
    model.then_tools(
        ("run_command", {"command": "a"}), ("run_command", {"command": "b"}), ("run_command", {"command": "c"})
    )
    stop = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    assert stop.next == "finish" and stop.stop_reason is StopReason.MAX_TOOL_CALLS


def test_an_empty_model_reply_is_an_error(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_text("   ")
    with pytest.raises(ModelReplyInvalid, match="no text and no tool calls"):
        agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    assert _kinds(deps, run_id) == ["system", "user"]


def test_a_rejected_model_request_propagates_for_the_state_machine(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_raise(ModelRequestRejected("model endpoint rejected the request (400): context too long"))
    with pytest.raises(ModelRequestRejected):
        agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    assert deps.store.get_run(run_id).usage.steps == 0


def test_a_playbook_run_uses_the_playbook_model(deps: Dependencies) -> None:
    run_id = _prepared(deps, playbook=[{"tool": "run_command", "arguments": {"command": "echo hi"}}])
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    assert state.next == "tools" and state.tool_call_ids == ["pb_1"]
    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id="pb_1"), deps)
    final = agent_step(state, deps, time_left_s=60)
    finish_run(final, deps)
    run = deps.store.get_run(run_id)
    assert run.model_backend == "playbook" and run.status is RunStatus.SUCCEEDED
    assert "ran: echo hi" in (run.result or "")


def test_an_input_file_in_s3_over_the_size_cap_is_refused(deps: Dependencies) -> None:
    deps.objects.put("uploads/default/big.bin", b"x" * 2048)
    deps.settings = deps.settings.model_copy(update={"max_input_file_bytes": 1024})
    with pytest.raises(InvalidRunRequest, match="big.bin is 2048 bytes; the limit is 1024") as caught:
        _submit(deps, files=[{"name": "big.bin", "s3_key": "uploads/default/big.bin"}])
    assert caught.value.field == "files[0].s3_key"
    assert _table_items(deps) == []


def test_a_sandbox_that_vanished_mid_run_is_a_clear_error_not_a_hang(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "ls"}))
    state = agent_step(StepState(run_id=run_id, step=0), deps, time_left_s=60)
    sandboxes.kill("fake-1")  # expired, or killed behind the run's back

    with pytest.raises(SandboxGone, match="fake-1 no longer exists") as caught:
        run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)
    cause = json.dumps({"errorType": "SandboxGone", "errorMessage": str(caught.value)})
    fail_run(FailInput.model_validate({"run_id": run_id, "error": {"Error": "SandboxGone", "Cause": cause}}), deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.type == "SandboxGone" and "no longer exists" in run.error.message
