"""The HTTP API under concurrent clients, over real HTTP through the local gateway `sandcastle serve` runs:
requests resolved on many threads never see each other's state, a burst of connections is never reset,
and the per-tenant concurrent-run limit holds against simultaneous submits."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sandcastle.local.gateway import LocalGateway
from sandcastle.local.runtime import LocalRuntime
from sandcastle.store.keys import ApiKeyStore
from tests.integration.test_api_gateway import Http

pytestmark = pytest.mark.bwrap

QUICK = [{"tool": "run_command", "arguments": {"command": "true"}}]


@pytest.fixture
def gateway(runtime: LocalRuntime) -> LocalGateway:
    return runtime.start_gateway(port=0, authorizer_ttl_s=60)


def _client(gateway: LocalGateway, runtime: LocalRuntime, tenant: str) -> Http:
    return Http(gateway.url, ApiKeyStore(runtime.deps.settings.table_name).create(tenant).key)


def _all_at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` on ``count`` threads released together; every result or exception, in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as error:  # noqa: BLE001 - reported by the test
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_requests_of_two_tenants_each_get_their_own_answer(
    gateway: LocalGateway, runtime: LocalRuntime
) -> None:
    # Given two tenants with a finished run each
    clients = {tenant: _client(gateway, runtime, tenant) for tenant in ("alpha", "beta")}
    runs = {}
    for tenant, client in clients.items():
        runs[tenant] = client("POST", "/runs", {"instructions": tenant, "playbook": QUICK})[2]["run_id"]
        client.tail(runs[tenant])

    # When both fire requests at once, on many threads
    def requests_of(index: int) -> list[str]:
        tenant, other = ("alpha", "beta") if index % 2 else ("beta", "alpha")
        client, mine = clients[tenant], runs[tenant]
        wrong = []
        for _ in range(6):
            status, _, run = client("GET", f"/runs/{mine}")
            if status != 200 or run.get("run_id") != mine or run.get("instructions") != tenant:
                wrong.append(f"{tenant} GET run: {status} {run}")
            status, _, page = client("GET", f"/runs/{mine}/events")
            if status != 200 or page.get("run_id") != mine or not page.get("events"):
                wrong.append(f"{tenant} GET events: {status} {page}")
            status, _, listing = client("GET", "/runs")
            if status != 200 or [r["run_id"] for r in listing.get("runs", [])] != [mine]:
                wrong.append(f"{tenant} GET runs: {status} {listing}")
            status, _, error = client("GET", f"/runs/{runs[other]}")
            if status != 404:
                wrong.append(f"{tenant} GET the other's run: {status} {error}")
        return wrong

    results = _all_at_once(16, requests_of)

    # Then every answer belongs to its caller
    assert [r for r in results if r] == []


def test_fifty_clients_connecting_at_once_are_all_answered(gateway: LocalGateway, runtime: LocalRuntime) -> None:
    key = ApiKeyStore(runtime.deps.settings.table_name).create("crowd").key
    host, port = gateway.server.server_address[:2]
    body = json.dumps({"instructions": "", "playbook": QUICK})  # refused (422): nothing runs
    connected = threading.Barrier(50)

    def submit(index: int) -> int:
        with socket.create_connection((host, port), timeout=60) as sock:
            connected.wait()  # every connection is open (or queued) before any request is sent
            connection = http.client.HTTPConnection(host, port, timeout=60)
            connection.sock = sock
            connection.request(
                "POST", "/runs", body, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            )
            return connection.getresponse().status

    results = _all_at_once(50, submit)

    assert results == [422] * 50


@pytest.fixture
def limit_of_three(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("MAX_ACTIVE_RUNS_PER_TENANT", "3")
    return 3


def test_simultaneous_submits_never_exceed_the_tenants_run_limit(
    limit_of_three: int, gateway: LocalGateway, runtime: LocalRuntime
) -> None:
    client = _client(gateway, runtime, "busy")
    long_run = {"instructions": "wait", "playbook": [{"tool": "run_command", "arguments": {"command": "sleep 60"}}]}

    answers = _all_at_once(12, lambda _: client("POST", "/runs", long_run))

    statuses = sorted(answer[0] for answer in answers)
    assert statuses == [201] * limit_of_three + [429] * (12 - limit_of_three)
    assert {answer[2]["error"] for answer in answers if answer[0] == 429} == {"too_many_runs"}
    accepted = [answer[2]["run_id"] for answer in answers if answer[0] == 201]
    assert sorted(r["run_id"] for r in client("GET", "/runs")[2]["runs"]) == sorted(accepted)

    for run_id in accepted:  # a cancelled run frees its slot
        assert client("POST", f"/runs/{run_id}/cancel")[2]["status"] == "CANCELLED"
    quick = client("POST", "/runs", {"instructions": "next", "playbook": QUICK})
    assert quick[0] == 201
    client.tail(quick[2]["run_id"])
