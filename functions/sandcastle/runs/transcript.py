"""The transcript: where each event stands, and what the model sees of it.

An event's key is derived from its place — step, position within the step, kind — never
from "the next free number", so a retried handler computes the same key and its conditional
write finds the event already there.

    EVT#000000#000#system          step 0: the system prompt
    EVT#000000#001#user            step 0: the instructions (and input files)
    EVT#000003#000#assistant       step 3: the model's turn
    EVT#000003#002#tool_result     step 3: the result of the turn's 2nd tool call
    EVT#999998#000#error           the error that ended the run, if any
    EVT#999999#000#end             the run's end: status, stop reason, answer, usage
"""

from __future__ import annotations

import json
from typing import Any

from sandcastle.runs.models import Event, EventKind, ToolCall, utcnow

_LAST_STEP = 999_999


def event_key(step: int, position: int, kind: EventKind) -> str:
    return f"EVT#{step:06d}#{position:03d}#{kind.value}"


SYSTEM_KEY = event_key(0, 0, EventKind.SYSTEM)
USER_KEY = event_key(0, 1, EventKind.USER)
ERROR_KEY = event_key(_LAST_STEP - 1, 0, EventKind.ERROR)
END_KEY = event_key(_LAST_STEP, 0, EventKind.END)


def assistant_key(step: int) -> str:
    return event_key(step, 0, EventKind.ASSISTANT)


def tool_result_key(step: int, call_index: int) -> str:
    return event_key(step, call_index + 1, EventKind.TOOL_RESULT)


def new_event(run_id: str, key: str, kind: EventKind, step: int, data: dict[str, Any]) -> Event:
    return Event(run_id=run_id, key=key, kind=kind, step=step, at=utcnow(), data=data)


def tool_calls_of(assistant: Event) -> list[ToolCall]:
    """The tool calls an assistant event asked for, in order."""
    return [ToolCall.model_validate(call) for call in assistant.data.get("tool_calls", [])]


def to_messages(events: list[Event]) -> list[dict[str, Any]]:
    """The chat-completions messages for the model, rebuilt from the stored transcript."""
    messages: list[dict[str, Any]] = []
    for event in events:
        if event.kind is EventKind.SYSTEM:
            messages.append({"role": "system", "content": event.data["text"]})
        elif event.kind is EventKind.USER:
            messages.append({"role": "user", "content": event.data["text"]})
        elif event.kind is EventKind.ASSISTANT:
            message: dict[str, Any] = {"role": "assistant", "content": event.data.get("text")}
            calls = tool_calls_of(event)
            if calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            messages.append(message)
        elif event.kind is EventKind.TOOL_RESULT:
            messages.append(
                {"role": "tool", "tool_call_id": event.data["tool_call_id"], "content": model_view(event.data)}
            )
    return messages


def model_view(result: dict[str, Any]) -> str:
    """What the model reads of a tool result: the error, or the (already truncated) output."""
    if result.get("error"):
        return json.dumps({"error": result["error"]}, ensure_ascii=False)
    return json.dumps(result.get("output", {}), ensure_ascii=False)


def last_answer(events: list[Event]) -> str | None:
    """The model's most recent text, if it said anything."""
    for event in reversed(events):
        if event.kind is EventKind.ASSISTANT and event.data.get("text"):
            return event.data["text"]
    return None
