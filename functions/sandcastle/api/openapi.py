"""The API's OpenAPI document as served: Powertools generates it from the routes and models; this module
gives it what Powertools cannot know — the tags, the server the reader reached it through — and takes out
what the API never answers (Powertools' own validation error shapes: this API answers ``ApiError``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import OpenAPI, Server, Tag

#: The groups of operations, in the order the document lists them; every route names one.
TAGS = [
    Tag(name="runs", description="Start, list, read, follow and cancel runs; their transcripts and artifacts."),
    Tag(name="approvals", description="Humans in the loop: the approval policy, a run's approvals, steering messages."),
    Tag(name="uploads", description="Input files too large to send inline: upload first, then give the key."),
    Tag(name="tasks", description="Named run templates that uploads and schedules start."),
    Tag(name="schedules", description="Runs of a task (or an inline template) on a cron, rate or one-off time."),
]

#: Powertools adds these component schemas to every document it generates, and a 422 referring to
#: ``HTTPValidationError`` to every operation; the API never answers them (its request validation
#: errors are ``ApiError``, declared by ``api/responses.py`` on the routes that can fail validation).
_POWERTOOLS_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError", "ResponseValidationError")
_REF = "#/components/schemas/"


def server_for(base_path: str) -> Server:
    """The server a reader of the document calls: relative to where the document was served, under the
    stage's prefix when the request came through one (``/v1`` on API Gateway's own URL, none locally)."""
    return Server(url=base_path or "/", description="This API, where this document was served from.")


def without_powertools_errors(document: OpenAPI) -> OpenAPI:
    """``document`` with no response in Powertools' validation error shapes and none of their schemas."""
    data = document.model_dump(by_alias=True, exclude_none=True, mode="json")
    powertools_refs = {_REF + name for name in _POWERTOOLS_ERROR_SCHEMAS}
    for item in data.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["responses"] = {
                code: response
                for code, response in operation["responses"].items()
                if not _refers_to(response, powertools_refs)
            }
    schemas = data.get("components", {}).get("schemas", {})
    for name in _POWERTOOLS_ERROR_SCHEMAS:
        schemas.pop(name, None)
    return OpenAPI.model_validate(data)


def _refers_to(value: Any, refs: set[str]) -> bool:
    if isinstance(value, dict):
        return value.get("$ref") in refs or any(_refers_to(v, refs) for v in value.values())
    if isinstance(value, list):
        return any(_refers_to(v, refs) for v in value)
    return False
