"""Each function's handler paths within its template role: the runtime checks every call they make.

The local runtime checks a handler's boto3 calls against its function's role in the SAM-transformed
template. These drive the paths the issue named through the real domain code, acting as the function
that runs them in the cloud, and assert that nothing was denied and that the effect happened.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest

from sandcastle.local.permissions import Policy
from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.cancel import cancel_run, end_stopped_execution
from sandcastle.runs.payloads import ExecutionStatusChange
from sandcastle.runs.reaper import reap, run_deadline
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import PlaybookCall, RunRequest
from sandcastle.store.executions import execution_arn
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap

SLOW = [
    PlaybookCall(tool="run_command", arguments={"command": "echo kept > ~/output/partial.txt"}),
    PlaybookCall(tool="run_command", arguments={"command": "sleep 30", "timeout_s": 120}),
]


def _running_with_a_file(runtime: LocalRuntime) -> str:
    """A run whose first tool call has written ~/output/partial.txt and whose second is sleeping."""
    run = runtime.submit(RunRequest(instructions="wait", playbook=SLOW))
    deadline = time.monotonic() + 60
    while sum(e.kind.value == "tool_result" for e in runtime.events(run.run_id)) < 1:
        assert time.monotonic() < deadline, "the first tool call did not finish"
        time.sleep(0.05)
    return run.run_id


def test_cancel_through_the_api_function_may_announce_the_run_end(runtime: LocalRuntime) -> None:
    assert runtime.permissions is not None
    run_id = _running_with_a_file(runtime)

    with runtime.permissions.acting_as("ApiFunction"):
        cancelled = cancel_run(run_id, "default", runtime.deps, by="test")

    assert cancelled.status is RunStatus.CANCELLED
    assert runtime.permissions.denied == []
    assert runtime.permissions.checked[("sandcastle-local-ApiFunction", "events.PutEvents")] == 1


def test_on_execution_end_may_announce_the_run_end(runtime: LocalRuntime) -> None:
    assert runtime.permissions is not None
    run_id = _running_with_a_file(runtime)
    arn = execution_arn(runtime.state_machine_arn, run_id)
    change = ExecutionStatusChange(
        executionArn=arn, stateMachineArn=runtime.state_machine_arn, name=run_id, status="TIMED_OUT"
    )

    with runtime.permissions.acting_as("OnExecutionEndFunction"):
        outcome = end_stopped_execution(change, runtime.deps)

    assert outcome["status"] == "TIMED_OUT"
    assert runtime.permissions.denied == []
    assert runtime.permissions.checked[("sandcastle-local-OnExecutionEndFunction", "events.PutEvents")] == 1


def test_the_reaper_may_keep_an_overdue_runs_files(runtime: LocalRuntime) -> None:
    assert runtime.permissions is not None
    run_id = _running_with_a_file(runtime)
    run = runtime.get_run(run_id)
    later = run_deadline(run, runtime.deps) + timedelta(seconds=runtime.deps.settings.reaper_grace_s + 1)

    with runtime.permissions.acting_as("ReaperFunction"):
        report = reap(runtime.deps, now=later)

    ended = runtime.get_run(run_id)
    assert report.errors == 0 and report.timed_out == 1, report.actions
    assert ended.status is RunStatus.TIMED_OUT
    assert [a.name for a in ended.artifacts] == ["partial.txt"]
    assert runtime.deps.objects.get(ended.artifacts[0].s3_key) == b"kept\n"
    assert runtime.permissions.denied == []


def _two_call_turn_then_one(fake_openai: FakeOpenAIServer) -> None:
    """A turn of two calls (the RunTools map: RunTool), a turn of one (run by AgentStep itself), an answer."""
    fake_openai.reply_tool_calls([("run_command", {"command": "echo a"}), ("run_command", {"command": "echo b"})])
    fake_openai.reply_tool_calls([("run_command", {"command": "echo kept > ~/output/kept.txt"})])
    fake_openai.reply_text("Done.")


def test_every_function_a_run_invokes_is_checked_call_by_call(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    assert runtime.permissions is not None
    _two_call_turn_then_one(fake_openai)
    run = runtime.submit(RunRequest(instructions="x"))

    assert runtime.wait(run.run_id).status is RunStatus.SUCCEEDED
    checked = {function.removeprefix("sandcastle-local-") for function, _ in runtime.permissions.checked}
    assert {"PrepareRunFunction", "AgentStepFunction", "RunToolFunction", "FinishRunFunction"} <= checked
    assert runtime.permissions.denied == []


@pytest.mark.parametrize("function", ["RunToolFunction", "AgentStepFunction"])
def test_a_grant_missing_from_a_role_fails_the_run_as_in_the_cloud(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, function: str
) -> None:
    guard = runtime.permissions
    assert guard is not None
    guard.identities[function] = replace(guard.identities[function], policy=Policy(()))
    _two_call_turn_then_one(fake_openai)
    run = runtime.submit(RunRequest(instructions="x"))

    ended = runtime.wait(run.run_id)

    assert ended.status is RunStatus.FAILED and ended.error is not None
    assert "AccessDeniedException" in ended.error.message
    assert f"{function}Role" in ended.error.message and "not authorized to perform: dynamodb:" in ended.error.message
    assert {function for function, _ in guard.denied} == {f"sandcastle-local-{function}"}


def test_the_submit_function_may_record_and_start_a_run(runtime: LocalRuntime) -> None:
    assert runtime.permissions is not None

    submitted = runtime.invoke(
        "SubmitRunFunction", RunRequest(instructions="x", playbook=SLOW[:1]).model_dump(mode="json")
    )

    assert runtime.wait(submitted["run_id"]).status is RunStatus.SUCCEEDED
    assert runtime.permissions.denied == []
    assert runtime.permissions.checked[("sandcastle-local-SubmitRunFunction", "stepfunctions.StartExecution")] == 1
