"""The HTTP API over real HTTP: the local gateway (authorizer first, proxy events) in front of the real
API handler, the real ASL executing in moto, the real bubblewrap sandbox."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest

from sandcastle.local.gateway import LocalGateway
from sandcastle.local.runtime import LocalRuntime
from sandcastle.store.keys import ApiKeyStore

pytestmark = pytest.mark.bwrap

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "BUDGET_EXCEEDED", "CANCELLED"}


class Http:
    """A tiny HTTP client bound to the gateway and one API key."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url, self.key = base_url, key

    def __call__(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, dict, Any]:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.key:
            all_headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, out_headers = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            raw, status, out_headers = error.read(), error.code, dict(error.headers)
        try:
            return status, out_headers, json.loads(raw or b"null")
        except ValueError:
            return status, out_headers, raw

    def tail(self, run_id: str, timeout_s: float = 60) -> list[dict]:
        """Every event of the run, through the long-polling events endpoint, until it has ended."""
        events: list[dict] = []
        after = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            query = "?" + urlencode({"wait": 5, **({"after": after} if after else {})})
            status, _, page = self(method="GET", path=f"/runs/{run_id}/events{query}")
            assert status == 200, page
            events += page["events"]
            after = page["cursor"] or after
            if page["status"] in TERMINAL and not page["events"]:
                return events
        raise TimeoutError(run_id)


@pytest.fixture
def gateway(runtime: LocalRuntime) -> LocalGateway:
    return runtime.start_gateway(port=0, admin_token="admin-token", authorizer_ttl_s=60)


@pytest.fixture
def http(gateway: LocalGateway, runtime: LocalRuntime) -> Http:
    return Http(gateway.url, ApiKeyStore(runtime.deps.settings.table_name).create("acme").key)


