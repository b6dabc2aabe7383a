"""The routes of the HTTP API: one Powertools ``APIGatewayRestResolver``, validation on.

Every route reads the caller's tenant from the authorizer's context, calls one domain function
and returns a model. Domain errors become the one error shape (``api/errors.py``); a run of
another tenant is a 404, never a 403.
"""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.utilities.typing import LambdaContext

from sandcastle.api import examples as ex
from sandcastle.api.approvals_routes import router as approvals_router
from sandcastle.api.errors import error_proxy_result, error_response
from sandcastle.api.models import (
    ArtifactList,
    ArtifactView,
    EventList,
    Health,
    RunList,
    RunSubmission,
    RunSummary,
)
from sandcastle.api.openapi import TAGS
from sandcastle.api.resolver import BODY_NOT_UTF8, RequestScopedRestResolver
from sandcastle.api.responses import declare_shared_errors, error_contents, json_content, ok, principal
from sandcastle.api.tasks_routes import router as tasks_router
from sandcastle.api.uploads_routes import router as uploads_router
from sandcastle.errors import (
    IdempotencyConflict,
    InvalidRunRequest,
    PayloadTooLarge,
    RunNotFound,
    TooManyActiveRuns,
    Unauthorized,
    ValueTooLarge,
)
from sandcastle.runs.admission import admit_run
from sandcastle.runs.cancel import cancel_run
from sandcastle.runs.queries import MAX_WAIT_S, artifact_links, get_tenant_run, list_tenant_runs, read_events
from sandcastle.runs.records import Run, RunStatus
from sandcastle.validation import describe_issues, field_path
from sandcastle.wiring import get_dependencies

logger = Logger(child=True)

app = RequestScopedRestResolver(enable_validation=True)  # per-request state: the local gateway resolves on threads
app.configure_openapi(
    title="Sandcastle",
    version="1.0.0",
    description="Run code-writing AI agents in sandboxes. Authenticate with `Authorization: Bearer <API key>`.",
    security_schemes={"bearer": HTTPBearer(description="An API key: `sandcastle keys create --tenant T`.")},
    security=[{"bearer": []}],
    tags=TAGS,
)
app.enable_swagger(path="/docs")
app.include_router(tasks_router)  # saved tasks and schedules (api/tasks_routes.py)
app.include_router(uploads_router)  # POST /uploads (api/uploads_routes.py)
app.include_router(approvals_router)  # policy, approvals, messages (api/approvals_routes.py)

RunId = Annotated[str, Path(min_length=1, max_length=100, description="The run's id (`run-...`).")]


_READ_ERRORS = error_contents(HTTPStatus.NOT_FOUND, HTTPStatus.UNPROCESSABLE_ENTITY)


# ---------------------------------------------------------------- routes


@app.get("/health", include_in_schema=False)
def health() -> Response[Health]:
    return ok(Health())


@app.get("/openapi.json", include_in_schema=False)
def openapi_document():  # no return annotation: the document is served as generated
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=app.get_openapi_json_schema())


@app.post(
    "/runs",
    operation_id="createRun",
    tags=["runs"],
    summary="Start a run",
    description="Validates the request, stores the run QUEUED and starts it. With `Idempotency-Key`, a retry "
    "with the same body returns the same run; the same key with another body is a 409.",
    responses={
        201: json_content(Run, "The run was created; `Location` names it.", example=ex.RUN),
        200: json_content(Run, "A retry with the same Idempotency-Key: the run the first request created."),
        **error_contents(
            HTTPStatus.BAD_REQUEST,
            HTTPStatus.CONFLICT,
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            HTTPStatus.UNPROCESSABLE_ENTITY,
            HTTPStatus.TOO_MANY_REQUESTS,
        ),
    },
)
def post_run(
    submission: Annotated[
        RunSubmission,  # type: ignore[valid-type]
        Body(openapi_examples=ex.body_examples(agent=ex.RUN_SUBMISSION, playbook=ex.PLAYBOOK_SUBMISSION)),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=255, description="Makes retries safe: same key, same run."),
    ] = None,
) -> Response[Run]:
    request = submission.to_request(_tenant())
    admission = admit_run(
        request, get_dependencies(), idempotency_key=idempotency_key, lambda_context=app.lambda_context
    )
    status = HTTPStatus.OK if admission.replayed else HTTPStatus.CREATED
    return ok(admission.run, status, headers={"Location": f"/runs/{admission.run.run_id}"})


