"""Humans in the loop: the approval gate before a turn's tool calls run, the wait, the decisions.

The gate (``gate_turn``, called by AgentStep once a turn's calls are known and before any of them
runs) asks the policy (``runs/policy.py``) about each call:

- ``deny``: the call is never executed; its result is an error saying it was refused and why.
- ``ask``: an approval is stored (``store/approvals.py``) with an ``approval_requested`` event, and
  the turn waits: AgentStep answers ``next: approve`` and the state machine enters ``AwaitApproval``
  (``lambda:invoke.waitForTaskToken``), whose Lambda (``await_approval``) keeps the task token on the
  run item, sets AWAITING_APPROVAL and puts a ``Run Waiting`` event. Allowed calls of the turn wait too.
- ``allow``: the call runs.

``decide`` (``POST /runs/{id}/approvals/{call_id}``) records a decision once, with an
``approval_decided`` event; when no approval of the turn is pending it sends the task token back
(``SendTaskSuccess``) and the execution goes back to AgentStep, which passes the gate again: now every
call is decided, approved calls run (inline or in RunTools, as any call), rejected ones get a refused
result the model reads. An approval nobody decides by ``expires_at`` is a rejection ("approval
expired"): the AwaitApproval state's timeout is the wait left, its ``States.Timeout`` goes back to
AgentStep too, and the gate records the expiry. The gate decides from what is recorded, so a retried
AgentStep asks nothing twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from aws_lambda_powertools import Logger

from sandcastle.errors import ApprovalConflict, ApprovalNotFound, ConditionFailed
from sandcastle.runs.policy import PolicyAction, PolicyRule, Verdict, evaluate
from sandcastle.runs.queries import get_tenant_run
from sandcastle.runs.records import Approval, Run, RunStatus, ToolCall, utcnow
from sandcastle.runs.transcript import (
    ApprovalDecidedData,
    ApprovalRequestedData,
    ToolResultData,
    approval_decided_event,
    approval_requested_event,
    tool_result_event,
)
from sandcastle.store.dynamo import RunUpdate
from sandcastle.store.event_bus import put_run_event
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

Decision = Literal["approve", "reject"]

EXPIRED_REASON = "approval expired"


@dataclass
class Gate:
    """What the gate lets a turn do now."""

    runnable: list[int] = field(default_factory=list)
    """Indexes of the turn's calls that may run (allowed, or approved)."""
    waiting: list[Approval] = field(default_factory=list)
    """Approvals still pending: while any is, nothing of the turn runs."""

    def wait_s(self, now: datetime) -> int:
        """Seconds until the last pending approval expires (the AwaitApproval state's timeout), at least 1."""
        last = max(approval.expires_at for approval in self.waiting)
        return max(1, math.ceil((last - now).total_seconds()))


def gate_turn(run: Run, turn: int, calls: list[ToolCall], deps: Dependencies) -> Gate:
    """Pass turn ``turn``'s calls through the policy; record refusals, approvals asked and expiries."""
    recorded = {approval.tool_call_id: approval for approval in deps.approvals.list(run.run_id, step=turn)}
    tenant_rules: list[PolicyRule] | None = None
    now = utcnow()
    gate = Gate()
    for index, call in enumerate(calls):
        approval = recorded.get(call.id)
        if approval is None:
            if tenant_rules is None:
                tenant_rules = deps.approvals.get_policy(run.tenant)
            verdict = evaluate(call.name, call.arguments, tenant=tenant_rules, run=run.policy)
            if verdict.action is PolicyAction.ALLOW:
                gate.runnable.append(index)
                continue
            if verdict.action is PolicyAction.DENY:
                reason = f": {verdict.reason}" if verdict.reason else ""
                _refuse(run, turn, index, call, f"refused by policy{reason}; the call was not executed", deps)
                continue
            approval = _ask(run, turn, index, call, verdict, now, deps)
        if approval.pending and now >= approval.expires_at:
            approval = _record_decision(
                approval.model_copy(update={"decision": "reject", "expired": True, "decided_at": now}), deps
            )
        if approval.pending:
            gate.waiting.append(approval)
        elif approval.decision == "approve":
            gate.runnable.append(index)
        else:
            _refuse(run, turn, index, call, _rejection(approval), deps)
    if gate.waiting:
        gate.runnable = []
    else:
        resume_running(run, deps)
    return gate


