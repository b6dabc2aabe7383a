"""Guards the rest of the suite did not notice when they were removed: each test here fails without its check.

- the sandbox environment allow-list (``runs/submit.py``, ``runs/tasks.py``)
- RunTool's deadline guard (``runs/tool_calls.py``)
- ``States.Timeout`` → TIMED_OUT (``runs/lifecycle.fail_run``)
- distinct, non-empty tool-call ids (``runs/turns._check_reply``)
- the schedule fire claim (``store/schedules.ScheduleStore.claim_fire``, used by ``runs/schedules.fire_schedule``)
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import datetime, timedelta

import boto3
import pytest

from sandcastle.agent.base import ModelTurn
from sandcastle.errors import ConditionFailed, InvalidRunRequest, ModelReplyInvalid, RunEnded, SandcastleError
from sandcastle.runs.lifecycle import end_run, fail_run, finish_run, prepare_run
from sandcastle.runs.payloads import FailInput, ScheduleFire, StepState, ToolTask
from sandcastle.runs.records import RunStatus, Schedule, StopReason, ToolCall, Usage, utcnow
from sandcastle.runs.requests import PlaybookCall, RunRequest, ScheduleRequest, TaskDefinition
from sandcastle.runs.schedules import FireOutcome, create_schedule, fire_schedule, schedule_run_id
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tasks import delete_task, put_task
from sandcastle.runs.tool_calls import run_tool
from sandcastle.runs.transcript import EventKind, Transcript
from sandcastle.runs.turns import agent_step
from sandcastle.sandbox.base import CommandResult, SandboxSpec
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider
from tests.unit.conftest import RecordingEventBus

PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "ls"})]


def _table_items(deps: Dependencies) -> list[dict]:
    return boto3.client("dynamodb").scan(TableName=deps.settings.table_name)["Items"]


def _executions(deps: Dependencies) -> list[dict]:
    return deps.executions.client.list_executions(stateMachineArn=deps.settings.state_machine_arn)["executions"]


def _prepared(deps: Dependencies, **fields) -> str:
    run_id = submit_run(RunRequest.model_validate({"instructions": "Do the task.", **fields}), deps).run_id
    prepare_run(run_id, deps)
    return run_id


# ---------------------------------------------------------------- the sandbox environment allow-list


def test_a_sandbox_variable_off_the_allow_list_is_refused_naming_it_and_nothing_is_written(
    deps: Dependencies,
) -> None:
    request = RunRequest.model_validate(
        {"instructions": "x", "sandbox": {"env": {"TZ": "UTC", "AWS_SECRET_ACCESS_KEY": "stolen"}}}
    )

    with pytest.raises(InvalidRunRequest) as caught:
        submit_run(request, deps)

    assert caught.value.field == "sandbox.env.AWS_SECRET_ACCESS_KEY"
    assert "AWS_SECRET_ACCESS_KEY is not an allowed sandbox variable; allowed: CI, DEBUG, LANG" in str(caught.value)
    assert _table_items(deps) == [] and _executions(deps) == []


def test_an_allowed_sandbox_variable_reaches_the_sandbox(deps: Dependencies, sandboxes: FakeSandboxProvider) -> None:
    _prepared(deps, sandbox={"env": {"TZ": "Europe/Paris"}})

    assert sandboxes.sandboxes["fake-1"].spec.envs == {"TZ": "Europe/Paris"}


def test_the_allow_list_is_the_configured_one(deps: Dependencies) -> None:
    deps.settings = deps.settings.model_copy(update={"sandbox_env_allowlist": []})
    request = RunRequest.model_validate({"instructions": "x", "sandbox": {"env": {"TZ": "UTC"}}})

    with pytest.raises(InvalidRunRequest, match="TZ is not an allowed sandbox variable; allowed: none") as caught:
        submit_run(request, deps)
    assert caught.value.field == "sandbox.env.TZ"


def test_a_saved_task_with_a_variable_off_the_allow_list_is_refused(deps: Dependencies) -> None:
    definition = TaskDefinition(instructions="x", sandbox={"env": {"LD_PRELOAD": "/tmp/x.so"}})  # type: ignore[arg-type]

    with pytest.raises(InvalidRunRequest, match="LD_PRELOAD is not an allowed sandbox variable") as caught:
        put_task("acme", "report", definition, deps)

    assert caught.value.field == "sandbox.env.LD_PRELOAD"
    assert deps.tasks.get("acme", "report") is None


def test_internet_access_is_refused_on_the_local_sandbox(deps: Dependencies) -> None:
    deps.settings = deps.settings.model_copy(update={"sandbox_backend": "local"})
    request = RunRequest.model_validate({"instructions": "x", "sandbox": {"allow_internet_access": True}})

    with pytest.raises(InvalidRunRequest, match="the local sandbox has no network") as caught:
        submit_run(request, deps)
    assert caught.value.field == "sandbox.allow_internet_access"
    assert _table_items(deps) == []


# ---------------------------------------------------------------- RunTool's deadline guard


@pytest.mark.parametrize(
    "call",
    [
        ("run_command", {"command": "echo too late"}),
        ("write_file", {"path": "late.txt", "content": "x"}),
    ],
)
def test_a_tool_call_past_the_run_deadline_is_not_executed_and_the_run_times_out(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider, call: tuple
) -> None:
    run_id = _prepared(deps)
    model.then_tools(call)
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    # Given the deadline passed while the model was answering
    deps.store.update_run(run_id, RunUpdate(set={"deadline": utcnow() - timedelta(seconds=1)}))

    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    result = deps.store.list_events(run_id)[-1]
    assert result.kind is EventKind.TOOL_RESULT
    assert result.data.error == "the run's deadline has passed; the call was not executed"
    assert sandboxes.connected == []
    assert sandboxes.sandboxes["fake-1"].commands == ["mkdir -p ~/output"]
    assert "late.txt" not in sandboxes.sandboxes["fake-1"].files
    # and the next turn ends the run TIMED_OUT without asking the model again
    stop = agent_step(state, deps, time_left_s=60)
    finish_run(stop, deps)
    assert stop.stop_reason is StopReason.TIMEOUT and len(model.calls) == 1
    assert deps.store.get_run(run_id).status is RunStatus.TIMED_OUT


class _SlowToConnect:
    """Wraps the fake provider: connecting takes ``seconds`` on the clock RunTool reads."""

    def __init__(self, provider: FakeSandboxProvider, clock: list[datetime], seconds: float) -> None:
        self._provider, self._clock, self._seconds = provider, clock, seconds

    def connect(self, sandbox_id: str, **kwargs: object) -> object:
        self._clock[0] += timedelta(seconds=self._seconds)
        return self._provider.connect(sandbox_id, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self._provider, name)


def test_a_tool_call_whose_sandbox_connection_outlasts_the_deadline_is_not_executed(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "echo too late"}))
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    # Given 30 s left, and a connection to the sandbox that takes 60 s
    clock = [utcnow()]
    deps.store.update_run(run_id, RunUpdate(set={"deadline": clock[0] + timedelta(seconds=30)}))
    monkeypatch.setattr("sandcastle.runs.tool_calls.utcnow", lambda: clock[0])
    deps.sandboxes = _SlowToConnect(sandboxes, clock, 60)  # type: ignore[assignment]

    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    result = deps.store.list_events(run_id)[-1]
    assert result.data.error == "the run's deadline has passed; the call was not executed"
    assert sandboxes.sandboxes["fake-1"].commands == ["mkdir -p ~/output"]


# ---------------------------------------------------------------- a run that ended (cancelled) meanwhile


def _cancel(deps: Dependencies, run_id: str) -> None:
    """End the run CANCELLED as ``cancel_run`` does, without killing the (fake) sandbox yet."""
    end_run(deps.store.get_run(run_id), deps, status=RunStatus.CANCELLED)


def test_a_tool_call_of_a_run_that_already_ended_never_runs(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "rm -rf ~/work"}))
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    _cancel(deps, run_id)

    outcome = run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    assert outcome["skipped"] == "run ended CANCELLED"
    assert sandboxes.sandboxes["fake-1"].commands == ["mkdir -p ~/output"]
    assert deps.store.list_events(run_id)[-1].kind is EventKind.END


def test_a_turn_of_a_run_that_already_ended_never_asks_the_model(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    _cancel(deps, run_id)
    model.then_text("an answer nobody will read")

    with pytest.raises(RunEnded, match="already ended CANCELLED"):
        agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    assert model.calls == []


def test_a_tool_result_that_arrives_after_the_run_ended_is_not_recorded(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "make all"}))
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)

    def cancelled_while_running(command: str) -> CommandResult:
        _cancel(deps, run_id)
        return CommandResult(exit_code=0, stdout=b"built\n", stderr=b"", duration_ms=5)

    sandboxes.sandboxes["fake-1"].answer = cancelled_while_running

    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    events = deps.store.list_events(run_id)
    assert events[-1].kind is EventKind.END and EventKind.TOOL_RESULT not in [e.kind for e in events]
    assert deps.store.get_run(run_id).usage.tool_calls == 0


def test_a_run_cancelled_while_its_sandbox_was_created_stays_cancelled(
    deps: Dependencies, sandboxes: FakeSandboxProvider
) -> None:
    run_id = submit_run(RunRequest(instructions="x"), deps).run_id
    create = sandboxes.create

    def create_while_cancelled(spec: SandboxSpec) -> object:
        _cancel(deps, run_id)
        return create(spec)

    sandboxes.create = create_while_cancelled  # type: ignore[method-assign]

    with contextlib.suppress(ConditionFailed):  # the state machine's Catch ends it: FailRun finds it ended
        prepare_run(run_id, deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED and run.started_at is None


def test_a_tool_call_id_the_turn_does_not_have_is_a_clear_error(deps: Dependencies, model: FakeModel) -> None:
    run_id = _prepared(deps)
    model.then_tools(("run_command", {"command": "ls"}))
    agent_step(StepState(run_id=run_id), deps, time_left_s=60)

    with pytest.raises(SandcastleError, match=f"turn 1 of run {run_id} has no tool call call_9_9"):
        run_tool(ToolTask(run_id=run_id, step=1, tool_call_id="call_9_9"), deps)


# ---------------------------------------------------------------- the tool-call budget before a turn


def test_a_spent_tool_call_budget_ends_the_run_without_asking_the_model_again(
    deps: Dependencies, model: FakeModel
) -> None:
    run_id = _prepared(deps, budgets={"max_tool_calls": 1})
    model.then_tools(("run_command", {"command": "ls"}))
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)
    model.then_text("I would have liked another call.")  # never asked for

    stop = agent_step(state, deps, time_left_s=60)
    finish_run(stop, deps)

    assert stop.next == "finish" and stop.stop_reason is StopReason.MAX_TOOL_CALLS
    assert len(model.calls) == 1
    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.BUDGET_EXCEEDED and run.usage.steps == 1


# ---------------------------------------------------------------- States.Timeout → TIMED_OUT


def test_a_state_timeout_caught_by_fail_run_ends_the_run_timed_out(
    deps: Dependencies, sandboxes: FakeSandboxProvider, events: RecordingEventBus
) -> None:
    run_id = _prepared(deps)
    failure = FailInput.model_validate(
        {"run_id": run_id, "error": {"Error": "States.Timeout", "Cause": "State 'RunTools' timed out."}}
    )

    assert fail_run(failure, deps) == {"run_id": run_id, "status": "TIMED_OUT"}

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.TIMED_OUT
    assert run.error is not None and run.error.type == "States.Timeout" and "timed out" in run.error.message
    end = deps.store.list_events(run_id)[-1]
    assert end.kind is EventKind.END and end.data.status == "TIMED_OUT"
    assert json.loads(events.entries[-1]["Detail"])["status"] == "TIMED_OUT"
    assert sandboxes.live == []


def test_any_other_caught_error_ends_the_run_failed(deps: Dependencies) -> None:
    run_id = _prepared(deps)
    failure = FailInput.model_validate({"run_id": run_id, "error": {"Error": "Sandbox.Timedout"}})

    assert fail_run(failure, deps)["status"] == "FAILED"


# ---------------------------------------------------------------- tool-call ids


class _OneReply:
    """A model that answers with one given turn (``FakeModel`` numbers its ids itself)."""

    backend = "openai"

    def __init__(self, turn: ModelTurn) -> None:
        self.turn = turn
        self.calls = 0

    def complete(self, transcript: Transcript, tools: list, *, model: str | None, timeout_s: float) -> ModelTurn:
        self.calls += 1
        return self.turn


@pytest.mark.parametrize(
    ("ids", "shown"),
    [(["c1", "c1"], "['c1', 'c1']"), (["c1", ""], "['c1', '']")],
)
def test_a_reply_whose_tool_call_ids_repeat_or_are_empty_is_invalid_and_nothing_runs(
    deps: Dependencies, ids: list[str], shown: str
) -> None:
    run_id = _prepared(deps)
    calls = [ToolCall(id=call_id, name="run_command", arguments='{"command": "ls"}') for call_id in ids]
    deps.__dict__["_model"] = _OneReply(
        ModelTurn(text=None, tool_calls=calls, usage=Usage(input_tokens=11, output_tokens=5))
    )

    with pytest.raises(ModelReplyInvalid, match="need distinct, non-empty ids") as caught:
        agent_step(StepState(run_id=run_id), deps, time_left_s=60)

    assert shown in str(caught.value)
    assert [e.kind for e in deps.store.list_events(run_id)] == [EventKind.SYSTEM, EventKind.USER]
    assert deps.store.get_run(run_id).usage.steps == 0


# ---------------------------------------------------------------- the schedule fire claim


class _ClaimsMeet:
    """Wraps the schedule store so that the first two ``claim_fire`` calls meet at a barrier.

    Both fires have then read the schedule (no latest run yet) and decided to start theirs: only the
    claim's condition can now let one of them through.
    """

    def __init__(self, store: object) -> None:
        self._store = store
        self._barrier = threading.Barrier(2, timeout=30)
        self._calls = 0
        self._lock = threading.Lock()

    def claim_fire(self, *args: object, **kwargs: object) -> None:
        with self._lock:
            self._calls += 1
            meet = self._calls <= 2
        if meet:
            self._barrier.wait()
        return self._store.claim_fire(*args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.parametrize("after_a_finished_run", [False, True])
@pytest.mark.usefixtures("linearizable_dynamodb")
def test_two_racing_fires_of_a_skip_schedule_start_one_run(deps: Dependencies, after_a_finished_run: bool) -> None:
    deps.schedule_triggers = type("NoTriggers", (), {"create": lambda self, s: None})()  # type: ignore[assignment]
    inline = TaskDefinition(instructions="x", playbook=PLAYBOOK)
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(1 minute)", run=inline), deps)
    if after_a_finished_run:  # the claim then requires the latest run to still be that one
        first = fire_schedule(
            ScheduleFire(schedule_id=schedule.schedule_id, tenant="acme", scheduled_time="2031-01-01T08:59:00Z"), deps
        )
        deps.store.update_run(
            first.run_id or "",
            RunUpdate(set={"status": RunStatus.SUCCEEDED}, require_not_terminal=True, release_slot_of="acme"),
        )
    deps.schedules = _ClaimsMeet(deps.schedules)  # type: ignore[assignment]
    outcomes: dict[str, object] = {}

    def fire(when: str) -> None:
        fire_ = ScheduleFire(schedule_id=schedule.schedule_id, tenant="acme", scheduled_time=when)
        outcomes[when] = fire_schedule(fire_, deps)

    # Given two fires (a late one and the next one) that both saw no run in progress
    times = ("2031-01-01T09:00:00Z", "2031-01-01T09:01:00Z")
    threads = [threading.Thread(target=fire, args=(when,)) for when in times]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then one started a run and the other found it in progress and skipped
    statuses = sorted(outcome.status for outcome in outcomes.values())  # type: ignore[attr-defined]
    assert statuses == ["skipped", "started"]
    started = next(o for o in outcomes.values() if o.status == "started")  # type: ignore[attr-defined]
    runs = {item["pk"]["S"] for item in _table_items(deps) if item["sk"]["S"] == "META"}
    assert runs == {f"RUN#{started.run_id}"} | ({f"RUN#{first.run_id}"} if after_a_finished_run else set())  # type: ignore[attr-defined]
    stored = deps.schedules.get("acme", schedule.schedule_id)
    assert stored is not None and stored.last_run_id == started.run_id  # type: ignore[attr-defined]
    [skip] = stored.skips
    # (QUEUED, or "starting" when the winner had claimed but not yet stored its run)
    assert skip.reason in {f"the previous run {started.run_id} is still {s}" for s in ("QUEUED", "starting")}  # type: ignore[attr-defined]


def _schedule(deps: Dependencies) -> Schedule:
    deps.schedule_triggers = type("NoTriggers", (), {"create": lambda self, s: None})()  # type: ignore[assignment]
    put_task("acme", "report", TaskDefinition(instructions="Report", playbook=PLAYBOOK), deps)
    return create_schedule("acme", ScheduleRequest(expression="rate(1 minute)", task="report"), deps)


def _fire(deps: Dependencies, schedule: Schedule, when: str) -> FireOutcome:
    return fire_schedule(ScheduleFire(schedule_id=schedule.schedule_id, tenant="acme", scheduled_time=when), deps)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_claimed_run_not_stored_yet_counts_as_starting(deps: Dependencies) -> None:
    schedule = _schedule(deps)
    # Given a fire that claimed its run a minute ago and has not stored it yet
    earlier = _iso(utcnow() - timedelta(minutes=1))
    claimed = schedule_run_id(schedule.schedule_id, earlier)
    deps.schedules.claim_fire(
        "acme", schedule.schedule_id, expected_run_id=None, run_id=claimed, scheduled_time=earlier
    )

    outcome = _fire(deps, schedule, _iso(utcnow()))

    assert outcome.status == "skipped" and outcome.reason == f"the previous run {claimed} is still starting"


def test_a_claimed_run_never_stored_stops_counting_once_its_fire_can_no_longer_be_retried(deps: Dependencies) -> None:
    schedule = _schedule(deps)
    # Given a fire that claimed its run two hours ago and died before storing it
    long_ago = _iso(utcnow() - timedelta(hours=2))
    claimed = schedule_run_id(schedule.schedule_id, long_ago)
    deps.schedules.claim_fire(
        "acme", schedule.schedule_id, expected_run_id=None, run_id=claimed, scheduled_time=long_ago
    )

    assert _fire(deps, schedule, _iso(utcnow())).status == "started"


def test_a_fire_that_could_not_start_its_run_does_not_hold_back_the_next(deps: Dependencies) -> None:
    schedule = _schedule(deps)
    delete_task("acme", "report", deps)
    assert _fire(deps, schedule, "2031-01-01T09:00:00Z").status == "failed"
    put_task("acme", "report", TaskDefinition(instructions="Report", playbook=PLAYBOOK), deps)

    assert _fire(deps, schedule, "2031-01-01T09:01:00Z").status == "started"
