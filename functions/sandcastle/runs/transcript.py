"""The transcript: its typed events, where each one stands, and the questions the run asks of it.

An event is one of a closed set of kinds, each with its own payload model (``data``); ``Event``
is their union, told apart by ``kind``. The item keeps ``kind`` beside ``data`` (JSON text) in
the shape it always had, so ``parse_event`` reads items written before these models existed. A
new kind (approvals, messages, compaction) is one more payload model, one more ``*Event`` class
and one more member of ``Event``.

An event's key is derived from its place — step, position within the step, kind — never
from "the next free number", so a retried handler computes the same key and its conditional
write finds the event already there.

    EVT#000000#000#system          step 0: the system prompt
    EVT#000000#001#user            step 0: the instructions (and input files)
    EVT#000003#000#assistant       step 3: the model's turn
    EVT#000003#002#0#approval_requested   step 3: the 2nd call needs approval (before its result)
    EVT#000003#002#1#approval_decided     step 3: … and was approved, rejected or expired
    EVT#000003#002#tool_result     step 3: the result of the turn's 2nd tool call
    EVT#000003#999#user_message#<id>  a message sent while turn 3 was the last: after its results,
                                   before turn 4 (``<id>``: the time it came, then random)
    EVT#999998#000#error           the error that ended the run, if any
    EVT#999999#000#end             the run's end: its ``RunOutcome``
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from sandcastle.runs.policy import RuleRef
from sandcastle.runs.records import KeptValue, RunError, RunOutcome, ToolCall, Usage, utcnow
from sandcastle.runs.tool_outputs import CommandOutput, ToolOutput

_LAST_STEP = 999_999


class EventKind(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_RESULT = "tool_result"
    ERROR = "error"
    END = "end"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    USER_MESSAGE = "user_message"


# --- payloads: one model per kind, stored as the event item's ``data`` ---


class SystemData(BaseModel):
    """The system prompt the run started with, and what it was offered."""

    text: str
    tools: list[str] = Field(default_factory=list)
    model_backend: str | None = None
    model: str | None = None


class UserData(BaseModel):
    """The instructions, as the model reads them (input files listed)."""

    text: str
    files: list[str] = Field(default_factory=list)
    """The input files' names (under ``~/input/``)."""


class AssistantData(BaseModel):
    """One model reply: text, tool calls, or both."""

    text: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    """The reply's tokens: ``input_tokens`` and ``output_tokens`` (the item stores only those two)."""
    model: str | None = None
    """The model name that answered, as the endpoint reports it."""
    text_kept: KeptValue | None = None
    """Set when ``text`` is only part of the reply's text (a reply too large for its item)."""


class ToolResultData(BaseModel):
    """What one tool call returned (``output``, the tool's own model: ``tool_outputs``) or the error the model reads."""

    tool_call_id: str
    tool: str | None = None
    output: ToolOutput | None = None
    error: str | None = None
    duration_ms: int = 0

    def model_view(self) -> str:
        """What the model reads of the result: the error, or the (already truncated) output, as JSON."""
        if self.error:
            return json.dumps({"error": self.error}, ensure_ascii=False)
        return json.dumps(self.output.model_dump(exclude_none=True) if self.output else {}, ensure_ascii=False)

    def command(self) -> CommandOutput | None:
        """A command's output (None for other tools, or when it did not run)."""
        return self.output if isinstance(self.output, CommandOutput) else None


class ApprovalRequestedData(BaseModel):
    """A tool call the policy says a person must approve before it runs (``ask``)."""

    tool_call_id: str
    tool: str
    arguments: str
    """The call's arguments, as the model wrote them (as its assistant event keeps them)."""
    rule: RuleRef | None = None
    reason: str | None = None
    expires_at: datetime
    """Undecided by then, the call is rejected (\"approval expired\")."""


class ApprovalDecidedData(BaseModel):
    """A person's decision on a call that needed approval, or its expiry (``decided_by`` then absent)."""

    tool_call_id: str
    decision: Literal["approve", "reject"]
    decided_by: str | None = None
    """The API key id (or tenant) that decided."""
    comment: str | None = None
    expired: bool = False


class UserMessageData(BaseModel):
    """A message a user sent to the live run (``POST /runs/{id}/messages``); the next model call reads it."""

    text: str
    sent_by: str | None = None
    """The API key id (or tenant) that sent it."""


