"""One model turn of a run: the transcript in, the next move out."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from sandcastle.agent.base import ModelTurn
from sandcastle.errors import ModelReplyInvalid, RunEnded
from sandcastle.large_values import event_saver, fit_reply
from sandcastle.runs.budget import budget_stop, seconds_left
from sandcastle.runs.payloads import StepState
from sandcastle.runs.records import RunStatus, StopReason, Usage, utcnow
from sandcastle.runs.transcript import AssistantData, AssistantEvent, Transcript, assistant_event, assistant_key
from sandcastle.store.dynamo import RunUpdate
from sandcastle.tools import tool_schemas
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

MIN_MODEL_TIMEOUT_S = 5.0


def agent_step(state: StepState, deps: Dependencies, *, time_left_s: float) -> StepState:
    """Take turn ``state.step + 1``: ask the model (unless a budget is spent) and record its reply.

    A retry of the same turn finds the recorded reply and decides from it, so the model is
    never asked twice for one turn and usage is counted once. ``time_left_s`` is what the
    invocation may spend (the Lambda's remaining time, less a margin).
    """
    run = deps.store.get_run(state.run_id)
    if run.status.terminal:
        raise RunEnded(f"run {run.run_id} already ended {run.status.value}")
    turn = state.step + 1
    base = StepState(run_id=run.run_id, step=turn, tool_concurrency=deps.settings.tool_concurrency)

    transcript = Transcript(deps.store.read_transcript(run.run_id))
    reply_data = transcript.assistant(turn)  # a retry finds the turn's reply already recorded
    if reply_data is None:
        now = utcnow()
        stop = budget_stop(run, now)
        if stop is not None:
            logger.info("budget spent", extra={"stop_reason": stop.value})
            return base.model_copy(update={"step": state.step, "next": "finish", "stop_reason": stop})
        model = deps.model_for(run)
        timeout = max(MIN_MODEL_TIMEOUT_S, min(time_left_s, seconds_left(run, now)))
        reply = model.complete(transcript, tool_schemas(), model=run.model, timeout_s=timeout)
        _check_reply(reply)
        reply_data = _record_turn(run.run_id, turn, reply, deps)

    calls = reply_data.tool_calls
    if not calls:
        return base.model_copy(update={"next": "finish", "stop_reason": StopReason.COMPLETED})
    if run.usage.tool_calls + len(calls) > run.budgets.max_tool_calls:
        logger.info("tool-call budget would be exceeded", extra={"requested": len(calls)})
        return base.model_copy(update={"next": "finish", "stop_reason": StopReason.MAX_TOOL_CALLS})
    return base.model_copy(update={"next": "tools", "tool_call_ids": [call.id for call in calls]})


def _check_reply(reply: ModelTurn) -> None:
    if not (reply.text and reply.text.strip()) and not reply.tool_calls:
        raise ModelReplyInvalid("the model's reply had no text and no tool calls")
    ids = [call.id for call in reply.tool_calls]
    if any(not call_id for call_id in ids) or len(set(ids)) != len(ids):
        raise ModelReplyInvalid(f"the model's tool calls need distinct, non-empty ids; got {ids}")


def _recorded_reply(run_id: str, turn: int, deps: Dependencies) -> AssistantData | None:
    event = deps.store.get_event(run_id, assistant_key(turn))
    return event.data if isinstance(event, AssistantEvent) else None


def _record_turn(run_id: str, turn: int, reply: ModelTurn, deps: Dependencies) -> AssistantData:
    key = assistant_key(turn)
    tokens = Usage(input_tokens=reply.usage.input_tokens, output_tokens=reply.usage.output_tokens)
    data = AssistantData(text=reply.text, tool_calls=reply.tool_calls, usage=tokens, model=reply.model)
    data = AssistantData.model_validate(deps.redactor.data(data.model_dump(exclude_none=True)))
    try:  # a reply too large for its item keeps its largest values in S3, with pointers
        data = fit_reply(data, limit=deps.settings.output_limit_bytes, save=event_saver(deps.objects, run_id, key))
    except ValueError as error:
        raise ModelReplyInvalid(f"the model's reply is too large to record: {error}") from error
    written = deps.store.append_event(
        assistant_event(run_id, turn, data),
        RunUpdate(
            set={"step": turn},
            add=tokens.model_copy(update={"steps": 1}),
            require_status=[RunStatus.RUNNING],
        ),
    )
    if not written:  # a concurrent attempt recorded this turn first: its reply is the turn's reply
        stored = _recorded_reply(run_id, turn, deps)
        assert stored is not None
        return stored
    logger.info(
        "model turn recorded",
        extra={
            "step": turn,
            "tool_calls": len(reply.tool_calls),
            **data.usage.model_dump(include={"input_tokens", "output_tokens"}),
        },
    )
    return data
