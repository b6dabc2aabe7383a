"""Steering a live run: a user's message, recorded in the transcript, read by the run's next model call."""

from __future__ import annotations

import secrets
import time

from aws_lambda_powertools import Logger

from sandcastle.errors import ConditionFailed, RunBusy, RunNotLive
from sandcastle.runs.queries import get_tenant_run
from sandcastle.runs.records import utcnow
from sandcastle.runs.transcript import UserMessageData, UserMessageEvent, user_message_event
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

_PLACEMENT_ATTEMPTS = 5

FOLLOW_UPS_LATER = "follow-ups on a finished run are not supported yet; start a new run"


def send_message(run_id: str, tenant: str, text: str, deps: Dependencies, *, by: str) -> UserMessageEvent:
    """Record ``text`` as a ``user_message`` event of the tenant's live run (QUEUED, RUNNING, AWAITING_APPROVAL).

    It stands after the results of the run's last turn (``transcript.user_message_key``), so the next
    model call reads it as a user message. ``RunNotLive`` once the run has ended (checked atomically with
    the write); ``RunNotFound`` for another tenant's run.
    """
    message_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"  # in the order they come, never colliding
    data = UserMessageData.model_validate(deps.redactor.data(UserMessageData(text=text, sent_by=by).model_dump()))
    for _ in range(_PLACEMENT_ATTEMPTS):
        run = get_tenant_run(run_id, tenant, deps)
        if run.status.terminal:
            raise RunNotLive(f"run {run_id} ended {run.status.value}; {FOLLOW_UPS_LATER}")
        # Placed in the run's current step, written only while that is still the run's step: a turn that
        # began meanwhile seals the step for readers (transcript_cache), so the message moves to the new one.
        event = user_message_event(run_id, run.step, message_id, data)
        try:
            deps.store.append_event(
                event,
                RunUpdate(set={"last_message_at": utcnow()}, require_not_terminal=True, require_step=run.step),
            )
            break
        except ConditionFailed:
            continue
    else:
        raise RunBusy(f"run {run_id} kept moving to new turns while the message was placed; send it again")
    logger.info("user message recorded", extra={"run_id": run_id, "step": run.step, "chars": len(text)})
    return event