# --- events: the payload with where it stands ---


class _EventBase(BaseModel):
    """Where an event stands; each kind's class adds ``kind`` (required: the union's discriminator) and ``data``."""

    run_id: str
    key: str
    """The sort key: derived from where the event stands, so it orders the transcript."""
    step: int
    at: datetime


class SystemEvent(_EventBase):
    kind: Literal[EventKind.SYSTEM]
    data: SystemData


class UserEvent(_EventBase):
    kind: Literal[EventKind.USER]
    data: UserData


class AssistantEvent(_EventBase):
    kind: Literal[EventKind.ASSISTANT]
    data: AssistantData


class ToolResultEvent(_EventBase):
    kind: Literal[EventKind.TOOL_RESULT]
    data: ToolResultData


class ErrorEvent(_EventBase):
    kind: Literal[EventKind.ERROR]
    data: RunError


class EndEvent(_EventBase):
    kind: Literal[EventKind.END]
    data: RunOutcome


class ApprovalRequestedEvent(_EventBase):
    kind: Literal[EventKind.APPROVAL_REQUESTED]
    data: ApprovalRequestedData


class ApprovalDecidedEvent(_EventBase):
    kind: Literal[EventKind.APPROVAL_DECIDED]
    data: ApprovalDecidedData


class UserMessageEvent(_EventBase):
    kind: Literal[EventKind.USER_MESSAGE]
    data: UserMessageData


Event = Annotated[
    SystemEvent
    | UserEvent
    | AssistantEvent
    | ToolResultEvent
    | ErrorEvent
    | EndEvent
    | ApprovalRequestedEvent
    | ApprovalDecidedEvent
    | UserMessageEvent,
    Field(discriminator="kind"),
]
"""One transcript event (item ``RUN#<id>`` / ``EVT#...``), told apart by ``kind``."""


_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(value: Any) -> Event:
    """The event a JSON object (an API page's entry, a stored item's fields) describes; pydantic's
    ``ValidationError`` when it is not one."""
    return _EVENT.validate_python(value)


_REPLY_COUNTERS = {"usage": {"steps", "tool_calls", "tool_ms"}}
"""What a reply's usage leaves out in its item: counters of the run, not of one reply."""


def dump_data(event: Event) -> str:
    """An event's ``data`` as the JSON text its item stores (the shape it had before it was typed)."""
    exclude = _REPLY_COUNTERS if isinstance(event, AssistantEvent) else None
    return event.data.model_dump_json(exclude_none=True, exclude=exclude)


# --- keys ---


def event_key(step: int, position: int, kind: EventKind) -> str:
    return f"EVT#{step:06d}#{position:03d}#{kind.value}"


SYSTEM_KEY = event_key(0, 0, EventKind.SYSTEM)
USER_KEY = event_key(0, 1, EventKind.USER)
ERROR_KEY = event_key(_LAST_STEP - 1, 0, EventKind.ERROR)
END_KEY = event_key(_LAST_STEP, 0, EventKind.END)


def key_step(key: str) -> int:
    """The step an event key stands at (``EVT#000003#002#tool_result`` → 3; the error and END keys → 999998, 999999)."""
    return int(key.split("#", 2)[1])


def is_run_end_key(key: str) -> bool:
    """Whether ``key`` is one of the keys written when the run ends (its error, its END), past every turn's."""
    return key_step(key) >= _LAST_STEP - 1


def step_bounds(step: int) -> tuple[str, str]:
    """The lowest and highest possible key of step ``step``'s events (a Query's ``BETWEEN`` bounds)."""
    return f"EVT#{step:06d}#", f"EVT#{step:06d}#~"


def assistant_key(step: int) -> str:
    return event_key(step, 0, EventKind.ASSISTANT)


def tool_result_key(step: int, call_index: int) -> str:
    return event_key(step, call_index + 1, EventKind.TOOL_RESULT)


def approval_requested_key(step: int, call_index: int) -> str:
    return f"EVT#{step:06d}#{call_index + 1:03d}#0#{EventKind.APPROVAL_REQUESTED.value}"


def approval_decided_key(step: int, call_index: int) -> str:
    return f"EVT#{step:06d}#{call_index + 1:03d}#1#{EventKind.APPROVAL_DECIDED.value}"


