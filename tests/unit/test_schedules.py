"""Schedules: expressions as EventBridge Scheduler reads them, one run per fire, overlap skip and allow."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sandcastle.errors import InvalidExpression, InvalidRunRequest, ScheduleNotFound
from sandcastle.runs.payloads import ScheduleFire
from sandcastle.runs.records import RunStatus, Schedule
from sandcastle.runs.requests import PlaybookCall, ScheduleRequest, TaskDefinition
from sandcastle.runs.schedule_expressions import parse_expression
from sandcastle.runs.schedules import create_schedule, delete_schedule, fire_schedule, list_schedules, schedule_run_id
from sandcastle.runs.tasks import delete_task, put_task
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies

PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "ls"})]


class FakeTriggers:
    """Stands in for EventBridge Scheduler: records the schedules created and deleted."""

    def __init__(self) -> None:
        self.created: list[Schedule] = []
        self.deleted: list[str] = []

    def create(self, schedule: Schedule) -> None:
        self.created.append(schedule)

    def delete(self, schedule_id: str) -> None:
        self.deleted.append(schedule_id)


@pytest.fixture
def triggers(deps: Dependencies) -> FakeTriggers:
    fake = FakeTriggers()
    deps.schedule_triggers = fake  # type: ignore[assignment]
    put_task("acme", "report", TaskDefinition(instructions="Report", playbook=PLAYBOOK), deps)
    return fake


def _fire(deps: Dependencies, schedule: Schedule, when: str) -> object:
    return fire_schedule(ScheduleFire(schedule_id=schedule.schedule_id, tenant="acme", scheduled_time=when), deps)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type]


# ---------------------------------------------------------------- expressions


def test_aws_cron_has_six_fields_and_sunday_is_one() -> None:
    weekdays = parse_expression("cron(0 9 ? * 2-6 *)")  # MON-FRI in AWS numbering
    times = list(weekdays.fire_times("UTC", anchor=_utc(2031, 1, 1), after=_utc(2031, 1, 3), until=_utc(2031, 1, 7)))

    assert [t.strftime("%a %d %H:%M") for t in times] == ["Fri 03 09:00", "Mon 06 09:00"]  # no weekend


def test_cron_follows_the_time_zone_and_its_years() -> None:
    berlin = parse_expression("cron(30 8 1 * ? 2032)")
    [first, *_] = berlin.fire_times(
        "Europe/Berlin", anchor=_utc(2031, 1, 1), after=_utc(2031, 6, 1), until=_utc(2032, 12, 31)
    )

    assert first.astimezone(UTC) == _utc(2032, 1, 1, 7, 30)


def test_rate_counts_from_its_anchor() -> None:
    rate = parse_expression("rate(15 minutes)")
    times = list(
        rate.fire_times("UTC", anchor=_utc(2031, 1, 1), after=_utc(2031, 1, 1, 0, 20), until=_utc(2031, 1, 1, 1))
    )

    assert [t.strftime("%H:%M") for t in times] == ["00:30", "00:45", "01:00"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 9 * * *)", "takes 6 fields"),
        ("cron(0 9 * * MON *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 9 ? * 8 *)", "out of range 1-7"),
        ("cron(0 9 15W * ? *)", "not supported"),
        ("rate(1 minutes)", "write rate(1 minute)"),
        ("rate(0 hours)", "at least 1"),
        ("every day", "use cron("),
    ],
)
def test_bad_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(InvalidExpression, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_expression(expression)


# ---------------------------------------------------------------- managing schedules


def test_a_schedule_is_created_with_its_cloud_twin_listed_and_deleted(
    deps: Dependencies, triggers: FakeTriggers
) -> None:
    schedule = create_schedule(
        "acme", ScheduleRequest(expression="cron(0 9 ? * MON-FRI *)", timezone="Europe/Berlin", task="report"), deps
    )

    assert triggers.created == [schedule]
    assert [s.schedule_id for s in list_schedules("acme", deps)] == [schedule.schedule_id]
    assert list_schedules("other", deps) == []
    with pytest.raises(ScheduleNotFound):
        delete_schedule("other", schedule.schedule_id, deps)

    delete_schedule("acme", schedule.schedule_id, deps)
    assert triggers.deleted == [schedule.schedule_id] and list_schedules("acme", deps) == []


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"expression": "cron(0 9 * * *)", "task": "report"}, "expression"),
        ({"expression": "rate(5 minutes)", "timezone": "Mars/Olympus", "task": "report"}, "timezone"),
        ({"expression": "rate(5 minutes)", "task": "missing"}, "task"),
        ({"expression": "rate(5 minutes)"}, "task"),
    ],
)
def test_a_bad_schedule_is_refused_before_anything_is_created(
    deps: Dependencies, triggers: FakeTriggers, request_body: dict, field: str
) -> None:
    with pytest.raises(InvalidRunRequest) as raised:
        create_schedule("acme", ScheduleRequest.model_validate(request_body), deps)

    assert raised.value.field == field
    assert triggers.created == [] and list_schedules("acme", deps) == []


# ---------------------------------------------------------------- fires


def test_each_fire_starts_one_run_and_a_refire_starts_none(deps: Dependencies, triggers: FakeTriggers) -> None:
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(5 minutes)", task="report"), deps)

    first = _fire(deps, schedule, "2031-01-01T09:00:00Z")
    again = _fire(deps, schedule, "2031-01-01T09:00:00+00:00")  # the same time, spelled otherwise

    assert first.status == "started" and again.status == "duplicate"  # type: ignore[attr-defined]
    assert first.run_id == again.run_id == schedule_run_id(schedule.schedule_id, "2031-01-01T09:00:00Z")  # type: ignore[attr-defined]
    run = deps.store.get_run(first.run_id)  # type: ignore[attr-defined]
    assert run.source == "schedule" and run.origin and run.origin.scheduled_time == "2031-01-01T09:00:00Z"


def test_overlap_skip_records_the_skip_and_allow_starts_anyway(deps: Dependencies, triggers: FakeTriggers) -> None:
    skip = create_schedule("acme", ScheduleRequest(expression="rate(1 minute)", task="report"), deps)
    allow = create_schedule("acme", ScheduleRequest(expression="rate(1 minute)", task="report", overlap="allow"), deps)

    started = _fire(deps, skip, "2031-01-01T09:00:00Z")
    skipped = _fire(deps, skip, "2031-01-01T09:01:00Z")
    assert skipped.status == "skipped"  # type: ignore[attr-defined]
    [recorded] = deps.schedules.get("acme", skip.schedule_id).skips  # type: ignore[union-attr]
    assert recorded.scheduled_time == "2031-01-01T09:01:00Z"
    assert recorded.reason == f"the previous run {started.run_id} is still QUEUED"  # type: ignore[attr-defined]

    deps.store.update_run(
        started.run_id,
        RunUpdate(set={"status": RunStatus.SUCCEEDED}, require_not_terminal=True, release_slot_of="acme"),
    )  # type: ignore[attr-defined]
    assert _fire(deps, skip, "2031-01-01T09:02:00Z").status == "started"  # type: ignore[attr-defined]

    assert {_fire(deps, allow, f"2031-01-01T09:0{m}:00Z").status for m in (0, 1)} == {"started"}  # type: ignore[attr-defined]


def test_a_fire_of_a_deleted_task_is_recorded_as_failed(deps: Dependencies, triggers: FakeTriggers) -> None:
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(5 minutes)", task="report"), deps)
    delete_task("acme", "report", deps)

    outcome = _fire(deps, schedule, "2031-01-01T09:00:00Z")

    assert outcome.status == "failed" and "the task 'report' no longer exists" in (outcome.reason or "")  # type: ignore[attr-defined]
    assert deps.schedules.get("acme", schedule.schedule_id).skips  # type: ignore[union-attr]


def test_a_fire_of_a_deleted_schedule_does_nothing(deps: Dependencies, triggers: FakeTriggers) -> None:
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(5 minutes)", task="report"), deps)
    delete_schedule("acme", schedule.schedule_id, deps)

    assert _fire(deps, schedule, "2031-01-01T09:00:00Z").status == "gone"  # type: ignore[attr-defined]


def test_an_inline_run_template_needs_no_saved_task(deps: Dependencies, triggers: FakeTriggers) -> None:
    inline = TaskDefinition(instructions="Inline", playbook=PLAYBOOK)
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(5 minutes)", run=inline), deps)

    outcome = _fire(deps, schedule, "2031-01-01T09:00:00Z")

    assert deps.store.get_run(outcome.run_id).instructions == "Inline"  # type: ignore[attr-defined]


def test_concurrent_fires_of_one_time_start_one_run(deps: Dependencies, triggers: FakeTriggers) -> None:
    from concurrent.futures import ThreadPoolExecutor

    schedule = create_schedule("acme", ScheduleRequest(expression="rate(5 minutes)", task="report"), deps)

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: _fire(deps, schedule, "2031-01-01T09:00:00Z"), range(4)))

    assert len({o.run_id for o in outcomes}) == 1  # type: ignore[attr-defined]
    assert {o.status for o in outcomes} <= {"started", "duplicate"}  # type: ignore[attr-defined]
