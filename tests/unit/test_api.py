"""The HTTP API through API Gateway proxy events: the real handler and resolver, moto for AWS, a fake sandbox.

No execution runs here (moto records StartExecution without executing): these tests are about
what the API answers and what it stores.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sandcastle.handlers import api as api_handler
from sandcastle.handlers import authorizer as authorizer_handler
from sandcastle.handlers import on_execution_end as on_execution_end_handler
from sandcastle.local.gateway import proxy_event
from sandcastle.local.runtime import LocalLambdaContext
from sandcastle.runs.records import Artifact, RunStatus, utcnow
from sandcastle.runs.transcript import AssistantData, AssistantEvent, EventKind
from sandcastle.store.dynamo import RunUpdate
from sandcastle.store.keys import ApiKeyStore
from sandcastle.wiring import Dependencies
from tests.fakes.sandbox import FakeSandboxProvider

PLAYBOOK = [{"tool": "run_command", "arguments": {"command": "echo hi"}}]
Call = Callable[..., tuple[int, dict[str, str], Any]]


def _context(name: str = "sandcastle-ApiFunction") -> LocalLambdaContext:
    return LocalLambdaContext(
        function_name=name,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        memory_limit_in_mb=512,
        timeout_s=30,
    )


@pytest.fixture
def api(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> Call:
    """Call the API handler as API Gateway would, as tenant ``acme`` unless told otherwise."""
    handler = api_handler.make_handler(lambda: deps)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setattr(api_handler.metrics, "namespace", "Sandcastle")  # as the template sets it: a
    # disabled Metrics still collects, and serializes (needing a namespace) at its 100th value

    def call(
        method: str,
        path: str,
        body: Any = None,
        *,
        tenant: str | None = "acme",
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        raw: str | bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        text = raw if raw is not None else (json.dumps(body) if body is not None else None)
        event = proxy_event(
            method,
            path,
            query={k: [v] for k, v in (query or {}).items()},
            headers={"Content-Type": "application/json", **(headers or {})},
            body=text,
            authorizer={"tenant": tenant, "key_id": f"key_{tenant}", "principalId": f"key_{tenant}"}
            if tenant
            else None,
        )
        result = handler(event, _context())
        headers_out = {**(result.get("headers") or {})}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers_out[name] = values[-1]
        return result["statusCode"], headers_out, json.loads(result["body"]) if result.get("body") else None

    return call


def _submit(api: Call, **fields: Any) -> dict[str, Any]:
    status, _, run = api("POST", "/runs", {"instructions": "Say hi.", "playbook": PLAYBOOK, **fields})
    assert status == 201, run
    return run


# ---------------------------------------------------------------- POST /runs


def test_submit_creates_the_run_for_the_callers_tenant_with_a_location(api: Call, deps: Dependencies) -> None:
    status, headers, run = api("POST", "/runs", {"instructions": "Say hi.", "playbook": PLAYBOOK})

    assert status == 201
    assert headers["Location"] == f"/runs/{run['run_id']}"
    assert (run["status"], run["tenant"], run["source"]) == ("QUEUED", "acme", "api")
    assert deps.store.get_run(run["run_id"]).tenant == "acme"


def test_the_body_may_not_choose_its_tenant_or_source(api: Call) -> None:
    status, _, error = api("POST", "/runs", {"instructions": "x", "playbook": PLAYBOOK, "tenant": "other"})

    assert status == 422 and error["error"] == "validation_failed" and error["field"] == "tenant"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instructions": "   ", "playbook": PLAYBOOK}, "instructions"),
        ({"instructions": "x", "playbook": PLAYBOOK, "budgets": {"max_steps": 0}}, "budgets.max_steps"),
        (
            {"instructions": "x", "playbook": PLAYBOOK, "files": [{"name": "a/b", "content_base64": "eA=="}]},
            "files[0].name",
        ),
        (
            {"instructions": "x", "playbook": PLAYBOOK, "files": [{"name": "a", "s3_key": "runs/none"}]},
            "files[0].s3_key",
        ),
        ({"instructions": "x", "playbook": PLAYBOOK, "repository": {"url": "file:///etc"}}, "repository.url"),
        (
            {"instructions": "x", "playbook": PLAYBOOK, "repository": {"url": "https://h/a.git", "ref": "main"}}
            | {"push": {"branch": "main"}},
            "push.branch",
        ),
    ],
)
def test_an_invalid_request_is_a_422_naming_the_field_and_stores_nothing(
    api: Call, deps: Dependencies, body: dict, field: str
) -> None:
    status, _, error = api("POST", "/runs", body)

    assert status == 422, error
    assert error["error"] == "validation_failed" and error["field"] == field and error["message"]
    assert api("GET", "/runs")[2]["runs"] == []


def test_malformed_json_is_a_400(api: Call) -> None:
    status, _, error = api("POST", "/runs", raw='{"instructions": ')

    assert status == 400 and error == {"error": "malformed_json", "message": "the request body is not valid JSON"}


@pytest.mark.parametrize(("method", "path"), [("POST", "/runs"), ("PUT", "/tasks/nightly"), ("POST", "/schedules")])
def test_a_body_that_is_not_utf8_is_a_400(api: Call, method: str, path: str) -> None:
    status, _, error = api(method, path, raw=b'{"instructions": "caf\xe9"}')

    assert status == 400 and error["error"] == "malformed_json"
    assert "not valid UTF-8 at byte 21" in error["message"]
    assert api("GET", "/runs")[2]["runs"] == []


@pytest.mark.parametrize(
    ("backend", "internet", "status"), [("local", True, 422), ("e2b", False, 422), ("e2b", True, 201)]
)
def test_internet_access_is_refused_at_submission_when_the_backend_has_no_network(
    api: Call, deps: Dependencies, monkeypatch: pytest.MonkeyPatch, backend: str, internet: bool, status: int
) -> None:
    settings = deps.settings.model_copy(update={"sandbox_backend": backend, "sandbox_internet": internet})
    monkeypatch.setattr(deps, "settings", settings)

    body = {"instructions": "fetch", "playbook": PLAYBOOK, "sandbox": {"allow_internet_access": True}}
    answer = api("POST", "/runs", body)

    assert answer[0] == status
    if status == 422:
        assert answer[2]["field"] == "sandbox.allow_internet_access" and "no network" in answer[2]["message"]
        assert api("GET", "/runs")[2]["runs"] == []


def test_a_body_or_an_inline_file_over_its_cap_is_a_413(api: Call, deps: Dependencies) -> None:
    big = "x" * (deps.settings.api_max_body_bytes + 1)
    status, _, error = api("POST", "/runs", {"instructions": big, "playbook": PLAYBOOK})
    assert status == 413 and error["error"] == "payload_too_large"

    content = base64.b64encode(b"x" * (deps.settings.api_max_inline_file_bytes + 10)).decode()
    body = {"instructions": "x", "playbook": PLAYBOOK, "files": [{"name": "big.bin", "content_base64": content}]}
    status, _, error = api("POST", "/runs", body)
    assert status == 413 and error["field"] == "files[0].content_base64" and "s3_key" in error["message"]
    assert api("GET", "/runs")[2]["runs"] == []


BIG_PLAYBOOK = [{"tool": "write_file", "arguments": {"path": "big.txt", "content": "x" * 300_000}}]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/runs", {"instructions": "\U0001f600" * 90_000, "playbook": PLAYBOOK}, "instructions"),
        ("POST", "/runs", {"instructions": "write it", "playbook": BIG_PLAYBOOK}, "playbook"),
        ("PUT", "/tasks/big", {"instructions": "write it", "playbook": BIG_PLAYBOOK}, "playbook"),
        (
            "POST",
            "/schedules",
            {"expression": "rate(1 hour)", "run": {"instructions": "write it", "playbook": BIG_PLAYBOOK}},
            "run",
        ),
    ],
)
def test_a_request_too_large_to_store_is_a_413_naming_the_field_and_stores_nothing(
    api: Call, deps: Dependencies, method: str, path: str, body: dict, field: str
) -> None:
    status, _, error = api(method, path, body)

    assert (status, error["error"], error["field"]) == (413, "payload_too_large", field), error
    assert "262144-byte limit" in error["message"] and "input files" in error["message"]
    assert api("GET", "/runs")[2]["runs"] == [] and api("GET", "/tasks")[2]["tasks"] == []
    assert api("GET", "/schedules")[2]["schedules"] == []
    assert deps.store.active_runs("acme") == 0


def test_a_tenant_over_its_concurrent_run_limit_gets_429_and_no_run(
    api: Call, deps: Dependencies, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = deps.settings.model_copy(update={"max_active_runs_per_tenant": 2})
    monkeypatch.setattr(deps, "settings", limited)
    first = _submit(api)
    _submit(api)

    status, _, error = api("POST", "/runs", {"instructions": "one more", "playbook": PLAYBOOK})
    assert status == 429 and error["error"] == "too_many_runs"
    assert len(api("GET", "/runs")[2]["runs"]) == 2
    assert api("POST", "/runs", {"instructions": "other tenant", "playbook": PLAYBOOK}, tenant="beta")[0] == 201

    api("POST", f"/runs/{first['run_id']}/cancel")
    assert api("POST", "/runs", {"instructions": "now it fits", "playbook": PLAYBOOK})[0] == 201


# ---------------------------------------------------------------- Idempotency-Key


def test_the_same_idempotency_key_and_body_return_the_same_run(api: Call) -> None:
    body = {"instructions": "Once.", "playbook": PLAYBOOK}
    first = api("POST", "/runs", body, headers={"Idempotency-Key": "k-1"})
    again = api("POST", "/runs", body, headers={"Idempotency-Key": "k-1"})

    assert first[0] == 201 and again[0] == 200
    assert again[2] == first[2] and again[1]["Location"] == first[1]["Location"]
    assert len(api("GET", "/runs")[2]["runs"]) == 1


def test_the_same_idempotency_key_with_another_body_is_a_409(api: Call) -> None:
    api("POST", "/runs", {"instructions": "Once.", "playbook": PLAYBOOK}, headers={"Idempotency-Key": "k-2"})

    status, _, error = api(
        "POST", "/runs", {"instructions": "Twice?", "playbook": PLAYBOOK}, headers={"Idempotency-Key": "k-2"}
    )

    assert status == 409 and error["error"] == "conflict" and error["field"] == "Idempotency-Key"
    assert len(api("GET", "/runs")[2]["runs"]) == 1


def test_idempotency_keys_are_scoped_by_tenant(api: Call) -> None:
    body = {"instructions": "Once.", "playbook": PLAYBOOK}
    mine = api("POST", "/runs", body, headers={"Idempotency-Key": "shared"})
    theirs = api("POST", "/runs", body, headers={"Idempotency-Key": "shared"}, tenant="beta")

    assert mine[0] == theirs[0] == 201 and mine[2]["run_id"] != theirs[2]["run_id"]


def test_a_failed_submission_does_not_consume_its_idempotency_key(api: Call) -> None:
    bad = api(
        "POST",
        "/runs",
        {"instructions": "x", "playbook": PLAYBOOK, "files": [{"name": "a", "s3_key": "runs/no"}]},
        headers={"Idempotency-Key": "k-3"},
    )
    assert bad[0] == 422
    good = api("POST", "/runs", {"instructions": "x", "playbook": PLAYBOOK}, headers={"Idempotency-Key": "k-4"})
    assert good[0] == 201


@pytest.mark.usefixtures("linearizable_dynamodb")
def test_concurrent_duplicates_make_one_run(api: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandcastle.runs.admission as admission

    original = admission.submit_run

    def slow_submit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # both requests are in flight together
        return original(*args, **kwargs)

    monkeypatch.setattr(admission, "submit_run", slow_submit)
    body = {"instructions": "Only once.", "playbook": PLAYBOOK}
    answers: list[tuple] = []

    def send() -> None:
        answers.append(api("POST", "/runs", body, headers={"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a[0] for a in answers) == [200, 200, 200, 201]
    assert len({a[2]["run_id"] for a in answers}) == 1
    assert len(api("GET", "/runs")[2]["runs"]) == 1


# ---------------------------------------------------------------- GET /runs, GET /runs/{id}


def test_listing_is_newest_first_paged_by_cursor_and_filtered_by_status(api: Call, deps: Dependencies) -> None:
    ids = [_submit(api, instructions=f"run {i}")["run_id"] for i in range(5)]
    _submit(api, instructions="someone else's")  # noqa: F841 - same tenant, used below
    other = api("POST", "/runs", {"instructions": "beta's", "playbook": PLAYBOOK}, tenant="beta")[2]["run_id"]
    api("POST", f"/runs/{ids[1]}/cancel")

    seen, cursor = [], None
    while True:
        status, _, page = api("GET", "/runs", query={"limit": "2", **({"cursor": cursor} if cursor else {})})
        assert status == 200 and len(page["runs"]) <= 2
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page.get("cursor")
        if not cursor:
            break
    assert len(seen) == 6 and other not in seen
    assert seen[1:] == list(reversed(ids))
    cancelled = api("GET", "/runs", query={"status": "CANCELLED", "limit": "1"})[2]
    assert [r["run_id"] for r in cancelled["runs"]] == [ids[1]] and cancelled.get("cursor") is None
    assert "instructions" not in cancelled["runs"][0]


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"cursor": "garbage"}, {"status": "DONE"}])
def test_a_bad_listing_query_is_a_422(api: Call, query: dict) -> None:
    status, _, error = api("GET", "/runs", query=query)

    assert status == 422 and error["field"] == next(iter(query))


def test_another_tenants_cursor_is_refused(api: Call) -> None:
    for i in range(3):
        api("POST", "/runs", {"instructions": f"b{i}", "playbook": PLAYBOOK}, tenant="beta")
    cursor = api("GET", "/runs", query={"limit": "1"}, tenant="beta")[2]["cursor"]

    assert api("GET", "/runs", query={"cursor": cursor})[0] == 422


def test_get_run_shows_status_usage_timestamps_and_artifacts(api: Call, deps: Dependencies) -> None:
    run = _submit(api)
    artifact = Artifact(
        name="report.md", size=3, sha256="ab" * 32, content_type="text/markdown", s3_key="runs/x/report.md"
    )
    deps.store.update_run(run["run_id"], RunUpdate(set={"artifacts": [artifact], "sandbox_id": "fake-9"}))

    status, _, shown = api("GET", f"/runs/{run['run_id']}")

    assert status == 200
    assert {"status", "step", "usage", "created_at", "sandbox_id", "artifacts", "result", "error"} <= set(shown)
    assert shown["artifacts"][0]["name"] == "report.md" and shown["sandbox_id"] == "fake-9"


def test_artifacts_come_with_download_urls(api: Call, deps: Dependencies) -> None:
    run = _submit(api)
    deps.objects.put("runs/x/report.md", b"# hi")
    artifact = Artifact(
        name="report.md", size=4, sha256="cd" * 32, content_type="text/markdown", s3_key="runs/x/report.md"
    )
    deps.store.update_run(run["run_id"], RunUpdate(set={"artifacts": [artifact]}))

    status, _, listing = api("GET", f"/runs/{run['run_id']}/artifacts")

    assert status == 200
    [shown] = listing["artifacts"]
    assert shown["name"] == "report.md" and shown["sha256"] == "cd" * 32
    assert "Signature=" in shown["url"] and "runs/x/report.md" in shown["url"]


# ---------------------------------------------------------------- tenants


def test_every_endpoint_answers_404_for_another_tenants_run(
    api: Call, deps: Dependencies, sandboxes: FakeSandboxProvider
) -> None:
    run = _submit(api)
    run_id = run["run_id"]

    for method, path in [
        ("GET", f"/runs/{run_id}"),
        ("GET", f"/runs/{run_id}/events"),
        ("GET", f"/runs/{run_id}/artifacts"),
        ("POST", f"/runs/{run_id}/cancel"),
    ]:
        status, _, error = api(method, path, tenant="intruder")
        assert (status, error["error"]) == (404, "not_found"), path
        assert api(method, f"/runs/run-doesnotexist{path.split(run_id)[1]}", tenant="intruder")[2] == {
            "error": "not_found",
            "message": "run run-doesnotexist not found",
        }
    assert api("GET", "/runs", tenant="intruder")[2]["runs"] == []
    assert (
        deps.store.get_run(run_id).status is RunStatus.QUEUED and deps.store.get_run(run_id).cancel_requested_at is None
    )


def test_a_request_without_a_tenant_is_a_401(api: Call) -> None:
    status, _, error = api("GET", "/runs", tenant=None)

    assert status == 401 and error["error"] == "unauthorized"


# ---------------------------------------------------------------- events


def _add_event(deps: Dependencies, run_id: str, key: str, text: str) -> None:
    deps.store.append_event(
        AssistantEvent(
            kind=EventKind.ASSISTANT, run_id=run_id, key=key, step=1, at=utcnow(), data=AssistantData(text=text)
        )
    )


def test_events_come_in_order_and_resume_from_the_cursor(api: Call, deps: Dependencies) -> None:
    run_id = _submit(api)["run_id"]
    for index in range(3):
        _add_event(deps, run_id, f"EVT#000001#00{index}#assistant", f"e{index}")

    first = api("GET", f"/runs/{run_id}/events", query={"limit": "2"})[2]
    rest = api("GET", f"/runs/{run_id}/events", query={"after": first["cursor"]})[2]
    none = api("GET", f"/runs/{run_id}/events", query={"after": rest["cursor"]})[2]

    assert [e["data"]["text"] for e in first["events"] + rest["events"]] == ["e0", "e1", "e2"]
    assert none["events"] == [] and none["cursor"] == rest["cursor"] and none["status"] == "QUEUED"
    assert api("GET", f"/runs/{run_id}/events", query={"after": "nonsense"})[2]["field"] == "after"
    assert api("GET", f"/runs/{run_id}/events", query={"wait": "21"})[0] == 422


def test_a_long_poll_returns_as_soon_as_an_event_lands(api: Call, deps: Dependencies) -> None:
    run_id = _submit(api)["run_id"]
    threading.Timer(0.5, _add_event, (deps, run_id, "EVT#000001#000#assistant", "late")).start()

    started = time.monotonic()
    page = api("GET", f"/runs/{run_id}/events", query={"wait": "10"})[2]
    elapsed = time.monotonic() - started

    assert [e["data"]["text"] for e in page["events"]] == ["late"]
    assert 0.4 < elapsed < 3


def test_a_long_poll_returns_at_once_for_an_ended_run(api: Call) -> None:
    run_id = _submit(api)["run_id"]
    api("POST", f"/runs/{run_id}/cancel")
    after = api("GET", f"/runs/{run_id}/events")[2]["cursor"]

    started = time.monotonic()
    page = api("GET", f"/runs/{run_id}/events", query={"after": after, "wait": "10"})[2]

    assert page["events"] == [] and page["status"] == "CANCELLED" and time.monotonic() - started < 1


# ---------------------------------------------------------------- cancel


def test_cancel_ends_the_run_kills_its_sandbox_and_is_idempotent(
    api: Call, deps: Dependencies, sandboxes: FakeSandboxProvider
) -> None:
    run_id = _submit(api)["run_id"]
    sandbox = sandboxes.create(deps_spec(run_id))
    deps.store.claim_sandbox(run_id, sandbox.sandbox_id)
    deps.store.update_run(run_id, RunUpdate(set={"status": RunStatus.RUNNING}))

    status, _, run = api("POST", f"/runs/{run_id}/cancel")

    assert status == 200 and run["status"] == "CANCELLED"
    stored = deps.store.get_run(run_id)
    assert stored.cancelled_by == "key_acme" and stored.cancel_requested_at is not None
    assert sandbox.sandbox_id not in sandboxes.live
    events = deps.store.list_events(run_id)
    assert events[-1].kind is EventKind.END and events[-1].data.status == "CANCELLED"
    execution = deps.executions.client.describe_execution(
        executionArn=deps.settings.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{run_id}"
    )
    assert execution["status"] == "ABORTED"

    again = api("POST", f"/runs/{run_id}/cancel")
    assert again[0] == 200 and again[2]["status"] == "CANCELLED"
    assert [e.kind for e in deps.store.list_events(run_id)].count(EventKind.END) == 1


def deps_spec(run_id: str) -> Any:
    from sandcastle.sandbox.base import SandboxSpec

    return SandboxSpec(run_id=run_id, tenant="acme", timeout_s=60, metadata={})


def test_cancelling_an_ended_run_changes_nothing(api: Call, deps: Dependencies) -> None:
    run_id = _submit(api)["run_id"]
    deps.store.update_run(
        run_id,
        RunUpdate(
            set={"status": RunStatus.SUCCEEDED, "ended_at": utcnow()}, require_not_terminal=True, release_slot_of="acme"
        ),
    )

    status, _, run = api("POST", f"/runs/{run_id}/cancel")

    assert status == 200 and run["status"] == "SUCCEEDED" and deps.store.get_run(run_id).cancel_requested_at is None


# ---------------------------------------------------------------- OnExecutionEnd


def _status_change(deps: Dependencies, run_id: str, status: str) -> dict:
    arn = deps.settings.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{run_id}"
    return {
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "detail": {
            "executionArn": arn,
            "stateMachineArn": deps.settings.state_machine_arn,
            "name": run_id,
            "status": status,
            "error": "States.Timeout" if status == "TIMED_OUT" else None,
        },
    }


@pytest.mark.parametrize(
    ("status", "cancelled", "ends"),
    [
        ("ABORTED", True, "CANCELLED"),
        ("ABORTED", False, "FAILED"),
        ("TIMED_OUT", False, "TIMED_OUT"),
        ("FAILED", False, "FAILED"),
    ],
)
def test_an_execution_that_ends_early_ends_its_run_and_kills_its_sandbox(
    api: Call, deps: Dependencies, sandboxes: FakeSandboxProvider, status: str, cancelled: bool, ends: str
) -> None:
    run_id = _submit(api)["run_id"]
    sandbox = sandboxes.create(deps_spec(run_id))
    deps.store.claim_sandbox(run_id, sandbox.sandbox_id)
    if cancelled:
        deps.store.mark_cancel_requested(run_id, by="key_acme", at=utcnow())

    for _ in range(2):  # EventBridge delivers at least once
        result = on_execution_end_handler.make_handler(lambda: deps)(
            _status_change(deps, run_id, status), _context("OnExecutionEnd")
        )

    assert result["status"] == ends
    run = deps.store.get_run(run_id)
    assert run.status.value == ends and sandbox.sandbox_id not in sandboxes.live
    assert (run.error is None) == (ends == "CANCELLED")
    assert [e.kind for e in deps.store.list_events(run_id)].count(EventKind.END) == 1


def test_an_execution_end_for_an_unknown_run_is_ignored(api: Call, deps: Dependencies) -> None:

    result = on_execution_end_handler.make_handler(lambda: deps)(
        _status_change(deps, "run-gone", "FAILED"), _context("OnExecutionEnd")
    )

    assert result == {"run_id": "run-gone", "status": "UNKNOWN"}


# ---------------------------------------------------------------- the authorizer


@pytest.fixture
def keys(deps: Dependencies) -> ApiKeyStore:
    return ApiKeyStore(deps.settings.table_name)


def _authorize(store: ApiKeyStore, authorization: str | None) -> dict:
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/v1/GET/runs",
        "headers": {"Authorization": authorization} if authorization is not None else {},
    }
    return authorizer_handler.make_handler(lambda: store)(event, _context("ApiAuthorizer"))


def test_the_authorizer_turns_a_key_into_its_tenant(keys: ApiKeyStore) -> None:
    created = keys.create("acme")

    answer = _authorize(keys, f"Bearer {created.key}")

    assert created.key.startswith("sc_") and len(created.key) > 40
    assert answer["context"] == {"tenant": "acme", "key_id": created.key_id}
    [statement] = answer["policyDocument"]["Statement"]
    assert (
        statement["Effect"] == "Allow"
        and statement["Resource"] == "arn:aws:execute-api:us-east-1:123456789012:abc123/v1/*"
    )


def test_keys_are_stored_hashed(keys: ApiKeyStore, deps: Dependencies) -> None:
    created = keys.create("acme")

    items = deps.store._client.scan(TableName=deps.settings.table_name)["Items"]
    assert created.key not in json.dumps(items)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic abc", "Bearer sc_wrong", "Bearer nope"])
def test_a_missing_or_wrong_key_is_unauthorized(keys: ApiKeyStore, authorization: str | None) -> None:
    keys.create("acme")

    with pytest.raises(Exception, match="^Unauthorized$"):
        _authorize(keys, authorization)


def test_a_revoked_key_is_unauthorized(keys: ApiKeyStore) -> None:
    created = keys.create("acme")
    assert keys.revoke(created.key_id).revoked is True

    with pytest.raises(Exception, match="^Unauthorized$"):
        _authorize(keys, f"Bearer {created.key}")
    assert keys.revoke("key_unknown") is None


# ---------------------------------------------------------------- documents


def test_the_openapi_document_is_generated_from_the_models(api: Call) -> None:
    status, _, document = api("GET", "/openapi.json", tenant=None)

    assert status == 200
    assert {
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/events",
        "/runs/{run_id}/cancel",
        "/runs/{run_id}/artifacts",
    } <= set(document["paths"])
    body = document["components"]["schemas"]["RunSubmission"]
    assert "instructions" in body["properties"] and "tenant" not in body["properties"]
    assert api("GET", "/nowhere")[0] == 404


def test_a_message_the_run_kept_outrunning_is_a_409_not_a_500(api: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandcastle.api import approvals_routes
    from sandcastle.errors import RunBusy

    run = _submit(api)

    def busy(run_id: str, *args: Any, **kwargs: Any) -> None:
        raise RunBusy(f"run {run_id} kept moving to new turns while the message was placed; send it again")

    monkeypatch.setattr(approvals_routes, "send_message", busy)

    status, _, body = api("POST", f"/runs/{run['run_id']}/messages", {"text": "hello"})

    assert status == 409 and body["error"] == "run_busy" and "send it again" in body["message"]
