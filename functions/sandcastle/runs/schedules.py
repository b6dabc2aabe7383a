"""Scheduled tasks: a cron or rate expression that starts a run of a saved task (or an inline template).

Each schedule is an item in the runs table and, in the cloud, an EventBridge Scheduler schedule that
invokes ``OnScheduleFunction`` with ``{schedule_id, tenant, scheduled_time}``. A fire starts exactly one
run: its id is derived from the schedule id and the scheduled time, so a retried or repeated fire of
the same time is a no-op. With ``overlap="skip"`` a fire while the previous run is still going starts
nothing and records the skip on the schedule.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from aws_lambda_powertools import Logger
from pydantic import ValidationError

from sandcastle.errors import (
    InvalidExpression,
    InvalidRunRequest,
    RunNotFound,
    ScheduleClaimLost,
    ScheduleNotFound,
)
from sandcastle.runs.budget import resolve_budgets
from sandcastle.runs.payloads import ScheduleFire
from sandcastle.runs.records import RunOrigin, Schedule, ScheduleSkip, utcnow
from sandcastle.runs.requests import ScheduleRequest
from sandcastle.runs.schedule_expressions import check_timezone, parse_expression
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tasks import run_request, save_task_hint
from sandcastle.store.schedules import FIRE_RETRY_WINDOW_S
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class FireOutcome:
    """What one fire did: ``started`` a run, found it ``duplicate``, ``skipped`` (overlap), ``failed``
    (the task is gone or the request is invalid: recorded as a skip), or the schedule is ``gone``."""

    status: Literal["started", "duplicate", "skipped", "failed", "gone"]
    run_id: str | None = None
    reason: str | None = None


def create_schedule(tenant: str, request: ScheduleRequest, deps: Dependencies) -> Schedule:
    """Check and store a schedule, then create its EventBridge Scheduler schedule.

    ``InvalidRunRequest`` naming the field when the expression, time zone or what to run is wrong.
    """
    try:
        parse_expression(request.expression)
    except InvalidExpression as error:
        raise InvalidRunRequest(str(error), field="expression") from error
    try:
        check_timezone(request.timezone)
    except InvalidExpression as error:
        raise InvalidRunRequest(str(error), field="timezone") from error
    if (request.task is None) == (request.run is None):
        raise InvalidRunRequest("give exactly one of task (a saved task's name) and run (a run template)", "task")
    if request.task is not None and deps.tasks.get(tenant, request.task) is None:
        hint = save_task_hint(request.task)
        raise InvalidRunRequest(f"no task named {request.task!r}; save it first: {hint}", "task")
    if request.run is not None:
        resolve_budgets(request.run.budgets, deps.settings)
    schedule = Schedule(
        **request.model_dump(), schedule_id=f"sch-{uuid.uuid4().hex[:20]}", tenant=tenant, created_at=utcnow()
    )
    deps.schedules.create(schedule)
    try:
        deps.schedule_triggers.create(schedule)
    except Exception:
        deps.schedules.delete(tenant, schedule.schedule_id)
        raise
    logger.info("schedule created", extra={"schedule_id": schedule.schedule_id, "expression": schedule.expression})
    return schedule


def get_schedule(tenant: str, schedule_id: str, deps: Dependencies) -> Schedule:
    """The tenant's schedule, or ``ScheduleNotFound`` (another tenant's too)."""
    schedule = deps.schedules.get(tenant, schedule_id)
    if schedule is None:
        raise ScheduleNotFound(f"no schedule {schedule_id}")
    return schedule


def list_schedules(tenant: str, deps: Dependencies) -> list[Schedule]:
    return deps.schedules.list(tenant)


def delete_schedule(tenant: str, schedule_id: str, deps: Dependencies) -> None:
    """Delete the EventBridge Scheduler schedule, then the item; ``ScheduleNotFound`` when there is none."""
    get_schedule(tenant, schedule_id, deps)
    deps.schedule_triggers.delete(schedule_id)
    deps.schedules.delete(tenant, schedule_id)
    logger.info("schedule deleted", extra={"schedule_id": schedule_id})


def schedule_run_id(schedule_id: str, scheduled_time: str) -> str:
    """The one run a schedule starts for one scheduled time."""
    digest = hashlib.sha256(f"{schedule_id}\n{normalize_time(scheduled_time)}".encode()).hexdigest()
    return f"run-{digest[:32]}"


def normalize_time(value: str) -> str:
    """``2026-11-05T09:00:00Z`` whatever the spelling (offset, fraction); the text itself if it is no time."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fire_schedule(fire: ScheduleFire, deps: Dependencies) -> FireOutcome:
    """Start the schedule's run for ``fire.scheduled_time`` — once, whatever the number of deliveries."""
    scheduled_time = normalize_time(fire.scheduled_time)
    run_id = schedule_run_id(fire.schedule_id, scheduled_time)
    facts = {"run_id": run_id, "schedule_id": fire.schedule_id, "scheduled_time": scheduled_time}
    for _ in range(_CLAIM_ATTEMPTS):
        schedule = deps.schedules.get(fire.tenant, fire.schedule_id)
        if schedule is None:
            logger.info("the schedule was deleted; nothing to run", extra=facts)
            return FireOutcome(status="gone", run_id=run_id)
        if _exists(run_id, deps):
            logger.info("this fire already started its run", extra=facts)
            return FireOutcome(status="duplicate", run_id=run_id)
        previous = schedule.last_run_id
        if schedule.overlap == "skip" and previous and previous != run_id:
            still = _live_status(previous, schedule.last_scheduled_time, deps)
            if still is not None:
                reason = f"the previous run {previous} is still {still}"
                _skip(schedule, scheduled_time, reason, deps)
                return FireOutcome(status="skipped", run_id=None, reason=reason)
        try:
            deps.schedules.claim_fire(
                fire.tenant, fire.schedule_id, expected_run_id=previous, run_id=run_id, scheduled_time=scheduled_time
            )
            break
        except ScheduleClaimLost:
            continue  # another fire changed the latest run: look again
    else:
        assert schedule is not None  # every attempt that found no schedule returned "gone"
        reason = "other fires kept changing the schedule; giving up on this one"
        _skip(schedule, scheduled_time, reason, deps)
        return FireOutcome(status="skipped", reason=reason)

    try:
        definition = schedule.run or deps.tasks.get(schedule.tenant, schedule.task or "")
        if definition is None:
            raise InvalidRunRequest(f"the task {schedule.task!r} no longer exists", field="task")
        request = run_request(definition, tenant=schedule.tenant, source="schedule")
        origin = RunOrigin(
            kind="schedule", task=schedule.task, schedule_id=schedule.schedule_id, scheduled_time=scheduled_time
        )
        run = submit_run(request, deps, run_id=run_id, origin=origin)
    except (InvalidRunRequest, ValidationError) as error:
        reason = f"could not start a run: {error}"
        deps.schedules.release_fire(
            fire.tenant,
            fire.schedule_id,
            run_id=run_id,
            previous_run_id=previous,
            previous_scheduled_time=schedule.last_scheduled_time,
        )
        _skip(schedule, scheduled_time, reason, deps)
        logger.warning("scheduled run not started", extra={**facts, "reason": reason})
        return FireOutcome(status="failed", run_id=None, reason=reason)
    logger.info("scheduled run started", extra=facts)
    return FireOutcome(status="started", run_id=run.run_id)


