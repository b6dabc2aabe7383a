"""What every route of the API shares: the OpenAPI response declarations, the JSON response, the
caller's tenant from the authorizer's context."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel

from sandcastle.api.errors import ApiError
from sandcastle.api.examples import examples
from sandcastle.errors import Unauthorized

M = TypeVar("M", bound=BaseModel)


def json_content(model: type[BaseModel], description: str, *, example: BaseModel | None = None) -> dict[str, Any]:
    """An OpenAPI response whose body is ``model`` (shown by ``example``)."""
    media: dict[str, Any] = {"model": model}
    if example is not None:
        media["examples"] = examples(example=example)
    return {"description": description, "content": {"application/json": media}}


#: An answer the API gives with each error status, as the document's example of it.
_ERROR_EXAMPLES: dict[HTTPStatus, ApiError] = {
    HTTPStatus.BAD_REQUEST: ApiError(error="malformed_json", message="the request body is not valid JSON"),
    HTTPStatus.UNAUTHORIZED: ApiError(
        error="unauthorized", message="send a valid API key: Authorization: Bearer <key>"
    ),
    HTTPStatus.NOT_FOUND: ApiError(error="not_found", message="run run-01jd8x2k4m5n6p7q8r9s0t1v2w not found"),
    HTTPStatus.CONFLICT: ApiError(
        error="conflict",
        message="this Idempotency-Key was already used with a different request body; use a new key",
        field="Idempotency-Key",
    ),
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ApiError(
        error="payload_too_large",
        message="data.csv is over the 262144-byte limit for inline files; upload it to S3 and give its s3_key",
        field="files[0].content_base64",
    ),
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: ApiError(
        error="unsupported_media_type", message="send the body as application/json"
    ),
    HTTPStatus.UNPROCESSABLE_ENTITY: ApiError(
        error="validation_failed", message="instructions: String should have at least 1 character", field="instructions"
    ),
    HTTPStatus.TOO_MANY_REQUESTS: ApiError(
        error="too_many_runs",
        message="tenant acme has 10 unfinished runs, the most it may have at once; wait for one to end or cancel one",
    ),
}


def error_content(code: HTTPStatus) -> dict[str, Any]:
    """The OpenAPI response of an error status: an ``ApiError``, with an answer the API gives with it."""
    return json_content(ApiError, code.phrase, example=_ERROR_EXAMPLES[code])


def error_contents(*codes: HTTPStatus) -> dict[int, Any]:
    """The OpenAPI error responses particular to a route, in the one error shape (``declare_shared_errors``
    adds those every route shares)."""
    return {code.value: error_content(code) for code in codes}


#: What a route that reads a body can answer whatever it does: not JSON or not UTF-8, over the body cap,
#: not ``application/json``, failing validation.
_BODY_ERRORS = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    HTTPStatus.UNPROCESSABLE_ENTITY,
)


def declare_shared_errors(resolver: Any) -> None:
    """Declare on every documented route of ``resolver`` (its routers' included) the errors it can give
    because of what it is rather than what it does: 401 (every route is behind the API key), the body
    errors when it reads a body, 422 when it takes parameters. Call once every route is registered."""
    from aws_lambda_powertools.event_handler.openapi.dependant import get_dependant

    for route in resolver._static_routes + resolver._dynamic_routes:  # Powertools' registered routes
        if not route.include_in_schema or route.responses is None:
            continue
        dependant = get_dependant(path=route.openapi_path, call=route.func)  # not route.dependant: it caches
        codes = [HTTPStatus.UNAUTHORIZED]
        if dependant.body_params:
            codes += _BODY_ERRORS
        if dependant.path_params or dependant.query_params or dependant.header_params:
            codes.append(HTTPStatus.UNPROCESSABLE_ENTITY)
        for code in codes:
            route.responses.setdefault(code.value, error_content(code))


def ok(model: M, status: HTTPStatus = HTTPStatus.OK, *, headers: dict[str, str] | None = None) -> Response[M]:
    """A JSON response; the resolver validates ``model`` against the route's return annotation."""
    return Response(status_code=status.value, content_type=content_types.APPLICATION_JSON, body=model, headers=headers)


def principal(raw_event: dict[str, Any]) -> tuple[str, str | None]:
    """The tenant (and key id) the authorizer put in the request context; ``Unauthorized`` without one."""
    authorizer = (raw_event.get("requestContext") or {}).get("authorizer") or {}
    tenant = authorizer.get("tenant")
    if not tenant:
        raise Unauthorized()
    return str(tenant), authorizer.get("key_id")
