"""The reaper: no sandbox outlives its run by more than one reaper period.

Every few minutes (an EventBridge Scheduler schedule in the cloud, the local scheduler locally, or
``sandcastle reap``) it lists the sandboxes this app created and, for each:

* leaves it alone when it is younger than ``reaper_grace_s`` (its run may not record it yet), or
  when it is the sandbox of a live run — QUEUED or RUNNING and within its deadline;
* kills it when its run ended, is unknown, or records another sandbox (the loser of a create race);
* when its run is past its deadline, ends the run TIMED_OUT, stops its execution and kills it.

Two reapers at once are safe: a kill is idempotent (only one of them sees it succeed), ``end_run``
ends a run once, and stopping an execution that already stopped is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, NotRequired, TypedDict

from aws_lambda_powertools import Logger

from sandcastle.errors import RunNotFound, SandboxError, SandcastleError
from sandcastle.runs.cleanup import keep_artifacts, kill_sandbox
from sandcastle.runs.lifecycle import end_run
from sandcastle.runs.records import Run, RunError, RunStatus, StopReason, utcnow
from sandcastle.sandbox.listing import SandboxInfo, SandboxLister
from sandcastle.wiring import Dependencies

logger = Logger(child=True)


class ReapAction(TypedDict):
    """One thing a pass did, as the report lists it."""

    action: Literal["killed", "timed_out", "artifacts_not_kept"]
    run_id: str | None
    sandbox_id: NotRequired[str | None]
    reason: NotRequired[str]
    """Why a sandbox was killed."""
    error: NotRequired[str]
    """Why a timed-out run's output files could not be kept."""


@dataclass
class ReapReport:
    """What one pass saw and did."""

    seen: int = 0
    killed: int = 0
    """Sandboxes this pass killed (one another reaper killed first is not counted)."""
    timed_out: int = 0
    """Runs past their deadline this pass ended TIMED_OUT."""
    left_alone: int = 0
    errors: int = 0
    actions: list[ReapAction] = field(default_factory=list)


def reap(deps: Dependencies, *, now: datetime | None = None) -> ReapReport:
    """One pass over every sandbox of this app; see the module's docstring."""
    now = now or utcnow()
    lister = deps.sandboxes
    if not isinstance(lister, SandboxLister):
        raise SandboxError(f"the {getattr(lister, 'name', '?')} sandbox backend cannot list its sandboxes")
    report = ReapReport()
    for info in lister.list_sandboxes():
        report.seen += 1
        try:
            _reap_one(info, deps, now, report)
        except Exception:
            report.errors += 1
            logger.exception("could not reap a sandbox", extra={"sandbox_id": info.sandbox_id, "run_id": info.run_id})
    logger.info(
        "reaper pass done",
        extra={"seen": report.seen, "killed": report.killed, "timed_out": report.timed_out, "errors": report.errors},
    )
    return report


def run_deadline(run: Run, deps: Dependencies) -> datetime:
    """When the run must have ended: its recorded deadline, or (not started yet) creation + timeout + margin."""
    if run.deadline is not None:
        return run.deadline
    return run.created_at + timedelta(seconds=run.budgets.timeout_s + deps.settings.sandbox_timeout_margin_s)


def _reap_one(info: SandboxInfo, deps: Dependencies, now: datetime, report: ReapReport) -> None:
    if info.metadata.get("app", "sandcastle") != "sandcastle":
        report.left_alone += 1
        return
    if info.created_at is not None and now - info.created_at < timedelta(seconds=deps.settings.reaper_grace_s):
        report.left_alone += 1
        return
    run = None
    if info.run_id:
        try:
            run = deps.store.get_run(info.run_id)
        except RunNotFound:
            run = None
    if run is None:
        _kill(info, "its run is unknown", deps, report)
    elif run.status.terminal:
        _kill(info, f"its run ended {run.status.value}", deps, report)
    elif run.sandbox_id and run.sandbox_id != info.sandbox_id:
        _kill(info, f"its run uses sandbox {run.sandbox_id}", deps, report)
    elif now > (deadline := run_deadline(run, deps)):
        _time_out(run, deadline, deps, report)
        _kill(info, "its run passed its deadline", deps, report)
    else:
        report.left_alone += 1


def _kill(info: SandboxInfo, reason: str, deps: Dependencies, report: ReapReport) -> None:
    if kill_sandbox(info.sandbox_id, deps, reraise=True):
        report.killed += 1
        report.actions.append(
            {"action": "killed", "sandbox_id": info.sandbox_id, "run_id": info.run_id, "reason": reason}
        )
        logger.info("sandbox killed", extra={"sandbox_id": info.sandbox_id, "run_id": info.run_id, "reason": reason})


def _time_out(run: Run, deadline: datetime, deps: Dependencies, report: ReapReport) -> None:
    error = RunError(
        type="DeadlineExceeded",
        message=f"the run was still {run.status.value} at its deadline {deadline.isoformat()} "
        f"(timeout_s {run.budgets.timeout_s}); the reaper ended it",
    )
    kept = keep_artifacts(run, deps)  # what the run left in ~/output is kept, as when a run ends on its own
    if kept.failure:
        # The run still ends (every run reaches a terminal status), but the loss is not silent: the
        # run's error says so, the pass counts an error (the ReaperErrors metric, its alarm) and names it.
        error.message += f"; its output files could not be kept ({kept.failure})"
        report.errors += 1
        report.actions.append({"action": "artifacts_not_kept", "run_id": run.run_id, "error": kept.failure})
    ended = end_run(
        run, deps, status=RunStatus.TIMED_OUT, stop_reason=StopReason.TIMEOUT, error=error, artifacts=kept.artifacts
    )
    _stop_execution(run.run_id, deps)
    if ended.status is RunStatus.TIMED_OUT:
        report.timed_out += 1
        report.actions.append({"action": "timed_out", "run_id": run.run_id, "sandbox_id": run.sandbox_id})
        logger.info("run timed out by the reaper", extra={"run_id": run.run_id, "deadline": deadline.isoformat()})


def _stop_execution(run_id: str, deps: Dependencies) -> None:
    """Stop the run's execution; one already stopped or never started is fine, a failure is logged
    (the run has ended: its execution's next step finds it so and stops)."""
    try:
        deps.executions.stop(run_id, error="DeadlineExceeded", cause="the reaper ended the run")
    except SandcastleError as error:
        logger.warning("execution not stopped", extra={"run_id": run_id, "error": str(error)})
