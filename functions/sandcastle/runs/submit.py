"""Submitting a run: validate everything first, then store it QUEUED and start its execution."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid

from botocore.exceptions import ClientError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.budget import resolve_budgets
from sandcastle.runs.models import Run, RunError, RunOrigin, RunRequest, RunStatus, StoredInputFile, utcnow
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def new_run_id() -> str:
    """A run id: also the Step Functions execution name, so a repeated start is a no-op."""
    return f"run-{uuid.uuid4().hex}"


def submit_run(
    request: RunRequest,
    deps: Dependencies,
    *,
    run_id: str | None = None,
    origin: RunOrigin | None = None,
    active_limit: int | None = None,
) -> Run:
    """Validate ``request``, store the run QUEUED, start its execution named by the run id.

    Raises ``InvalidRunRequest`` naming the field before anything is written (``ValueTooLarge`` for a
    request too large to store). ``origin`` records what started the run when a trigger did (an inbox
    object, a schedule's fire). With ``active_limit``, the run is stored only while its tenant has
    fewer unfinished runs (``ActiveRunLimitReached``), checked atomically with the write.
    """
    settings = deps.settings
    budgets = resolve_budgets(request.budgets, settings)
    if request.playbook:
        backend = "playbook"
    elif settings.openai_configured:
        backend = "openai"
    else:
        raise InvalidRunRequest(
            "no model is configured: set OPENAI_API_KEY or OPENAI_BASE_URL, or give a playbook", field="model"
        )
    _check_sandbox_options(request, deps)
    run_id = run_id or new_run_id()
    inline = _check_files(request, deps)

    stored_files = []
    for index, file in enumerate(request.files):
        if file.name in inline:
            key = deps.objects.input_key(run_id, file.name)
            stored_files.append(StoredInputFile(name=file.name, s3_key=key, size=len(inline[file.name])))
        else:
            size = deps.objects.size(file.s3_key or "")
            if size is None:
                raise InvalidRunRequest(
                    f"s3://{deps.objects.bucket}/{file.s3_key} does not exist", field=f"files[{index}].s3_key"
                )
            if size > settings.max_input_file_bytes:
                raise InvalidRunRequest(
                    f"{file.name} is {size} bytes; the limit is {settings.max_input_file_bytes}",
                    field=f"files[{index}].s3_key",
                )
            stored_files.append(StoredInputFile(name=file.name, s3_key=file.s3_key or "", size=size))

    run = Run(
        run_id=run_id,
        tenant=request.tenant,
        source=request.source,
        status=RunStatus.QUEUED,
        instructions=request.instructions,
        model_backend=backend,
        model=(request.model or settings.default_model) if backend == "openai" else None,
        playbook=request.playbook,
        budgets=budgets,
        files=stored_files,
        sandbox=request.sandbox,
        created_at=utcnow(),
        origin=origin,
    )
    deps.store.check_fits(run)  # before the input files are stored: a refused run leaves nothing behind
    for file in stored_files:
        if file.name in inline:
            deps.objects.put(file.s3_key, inline[file.name])
    if not deps.store.create_run(run, active_limit=active_limit):
        return deps.store.get_run(run_id)
    _start_execution(run, deps)
    return run


def _check_sandbox_options(request: RunRequest, deps: Dependencies) -> None:
    options = request.sandbox
    allowed = set(deps.settings.sandbox_env_allowlist)
    for name in options.env:
        if name not in allowed:
            raise InvalidRunRequest(
                f"{name} is not an allowed sandbox variable; allowed: {', '.join(sorted(allowed)) or 'none'}",
                field=f"sandbox.env.{name}",
            )
    if options.allow_internet_access and not deps.settings.sandbox_internet_available:
        raise InvalidRunRequest(
            f"the {_sandbox_kind(deps)} has no network; internet access needs E2B's cloud (E2B_API_KEY)",
            field="sandbox.allow_internet_access",
        )


def _sandbox_kind(deps: Dependencies) -> str:
    settings = deps.settings
    if settings.sandbox_backend == "local":
        return "local sandbox"
    return f"sandbox server at {settings.e2b_api_url}" if settings.e2b_api_url else "e2b sandbox backend"


def _check_files(request: RunRequest, deps: Dependencies) -> dict[str, bytes]:
    """Check names, sources and sizes of the input files; return the inline ones decoded."""
    limit = deps.settings.max_input_file_bytes
    seen: set[str] = set()
    inline: dict[str, bytes] = {}
    for index, file in enumerate(request.files):
        field = f"files[{index}]"
        if _UNSAFE_NAME.search(file.name) or file.name in (".", "..") or file.name.startswith("."):
            raise InvalidRunRequest(
                f"{file.name!r} is not a plain file name (no slashes, control characters or leading dot)",
                field=f"{field}.name",
            )
        if file.name in seen:
            raise InvalidRunRequest(f"{file.name!r} is given twice", field=f"{field}.name")
        seen.add(file.name)
        if (file.content_base64 is None) == (file.s3_key is None):
            raise InvalidRunRequest("give exactly one of content_base64 and s3_key", field=field)
        if file.content_base64 is not None:
            try:
                data = base64.b64decode(file.content_base64, validate=True)
            except (binascii.Error, ValueError) as error:
                raise InvalidRunRequest("is not valid base64", field=f"{field}.content_base64") from error
            if len(data) > limit:
                raise InvalidRunRequest(
                    f"{file.name} is {len(data)} bytes; the limit is {limit}", field=f"{field}.content_base64"
                )
            inline[file.name] = data
    return inline


def _start_execution(run: Run, deps: Dependencies) -> None:
    try:
        deps.stepfunctions.start_execution(
            stateMachineArn=deps.settings.state_machine_arn,
            name=run.run_id,
            input=json.dumps({"run_id": run.run_id}),
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
            return
        deps.store.update_run(
            run.run_id,
            RunUpdate(
                set={
                    "status": RunStatus.FAILED,
                    "ended_at": utcnow(),
                    "error": RunError(type="StartFailed", message=f"could not start the run: {error}"),
                },
                require_status=[RunStatus.QUEUED],
                release_slot_of=run.tenant,
            ),
        )
        raise