def _wait_for(condition: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_run_submitted_over_http_is_tailed_to_its_end(http: Http, runtime: LocalRuntime) -> None:
    playbook = [
        {"tool": "write_file", "arguments": {"path": "output/answer.txt", "content": "42\n"}},
        {"tool": "run_command", "arguments": {"command": "cat output/answer.txt"}},
    ]
    status, headers, run = http("POST", "/runs", {"instructions": "Answer.", "playbook": playbook})
    assert status == 201 and headers["Location"] == f"/runs/{run['run_id']}"

    events = http.tail(run["run_id"])

    assert events[0]["kind"] == "system" and events[-1]["kind"] == "end"
    assert [e["key"] for e in events] == sorted(e["key"] for e in events)
    assert len({e["key"] for e in events}) == len(events)
    final = http("GET", f"/runs/{run['run_id']}")[2]
    assert final["status"] == "SUCCEEDED" and final["usage"]["tool_calls"] == 2
    listing = http("GET", f"/runs/{run['run_id']}/artifacts")[2]["artifacts"]
    if listing:  # the artifact export is someone else's feature: when present, the link downloads it
        with urllib.request.urlopen(listing[0]["url"]) as response:
            assert response.read() == b"42\n"


def test_try_it_out_calls_the_api_at_the_server_the_served_document_names(http: Http, gateway: LocalGateway) -> None:
    # What Swagger UI does: resolve the document's server against where the document came from, then call
    # an operation under it (it called /local/runs, a 404, while the local gateway put the stage in the path)
    document_url = f"{gateway.url}/openapi.json"
    document = Http(gateway.url, None)("GET", "/openapi.json")[2]
    server = urljoin(document_url, document["servers"][0]["url"]).rstrip("/")

    status, _, page = Http(server, http.key)("GET", "/runs")
    assert status == 200 and "runs" in page


def test_the_gateway_calls_the_authorizer_first(http: Http, gateway: LocalGateway, runtime: LocalRuntime) -> None:
    assert Http(gateway.url, None)("GET", "/runs")[:3:2] == (
        401,
        {"error": "unauthorized", "message": "send an API key: Authorization: Bearer <key>"},
    )
    assert Http(gateway.url, "sc_not-a-key")("GET", "/runs")[0] == 401
    assert Http(gateway.url, None)("GET", "/health")[0] == 200
    assert Http(gateway.url, None)("GET", "/openapi.json")[2]["info"]["title"] == "Sandcastle"
    assert Http(gateway.url, None)("GET", "/docs")[0] == 200
    assert http("GET", "/nowhere")[0] == 404

    before = runtime.stats.invocations["ApiAuthorizerFunction"]
    for _ in range(3):
        assert http("GET", "/runs")[0] == 200
    assert runtime.stats.invocations["ApiAuthorizerFunction"] - before <= 1  # the answer is cached


def test_keys_are_managed_through_the_local_admin_path(gateway: LocalGateway) -> None:
    admin = Http(gateway.url, None)
    assert admin("POST", "/local-admin/keys", {"tenant": "zeta"})[0] == 401

    status, _, created = admin("POST", "/local-admin/keys", {"tenant": "zeta"}, {"X-Sandcastle-Admin": "admin-token"})
    assert status == 201 and created["key"].startswith("sc_")
    assert Http(gateway.url, created["key"])("GET", "/runs")[0] == 200

    revoked = admin(
        "POST", f"/local-admin/keys/{created['key_id']}/revoke", None, {"X-Sandcastle-Admin": "admin-token"}
    )
    assert revoked[0] == 200 and revoked[2]["revoked"] is True
    assert Http(gateway.url, created["key"])("GET", "/runs")[0] == 401


def test_another_tenant_gets_404_on_every_endpoint(http: Http, gateway: LocalGateway, runtime: LocalRuntime) -> None:
    run_id = http(
        "POST",
        "/runs",
        {"instructions": "Mine.", "playbook": [{"tool": "run_command", "arguments": {"command": "true"}}]},
    )[2]["run_id"]
    intruder = Http(gateway.url, ApiKeyStore(runtime.deps.settings.table_name).create("intruder").key)

    for method, suffix in [("GET", ""), ("GET", "/events"), ("GET", "/artifacts"), ("POST", "/cancel")]:
        status, _, error = intruder(method, f"/runs/{run_id}{suffix}")
        assert (status, error["error"]) == (404, "not_found"), suffix
    assert intruder("GET", "/runs")[2]["runs"] == []
    assert http.tail(run_id)[-1]["data"]["status"] == "SUCCEEDED"


def test_cancel_in_the_middle_of_a_tool_call(http: Http, runtime: LocalRuntime, sandbox_root: Path) -> None:
    playbook = [
        {"tool": "run_command", "arguments": {"command": "sleep 30", "timeout_s": 120}},
        {"tool": "run_command", "arguments": {"command": "echo never"}},
    ]
    run_id = http("POST", "/runs", {"instructions": "Wait.", "playbook": playbook})[2]["run_id"]
    _wait_for(
        lambda: any(
            "sleep 30" in e["data"].get("tool_calls", [{}])[0].get("arguments", "")
            for e in http("GET", f"/runs/{run_id}/events")[2]["events"]
            if e["kind"] == "assistant"
        )
    )
    time.sleep(0.5)  # the command is running in the sandbox

    started = time.monotonic()
    status, _, cancelled = http("POST", f"/runs/{run_id}/cancel")
    took = time.monotonic() - started

    assert status == 200 and cancelled["status"] == "CANCELLED" and took < 5
    assert not sandbox_root.exists() or not any(p for p in sandbox_root.iterdir() if not p.name.startswith("."))
    time.sleep(2)  # the killed command returns; RunTool must not record it
    events = http("GET", f"/runs/{run_id}/events")[2]["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1 and "tool_result" not in kinds
    assert events[-1]["data"]["status"] == "CANCELLED"
    run = http("GET", f"/runs/{run_id}")[2]
    assert run["cancelled_by"].startswith("key_") and run["cancel_requested_at"]
    # the one event bus delivered the ABORTED status change to the rule's function; it changed nothing more
    assert runtime.triggers is not None and runtime.triggers.executions is not None
    _wait_for(lambda: any(arn.endswith(f":{run_id}") for arn in runtime.triggers.executions.fired))
    runtime.triggers.bus.drain()
    delivered = [e for f, e in runtime.triggers.bus.delivered if f == "OnExecutionEndFunction"]
    assert [e["detail"]["status"] for e in delivered if e["detail"]["name"] == run_id] == ["ABORTED"]
    assert http("GET", f"/runs/{run_id}")[2]["status"] == "CANCELLED"
    assert runtime.stats.invocations["OnExecutionEndFunction"] >= 1


def test_an_execution_stopped_behind_the_apis_back_still_ends_its_run(
    http: Http, runtime: LocalRuntime, sandbox_root: Path
) -> None:
    playbook = [{"tool": "run_command", "arguments": {"command": "sleep 30", "timeout_s": 120}}]
    run_id = http("POST", "/runs", {"instructions": "Wait.", "playbook": playbook})[2]["run_id"]
    _wait_for(lambda: http("GET", f"/runs/{run_id}")[2]["sandbox_id"] is not None)

    # someone stops the execution directly (console, CLI): only the rule can clean up
    runtime.deps.executions.client.stop_execution(executionArn=runtime.execution(run_id)["executionArn"])

    _wait_for(lambda: http("GET", f"/runs/{run_id}")[2]["status"] in TERMINAL)
    run = http("GET", f"/runs/{run_id}")[2]
    assert run["status"] == "FAILED" and run["error"]["type"] == "ExecutionAborted"
    _wait_for(lambda: not any(p for p in sandbox_root.iterdir() if not p.name.startswith(".")))


def test_idempotent_submission_over_http(http: Http) -> None:
    body = {"instructions": "Once.", "playbook": [{"tool": "run_command", "arguments": {"command": "true"}}]}
    first = http("POST", "/runs", body, {"Idempotency-Key": "abc"})
    again = http("POST", "/runs", body, {"Idempotency-Key": "abc"})
    other = http("POST", "/runs", {**body, "instructions": "Twice."}, {"Idempotency-Key": "abc"})

    assert (first[0], again[0], other[0]) == (201, 200, 409)
    assert first[2]["run_id"] == again[2]["run_id"]
    http.tail(first[2]["run_id"])


def test_internet_access_on_the_local_sandbox_server_is_refused_at_submission(http: Http) -> None:
    body = {"instructions": "fetch", "playbook": [{"tool": "run_command", "arguments": {"command": "true"}}]}
    status, _, error = http("POST", "/runs", {**body, "sandbox": {"allow_internet_access": True}})

    assert status == 422 and error["field"] == "sandbox.allow_internet_access"
    assert "sandbox server at http://127.0.0.1:" in error["message"]
    assert http("GET", "/runs")[2]["runs"] == []


@pytest.mark.parametrize("megabytes", [7, 11])  # over Lambda's 6 MB request, over API Gateway's 10 MB
def test_a_body_over_the_gateway_or_lambda_limit_is_a_clear_413(
    http: Http, runtime: LocalRuntime, megabytes: int
) -> None:
    body = {"instructions": "x" * (megabytes * 1024 * 1024), "playbook": [{"tool": "run_command", "arguments": {}}]}
    invoked = runtime.stats.invocations["ApiFunction"]

    status, _, error = http("POST", "/runs", body)

    assert (status, error["error"]) == (413, "payload_too_large") and "S3" in error["message"]
    # over 10 MB the gateway answers itself, as API Gateway does: the function is never invoked
    assert (runtime.stats.invocations["ApiFunction"] == invoked) is (megabytes > 10)
    assert http("GET", "/runs")[2]["runs"] == []