MESSAGE_POSITION = 999
"""A user message's position in its step: after every tool result of the step (a turn has fewer calls)."""


def user_message_key(step: int, message_id: str) -> str:
    return f"EVT#{step:06d}#{MESSAGE_POSITION:03d}#{EventKind.USER_MESSAGE.value}#{message_id}"


# --- making events ---


def system_event(run_id: str, data: SystemData) -> SystemEvent:
    return SystemEvent(kind=EventKind.SYSTEM, run_id=run_id, key=SYSTEM_KEY, step=0, at=utcnow(), data=data)


def user_event(run_id: str, data: UserData) -> UserEvent:
    return UserEvent(kind=EventKind.USER, run_id=run_id, key=USER_KEY, step=0, at=utcnow(), data=data)


def assistant_event(run_id: str, step: int, data: AssistantData) -> AssistantEvent:
    return AssistantEvent(
        kind=EventKind.ASSISTANT, run_id=run_id, key=assistant_key(step), step=step, at=utcnow(), data=data
    )


def tool_result_event(run_id: str, step: int, call_index: int, data: ToolResultData) -> ToolResultEvent:
    return ToolResultEvent(
        kind=EventKind.TOOL_RESULT,
        run_id=run_id,
        key=tool_result_key(step, call_index),
        step=step,
        at=utcnow(),
        data=data,
    )


def error_event(run_id: str, step: int, error: RunError) -> ErrorEvent:
    return ErrorEvent(kind=EventKind.ERROR, run_id=run_id, key=ERROR_KEY, step=step, at=utcnow(), data=error)


def end_event(run_id: str, step: int, outcome: RunOutcome) -> EndEvent:
    return EndEvent(kind=EventKind.END, run_id=run_id, key=END_KEY, step=step, at=utcnow(), data=outcome)


def approval_requested_event(
    run_id: str, step: int, call_index: int, data: ApprovalRequestedData
) -> ApprovalRequestedEvent:
    return ApprovalRequestedEvent(
        kind=EventKind.APPROVAL_REQUESTED,
        run_id=run_id,
        key=approval_requested_key(step, call_index),
        step=step,
        at=utcnow(),
        data=data,
    )


def approval_decided_event(run_id: str, step: int, call_index: int, data: ApprovalDecidedData) -> ApprovalDecidedEvent:
    return ApprovalDecidedEvent(
        kind=EventKind.APPROVAL_DECIDED,
        run_id=run_id,
        key=approval_decided_key(step, call_index),
        step=step,
        at=utcnow(),
        data=data,
    )


def user_message_event(run_id: str, step: int, message_id: str, data: UserMessageData) -> UserMessageEvent:
    return UserMessageEvent(
        kind=EventKind.USER_MESSAGE,
        run_id=run_id,
        key=user_message_key(step, message_id),
        step=step,
        at=utcnow(),
        data=data,
    )


# --- reading a run's transcript ---


class Transcript:
    """A run's events in order, and the questions the run loop and the model adapters ask of them."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.events: Sequence[Event] = list(events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def system(self) -> SystemData | None:
        return next((e.data for e in self.events if isinstance(e, SystemEvent)), None)

    def user(self) -> UserData | None:
        return next((e.data for e in self.events if isinstance(e, UserEvent)), None)

    def assistant(self, step: int) -> AssistantData | None:
        """The model's reply of turn ``step``, if recorded."""
        return next((e.data for e in self.events if isinstance(e, AssistantEvent) and e.step == step), None)

    def replies(self) -> list[AssistantData]:
        """Every model reply so far, in order."""
        return [e.data for e in self.events if isinstance(e, AssistantEvent)]

    def results(self, step: int | None = None) -> list[ToolResultData]:
        """The tool results of turn ``step`` (of every turn when None), in call order."""
        return [e.data for e in self.events if isinstance(e, ToolResultEvent) and (step is None or e.step == step)]

    def last_answer(self) -> str | None:
        """The model's most recent text, if it said anything."""
        return next((reply.text for reply in reversed(self.replies()) if reply.text), None)

    def outcome(self) -> RunOutcome | None:
        """How the run ended, once its END event is written."""
        return next((e.data for e in self.events if isinstance(e, EndEvent)), None)
