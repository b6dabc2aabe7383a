"""The run's data: what a user asks for, what is stored, what the state machine carries."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.BUDGET_EXCEEDED, RunStatus.CANCELLED}
)


class StopReason(StrEnum):
    """Why a run stopped asking the model for more."""

    COMPLETED = "completed"
    """The model (or playbook) gave its final answer."""
    MAX_STEPS = "max_steps"
    MAX_TOOL_CALLS = "max_tool_calls"
    TIMEOUT = "timeout"


STOP_STATUS = {
    StopReason.COMPLETED: RunStatus.SUCCEEDED,
    StopReason.MAX_STEPS: RunStatus.BUDGET_EXCEEDED,
    StopReason.MAX_TOOL_CALLS: RunStatus.BUDGET_EXCEEDED,
    StopReason.TIMEOUT: RunStatus.TIMED_OUT,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budgets(_Strict):
    """Per-run limits. Unset fields take the configured defaults; each has a hard ceiling."""

    max_steps: int | None = Field(default=None, ge=1)
    """Model turns at most."""
    max_tool_calls: int | None = Field(default=None, ge=1)
    """Tool invocations at most, over the whole run."""
    timeout_s: int | None = Field(default=None, ge=10)
    """Wall-clock seconds from the start of the run; the sandbox's own timeout follows it."""


class ResolvedBudgets(_Strict):
    max_steps: int
    max_tool_calls: int
    timeout_s: int


class PlaybookCall(_Strict):
    """One scripted tool call of a playbook run."""

    tool: Annotated[str, StringConstraints(min_length=1)]
    arguments: dict[str, Any] = Field(default_factory=dict)


class InputFile(_Strict):
    """A file placed at ``~/input/<name>`` in the sandbox: inline (base64) or an S3 object."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_base64: str | None = None
    s3_key: str | None = None


class RunRequest(_Strict):
    """What a user asks for."""

    instructions: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    """The task, in words."""
    tenant: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "default"
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """The model name for an OpenAI-compatible endpoint; the configured default when unset."""
    playbook: list[PlaybookCall] | None = Field(default=None, min_length=1, max_length=500)
    """Scripted tool calls, executed in order instead of asking a model."""
    budgets: Budgets = Field(default_factory=Budgets)
    files: list[InputFile] = Field(default_factory=list, max_length=100)
    source: Literal["api", "s3", "schedule", "cli"] = "cli"


class StoredInputFile(BaseModel):
    name: str
    s3_key: str
    size: int


class Artifact(BaseModel):
    """A file the run left under ``~/output/``, copied to S3 when the run ended."""

    name: str
    """Path relative to ``~/output/``."""
    size: int
    sha256: str
    content_type: str
    s3_key: str


class Usage(BaseModel):
    """What a run (or one step) consumed."""

    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    tool_ms: int = 0


class RunError(BaseModel):
    type: str
    message: str


class Run(BaseModel):
    """The stored run (item ``RUN#<id>`` / ``META``)."""

    run_id: str
    tenant: str
    source: str
    status: RunStatus
    instructions: str
    model_backend: Literal["openai", "playbook"]
    model: str | None = None
    playbook: list[PlaybookCall] | None = None
    budgets: ResolvedBudgets
    files: list[StoredInputFile] = Field(default_factory=list)
    sandbox_id: str | None = None
    step: int = 0
    usage: Usage = Field(default_factory=Usage)
    stop_reason: StopReason | None = None
    result: str | None = None
    error: RunError | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    deadline: datetime | None = None


class ToolCall(BaseModel):
    """A tool call as the model asked for it; ``arguments`` is the raw JSON text."""

    id: str
    name: str
    arguments: str


class EventKind(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_RESULT = "tool_result"
    STATUS = "status"
    ERROR = "error"
    END = "end"


class Event(BaseModel):
    """One transcript event (item ``RUN#<id>`` / ``EVT#...``)."""

    run_id: str
    key: str
    """The sort key: derived from where the event stands, so it orders the transcript."""
    kind: EventKind
    step: int
    at: datetime
    data: dict[str, Any]


# --- what the state machine carries: ids and routing facts only ---


class StepState(BaseModel):
    """The state between the run loop's states."""

    run_id: str
    step: int = 0
    """The last model turn completed (0 before the first)."""
    next: Literal["tools", "finish"] | None = None
    tool_call_ids: list[str] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    tool_concurrency: int = 1
    """MaxConcurrency of the RunTools map (from the TOOL_CONCURRENCY setting)."""


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
