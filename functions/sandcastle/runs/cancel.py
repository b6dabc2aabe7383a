"""Cancelling a run, and bringing a run to its end when its execution stopped without ending it.

Cancel (``POST /runs/{id}/cancel``): mark who asked and when, stop the execution, end the run
CANCELLED with its END event, kill its sandbox. Each step is idempotent and the order matters:
the run is terminal before its sandbox dies, so a tool call cut short records nothing.

Cleanup does not depend on the API call finishing: stopping the execution makes Step Functions
emit an ABORTED status change, and the ``OnExecutionEnd`` rule runs ``end_stopped_execution`` —
the same ending, done again harmlessly.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from sandcastle.errors import RunNotFound
from sandcastle.runs.cleanup import kill_sandbox
from sandcastle.runs.lifecycle import end_run
from sandcastle.runs.payloads import ExecutionStatusChange
from sandcastle.runs.queries import get_tenant_run
from sandcastle.runs.records import Run, RunError, RunStatus, utcnow
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

#: What a stopped execution leaves a run that did not end on its own.
_STATUS_AFTER = {"TIMED_OUT": RunStatus.TIMED_OUT, "FAILED": RunStatus.FAILED, "ABORTED": RunStatus.FAILED}


def cancel_run(run_id: str, tenant: str, deps: Dependencies, *, by: str) -> Run:
    """Cancel the tenant's run; a run that already ended is returned as it is.

    ``RunNotFound`` for a run that does not exist or belongs to another tenant.
    """
    run = get_tenant_run(run_id, tenant, deps)
    if run.status.terminal:
        return run
    deps.store.mark_cancel_requested(run_id, by=by, at=utcnow())
    if not deps.executions.stop(run_id, error="Cancelled", cause=f"cancelled by {by}"):
        logger.info("execution not running; nothing to stop", extra={"run_id": run_id})
    ended = _end_and_kill(run, deps, status=RunStatus.CANCELLED)
    logger.info("run cancelled", extra={"run_id": run_id, "status": ended.status.value, "by": by})
    return ended


def end_stopped_execution(change: ExecutionStatusChange, deps: Dependencies) -> dict[str, str]:
    """Bring the run of an execution that ended ABORTED, TIMED_OUT or FAILED to its terminal status.

    CANCELLED when it was aborted after a cancel was asked for; else FAILED or TIMED_OUT with an
    error naming the execution's end. Its sandbox is killed either way. Idempotent.
    """
    try:
        run = deps.store.get_run(change.name)
    except RunNotFound:
        logger.warning("execution of an unknown run ended", extra={"execution_arn": change.executionArn})
        return {"run_id": change.name, "status": "UNKNOWN"}
    if change.status == "ABORTED" and run.cancel_requested_at is not None:
        status, error = RunStatus.CANCELLED, None
    else:
        status = _STATUS_AFTER.get(change.status, RunStatus.FAILED)
        message = f"the run's execution ended {change.status}"
        if change.error or change.cause:
            message += f": {change.error or ''} {change.cause or ''}".rstrip()
        error = RunError(type=f"Execution{change.status.title().replace('_', '')}", message=message)
    ended = _end_and_kill(run, deps, status=status, error=error)
    return {"run_id": ended.run_id, "status": ended.status.value}


def _end_and_kill(run: Run, deps: Dependencies, *, status: RunStatus, error: RunError | None = None) -> Run:
    """End the run (once: a no-op when it already ended), *then* kill its sandbox (idempotent).

    In this order a tool call cut short by the kill finds the run ended and records nothing.
    """
    ended = run if run.status.terminal else end_run(run, deps, status=status, error=error)
    kill_sandbox(deps.store.get_run(run.run_id).sandbox_id, deps)
    return ended
