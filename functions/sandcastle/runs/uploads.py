"""The S3 inbox: an uploaded file starts a run of a saved task; the result lands in the outbox.

Convention, in the inbox bucket:

* ``inbox/<tenant>/<task>/<file name>`` starts a run of the tenant's saved task ``<task>``, with the
  file at ``~/input/<file name>`` in the sandbox. With ``<task>`` = ``_`` the object carries its own
  instructions in its metadata (``x-amz-meta-instructions``, URL-encoded when not plain ASCII).
* When the run ends, its artifacts and a ``result.json`` (the run's ``RunOutcome``: status, stop reason,
  result, usage, error, artifacts) are written under ``outbox/<tenant>/<task>/<run id>/``. An upload
  that cannot start a run (unknown task, over the size cap, empty, a key off the convention) gets a
  ``result.json`` there with status ``REJECTED`` and the error, and no sandbox is created.

One run per object version: the run id is derived from bucket, key and version id, and
``submit_run`` with a fixed run id is a no-op the second time, so a duplicated or replayed event
starts nothing new.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import unquote, unquote_plus

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ValidationError, computed_field

from sandcastle.errors import InvalidRunRequest, RunNotFound, UploadRejected
from sandcastle.names import file_name_problem, tenant_problem
from sandcastle.runs.records import Artifact, OutcomeFields, Run, RunError, RunOrigin, RunStatus
from sandcastle.runs.requests import InputFile, TaskDefinition
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tasks import run_request, save_task_hint
from sandcastle.validation import describe_issues
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

INBOX_PREFIX = "inbox/"
OUTBOX_PREFIX = "outbox/"
AD_HOC_TASK = "_"
"""The task segment of an upload that carries its own instructions."""
INSTRUCTIONS_METADATA = "instructions"
"""The user metadata (``x-amz-meta-instructions``) an ad-hoc upload's instructions ride on."""
RESULT_FILE = "result.json"
REJECTED: Final = "REJECTED"

_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNKNOWN = "_unknown"


@dataclass(frozen=True)
class InboxObject:
    """One created object, from either event shape; ``key`` is always decoded."""

    bucket: str
    key: str
    version_id: str | None = None
    size: int | None = None
    etag: str | None = None


@dataclass(frozen=True)
class UploadOutcome:
    """What an upload led to: ``started`` (or ``duplicate``) a run, ``rejected``, or ``ignored`` (not an upload)."""

    status: Literal["started", "duplicate", "rejected", "ignored"]
    run_id: str | None = None
    result_key: str | None = None
    """Where ``result.json`` is (rejected) or will be (started) in the inbox bucket."""
    error: str | None = None


@dataclass(frozen=True)
class _Place:
    tenant: str
    task: str
    file_name: str


# --- events and keys ---


def created_objects(event: dict[str, Any]) -> list[InboxObject]:
    """The objects an event says were created: an EventBridge ``Object Created`` event (keys as they
    are) or an S3 event notification (keys URL-encoded, ``+`` for a space)."""
    if event.get("detail-type") == "Object Created":
        detail = event.get("detail") or {}
        obj = detail.get("object") or {}
        return [
            InboxObject(
                bucket=detail["bucket"]["name"],
                key=obj["key"],
                version_id=obj.get("version-id"),
                size=obj.get("size"),
                etag=obj.get("etag"),
            )
        ]
    objects = []
    for record in event.get("Records") or []:
        if record.get("eventSource") != "aws:s3" or not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record["s3"]
        obj = s3["object"]
        objects.append(
            InboxObject(
                bucket=s3["bucket"]["name"],
                key=unquote_plus(obj["key"]),
                version_id=obj.get("versionId"),
                size=obj.get("size"),
                etag=obj.get("eTag"),
            )
        )
    return objects


def upload_run_id(bucket: str, key: str, version_id: str | None, etag: str | None = None) -> str:
    """The run id of one object version: the same event twice, or replayed, names the same run."""
    version = version_id if version_id and version_id != "null" else f"etag:{etag or ''}"
    digest = hashlib.sha256(f"{bucket}\n{key}\n{version}".encode()).hexdigest()
    return f"run-{digest[:32]}"


def outbox_prefix(tenant: str, task: str, run_id: str) -> str:
    """``outbox/<tenant>/<task>/<run id>/``: where a run's artifacts and ``result.json`` go."""
    return f"{OUTBOX_PREFIX}{tenant}/{task}/{run_id}/"


