"""The run's data: what a user asks for, what is stored, what the state machine carries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from sandcastle.names import FileName, TenantName

ModelBackend = Literal["openai", "playbook"]
"""What answers a run's turns: the OpenAI-compatible model, or the request's scripted playbook."""


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

    name: FileName
    """Kept exactly (``;``, ``"``, ``#``, ``%``, ``\\``, spaces, Unicode); refused: ``/``, control characters,
    a leading ``.``, over 255 bytes (``sandcastle.names``)."""
    content_base64: str | None = None
    s3_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """A key under ``uploads/<your tenant>/`` (``POST /uploads`` gives one); copied to the run at submission."""


class SandboxOptions(_Strict):
    """What a run asks of its sandbox."""

    template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")] | None = None
    """E2B template (name or id); the configured default when unset."""
    allow_internet_access: bool = False
    """Outbound internet from the sandbox (E2B only; the local sandbox never has a network)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for every command; names must be on the configured allow-list."""


class RunRequest(_Strict):
    """What a user asks for."""

    instructions: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    """The task, in words."""
    tenant: TenantName = "default"
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """The model name for an OpenAI-compatible endpoint; the configured default when unset."""
    playbook: list[PlaybookCall] | None = Field(default=None, min_length=1, max_length=500)
    """Scripted tool calls, executed in order instead of asking a model."""
    budgets: Budgets = Field(default_factory=Budgets)
    files: list[InputFile] = Field(default_factory=list, max_length=100)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
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
    """What a run (or one step, or one model reply) consumed: the one usage shape.

    The run item keeps each counter as its own top-level number (``usage_steps``, ...) so that
    steps and tool calls can ``ADD`` to it atomically: ``to_item``/``from_item`` are that
    flattening, and nothing else knows it.
    """

    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    tool_ms: int = 0

    def to_item(self) -> dict[str, int]:
        """The run item's counter attributes for this usage (every counter, zeros included)."""
        return {_USAGE_ATTRIBUTE_PREFIX + name: getattr(self, name) for name in type(self).model_fields}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Usage:
        """The usage a run item's counter attributes hold (a missing counter is 0)."""
        return cls(**{name: int(item.get(_USAGE_ATTRIBUTE_PREFIX + name, 0)) for name in cls.model_fields})

    def increments(self) -> dict[str, int]:
        """The run item's counter attributes this usage adds to (zeros left out)."""
        return {attribute: amount for attribute, amount in self.to_item().items() if amount}


_USAGE_ATTRIBUTE_PREFIX = "usage_"


class RunError(BaseModel):
    type: str
    message: str


_StatusT = TypeVar("_StatusT", bound=str)
_ArtifactT = TypeVar("_ArtifactT", bound=Artifact)


class OutcomeFields(BaseModel, Generic[_StatusT, _ArtifactT]):
    """The fields of an outcome, over its status and artifact types: ``RunOutcome`` is a run's, the
    outbox's ``result.json`` widens the status (``REJECTED``) and the artifacts (their outbox keys)."""

    status: _StatusT
    stop_reason: StopReason | None = None
    result: str | None = None
    """The model's last answer (at most ``RESULT_LIMIT_BYTES``; the whole answer is in the transcript)."""
    error: RunError | None = None
    usage: Usage = Field(default_factory=Usage)
    artifacts: list[_ArtifactT] = Field(default_factory=list)


class RunOutcome(OutcomeFields[RunStatus, Artifact]):
    """How a run ended: written once, as its END event and onto its run item, in one transaction.

    Everything that reports a finished run renders this model: the END event, the run's fields in
    ``GET /runs/{id}``, the ``Run Finished`` event's detail, the outbox's ``result.json`` and the
    CLI's summary.
    """

    @field_validator("artifacts", mode="before")
    @classmethod
    def _names_of_older_end_events(cls, value: Any) -> Any:
        """An END event written before the outcome was one model lists artifact names only."""
        if isinstance(value, list):
            return [
                {"name": a, "size": 0, "sha256": "", "content_type": "", "s3_key": ""} if isinstance(a, str) else a
                for a in value
            ]
        return value


class Run(BaseModel):
    """The stored run (item ``RUN#<id>`` / ``META``)."""

    run_id: str
    tenant: str
    source: str
    status: RunStatus
    instructions: str
    model_backend: ModelBackend
    model: str | None = None
    playbook: list[PlaybookCall] | None = None
    budgets: ResolvedBudgets
    files: list[StoredInputFile] = Field(default_factory=list)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
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
    cancel_requested_at: datetime | None = None
    """When a cancel was asked for (the run then ends CANCELLED)."""
    cancelled_by: str | None = None
    """Who asked for the cancel: the API key id (or tenant) that called ``POST /runs/{id}/cancel``."""
    origin: RunOrigin | None = None
    """What started the run when a trigger did: the inbox object, or the schedule and its fire time."""

    def outcome(self) -> RunOutcome:
        """How the run ended (its END event's content), from the run's own fields."""
        return RunOutcome.model_validate(self.model_dump(include=set(RunOutcome.model_fields)))


class KeptValue(BaseModel):
    """What a transcript keeps of a value it clipped (``large_values.keep_value``), besides the text."""

    bytes: int
    truncated: bool | None = None
    not_utf8: bool | None = None
    full_output: str | None = None
    """Where the whole value is (``s3://…``)."""


class ToolCall(BaseModel):
    """A tool call as the model asked for it; ``arguments`` is the raw JSON text."""

    id: str
    name: str
    arguments: str
    arguments_kept: KeptValue | None = None
    """Set when the event keeps only part of ``arguments`` (a reply too large for its item): ``bytes``,
    ``truncated`` and ``full_output``, where the whole arguments are (``large_values.fit_reply``)."""


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


# --- triggers: saved tasks, schedules, what started a run ---

TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A saved task's name: letters, digits, ``_``, ``.``, ``-``; it starts with a letter or digit (so ``_`` is free)."""


class RunOrigin(BaseModel):
    """What started a run: an object in the inbox bucket, or a schedule's fire."""

    kind: Literal["s3", "schedule"]
    task: str | None = None
    """The saved task the run was made from; ``_`` for an upload that carried its own instructions."""
    bucket: str | None = None
    key: str | None = None
    """The inbox object's key, decoded (``inbox/<tenant>/<task>/<file name>``)."""
    version_id: str | None = None
    schedule_id: str | None = None
    scheduled_time: str | None = None
    """The fire time EventBridge Scheduler passed (``<aws.scheduler.scheduled-time>``), ISO 8601."""


class TaskDefinition(_Strict):
    """A saved run template: what ``PUT /tasks/{name}`` takes and a schedule may carry inline."""

    instructions: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    playbook: list[PlaybookCall] | None = Field(default=None, min_length=1, max_length=500)
    budgets: Budgets = Field(default_factory=Budgets)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
    max_input_bytes: int | None = Field(default=None, ge=1)
    """Uploads larger than this are refused (a ``result.json`` with the error); the configured cap when unset."""
    allow_empty_input: bool = False
    """Whether an empty uploaded file may start a run; by default it is refused."""


class Task(TaskDefinition):
    """A stored task (item ``TASKS#<tenant>`` / ``<name>``)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    tenant: str
    created_at: datetime
    updated_at: datetime


class ScheduleSkip(BaseModel):
    """A fire that started no run, and why."""

    at: datetime
    """When the fire was handled."""
    scheduled_time: str
    reason: str


class ScheduleRequest(_Strict):
    """The body of ``POST /schedules``: when, and what to run (a saved task, or a run template inline)."""

    expression: Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=256)]
    """``cron(min hour day-of-month month day-of-week year)``, ``rate(5 minutes)`` or ``at(2026-12-01T09:00:00)``,
    as EventBridge Scheduler reads them."""
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    """An IANA time zone (``Europe/Berlin``) the expression is read in."""
    task: TaskName | None = None
    """A saved task's name; give this or ``run``."""
    run: TaskDefinition | None = None
    """A run template inline; give this or ``task``."""
    overlap: Literal["skip", "allow"] = "skip"
    """``skip``: no new run while the previous one is still going (the skip is recorded); ``allow``: start anyway."""
    description: Annotated[str, StringConstraints(max_length=512)] | None = None


class Schedule(ScheduleRequest):
    """A stored schedule (item ``SCHEDULES`` / ``<tenant>#<id>``); EventBridge Scheduler fires it by its id."""

    model_config = ConfigDict(extra="ignore")

    schedule_id: str
    tenant: str
    created_at: datetime
    last_run_id: str | None = None
    last_scheduled_time: str | None = None
    skips: list[ScheduleSkip] = Field(default_factory=list)
    """The latest fires that started no run (newest last, a few kept)."""


class ScheduleFire(BaseModel):
    """What EventBridge Scheduler sends ``OnScheduleFunction``: the schedule and the time it fired for."""

    model_config = ConfigDict(extra="ignore")

    schedule_id: str
    tenant: str
    scheduled_time: str
    """``<aws.scheduler.scheduled-time>``: the same for a retried delivery of one fire."""


Run.model_rebuild()
