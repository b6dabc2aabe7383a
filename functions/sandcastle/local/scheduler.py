"""The local scheduler: EventBridge Scheduler's schedules fire on time, on a clock tests can drive.

moto stores schedules but fires none. This scheduler creates the template's schedule groups and
``AWS::Scheduler::Schedule`` resources (the reaper's) in moto, then, on every ``tick``, reads every
enabled schedule back from the emulated Scheduler — the API creates its own there, as in the cloud
— and invokes each schedule's target function for each fire time that has come, with the target's
``Input`` and ``<aws.scheduler.scheduled-time>`` filled in. A schedule counts from when it was
created (as the scheduler's clock saw it: ``CreateSchedule`` is observed) or its ``StartDate``.

The clock is injectable (``set_clock``): tests move time forward and call ``tick()`` instead of sleeping.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sandcastle.errors import InvalidExpression
from sandcastle.runs.schedule_expressions import parse_expression

if TYPE_CHECKING:
    from sandcastle.local.stack import Stack

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_FIRES_PER_TICK = 10
"""Fire times handled per schedule and tick; older ones beyond this are dropped (the runtime was asleep)."""


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Fired:
    """One fire: the schedule, its time, the function invoked and what it answered (or the error)."""

    schedule: str
    scheduled_time: str
    function: str
    result: Any = None
    error: str | None = None


@dataclass
class _Tracked:
    after: datetime
    """Fire times up to here have been handled."""
    anchor: datetime
    """When a rate schedule started counting."""


class LocalScheduler:
    """Fires the emulated EventBridge Scheduler's schedules (every ``poll_s`` on a thread, or on ``tick()``)."""

    def __init__(self, stack: Stack, *, clock: Clock | None = None, poll_s: float = 1.0) -> None:
        self.stack = stack
        self.clock: Clock = clock or system_clock
        self.poll_s = poll_s
        self.fired: list[Fired] = []
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, events: Any) -> None:
        """Create the template's schedules, observe ``CreateSchedule`` on ``events``, start ticking."""
        events.register("after-call.scheduler.CreateSchedule", self._created)
        self._create_template_schedules()
        self._thread = threading.Thread(target=self._run, name="sandcastle-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def set_clock(self, clock: Clock) -> None:
        """Use ``clock`` from now on; every schedule counts from the new clock's present."""
        with self._lock:
            self.clock = clock
            now = clock()
            for tracked in self._tracked.values():
                tracked.after = tracked.anchor = now

    def tick(self) -> list[Fired]:
        """Fire every schedule whose time has come since the last tick; return what fired."""
        with self._lock:
            now = self.clock()
            fired = []
            for schedule in self._schedules():
                fired.extend(self._fire_due(schedule, now))
            self.fired.extend(fired)
            return fired

    # --- internals ---

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception:
                logger.exception("the local scheduler could not tick")

    def _client(self) -> Any:
        return self.stack.deps_client("scheduler")

    def _create_template_schedules(self) -> None:
        template = self.stack.template
        client = self._client()
        for logical_id in template.of_type("AWS::Scheduler::ScheduleGroup"):
            client.create_schedule_group(Name=template.physical_name(logical_id))
        for logical_id, resource in template.of_type("AWS::Scheduler::Schedule").items():
            properties = template.resolve(resource["Properties"])
            client.create_schedule(
                Name=properties.get("Name") or logical_id,
                GroupName=properties.get("GroupName", "default"),
                ScheduleExpression=properties["ScheduleExpression"],
                ScheduleExpressionTimezone=properties.get("ScheduleExpressionTimezone", "UTC"),
                FlexibleTimeWindow=properties.get("FlexibleTimeWindow", {"Mode": "OFF"}),
                Target=properties["Target"],
                State=properties.get("State", "ENABLED"),
            )

    def _created(self, http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        arn = parsed.get("ScheduleArn")
        if arn and getattr(http_response, "status_code", 500) < 300:
            with self._lock:
                now = self.clock()
                self._tracked.setdefault(arn, _Tracked(after=now, anchor=now))

    def _schedules(self) -> list[dict[str, Any]]:
        client = self._client()
        schedules = []
        for summary in client.list_schedules().get("Schedules", []):
            if summary.get("State", "ENABLED") != "ENABLED":
                continue
            schedules.append(client.get_schedule(GroupName=summary.get("GroupName"), Name=summary["Name"]))
        return schedules

    def _fire_due(self, schedule: dict[str, Any], now: datetime) -> list[Fired]:
        arn = schedule["Arn"]
        tracked = self._tracked.get(arn)
        if tracked is None:  # created before this scheduler watched: it counts from now
            tracked = self._tracked[arn] = _Tracked(after=now, anchor=_start_date(schedule) or now)
            return []
        try:
            expression = parse_expression(schedule["ScheduleExpression"])
        except InvalidExpression:
            logger.warning("schedule %s has an expression the local scheduler cannot read", schedule["Name"])
            return []
        times = list(
            expression.fire_times(
                schedule.get("ScheduleExpressionTimezone") or "UTC",
                anchor=_start_date(schedule) or tracked.anchor,
                after=tracked.after,
                until=now,
            )
        )
        tracked.after = now
        return [self._invoke(schedule, when) for when in times[-MAX_FIRES_PER_TICK:]]

    def _invoke(self, schedule: dict[str, Any], when: datetime) -> Fired:
        target = schedule["Target"]
        scheduled_time = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = (
            (target.get("Input") or "{}")
            .replace("<aws.scheduler.scheduled-time>", scheduled_time)
            .replace("<aws.scheduler.schedule-arn>", schedule["Arn"])
            .replace("<aws.scheduler.execution-id>", f"local-{schedule['Name']}-{scheduled_time}")
            .replace("<aws.scheduler.attempt-number>", "1")
        )
        function = target["Arn"].rsplit(":function:", 1)[-1].split(":", 1)[0]
        try:
            result = self.stack.invoke(function, json.loads(text))
        except Exception as error:
            logger.warning("schedule %s: its target %s failed: %s", schedule["Name"], function, error)
            return Fired(schedule["Name"], scheduled_time, function, error=str(error))
        return Fired(schedule["Name"], scheduled_time, function, result=result)


def _start_date(schedule: dict[str, Any]) -> datetime | None:
    start = schedule.get("StartDate")
    if isinstance(start, datetime):
        return start if start.tzinfo else start.replace(tzinfo=UTC)
    return None
