"""One tool call of a run, executed in the run's sandbox and recorded once."""

from __future__ import annotations

import time
from typing import NotRequired, TypedDict

from aws_lambda_powertools import Logger

from sandcastle.errors import ConditionFailed, SandcastleError, ToolInputError
from sandcastle.large_values import event_saver, read_saved
from sandcastle.runs.budget import seconds_left
from sandcastle.runs.payloads import ToolTask
from sandcastle.runs.records import Run, ToolCall, Usage, utcnow
from sandcastle.runs.tool_outputs import ToolOutput
from sandcastle.runs.transcript import AssistantEvent, ToolResultData, tool_result_event, tool_result_key
from sandcastle.store.dynamo import RunUpdate
from sandcastle.tools import ToolContext, parse_tool_call
from sandcastle.wiring import Dependencies

logger = Logger(child=True)


class ToolCallDone(TypedDict):
    """What RunTool answers the state machine (nothing of the result itself: that is in the transcript)."""

    tool_call_id: str
    skipped: NotRequired[str]
    """Why the call was not executed: the run had already ended."""


def run_tool(task: ToolTask, deps: Dependencies) -> ToolCallDone:
    """Execute one tool call of turn ``task.step`` and append its result (RunTool: one item of the Map).

    A call with invalid JSON, arguments that fail validation or an unknown tool is never
    executed: its result is an error the model reads. A retried invocation whose result is
    already recorded does nothing.
    """
    run = deps.store.get_run(task.run_id)
    if run.status.terminal:
        return {"tool_call_id": task.tool_call_id, "skipped": f"run ended {run.status.value}"}

    step = deps.store.step_events(run.run_id, task.step)  # the turn and its results so far: one read
    assistant = next((event for event in step if isinstance(event, AssistantEvent)), None)
    calls = assistant.data.tool_calls if assistant is not None else []
    index = next((i for i, call in enumerate(calls) if call.id == task.tool_call_id), None)
    if index is None:
        raise SandcastleError(f"turn {task.step} of run {run.run_id} has no tool call {task.tool_call_id}")
    call = calls[index]
    if any(event.key == tool_result_key(task.step, index) for event in step):
        logger.info("tool call already recorded; a retry does nothing")
        return {"tool_call_id": call.id}
    execute_tool_call(run, task.step, index, call, deps)
    return {"tool_call_id": call.id}


def result_recorded(run_id: str, step: int, index: int, deps: Dependencies) -> bool:
    """Whether the result of call ``index`` of turn ``step`` is in the transcript: a retry then does nothing."""
    return deps.store.get_event(run_id, tool_result_key(step, index)) is not None


def execute_tool_call(run: Run, step: int, index: int, call: ToolCall, deps: Dependencies) -> None:
    """Execute ``call`` (call ``index`` of turn ``step``) in the run's sandbox and append its result once.

    Shared by RunTool (a call of a turn with several) and AgentStep (a turn's only call). The caller
    has read ``run`` in this invocation and knows the result is not recorded yet (``result_recorded``).
    The deadline is checked before connecting and again after; a run that ended while the tool ran
    keeps no result (the write requires the run not to have ended).
    """
    key = tool_result_key(step, index)
    started = time.monotonic()
    output: ToolOutput | None = None
    error: str | None = None
    try:
        tool, args = parse_tool_call(_whole(call, deps))
        keep_alive = int(_time_left(run)) + deps.settings.sandbox_timeout_margin_s  # the sandbox follows the run
        sandbox = deps.sandboxes.connect(run.sandbox_id or "", keep_alive_s=keep_alive)
        remaining = _time_left(run)  # again: connecting takes time too
        context = ToolContext(
            default_timeout_s=deps.settings.default_command_timeout_s,
            timeout_ceiling_s=deps.settings.command_timeout_ceiling_s,
            remaining_run_s=remaining,
            output_limit_bytes=deps.settings.output_limit_bytes,
            redact=deps.redactor.bytes,
            save_output=event_saver(deps.objects, run.run_id, key),
        )
        output = tool.execute(sandbox, args, context)
    except ToolInputError as refused:
        error = str(refused)
    duration_ms = int((time.monotonic() - started) * 1000)
    result = ToolResultData(tool_call_id=call.id, tool=call.name, output=output, error=error, duration_ms=duration_ms)
    result = ToolResultData.model_validate(deps.redactor.data(result.model_dump(exclude_none=True)))

    try:
        deps.store.append_event(
            tool_result_event(run.run_id, step, index, result),
            RunUpdate(add=Usage(tool_calls=1, tool_ms=duration_ms), require_not_terminal=True),
        )
    except ConditionFailed:
        logger.info("run ended while the tool ran; result not recorded")
    logger.info("tool call done", extra={"tool": call.name, "ok": result.error is None, "duration_ms": duration_ms})


def _whole(call: ToolCall, deps: Dependencies) -> ToolCall:
    """The call as the model made it: arguments its event keeps only part of are read back from S3."""
    pointer = call.arguments_kept.full_output if call.arguments_kept else None
    if not pointer:
        return call
    return call.model_copy(update={"arguments": read_saved(deps.objects, pointer).decode("utf-8", "replace")})


def _time_left(run: Run) -> float:
    """Seconds left before the run's deadline; ``ToolInputError`` (the model reads it) when none are."""
    remaining = seconds_left(run, utcnow())
    if remaining <= 0:
        raise ToolInputError("the run's deadline has passed; the call was not executed")
    return remaining
