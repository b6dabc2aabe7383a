"""The ends of a run: preparing its sandbox, finishing it, failing it.

Each function is safe to call twice with the same input (Lambda and Step Functions retry):
the sandbox is claimed once, events are written once, the terminal status is set once.
"""

from __future__ import annotations

import json
from datetime import timedelta

from aws_lambda_powertools import Logger

from sandcastle.errors import ConditionFailed, RunEnded
from sandcastle.large_values import RESULT_LIMIT_BYTES, clip_text
from sandcastle.runs.cleanup import keep_artifacts, kill_sandbox
from sandcastle.runs.payloads import FailInput, StepState
from sandcastle.runs.records import (
    STOP_STATUS,
    Artifact,
    Delivery,
    Run,
    RunError,
    RunOutcome,
    RunStatus,
    StopReason,
    utcnow,
)
from sandcastle.runs.repository import deliver, prepare_repository, repository_prompt
from sandcastle.runs.transcript import (
    SystemData,
    Transcript,
    UserData,
    end_event,
    error_event,
    system_event,
    user_event,
)
from sandcastle.sandbox.base import Sandbox, SandboxSpec
from sandcastle.store.dynamo import RunUpdate
from sandcastle.store.event_bus import put_run_event
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

SYSTEM_PROMPT = """\
You are a careful software engineer working in a private Linux sandbox (bash, Python 3, no network).
Your home directory is your workspace and persists between tool calls; input files are in ~/input,
and anything you want to hand back goes in ~/output.
Use the tools to inspect, write and run code. Check your work by running it.
When the task is done, reply with your final answer and no tool calls."""


def prepare_run(run_id: str, deps: Dependencies) -> StepState:
    """Create the run's sandbox, copy its input files in, write the opening events, mark it RUNNING."""
    run = deps.store.get_run(run_id)
    if run.status.terminal:
        raise RunEnded(f"run {run_id} already ended {run.status.value}")

    sandbox = _claim_sandbox(run, deps)
    for file in run.files:
        sandbox.write_file(f"input/{file.name}", deps.objects.get(file.s3_key))
    sandbox.run("mkdir -p ~/output", timeout_s=30)
    run = prepare_repository(run, sandbox, deps)

    from sandcastle.tools import TOOLS  # only their names: the registry stays out of the other endings' imports

    deps.store.append_event(
        system_event(
            run_id,
            SystemData(
                text=SYSTEM_PROMPT + repository_prompt(run),
                tools=sorted(TOOLS),
                model_backend=run.model_backend,
                model=run.model,
            ),
        )
    )
    now = utcnow()
    started = deps.store.append_event(
        user_event(run_id, UserData(text=deps.redactor.text(_user_message(run)), files=[f.name for f in run.files])),
        RunUpdate(
            set={
                "status": RunStatus.RUNNING,
                "started_at": now,
                "deadline": now + timedelta(seconds=run.budgets.timeout_s),
            },
            require_status=[RunStatus.QUEUED],
        ),
    )
    logger.info("run prepared", extra={"sandbox_id": sandbox.sandbox_id, "first_attempt": started})
    return StepState(run_id=run_id, step=0, tool_concurrency=deps.settings.tool_concurrency)


def finish_run(state: StepState, deps: Dependencies) -> dict[str, str]:
    """End the run in the status its stop reason implies, with its answer and artifacts; kill its sandbox."""
    run = deps.store.get_run(state.run_id)
    if run.status.terminal:
        kill_sandbox(run.sandbox_id, deps)
        announce_run_end(run, deps)
        return {"run_id": run.run_id, "status": run.status.value}

    reason = state.stop_reason or StopReason.COMPLETED
    status = STOP_STATUS[reason]
    answer = Transcript(deps.store.read_transcript(run.run_id)).last_answer()
    from sandcastle.runs.artifacts import export_artifacts  # here: cancel and the API import this module too

    artifacts = export_artifacts(run, deps)
    delivery = deliver(run, deps, push=status is RunStatus.SUCCEEDED)
    kill_sandbox(run.sandbox_id, deps)
    # The loop has stopped (the last AgentStep returned "finish"): nothing changes the run's usage or step
    # any more, so the record read above is the one the END event accounts for.
    end_run(
        run,
        deps,
        status=status,
        stop_reason=reason,
        result=answer,
        artifacts=artifacts,
        delivery=delivery,
        current=True,
    )
    logger.info("run finished", extra={"status": status.value, "stop_reason": reason.value})
    return {"run_id": run.run_id, "status": status.value}


