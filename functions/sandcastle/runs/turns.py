"""One model turn of a run: the transcript in, the next move out (and a turn's only tool call, executed)."""

from __future__ import annotations

import time

from aws_lambda_powertools import Logger

from sandcastle.agent.base import ModelTurn
from sandcastle.errors import ModelReplyInvalid, RunEnded
from sandcastle.large_values import event_saver, fit_reply
from sandcastle.runs.approvals import gate_turn, resume_running
from sandcastle.runs.budget import budget_stop, seconds_left
from sandcastle.runs.payloads import StepState
from sandcastle.runs.records import Run, RunStatus, StopReason, Usage, utcnow
from sandcastle.runs.tool_calls import execute_tool_call, result_recorded
from sandcastle.runs.transcript import (
    AssistantData,
    AssistantEvent,
    Transcript,
    assistant_event,
    assistant_key,
    tool_result_key,
)
from sandcastle.store.dynamo import RunUpdate
from sandcastle.tools import tool_schemas
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

MIN_MODEL_TIMEOUT_S = 5.0
TOOL_CALL_MARGIN_S = 60.0
"""What an inline tool call may need beyond its command's time limit: connecting, saving outputs, recording."""


def agent_step(state: StepState, deps: Dependencies, *, time_left_s: float) -> StepState:
    """Take turn ``state.step + 1``: ask the model (unless a budget is spent) and record its reply.

    A retry of the same turn finds the recorded reply and decides from it, so the model is
    never asked twice for one turn and usage is counted once. ``time_left_s`` is what the
    invocation may spend (the Lambda's remaining time, less a margin).

    With ``state.inline_tool_call``, a turn that makes exactly one tool call has it executed here
    (``next: agent``: one invocation and no Map per step) when the time left covers the longest the
    call may take; otherwise, and for several calls, the RunTools map executes them (``next: tools``).
    A retry that finds the call's result recorded runs nothing again.
    """
    started = time.monotonic()
    run = deps.store.get_run(state.run_id)
    if run.status.terminal:
        raise RunEnded(f"run {run.run_id} already ended {run.status.value}")
    turn = state.step + 1
    base = StepState(
        run_id=run.run_id,
        step=turn,
        tool_concurrency=deps.settings.tool_concurrency,
        inline_tool_call=state.inline_tool_call,
    )

    transcript = Transcript(deps.store.read_transcript(run.run_id))
    reply_data = transcript.assistant(turn)  # a retry finds the turn's reply already recorded
    from_transcript = reply_data is not None
    recorded_here = False
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
        reply_data, recorded_here = _record_turn(run.run_id, turn, reply, deps)

    calls = reply_data.tool_calls
    if not calls:
        return base.model_copy(update={"next": "finish", "stop_reason": StopReason.COMPLETED})
    ids = [call.id for call in calls]
    inline = state.inline_tool_call and len(calls) == 1
    # A reply this invocation recorded has no result yet (results are written after their turn's reply).
    if inline and not recorded_here and _call_recorded(transcript if from_transcript else None, run.run_id, turn, deps):
        logger.info("the turn's tool call is already recorded; a retry runs nothing")
        resume_running(run, deps)  # after a wait for approval, should the first attempt have stopped short
        return base.model_copy(update={"next": "agent", "tool_call_ids": ids})
    if run.usage.tool_calls + len(calls) > run.budgets.max_tool_calls:
        logger.info("tool-call budget would be exceeded", extra={"requested": len(calls)})
        return base.model_copy(update={"next": "finish", "stop_reason": StopReason.MAX_TOOL_CALLS})
    gate = gate_turn(run, turn, calls, deps)  # before anything of the turn runs: refusals, approvals asked
    if gate.waiting:  # AwaitApproval, then this turn again (step stays the last turn completed)
        waiting = [approval.tool_call_id for approval in gate.waiting]
        wait_s = gate.wait_s(utcnow())
        return base.model_copy(
            update={"step": state.step, "next": "approve", "tool_call_ids": waiting, "approval_wait_s": wait_s}
        )
    runnable = [calls[index].id for index in gate.runnable]
    if inline and not runnable:  # the one call was refused or rejected: its result is recorded
        return base.model_copy(update={"next": "agent", "tool_call_ids": ids})
    if inline:
        needed = _longest_call_s(run, deps)
        if time_left_s - (time.monotonic() - started) >= needed:
            # ``run`` is as fresh as RunTool's read: read at this invocation's start, and the reply recorded
            # here was written on the condition that the run is still RUNNING.
            execute_tool_call(run, turn, 0, calls[0], deps)
            return base.model_copy(update={"next": "agent", "tool_call_ids": ids})
        logger.info("too little time left to run the call here; RunTool runs it", extra={"needed_s": needed})
    return base.model_copy(update={"next": "tools", "tool_call_ids": runnable})


def _call_recorded(transcript: Transcript | None, run_id: str, turn: int, deps: Dependencies) -> bool:
    """Whether the turn's one call has its result: in the transcript this invocation read with the turn's reply
    (the turn's events are always read fresh), else — the reply came from a concurrent attempt — in the table."""
    if transcript is not None:
        return any(event.key == tool_result_key(turn, 0) for event in transcript)
    return result_recorded(run_id, turn, 0, deps)


def _longest_call_s(run: Run, deps: Dependencies) -> float:
    """The longest a tool call may take: its command's time limit at most, and never past the deadline."""
    limit = min(float(deps.settings.command_timeout_ceiling_s), seconds_left(run, utcnow()))
    return limit + TOOL_CALL_MARGIN_S


def _check_reply(reply: ModelTurn) -> None:
    if not (reply.text and reply.text.strip()) and not reply.tool_calls:
        raise ModelReplyInvalid("the model's reply had no text and no tool calls")
    ids = [call.id for call in reply.tool_calls]
    if any(not call_id for call_id in ids) or len(set(ids)) != len(ids):
        raise ModelReplyInvalid(f"the model's tool calls need distinct, non-empty ids; got {ids}")


def _recorded_reply(run_id: str, turn: int, deps: Dependencies) -> AssistantData | None:
    event = deps.store.get_event(run_id, assistant_key(turn))
    return event.data if isinstance(event, AssistantEvent) else None


def _record_turn(run_id: str, turn: int, reply: ModelTurn, deps: Dependencies) -> tuple[AssistantData, bool]:
    """The turn's reply as recorded, and whether this call wrote it (False: a concurrent attempt did first)."""
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
        return stored, False
    logger.info(
        "model turn recorded",
        extra={
            "step": turn,
            "tool_calls": len(reply.tool_calls),
            **data.usage.model_dump(include={"input_tokens", "output_tokens"}),
        },
    )
    return data, True