def _ask(
    run: Run, turn: int, index: int, call: ToolCall, verdict: Verdict, now: datetime, deps: Dependencies
) -> Approval:
    expires_at = now + timedelta(seconds=run.approval_timeout_s)
    if run.deadline is not None:
        expires_at = min(expires_at, run.deadline)  # a run's wait counts against its timeout_s
    approval = Approval(
        run_id=run.run_id,
        step=turn,
        call_index=index,
        tool_call_id=call.id,
        tool=call.name,
        arguments=call.arguments,
        arguments_kept=call.arguments_kept,
        rule=verdict.rule,
        reason=verdict.reason,
        asked_at=now,
        expires_at=expires_at,
    )
    if not deps.approvals.ask(approval):  # a retry: the first attempt's approval stands
        stored = deps.approvals.get(run.run_id, turn, call.id)
        assert stored is not None
        approval = stored
    requested = ApprovalRequestedData(
        tool_call_id=call.id,
        tool=call.name,
        arguments=approval.arguments,
        rule=approval.rule,
        reason=approval.reason,
        expires_at=approval.expires_at,
    )
    requested = ApprovalRequestedData.model_validate(deps.redactor.data(requested.model_dump(exclude_none=True)))
    deps.store.append_event(approval_requested_event(run.run_id, turn, index, requested))
    logger.info("approval asked", extra={"step": turn, "tool_call_id": call.id, "tool": call.name})
    return approval


def _record_decision(approval: Approval, deps: Dependencies) -> Approval:
    """Store the decision once (the first one stands) and its ``approval_decided`` event; the stored approval."""
    stored = deps.approvals.decide(approval)
    decided = ApprovalDecidedData(
        tool_call_id=stored.tool_call_id,
        decision=stored.decision or "reject",
        decided_by=stored.decided_by,
        comment=stored.comment,
        expired=stored.expired,
    )
    decided = ApprovalDecidedData.model_validate(deps.redactor.data(decided.model_dump(exclude_none=True)))
    deps.store.append_event(approval_decided_event(stored.run_id, stored.step, stored.call_index, decided))
    return stored


def _rejection(approval: Approval) -> str:
    if approval.expired:
        return f"{EXPIRED_REASON}: nobody approved the call in time; it was not executed"
    comment = f"; their comment: {approval.comment}" if approval.comment else ""
    return f"rejected by the person reviewing this run's tool calls; the call was not executed{comment}"


def _refuse(run: Run, turn: int, index: int, call: ToolCall, error: str, deps: Dependencies) -> None:
    """Record a result for a call that will not run: an error the model reads on its next turn (once)."""
    result = ToolResultData(tool_call_id=call.id, tool=call.name, error=error)
    result = ToolResultData.model_validate(deps.redactor.data(result.model_dump(exclude_none=True)))
    if deps.store.append_event(tool_result_event(run.run_id, turn, index, result)):
        logger.info("tool call refused", extra={"step": turn, "tool_call_id": call.id, "error": error})


def resume_running(run: Run, deps: Dependencies) -> None:
    """The turn is decided: the run is RUNNING again and its task token is gone (a no-op unless it waited)."""
    if run.status is not RunStatus.AWAITING_APPROVAL:
        return
    try:
        deps.store.update_run(
            run.run_id,
            RunUpdate(
                set={"status": RunStatus.RUNNING},
                remove=["approval_token", "approval_step"],
                require_status=[RunStatus.AWAITING_APPROVAL],
            ),
        )
    except ConditionFailed:
        logger.info("run is no longer awaiting approval")


# --- the AwaitApproval state ---


