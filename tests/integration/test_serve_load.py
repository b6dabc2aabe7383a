"""`sandcastle serve` under a crowd, over real HTTP through the local gateway: 50 clients submitting runs at
once are all answered (and every accepted run ends), and 100 concurrent long-polls are all answered."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from sandcastle.local.gateway import LocalGateway
from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.store.keys import ApiKeyStore
from tests.integration.test_api_concurrency import _all_at_once

pytestmark = pytest.mark.bwrap

TRUE = {"tool": "run_command", "arguments": {"command": "true"}}


@pytest.fixture
def crowd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_ACTIVE_RUNS_PER_TENANT", "100")


@pytest.fixture
def gateway(crowd_limit: None, runtime: LocalRuntime) -> LocalGateway:
    return runtime.start_gateway(port=0, authorizer_ttl_s=60)


def _caller(gateway: LocalGateway, runtime: LocalRuntime) -> Any:
    host, port = gateway.server.server_address[:2]
    key = ApiKeyStore(runtime.deps.settings.table_name).create("crowd").key
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(host, port, timeout=120)  # a connection per client
        try:
            connection.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    return call


def test_fifty_clients_submitting_runs_at_once_are_all_answered_and_every_run_ends(
    gateway: LocalGateway, runtime: LocalRuntime
) -> None:
    call = _caller(gateway, runtime)

    answers = _all_at_once(
        50, lambda index: call("POST", "/runs", {"instructions": f"crowd {index}", "playbook": [TRUE]})
    )

    assert [type(answer).__name__ for answer in answers if not isinstance(answer, tuple)] == []  # no reset
    assert [status for status, _ in answers] == [201] * 50
    run_ids = {run["run_id"] for _, run in answers}
    assert len(run_ids) == 50
    assert {runtime.wait(run_id, timeout_s=600).status for run_id in run_ids} == {RunStatus.SUCCEEDED}


def test_a_hundred_concurrent_long_polls_are_all_answered(gateway: LocalGateway, runtime: LocalRuntime) -> None:
    call = _caller(gateway, runtime)
    sleeper = {"tool": "run_command", "arguments": {"command": "sleep 60"}}
    status, run = call("POST", "/runs", {"instructions": "polled", "playbook": [sleeper]})
    assert status == 201
    cursor = None
    while cursor is None:  # until PrepareRun has written the first events
        cursor = call("GET", f"/runs/{run['run_id']}/events?wait=5")[1]["cursor"]

    polled = f"/runs/{run['run_id']}/events?" + urlencode({"wait": 1, "after": cursor})

    polls = _all_at_once(100, lambda _: call("GET", polled))

    assert [type(poll).__name__ for poll in polls if not isinstance(poll, tuple)] == []
    assert [status for status, _ in polls] == [200] * 100
    assert {page["run_id"] for _, page in polls} == {run["run_id"]}
    assert call("POST", f"/runs/{run['run_id']}/cancel")[1]["status"] == "CANCELLED"