def _place(key: str) -> _Place:
    """Tenant, task and file name of an inbox key; ``UploadRejected`` when it is off the convention."""
    parts = key[len(INBOX_PREFIX) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise UploadRejected(
            "InvalidKey",
            f"{key!r} does not follow inbox/<tenant>/<task>/<file name> "
            f"(use {AD_HOC_TASK!r} as the task to give instructions in x-amz-meta-instructions)",
        )
    tenant, task, file_name = parts
    problem = tenant_problem(tenant)
    if problem:
        raise UploadRejected("InvalidKey", problem)
    if task != AD_HOC_TASK and not _TASK.match(task):
        raise UploadRejected("InvalidKey", f"task {task!r} is not a task name (letters, digits, '_', '.', '-')")
    problem = file_name_problem(file_name)
    if problem:
        raise UploadRejected("InvalidName", problem)
    return _Place(tenant, task, file_name)


def _reject_place(key: str) -> tuple[str, str]:
    """Where a rejected key's ``result.json`` goes: its tenant and task where they can be read."""
    parts = key[len(INBOX_PREFIX) :].split("/")
    tenant = parts[0] if parts and tenant_problem(parts[0]) is None else _UNKNOWN
    task = parts[1] if len(parts) == 3 and (parts[1] == AD_HOC_TASK or _TASK.match(parts[1])) else AD_HOC_TASK
    return tenant, task


# --- result.json ---


class OutboxSource(BaseModel):
    """The inbox object a run (or a rejection) came from."""

    bucket: str | None = None
    key: str | None = None
    version_id: str | None = None


class OutboxArtifact(Artifact):
    """An artifact, with where its copy is in the outbox."""

    key: str
    """The copy's key in the inbox bucket (``outbox/.../<name>``)."""


class OutboxResult(OutcomeFields[RunStatus | Literal["REJECTED"], OutboxArtifact]):
    """``result.json``: the run's outcome, with the upload it answers; a rejected upload's has status ``REJECTED``."""

    run_id: str
    tenant: str
    task: str | None
    source: OutboxSource
    created_at: datetime | None = None
    ended_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]  # mypy does not take a decorated property (pydantic's docs)
    @property
    def answer(self) -> str | None:
        """``result`` under the name ``result.json`` gave it before it rendered the run's outcome."""
        return self.result

    def json_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False).encode()


# --- starting a run ---


def start_upload_run(obj: InboxObject, deps: Dependencies) -> UploadOutcome:
    """Start the run an uploaded object asks for, once per object version.

    A rejected upload gets ``result.json`` with the error in the outbox and starts no sandbox; an
    object outside ``inbox/`` (the outbox itself, a folder marker) is ignored.
    """
    if not obj.key.startswith(INBOX_PREFIX) or obj.key.endswith("/"):
        return UploadOutcome(status="ignored")
    run_id = upload_run_id(obj.bucket, obj.key, obj.version_id, obj.etag)
    try:
        existing = deps.store.get_run(run_id)
    except RunNotFound:
        existing = None
    if existing is not None:
        logger.info("upload already started its run", extra={"run_id": run_id, "key": obj.key})
        return UploadOutcome(status="duplicate", run_id=run_id, result_key=_result_key(existing))
    try:
        place = _place(obj.key)
        run = _submit(obj, place, run_id, deps)
    except UploadRejected as error:
        tenant, task = _reject_place(obj.key)
        key = _write_rejection(obj, run_id, tenant, task, error, deps)
        logger.warning(
            "upload rejected", extra={"run_id": run_id, "key": obj.key, "error": str(error), "result_key": key}
        )
        return UploadOutcome(status="rejected", run_id=run_id, result_key=key, error=str(error))
    logger.info("upload started a run", extra={"run_id": run_id, "key": obj.key, "task": place.task})
    return UploadOutcome(status="started", run_id=run.run_id, result_key=_result_key(run))


