"""The API's one error shape: ``{"error": <code>, "message": <text>, "field": <field, when one is wrong>}``."""

from __future__ import annotations

from http import HTTPStatus

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel


class ApiError(BaseModel):
    """Every error the API returns."""

    error: str
    """A stable, machine-readable code: ``malformed_json``, ``unauthorized``, ``not_found``, ``conflict``,
    ``payload_too_large``, ``validation_failed``, ``too_many_runs``, ``internal``."""
    message: str
    """What was wrong and what to do about it."""
    field: str | None = None
    """The request field that was wrong (``files[0].name``, ``limit``), when one was."""


def error_response(status: HTTPStatus, code: str, message: str, field: str | None = None) -> Response:
    """A Powertools response carrying an ``ApiError``."""
    body = ApiError(error=code, message=message, field=field).model_dump_json(exclude_none=True)
    return Response(status_code=status.value, content_type=content_types.APPLICATION_JSON, body=body)


def error_proxy_result(status: HTTPStatus, code: str, message: str, field: str | None = None) -> dict:
    """An ``ApiError`` as an API Gateway proxy result, for errors raised before the resolver runs."""
    return {
        "statusCode": status.value,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": ApiError(error=code, message=message, field=field).model_dump_json(exclude_none=True),
        "isBase64Encoded": False,
    }