def fail_run(failure: FailInput, deps: Dependencies) -> dict[str, str]:
    """End the run FAILED (TIMED_OUT for a state timeout) with the error that stopped it.

    Whatever the run left in ``~/output/`` is still kept as artifacts when the sandbox can be
    reached; the sandbox is killed either way.
    """
    run = deps.store.get_run(failure.run_id)
    if run.status.terminal:
        kill_sandbox(run.sandbox_id, deps)
        announce_run_end(run, deps)
        return {"run_id": run.run_id, "status": run.status.value}

    artifacts = keep_artifacts(run, deps).artifacts
    kill_sandbox(run.sandbox_id, deps)
    error = describe_error(failure)
    error.message = deps.redactor.text(error.message)
    status = RunStatus.TIMED_OUT if error.type == "States.Timeout" else RunStatus.FAILED
    deps.store.append_event(error_event(run.run_id, run.step, error))
    answer = Transcript(deps.store.read_transcript(run.run_id)).last_answer()
    end_run(run, deps, status=status, result=answer, error=error, artifacts=artifacts)
    logger.warning("run failed", extra={"status": status.value, "error_type": error.type, "error": error.message})
    return {"run_id": run.run_id, "status": status.value}


def end_run(
    run: Run,
    deps: Dependencies,
    *,
    status: RunStatus,
    stop_reason: StopReason | None = None,
    result: str | None = None,
    error: RunError | None = None,
    artifacts: list[Artifact] | None = None,
    delivery: Delivery | None = None,
    current: bool = False,
) -> Run:
    """Bring the run to its terminal ``status`` once: the END event, the run's fields and the release of
    its tenant's active-run slot in one transaction that requires the run not to have ended yet; then
    announce it.

    The END event accounts for the run's usage as stored: ``run`` is read again first, unless the caller
    says it is ``current`` (read after the last write that could change its usage or step).
    Returns the run as stored afterwards (ended by this call or by an earlier one).
    """
    now = utcnow()
    fresh = run if current else deps.store.get_run(run.run_id)
    if result is not None and len(result.encode()) > RESULT_LIMIT_BYTES:  # the whole answer is in the transcript
        result = clip_text(result.encode(), RESULT_LIMIT_BYTES)["text"]
    outcome = RunOutcome(
        status=status,
        stop_reason=stop_reason,
        result=result,
        error=error,
        usage=fresh.usage,
        artifacts=artifacts or [],
        delivery=delivery,
    )
    fields: dict[str, object] = {"status": status, "ended_at": now}
    if stop_reason:
        fields["stop_reason"] = stop_reason
    if result is not None:
        fields["result"] = result
    if error:
        fields["error"] = error
    if artifacts:
        fields["artifacts"] = artifacts
    if delivery:
        fields["delivery"] = delivery
    try:
        written = deps.store.append_event(
            end_event(run.run_id, fresh.step, outcome),
            RunUpdate(set=fields, require_not_terminal=True, release_slot_of=run.tenant),
        )
    except ConditionFailed:
        logger.info("run had already ended")
        written = False
    # Written: the item now holds exactly ``fresh`` with ``fields`` set. Otherwise an earlier ending won: read it.
    ended = fresh.model_copy(update=fields) if written else deps.store.get_run(run.run_id)
    announce_run_end(ended, deps)
    return ended


def announce_run_end(run: Run, deps: Dependencies) -> None:
    """Put a ``Run Finished`` event on the event bus, for webhooks and follow-up jobs.

    At least once: a retried finish announces again, so consumers deduplicate on ``run_id``.
    """
    if not run.status.terminal:
        return
    detail = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "source": run.source,
        **run.outcome().model_dump(mode="json"),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
    }
    put_run_event(deps.events, deps.settings.event_bus_name, "Run Finished", run.run_id, detail)


def describe_error(failure: FailInput) -> RunError:
    """A readable error from what a ``Catch`` recorded (a Lambda error's Cause is JSON)."""
    error_type = failure.error.Error
    message = failure.error.Cause or error_type
    try:
        cause = json.loads(failure.error.Cause or "")
    except ValueError:
        cause = None
    if isinstance(cause, dict):
        error_type = cause.get("errorType") or error_type
        message = cause.get("errorMessage") or message
    return RunError(type=error_type, message=message)


def _claim_sandbox(run: Run, deps: Dependencies) -> Sandbox:
    """The run's one sandbox: reconnect to the recorded one, or create it and record it first-writer-wins."""
    if run.sandbox_id:
        return deps.sandboxes.connect(run.sandbox_id)
    spec = SandboxSpec(
        run_id=run.run_id,
        tenant=run.tenant,
        timeout_s=run.budgets.timeout_s + deps.settings.sandbox_timeout_margin_s,
        metadata={"app": "sandcastle", "run_id": run.run_id, "tenant": run.tenant},
        template=run.sandbox.template,
        allow_internet_access=run.sandbox.allow_internet_access,
        envs=run.sandbox.env,
        idempotency_key=run.run_id,
    )
    sandbox = deps.sandboxes.create(spec)
    winner = deps.store.claim_sandbox(run.run_id, sandbox.sandbox_id)
    if winner != sandbox.sandbox_id:
        deps.sandboxes.kill(sandbox.sandbox_id)
        return deps.sandboxes.connect(winner)
    return sandbox


def _user_message(run: Run) -> str:
    if not run.files:
        return run.instructions
    listing = "\n".join(f"- ~/input/{f.name} ({f.size} bytes)" for f in run.files)
    return f"{run.instructions}\n\nInput files:\n{listing}"
