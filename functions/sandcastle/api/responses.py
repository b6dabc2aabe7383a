"""What every route of the API shares: the OpenAPI response declarations, the JSON response, the
caller's tenant from the authorizer's context."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel

from sandcastle.api.auth import Unauthorized
from sandcastle.api.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def json_content(model: type[BaseModel], description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is ``model``."""
    return {"description": description, "content": {"application/json": {"model": model}}}


def error_contents(*codes: HTTPStatus) -> dict[int, Any]:
    """The OpenAPI error responses of a route: 401 always, and ``codes``, all in the one error shape."""
    return {code.value: json_content(ApiError, code.phrase) for code in (HTTPStatus.UNAUTHORIZED, *codes)}


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
