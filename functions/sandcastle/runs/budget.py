"""Per-run budgets: defaults and ceilings from the settings, and the check before each turn."""

from __future__ import annotations

from datetime import datetime

from sandcastle.config import Settings
from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.records import ResolvedBudgets, Run, StopReason
from sandcastle.runs.requests import Budgets


def resolve_budgets(requested: Budgets, settings: Settings) -> ResolvedBudgets:
    """Fill unset budgets with the defaults; a value over its ceiling is an ``InvalidRunRequest``."""
    resolved = {}
    for name, default, ceiling in (
        ("max_steps", settings.default_max_steps, settings.max_steps_ceiling),
        ("max_tool_calls", settings.default_max_tool_calls, settings.max_tool_calls_ceiling),
        ("timeout_s", settings.default_timeout_s, settings.timeout_s_ceiling),
    ):
        value = getattr(requested, name)
        if value is not None and value > ceiling:
            raise InvalidRunRequest(f"must be at most {ceiling} (the configured ceiling)", field=f"budgets.{name}")
        resolved[name] = min(value if value is not None else default, ceiling)
    return ResolvedBudgets(**resolved)


def budget_stop(run: Run, now: datetime) -> StopReason | None:
    """Why the run may not take another model turn, or None while it may."""
    if run.deadline is not None and now >= run.deadline:
        return StopReason.TIMEOUT
    if run.usage.steps >= run.budgets.max_steps:
        return StopReason.MAX_STEPS
    if run.usage.tool_calls >= run.budgets.max_tool_calls:
        return StopReason.MAX_TOOL_CALLS
    return None


def seconds_left(run: Run, now: datetime) -> float:
    """Seconds before the run's deadline (a large number before the run has started)."""
    if run.deadline is None:
        return float(run.budgets.timeout_s)
    return max(0.0, (run.deadline - now).total_seconds())
