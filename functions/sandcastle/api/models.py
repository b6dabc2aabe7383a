"""What the API takes and gives, as pydantic models: the OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from sandcastle.runs.records import Approval, Artifact, Run, RunError, RunStatus, StopReason, Usage
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import Event

#: Fields of ``RunRequest`` the API sets itself: the tenant from the API key, the source "api".
_SERVER_SET = ("tenant", "source")


class _RunSubmissionBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_request(self, tenant: str) -> RunRequest:
        """The run request for ``tenant``, submitted through the API."""
        return RunRequest.model_validate({**self.model_dump(exclude_unset=True), "tenant": tenant, "source": "api"})


#: The body of ``POST /runs``: ``RunRequest`` minus the fields the API sets (one source of truth).
RunSubmission: type[_RunSubmissionBase] = create_model(  # type: ignore[call-overload]
    "RunSubmission",
    __base__=_RunSubmissionBase,
    __doc__="A run to start: instructions, input files (inline base64 or S3 keys), model or playbook, budgets.",
    **{name: (field.annotation, field) for name, field in RunRequest.model_fields.items() if name not in _SERVER_SET},
)


class RunSummary(BaseModel):
    """A run in a listing (without its instructions, playbook and artifacts: ``GET /runs/{id}`` has them)."""

    run_id: str
    status: RunStatus
    source: str
    model_backend: str
    model: str | None = None
    step: int
    usage: Usage
    stop_reason: StopReason | None = None
    error: RunError | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def of(cls, run: Run) -> RunSummary:
        return cls.model_validate(run.model_dump(include=set(cls.model_fields)))


class RunList(BaseModel):
    """A page of the tenant's runs, newest first."""

    runs: list[RunSummary]
    cursor: str | None = None
    """Pass as ``cursor`` to get the next page; absent on the last page."""


class EventList(BaseModel):
    """Transcript events in order."""

    run_id: str
    events: list[Event]
    cursor: str | None = None
    """The last event's key: pass as ``after`` to resume the transcript from here."""
    status: RunStatus
    """The run's status when the page was read; once terminal, no more events will come."""


class ArtifactView(Artifact):
    """An artifact with a link to download it (presigned, valid for an hour, in the cloud)."""

    url: str


class ArtifactList(BaseModel):
    run_id: str
    artifacts: list[ArtifactView]


class Health(BaseModel):
    service: str = "sandcastle"
    status: str = "ok"


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the JSON the API returns."""
    return model.model_dump(mode="json")


class ApprovalList(BaseModel):
    """A run's approvals, pending (``decision`` absent) and decided, in turn and call order."""

    run_id: str
    approvals: list[Approval]


class ApprovalDecision(BaseModel):
    """The body of ``POST /runs/{id}/approvals/{call_id}``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: Annotated[str, StringConstraints(max_length=2000)] | None = None
    """Why; the model reads it with a rejection."""


class MessageRequest(BaseModel):
    """The body of ``POST /runs/{id}/messages``."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)]