def await_approval(run_id: str, step: int, task_token: str, deps: Dependencies) -> dict[str, object]:
    """AwaitApproval's Lambda: keep the task token with the run, mark it AWAITING_APPROVAL, announce it.

    The execution then waits until ``decide`` sends the token back (or the state times out). A
    decision that came before the token was stored finds no token; this function then finds nothing
    pending and sends it back itself.
    """
    run = deps.store.get_run(run_id)
    if run.status.terminal:
        return {"run_id": run_id, "waiting": False}
    token = {"approval_token": task_token, "approval_step": step}
    try:
        deps.store.update_run(
            run_id,
            RunUpdate(set={**token, "status": RunStatus.AWAITING_APPROVAL}, require_status=[RunStatus.RUNNING]),
        )
        first = True
    except ConditionFailed:  # a retry of this state: the run already waits
        try:
            deps.store.update_run(run_id, RunUpdate(set=token, require_status=[RunStatus.AWAITING_APPROVAL]))
        except ConditionFailed:
            return {"run_id": run_id, "waiting": False}
        first = False
    approvals = deps.approvals.list(run_id, step=step)
    pending = [approval for approval in approvals if approval.pending]
    if first:
        _announce_waiting(run, step, pending, deps)
    if not pending:
        deps.task_tokens.resume(task_token)
    logger.info("run awaiting approval", extra={"step": step, "pending": len(pending)})
    return {"run_id": run_id, "waiting": bool(pending)}


def _announce_waiting(run: Run, step: int, pending: list[Approval], deps: Dependencies) -> None:
    """Put a ``Run Waiting`` event on the bus (for Slack, email…): which calls wait, why, until when."""
    detail = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "step": step,
        "approvals": [
            approval.model_dump(mode="json", include={"tool_call_id", "tool", "reason", "expires_at"})
            for approval in pending
        ],
    }
    put_run_event(deps.events, deps.settings.event_bus_name, "Run Waiting", run.run_id, detail)


# --- people deciding (the API) ---


def list_approvals(run_id: str, tenant: str, deps: Dependencies) -> list[Approval]:
    """The tenant's run's approvals, pending and decided; ``RunNotFound`` for another tenant's run."""
    get_tenant_run(run_id, tenant, deps)
    return deps.approvals.list(run_id)


def decide(
    run_id: str, call_id: str, tenant: str, deps: Dependencies, *, decision: Decision, by: str, comment: str | None
) -> Approval:
    """Approve or reject a pending call of the tenant's run; the run goes on once its turn is decided.

    Idempotent: the same decision again answers the approval as recorded. ``ApprovalConflict`` for a
    different decision after the first, an expired approval, or a run that ended; ``ApprovalNotFound``
    for a call that needed no approval.
    """
    run = get_tenant_run(run_id, tenant, deps)
    matching = [approval for approval in deps.approvals.list(run_id) if approval.tool_call_id == call_id]
    if not matching:
        raise ApprovalNotFound(f"run {run_id} has no approval for tool call {call_id!r}")
    approval = matching[-1]  # the latest turn's, should the model have reused an id
    if approval.pending:
        now = utcnow()
        if run.status.terminal:
            raise ApprovalConflict(f"run {run_id} ended {run.status.value}; its calls can no longer be decided")
        if now >= approval.expires_at:
            approval = _record_decision(
                approval.model_copy(update={"decision": "reject", "expired": True, "decided_at": now}), deps
            )
        else:
            update = {"decision": decision, "decided_by": by, "decided_at": now, "comment": comment}
            approval = _record_decision(approval.model_copy(update=update), deps)
    else:
        _record_decision(approval, deps)  # a retry of a request that stopped halfway: its event, then go on
    if approval.expired:
        raise ApprovalConflict(f"the approval of {call_id} expired at {approval.expires_at.isoformat()}: rejected")
    if approval.decision != decision:
        raise ApprovalConflict(
            f"tool call {call_id} was already {_past(approval.decision)}; it cannot be {_past(decision)}"
        )
    _resume_if_decided(run_id, approval.step, deps)
    return approval


def _past(decision: str | None) -> str:
    return {"approve": "approved", "reject": "rejected"}.get(decision or "", "decided")


def _resume_if_decided(run_id: str, step: int, deps: Dependencies) -> None:
    """Send the waiting execution its token back once no approval of turn ``step`` is pending."""
    if any(approval.pending for approval in deps.approvals.list(run_id, step=step)):
        return
    waiting = deps.approvals.task_token(run_id)
    if waiting is None or waiting[1] != step:
        return  # AwaitApproval has not stored its token yet: it will find nothing pending and go on by itself
    if deps.task_tokens.resume(waiting[0]):
        logger.info("turn decided; run resumed", extra={"run_id": run_id, "step": step})
