"""What the state machine and its events carry: ids and routing facts only (the run's data is in the
store). Step Functions, EventBridge and EventBridge Scheduler hand these to the handlers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sandcastle.runs.records import StopReason


class StepState(BaseModel):
    """The state between the run loop's states."""

    run_id: str
    step: int = 0
    """The last model turn completed (0 before the first)."""
    next: Literal["agent", "tools", "finish"] | None = None
    """The move after AgentStep: ``agent`` (the turn's one tool call ran in AgentStep: take the next turn),
    ``tools`` (run the turn's calls in the RunTools map), ``finish``."""
    tool_call_ids: list[str] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    tool_concurrency: int = 1
    """MaxConcurrency of the RunTools map (from the TOOL_CONCURRENCY setting)."""
    inline_tool_call: bool = False
    """AgentStep may execute a turn's only tool call itself and answer ``next: agent``. The state machine
    sets it in AgentStep's parameters, so an execution of a definition whose Choice knows no ``agent``
    move (one started before a deploy) never gets one: it gets ``tools``."""


class ToolTask(BaseModel):
    """One item of the RunTools map."""

    run_id: str
    step: int
    tool_call_id: str


class StateError(BaseModel):
    """What a ``Catch`` puts at ``$.error``."""

    Error: str
    Cause: str | None = None


class FailInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str
    step: int = 0
    error: StateError


# --- what an execution's end looks like (EventBridge "Step Functions Execution Status Change") ---


class ExecutionStatusChange(BaseModel):
    """The ``detail`` of an EventBridge "Step Functions Execution Status Change" event."""

    model_config = ConfigDict(extra="ignore")

    executionArn: str  # noqa: N815 - the event's own field names
    stateMachineArn: str  # noqa: N815
    name: str
    """The execution's name: the run id."""
    status: Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"]
    error: str | None = None
    cause: str | None = None


class ScheduleFire(BaseModel):
    """What EventBridge Scheduler sends ``OnScheduleFunction``: the schedule and the time it fired for."""

    model_config = ConfigDict(extra="ignore")

    schedule_id: str
    tenant: str
    scheduled_time: str
    """``<aws.scheduler.scheduled-time>``: the same for a retried delivery of one fire."""
