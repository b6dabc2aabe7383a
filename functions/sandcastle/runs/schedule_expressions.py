"""EventBridge Scheduler expressions — ``cron(...)``, ``rate(...)``, ``at(...)`` — checked and evaluated.

The API checks an expression before creating a schedule (a 422 naming the problem, rather than a
failed ``CreateSchedule``); the local scheduler asks when one fires next. AWS cron has six fields —
minutes, hours, day of month, month, day of week (1-7 = SUN-SAT), year — and one of the two day
fields must be ``?``; it is turned into the five-field form croniter reads (day of week 0-6).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sandcastle.errors import InvalidExpression

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_MAX_YEAR_SCAN = 2000
"""Cron matches examined at most while looking for one in the expression's years."""


@dataclass(frozen=True)
class ScheduleExpression:
    """A parsed expression: ``cron`` (croniter's five fields and the allowed years), ``rate`` or ``at``."""

    text: str
    kind: Literal["cron", "rate", "at"]
    cron: str | None = None
    years: frozenset[int] | None = None
    """The years a cron expression fires in; None for every year."""
    period: timedelta | None = None
    at: datetime | None = None
    """The naive local time of an ``at()`` expression."""

    def fire_times(self, timezone: str, *, anchor: datetime, after: datetime, until: datetime) -> Iterator[datetime]:
        """The fire times in ``(after, until]``, oldest first, timezone-aware.

        ``anchor`` is when a rate schedule started counting (its creation or start date): it fires at
        ``anchor + k * period``.
        """
        zone = ZoneInfo(timezone)
        if self.kind == "at":
            assert self.at is not None
            when = self.at.replace(tzinfo=zone)
            if after < when <= until:
                yield when
            return
        if self.kind == "rate":
            assert self.period is not None
            elapsed = max(0.0, (after - anchor).total_seconds())
            k = int(elapsed // self.period.total_seconds()) + 1
            while (when := anchor + k * self.period) <= until:
                if when > after:
                    yield when
                k += 1
            return
        from croniter import croniter

        assert self.cron is not None
        iterator = croniter(self.cron, after.astimezone(zone))
        for _ in range(_MAX_YEAR_SCAN):
            when = iterator.get_next(datetime)
            if when > until:
                return
            if self.years is None or when.year in self.years:
                yield when
            elif self.years and when.year > max(self.years):
                return


def parse_expression(text: str) -> ScheduleExpression:
    """Parse ``text``; ``InvalidExpression`` saying what is wrong."""
    text = text.strip()
    if match := _RATE.match(text):
        value, unit = int(match.group(1)), match.group(2)
        if value < 1:
            raise InvalidExpression("a rate must be at least 1, e.g. rate(5 minutes)")
        singular = unit.rstrip("s")
        if (value == 1) != (unit == singular):
            raise InvalidExpression(f"write rate({value} {singular if value == 1 else singular + 's'})")
        return ScheduleExpression(text, "rate", period=timedelta(seconds=value * _UNIT_SECONDS[singular]))
    if match := _AT.match(text):
        try:
            return ScheduleExpression(text, "at", at=datetime.fromisoformat(match.group(1)))
        except ValueError as error:
            raise InvalidExpression(f"{match.group(1)} is not a valid date and time") from error
    if match := _CRON.match(text):
        cron, years = _aws_cron(match.group(1))
        return ScheduleExpression(text, "cron", cron=cron, years=years)
    raise InvalidExpression(
        "use cron(minutes hours day-of-month month day-of-week year), rate(<n> minutes|hours|days) "
        "or at(yyyy-mm-ddThh:mm:ss)"
    )


def check_timezone(name: str) -> str:
    """``name`` when it is an IANA time zone; ``InvalidExpression`` otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidExpression(f"{name!r} is not an IANA time zone such as UTC or Europe/Berlin") from error
    return name


def _aws_cron(body: str) -> tuple[str, frozenset[int] | None]:
    from croniter import croniter

    fields = body.split()
    if len(fields) != 6:
        raise InvalidExpression(
            f"cron() takes 6 fields (minutes hours day-of-month month day-of-week year), got {len(fields)}"
        )
    minutes, hours, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise InvalidExpression("cron(): give '?' in exactly one of day-of-month and day-of-week")
    if "W" in day_of_month.upper():
        raise InvalidExpression("cron(): 'W' (nearest weekday) is not supported here")
    day_of_month = "*" if day_of_month == "?" else day_of_month
    day_of_week = "*" if day_of_week == "?" else _day_of_week(day_of_week)
    cron = " ".join((minutes, hours, day_of_month, month, day_of_week))
    if not croniter.is_valid(cron):
        raise InvalidExpression(f"cron({body}) is not a valid cron expression")
    return cron, _years(year)


def _day_of_week(field: str) -> str:
    """AWS day-of-week numbers (1-7, SUN=1) → cron's (0-6, SUN=0); names stay."""

    def shift(match: re.Match[str]) -> str:
        number = int(match.group(0))
        if not 1 <= number <= 7:
            raise InvalidExpression(f"cron(): day-of-week {number} is out of range 1-7 (1 = Sunday)")
        return str(number - 1)

    items = []
    for item in field.split(","):
        head, sep, tail = item.partition("#") if "#" in item else item.partition("/")
        items.append(re.sub(r"\d+", shift, head) + sep + tail)
    return ",".join(items)


def _years(field: str) -> frozenset[int] | None:
    if field == "*":
        return None
    years: set[int] = set()
    for item in field.split(","):
        first, _, last = item.partition("-")
        if not (first.isdigit() and (not last or last.isdigit())):
            raise InvalidExpression(f"cron(): year {item!r} is not a year, a range of years or '*'")
        years.update(range(int(first), int(last or first) + 1))
    return frozenset(years)
