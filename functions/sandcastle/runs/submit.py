"""Submitting a run: validate everything first, then store it QUEUED and start its execution."""

from __future__ import annotations

import base64
import binascii
import uuid

from sandcastle.errors import (
    ExecutionError,
    ExecutionsUnavailable,
    FileTooLarge,
    InvalidRunRequest,
    TenantFileAccessDenied,
)
from sandcastle.runs.budget import resolve_budgets
from sandcastle.runs.input_files import check_tenant_key
from sandcastle.runs.records import ModelBackend, Run, RunError, RunOrigin, RunStatus, StoredInputFile, utcnow
from sandcastle.runs.repository import check_repository
from sandcastle.runs.requests import RunRequest
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies


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

    Raises ``InvalidRunRequest`` naming the field before the run is written (``ValueTooLarge`` for a
    request too large to store). ``origin`` records what started the run when a trigger did (an inbox
    object, a schedule's fire). With ``active_limit``, the run is stored only while its tenant has
    fewer unfinished runs (``ActiveRunLimitReached``), checked atomically with the write.
    """
    settings = deps.settings
    budgets = resolve_budgets(request.budgets, settings)
    approval_timeout_s = _approval_timeout_s(request, deps)
    backend: ModelBackend
    if request.playbook:
        backend = "playbook"
    elif settings.openai_configured:
        backend = "openai"
    else:
        raise InvalidRunRequest(
            "no model is configured: set OPENAI_API_KEY or OPENAI_BASE_URL, or give a playbook", field="model"
        )
    _check_sandbox_options(request, deps)
    check_repository(request.repository, request.push, request.tenant, deps)
    run_id = run_id or new_run_id()
    inline = _check_files(request, run_id, deps)

    stored_files: list[StoredInputFile] = []
    for index, file in enumerate(request.files):
        key = deps.objects.input_key(run_id, file.name)
        if file.name in inline:
            size = len(inline[file.name])
        else:
            size = _stage_s3_file(request.tenant, file.s3_key or "", key, run_id, f"files[{index}].s3_key", deps)
        stored_files.append(StoredInputFile(name=file.name, s3_key=key, size=size))

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
        repository=request.repository,
        push=request.push,
        created_at=utcnow(),
        origin=origin,
        policy=request.policy,
        approval_timeout_s=approval_timeout_s,
    )
    deps.store.check_fits(run)  # before the inline files are stored: a refused run leaves none behind
    for stored in stored_files:
        if stored.name in inline:
            deps.objects.put(stored.s3_key, inline[stored.name])
    if not deps.store.create_run(run, active_limit=active_limit):
        return deps.store.get_run(run_id)
    _start_execution(run, deps)
    return run


def _approval_timeout_s(request: RunRequest, deps: Dependencies) -> int:
    """The run's approval timeout: its own (at most the configured ceiling), else the configured default."""
    settings = deps.settings
    if request.approval_timeout_s is None:
        return min(settings.default_approval_timeout_s, settings.approval_timeout_s_ceiling)
    if request.approval_timeout_s > settings.approval_timeout_s_ceiling:
        raise InvalidRunRequest(
            f"is over the ceiling of {settings.approval_timeout_s_ceiling} s", field="approval_timeout_s"
        )
    return request.approval_timeout_s


def _stage_s3_file(tenant: str, source: str, key: str, run_id: str, field: str, deps: Dependencies) -> int:
    """Copy a tenant's ``s3_key`` file to the run's input ``key``; its size. A key a trigger already put
    there (``runs/<this run>/input/<name>``) stays; any other must be under ``uploads/<tenant>/``."""
    limit = deps.settings.max_input_file_bytes
    if source == key:
        size = deps.objects.size(key)
    else:
        try:
            size = deps.tenant_files.copy_into_run(tenant, source, run_id, key, max_bytes=limit)
        except TenantFileAccessDenied:
            raise InvalidRunRequest(f"{source} is not one of tenant {tenant!r}'s uploads", field=field) from None
        except FileTooLarge as error:
            raise InvalidRunRequest(f"{source} is {error.size} bytes; the limit is {limit}", field=field) from None
    if size is None:
        raise InvalidRunRequest(f"s3://{deps.objects.bucket}/{source} does not exist", field=field)
    if size > limit:
        raise InvalidRunRequest(f"{source} is {size} bytes; the limit is {limit}", field=field)
    return size


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


def _check_files(request: RunRequest, run_id: str, deps: Dependencies) -> dict[str, bytes]:
    """Check names, sources and sizes of the input files; return the inline ones decoded."""
    limit = deps.settings.max_input_file_bytes
    seen: set[str] = set()
    inline: dict[str, bytes] = {}
    for index, file in enumerate(request.files):
        field = f"files[{index}]"
        if file.name in seen:
            raise InvalidRunRequest(f"{file.name!r} is given twice", field=f"{field}.name")
        seen.add(file.name)
        if (file.content_base64 is None) == (file.s3_key is None):
            raise InvalidRunRequest("give exactly one of content_base64 and s3_key", field=field)
        if file.s3_key is not None and file.s3_key != deps.objects.input_key(run_id, file.name):
            check_tenant_key(file.s3_key, request.tenant, field=f"{field}.s3_key")
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
    """Start the run's execution (a repeated start is a no-op); a run that cannot start ends FAILED."""
    try:
        deps.executions.start(run.run_id)
    except (ExecutionError, ExecutionsUnavailable) as error:
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
