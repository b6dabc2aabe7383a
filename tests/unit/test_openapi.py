"""The OpenAPI document as a reader and Swagger UI use it: named, tagged operations, the errors the API
really answers, examples that are valid, and a server that is right wherever the document was served."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from sandcastle.api.app import app
from sandcastle.local.gateway import proxy_event
from sandcastle.local.runtime import LocalLambdaContext

OPERATIONS = {
    ("post", "/runs"): "createRun",
    ("get", "/runs"): "listRuns",
    ("get", "/runs/{run_id}"): "getRun",
    ("get", "/runs/{run_id}/events"): "listRunEvents",
    ("post", "/runs/{run_id}/cancel"): "cancelRun",
    ("get", "/runs/{run_id}/artifacts"): "listRunArtifacts",
    ("post", "/uploads"): "createUpload",
    ("put", "/tasks/{name}"): "putTask",
    ("get", "/tasks/{name}"): "getTask",
    ("get", "/tasks"): "listTasks",
    ("delete", "/tasks/{name}"): "deleteTask",
    ("post", "/schedules"): "createSchedule",
    ("get", "/schedules"): "listSchedules",
    ("get", "/schedules/{schedule_id}"): "getSchedule",
    ("delete", "/schedules/{schedule_id}"): "deleteSchedule",
    ("get", "/policy"): "getPolicy",
    ("put", "/policy"): "putPolicy",
    ("get", "/runs/{run_id}/approvals"): "listRunApprovals",
    ("post", "/runs/{run_id}/approvals/{call_id}"): "decideRunApproval",
    ("post", "/runs/{run_id}/messages"): "sendRunMessage",
}
_CONTEXT = LocalLambdaContext(
    function_name="sandcastle-ApiFunction",
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:sandcastle-ApiFunction",
    memory_limit_in_mb=512,
    timeout_s=30,
)


def _served(event: dict[str, Any]) -> dict[str, Any]:
    result = app.resolve(event, _CONTEXT)
    assert result["statusCode"] == 200, result
    return json.loads(result["body"])


def _cloud_event(path: str, stage: str = "prod", query: dict[str, str] | None = None) -> dict[str, Any]:
    """What API Gateway sends for ``https://<api id>.execute-api.<region>.amazonaws.com/<stage><path>``."""
    event = proxy_event("GET", path, query={k: [v] for k, v in (query or {}).items()})
    event["requestContext"].update(stage=stage, path=f"/{stage}{path}")
    return event


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return _served(proxy_event("GET", "/openapi.json"))


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}


def test_every_operation_has_a_name_that_reads_like_one(document: dict[str, Any]) -> None:
    operations = _operations(document)
    ids = [op["operationId"] for op in operations.values()]

    assert {key: op["operationId"] for key, op in operations.items()} == OPERATIONS
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", operation_id) for operation_id in ids)


def test_every_operation_has_one_of_the_documents_tags(document: dict[str, Any]) -> None:
    tags = [tag["name"] for tag in document["tags"]]

    assert tags == ["runs", "approvals", "uploads", "tasks", "schedules"]
    assert all(tag["description"] for tag in document["tags"])
    for key, operation in _operations(document).items():
        assert len(operation.get("tags", [])) == 1 and operation["tags"][0] in tags, key


def test_the_errors_are_the_apis_own_shape_not_powertools(document: dict[str, Any]) -> None:
    text = json.dumps(document)

    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        assert f'"{name}"' not in text and f"/{name}" not in text
    assert set(document["components"]["schemas"]["ApiError"]["properties"]) == {"error", "message", "field"}
    for key, operation in _operations(document).items():
        assert "401" in operation["responses"], key
        for code, response in operation["responses"].items():
            if code.startswith(("4", "5")):
                media = response["content"]["application/json"]
                assert media["schema"] == {"$ref": "#/components/schemas/ApiError"}, (key, code)
                assert media["examples"], (key, code)


def test_a_route_that_takes_nothing_declares_no_422(document: dict[str, Any]) -> None:
    # Powertools declares a 422 on every route; GET /tasks has no parameter that could fail validation
    assert "422" not in document["paths"]["/tasks"]["get"]["responses"]
    assert "422" in document["paths"]["/runs"]["get"]["responses"]  # limit, cursor, status can


def test_every_example_is_valid_against_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    for key, operation in _operations(document).items():
        media_types = [operation.get("requestBody", {}).get("content", {}).get("application/json", {})]
        media_types += [r.get("content", {}).get("application/json", {}) for r in operation["responses"].values()]
        for media in media_types:
            for example in media.get("examples", {}).values():
                schema = {**document, "$ref": media["schema"]["$ref"]}  # refs resolve against the document
                jsonschema.validate(example["value"], schema, cls=jsonschema.Draft202012Validator)
                checked += 1
        if "requestBody" in operation:
            assert media_types[0].get("examples"), f"{key}: the request body has no example"
    assert checked >= 30


def test_served_locally_the_server_is_the_root_the_document_came_from(document: dict[str, Any]) -> None:
    # the local gateway's URL has no stage: "Try it out" must call /runs, not /local/runs
    assert document["servers"] == [{"url": "/", "description": "This API, where this document was served from."}]


def test_served_through_the_api_stage_the_server_is_the_stage() -> None:
    served = _served(_cloud_event("/openapi.json"))

    assert [server["url"] for server in served["servers"]] == ["/prod"]
    assert set(served["paths"]) == set(_served(proxy_event("GET", "/openapi.json"))["paths"])


@pytest.mark.parametrize(("event", "url"), [(proxy_event("GET", "/docs"), "/"), (_cloud_event("/docs"), "/prod")])
def test_swagger_ui_gets_the_same_document_and_server(event: dict[str, Any], url: str) -> None:
    result = app.resolve(event, _CONTEXT)
    page = result["body"]

    assert result["statusCode"] == 200 and "swagger" in page.lower()
    assert f'"url": "{url}"' in page and "HTTPValidationError" not in page and '"operationId": "createRun"' in page


def test_the_event_kinds_of_humans_in_the_loop_are_in_the_document(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    kinds = {
        schema["properties"]["kind"].get("const") or schema["properties"]["kind"].get("enum", [None])[0]
        for name, schema in schemas.items()
        if name.endswith("Event") and "kind" in schema.get("properties", {})
    }
    assert {"approval_requested", "approval_decided", "user_message"} <= kinds
    assert "AWAITING_APPROVAL" in schemas["RunStatus"]["enum"]
    assert {"approve", "reject"} == set(schemas["ApprovalDecision"]["properties"]["decision"]["enum"])