def _exists(run_id: str, deps: Dependencies) -> bool:
    try:
        deps.store.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _live_status(run_id: str, scheduled_time: str | None, deps: Dependencies) -> str | None:
    """The schedule's latest run's status while it is QUEUED or RUNNING; None once it ended.

    A claimed run that does not exist yet is "starting": the fire that claimed it is between its
    claim and ``submit_run`` (a fire that cannot start its run releases the claim). Only once no
    retry of that fire can come any more (``FIRE_RETRY_WINDOW_S`` after its scheduled time) is a
    missing run taken for one that will never start.
    """
    try:
        run = deps.store.get_run(run_id)
    except RunNotFound:
        try:
            claimed_for = datetime.fromisoformat(normalize_time(scheduled_time or "").replace("Z", "+00:00"))
        except ValueError:
            return None
        if utcnow() - claimed_for < timedelta(seconds=FIRE_RETRY_WINDOW_S):
            return "starting"
        return None
    return None if run.status.terminal else run.status.value


def _skip(schedule: Schedule, scheduled_time: str, reason: str, deps: Dependencies) -> None:
    skip = ScheduleSkip(at=utcnow(), scheduled_time=scheduled_time, reason=reason)
    deps.schedules.record_skip(schedule.tenant, schedule.schedule_id, skip)
    logger.info(
        "schedule fire skipped",
        extra={"schedule_id": schedule.schedule_id, "scheduled_time": scheduled_time, "reason": reason},
    )
