"""What is stored about a run and its triggers: the run item, its outcome, usage, artifacts, transcript
pieces, saved tasks and schedules. Made by the service, never taken from a caller as is."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandcastle.runs.policy import PolicyRule, RuleRef
from sandcastle.runs.requests import (
    PlaybookCall,
    PushOptions,
    RepositoryOptions,
    SandboxOptions,
    ScheduleRequest,
    TaskDefinition,
)

ModelBackend = Literal["openai", "playbook"]
"""What answers a run's turns: the OpenAI-compatible model, or the request's scripted playbook."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    """Waiting for a person to approve or reject tool calls of its last turn (``GET /runs/{id}/approvals``)."""
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


class ResolvedBudgets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int
    max_tool_calls: int
    timeout_s: int


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


class Delivery(BaseModel):
    """What a run on a repository handed back: its change against the base commit, and where it was pushed."""

    base_commit: str
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    pushed_branch: str | None = None
    pushed_sha: str | None = None
    """The commit pushed to ``pushed_branch`` (one commit on the base holding the whole change)."""
    push_error: str | None = None
    """Why the push asked for did not happen (the change is still in ``changes.patch``)."""


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
    delivery: Delivery | None = None
    """A run on a repository: its change (``changes.patch``) and the push, when one was asked for."""


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
    repository: RepositoryOptions | None = None
    push: PushOptions | None = None
    base_commit: str | None = None
    """The commit ``~/repo`` was checked out at (recorded by PrepareRun)."""
    base_branch: str | None = None
    """The branch ``repository.ref`` named (or the remote's default branch); never pushed to."""
    delivery: Delivery | None = None
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
    policy: list[PolicyRule] = Field(default_factory=list)
    """The run's own approval rules (its request's, or its saved task's), applied after the tenant's."""
    approval_timeout_s: int = 3600
    """Seconds a call of this run waits for approval before it is rejected ("approval expired")."""

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


class Approval(BaseModel):
    """A tool call that needed a person's approval (item ``RUN#<id>`` / ``APPROVAL#<step>#<call id>``)."""

    run_id: str
    step: int
    call_index: int
    """The call's position in its turn (its result's place in the transcript)."""
    tool_call_id: str
    tool: str
    arguments: str
    """As the model wrote them (as far as the turn's event keeps them)."""
    arguments_kept: KeptValue | None = None
    """Set when ``arguments`` is only part of them (a reply too large for its item): where the whole are."""
    rule: RuleRef | None = None
    reason: str | None = None
    asked_at: datetime
    expires_at: datetime
    decision: Literal["approve", "reject"] | None = None
    """None while pending."""
    decided_by: str | None = None
    """The API key id (or tenant) that decided; None for an expiry."""
    decided_at: datetime | None = None
    comment: str | None = None
    expired: bool = False
    """Rejected because nobody decided by ``expires_at`` ("approval expired")."""

    @property
    def pending(self) -> bool:
        return self.decision is None


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


Run.model_rebuild()