@app.get(
    "/runs",
    operation_id="listRuns",
    tags=["runs"],
    summary="List runs",
    description="The tenant's runs, newest first, a page at a time.",
    responses={
        200: json_content(RunList, "A page of runs.", example=ex.RUN_LIST),
        **error_contents(HTTPStatus.UNPROCESSABLE_ENTITY),
    },
)
def get_runs(
    limit: Annotated[int, Query(ge=1, le=100, description="Runs per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=2048, description="The `cursor` of the previous page.")] = None,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
) -> Response[RunList]:
    page = list_tenant_runs(_tenant(), get_dependencies(), limit=limit, cursor=cursor, status=status)
    return ok(RunList(runs=[RunSummary.of(run) for run in page.runs], cursor=page.cursor))


@app.get(
    "/runs/<run_id>",
    operation_id="getRun",
    tags=["runs"],
    summary="Get a run",
    description="Status, step, usage, result or error, timestamps, sandbox id and artifacts.",
    responses={200: json_content(Run, "The run.", example=ex.RUN), **_READ_ERRORS},
)
def get_run(run_id: RunId) -> Response[Run]:
    return ok(get_tenant_run(run_id, _tenant(), get_dependencies()))


@app.get(
    "/runs/<run_id>/events",
    operation_id="listRunEvents",
    tags=["runs"],
    summary="Read the transcript",
    description="Events in order after `after`. With `wait`, waits up to that many seconds for a new event "
    "(returning as soon as one lands or the run ends). Resume with the returned `cursor`.",
    responses={200: json_content(EventList, "Events (possibly none)."), **_READ_ERRORS},
)
def get_events(
    run_id: RunId,
    after: Annotated[str | None, Query(max_length=512, description="The `cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 100,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for a new event.")] = 0,
) -> Response[EventList]:
    page = read_events(run_id, _tenant(), get_dependencies(), after=after, limit=limit, wait_s=wait)
    return ok(EventList(run_id=run_id, events=page.events, cursor=page.cursor, status=page.status))


@app.post(
    "/runs/<run_id>/cancel",
    operation_id="cancelRun",
    tags=["runs"],
    summary="Cancel a run",
    description="Stops the run's execution, kills its sandbox and ends it CANCELLED. A run that already "
    "ended is returned as it is.",
    responses={200: json_content(Run, "The run, ended.", example=ex.RUN), **error_contents(HTTPStatus.NOT_FOUND)},
)
def post_cancel(run_id: RunId) -> Response[Run]:
    tenant, key_id = _principal()
    return ok(cancel_run(run_id, tenant, get_dependencies(), by=key_id or tenant))


@app.get(
    "/runs/<run_id>/artifacts",
    operation_id="listRunArtifacts",
    tags=["runs"],
    summary="List a run's artifacts",
    description="The files the run left in ~/output, each with a download URL.",
    responses={200: json_content(ArtifactList, "The artifact manifest.", example=ex.ARTIFACT_LIST), **_READ_ERRORS},
)
def get_artifacts(run_id: RunId) -> Response[ArtifactList]:
    links = artifact_links(run_id, _tenant(), get_dependencies())
    views = [ArtifactView(**link.artifact.model_dump(), url=link.url) for link in links]
    return ok(ArtifactList(run_id=run_id, artifacts=views))


# ---------------------------------------------------------------- errors


@app.exception_handler(RequestValidationError)
def _invalid_request(error: RequestValidationError) -> Response:
    issues = error.errors()
    for issue in issues:
        if issue.get("type") == BODY_NOT_UTF8:
            message = f"the request body is {issue.get('msg')}; send JSON as UTF-8"
            return error_response(HTTPStatus.BAD_REQUEST, "malformed_json", message)
    if any(issue.get("type") == "json_invalid" for issue in issues):
        return error_response(HTTPStatus.BAD_REQUEST, "malformed_json", "the request body is not valid JSON")
    if any(issue.get("type") == "unsupported_content_type" for issue in issues):
        return error_response(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the body as application/json"
        )
    field = field_path(issues[0].get("loc", ()), in_request=True) if issues else ""
    message = describe_issues(issues, in_request=True) or "request: invalid"
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_failed", message, field or None)


@app.exception_handler(InvalidRunRequest)
def _invalid_run_request(error: InvalidRunRequest) -> Response:
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_failed", str(error), error.field)


@app.exception_handler(ValueTooLarge)
def _value_too_large(error: ValueTooLarge) -> Response:
    return error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", str(error), error.field)


@app.exception_handler(RunNotFound)
def _not_found(error: RunNotFound) -> Response:
    return error_response(HTTPStatus.NOT_FOUND, "not_found", str(error))


@app.not_found
def _no_route(error: NotFoundError) -> Response:
    return error_response(
        HTTPStatus.NOT_FOUND, "not_found", f"no route {app.current_event.http_method} {app.current_event.path}"
    )


@app.exception_handler(Unauthorized)
def _unauthorized(error: Unauthorized) -> Response:
    return error_response(HTTPStatus.UNAUTHORIZED, "unauthorized", "send a valid API key: Authorization: Bearer <key>")


@app.exception_handler(PayloadTooLarge)
def _too_large(error: PayloadTooLarge) -> Response:
    return error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", str(error), error.field)


@app.exception_handler(IdempotencyConflict)
def _conflict(error: IdempotencyConflict) -> Response:
    return error_response(HTTPStatus.CONFLICT, "conflict", str(error), "Idempotency-Key")


@app.exception_handler(TooManyActiveRuns)
def _too_many(error: TooManyActiveRuns) -> Response:
    return error_response(HTTPStatus.TOO_MANY_REQUESTS, "too_many_runs", str(error))


@app.exception_handler(Exception)
def _internal(error: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "something went wrong on our side; retry later")


declare_shared_errors(app)  # every route is registered by now: 401, body errors, 422 in the document


# ---------------------------------------------------------------- the entry point


def handle_request(event: dict[str, Any], context: LambdaContext, *, max_body_bytes: int) -> dict[str, Any]:
    """Resolve one API Gateway proxy event; a body over ``max_body_bytes`` is refused before it is parsed."""
    if _body_size(event) > max_body_bytes:
        return error_proxy_result(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            f"the request body is over {max_body_bytes} bytes; upload large input files to S3 and give their s3_key",
        )
    return app.resolve(event, context)


# ---------------------------------------------------------------- helpers


def _principal() -> tuple[str, str | None]:
    return principal(app.current_event.raw_event)


def _tenant() -> str:
    return _principal()[0]


def _body_size(event: dict[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return len(base64.b64decode(body))
        except (binascii.Error, ValueError):
            return len(body)
    return len(body.encode())