def _submit(obj: InboxObject, place: _Place, run_id: str, deps: Dependencies) -> Run:
    head = deps.inbox.head(obj.key, version_id=obj.version_id)
    if head is None:
        raise UploadRejected("ObjectGone", f"s3://{obj.bucket}/{obj.key} no longer exists (deleted before it ran)")
    definition = _definition(place, head.metadata, deps)
    cap = min(definition.max_input_bytes or deps.settings.inbox_max_file_bytes, deps.settings.inbox_max_file_bytes)
    if head.size > cap:
        raise UploadRejected("FileTooLarge", f"{place.file_name} is {head.size} bytes; the limit is {cap} bytes")
    if head.size == 0 and not definition.allow_empty_input:
        raise UploadRejected(
            "EmptyFile", f"{place.file_name} is empty; task {place.task!r} needs content (allow_empty_input is off)"
        )
    input_key = deps.objects.input_key(run_id, place.file_name)
    try:
        request = run_request(
            definition,
            tenant=place.tenant,
            source="s3",
            files=[InputFile(name=place.file_name, s3_key=input_key)],
        )
        # Validated (the request, its file name) before copying: a bad upload leaves nothing behind.
        deps.objects.copy_from(obj.bucket, obj.key, input_key, version_id=obj.version_id or head.version_id)
        origin = RunOrigin(
            kind="s3", task=place.task, bucket=obj.bucket, key=obj.key, version_id=obj.version_id or head.version_id
        )
        return submit_run(request, deps, run_id=run_id, origin=origin)
    except ValidationError as error:
        raise UploadRejected("InvalidRequest", describe_issues(error.errors())) from error
    except InvalidRunRequest as error:
        raise UploadRejected("InvalidRequest", str(error)) from error
    except FileNotFoundError as error:
        raise UploadRejected("ObjectGone", str(error)) from error


def _definition(place: _Place, metadata: dict[str, str], deps: Dependencies) -> TaskDefinition:
    if place.task != AD_HOC_TASK:
        task = deps.tasks.get(place.tenant, place.task)
        if task is None:
            missing = f"tenant {place.tenant!r} has no task named {place.task!r}"
            raise UploadRejected("UnknownTask", f"{missing}; save it first: {save_task_hint(place.task)}")
        return task
    instructions = unquote(metadata.get(INSTRUCTIONS_METADATA, "")).strip()
    if not instructions:
        raise UploadRejected(
            "MissingInstructions",
            f"an upload to inbox/<tenant>/{AD_HOC_TASK}/ needs its instructions in x-amz-meta-{INSTRUCTIONS_METADATA}",
        )
    try:
        return TaskDefinition(instructions=instructions)
    except ValidationError as error:
        raise UploadRejected("InvalidRequest", describe_issues(error.errors())) from error


def _result_key(run: Run) -> str | None:
    if run.origin is None or run.origin.kind != "s3":
        return None
    return outbox_prefix(run.tenant, run.origin.task or AD_HOC_TASK, run.run_id) + RESULT_FILE


def _write_rejection(
    obj: InboxObject, run_id: str, tenant: str, task: str, error: UploadRejected, deps: Dependencies
) -> str:
    key = outbox_prefix(tenant, task, run_id) + RESULT_FILE
    result = OutboxResult(
        run_id=run_id,
        tenant=tenant,
        task=task,
        source=OutboxSource(bucket=obj.bucket, key=obj.key, version_id=obj.version_id),
        status=REJECTED,
        error=RunError(type=error.error_type, message=str(error)),
    )
    deps.inbox.put(key, result.json_bytes(), content_type="application/json")
    return key


# --- the outbox, when a run ends ---


def write_outbox(run_id: str, deps: Dependencies) -> str | None:
    """Copy an inbox run's artifacts to its outbox folder, then write its ``result.json`` (last, so its
    presence means the folder is complete). Returns the ``result.json`` key; None for other runs.

    Safe to repeat: the same objects are written again with the same content.
    """
    try:
        run = deps.store.get_run(run_id)
    except RunNotFound:
        logger.warning("Run Finished for a run that does not exist", extra={"run_id": run_id})
        return None
    if run.origin is None or run.origin.kind != "s3" or not run.status.terminal:
        return None
    prefix = outbox_prefix(run.tenant, run.origin.task or AD_HOC_TASK, run.run_id)
    artifacts = []
    for artifact in run.artifacts:
        key = prefix + artifact.name
        deps.inbox.copy_from(deps.objects.bucket, artifact.s3_key, key)
        artifacts.append(OutboxArtifact(**artifact.model_dump(), key=key))
    outcome = run.outcome()
    result = OutboxResult(
        run_id=run.run_id,
        tenant=run.tenant,
        task=run.origin.task,
        source=OutboxSource(bucket=run.origin.bucket, key=run.origin.key, version_id=run.origin.version_id),
        **outcome.model_dump(exclude={"artifacts"}),
        artifacts=artifacts,
        created_at=run.created_at,
        ended_at=run.ended_at,
    )
    key = prefix + RESULT_FILE
    deps.inbox.put(key, result.json_bytes(), content_type="application/json")
    logger.info("outbox written", extra={"run_id": run.run_id, "result_key": key, "artifacts": len(artifacts)})
    return key
