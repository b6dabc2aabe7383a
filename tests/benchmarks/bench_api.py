"""The HTTP API's own cost: the API handler's cold import, and request latency over real HTTP on the local runtime.

- import time of ``sandcastle.handlers.api`` in a fresh interpreter (what a cold start pays);
- p50/p95 of ``GET /runs/{id}`` and ``GET /runs/{id}/events`` through the local gateway: real HTTP,
  the authorizer's cached answer, the proxy event, the emulated Lambda invoke, the resolver, moto;
- ``serve`` under load (the gateway ``sandcastle serve`` runs): 50 clients submitting at once (answered,
  reset), 100 concurrent long-polls of a running run's events (answered), and the process's memory
  after 10 and after 200 (quick: 40) 1-step runs in a row.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks import section, table

REPO = Path(__file__).resolve().parents[2]


def _import_ms(module: str, runs: int) -> list[float]:
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    return [
        float(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _latencies(requests: int) -> dict[str, list[float]]:
    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.store.keys import ApiKeyStore

    with tempfile.TemporaryDirectory() as home, LocalRuntime(home=Path(home)) as runtime:
        gateway = runtime.start_gateway(port=0)
        key = ApiKeyStore(runtime.deps.settings.table_name).create("bench").key
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        def call(method: str, path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(gateway.url + path, data=data, method=method, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())

        playbook = [{"tool": "run_command", "arguments": {"command": "true"}} for _ in range(5)]
        run = call("POST", "/runs", {"instructions": "bench", "playbook": playbook})
        runtime.wait(run["run_id"], timeout_s=120)
        figures: dict[str, list[float]] = {"GET /runs/{id}": [], "GET /runs/{id}/events": []}
        paths = {"GET /runs/{id}": f"/runs/{run['run_id']}", "GET /runs/{id}/events": f"/runs/{run['run_id']}/events"}
        for label, path in paths.items():
            call("GET", path)  # warm
            for _ in range(requests):
                started = time.perf_counter()
                call("GET", path)
                figures[label].append((time.perf_counter() - started) * 1000)
        return figures


def _rss_mb() -> float:
    """This process's resident memory (``VmRSS``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _all_at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` on ``count`` threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as error:  # noqa: BLE001 - counted in the report
            results[index] = error

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def _serve_figures(runs_in_a_row: int) -> dict[str, Any]:
    import os

    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.store.keys import ApiKeyStore

    os.environ["MAX_ACTIVE_RUNS_PER_TENANT"] = "100"
    try:
        with tempfile.TemporaryDirectory() as home, LocalRuntime(home=Path(home)) as runtime:
            gateway = runtime.start_gateway(port=0)
            host, port = gateway.server.server_address[:2]
            key = ApiKeyStore(runtime.deps.settings.table_name).create("bench").key
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            true = {"tool": "run_command", "arguments": {"command": "true"}}

            def call(method: str, path: str, body: dict | None = None, timeout_s: float = 120) -> tuple[int, Any]:
                connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
                try:
                    connection.request(method, path, json.dumps(body) if body is not None else None, headers)
                    response = connection.getresponse()
                    return response.status, json.loads(response.read() or b"null")
                finally:
                    connection.close()

            figures: dict[str, Any] = {}
            started = time.perf_counter()
            answers = _all_at_once(50, lambda _: call("POST", "/runs", {"instructions": "crowd", "playbook": [true]}))
            figures["submit_s"] = time.perf_counter() - started
            figures["submit_answered"] = sum(1 for a in answers if isinstance(a, tuple))
            figures["submit_accepted"] = sum(1 for a in answers if isinstance(a, tuple) and a[0] == 201)
            figures["submit_failed"] = [type(a).__name__ for a in answers if not isinstance(a, tuple)]
            for answer in answers:
                if isinstance(answer, tuple) and answer[0] == 201:
                    runtime.wait(answer[1]["run_id"], timeout_s=600)

            sleeper = {"tool": "run_command", "arguments": {"command": "sleep 30"}}
            status, run = call("POST", "/runs", {"instructions": "polled", "playbook": [sleeper]})
            cursor = None
            while cursor is None:  # until PrepareRun has written the first events
                cursor = call("GET", f"/runs/{run['run_id']}/events?wait=5")[1]["cursor"]
            polled = f"/runs/{run['run_id']}/events?" + urllib.parse.urlencode({"wait": 2, "after": cursor})
            started = time.perf_counter()
            polls = _all_at_once(100, lambda _: call("GET", polled, timeout_s=60))
            figures["polls_s"] = time.perf_counter() - started
            figures["polls_answered"] = sum(1 for p in polls if isinstance(p, tuple) and p[0] == 200)
            figures["polls_failed"] = [type(p).__name__ for p in polls if not isinstance(p, tuple)]
            call("POST", f"/runs/{run['run_id']}/cancel")
            runtime.wait(run["run_id"], timeout_s=120)

            memory: dict[int, float] = {}
            for index in range(1, runs_in_a_row + 1):
                status, run = call("POST", "/runs", {"instructions": "row", "playbook": [true]})
                runtime.wait(run["run_id"], timeout_s=120)
                if index in (10, runs_in_a_row):
                    memory[index] = _rss_mb()
            figures["memory"] = memory
            return figures
    finally:
        del os.environ["MAX_ACTIVE_RUNS_PER_TENANT"]


def _serve_section(figures: dict[str, Any], runs_in_a_row: int) -> str:
    memory = figures["memory"]
    growth = memory[runs_in_a_row] / memory[10]
    rows = [
        ["50 clients submitting at once: answered", f"{figures['submit_answered']}/50", f"{figures['submit_s']:.1f} s"],
        ["  of them accepted (201)", f"{figures['submit_accepted']}/50", None],
        ["  connection errors (resets, timeouts)", len(figures["submit_failed"]), ", ".join(figures["submit_failed"])],
        [
            "100 concurrent long-polls (wait=2 s): answered 200",
            f"{figures['polls_answered']}/100",
            f"{figures['polls_s']:.1f} s",
        ],
        ["  connection errors", len(figures["polls_failed"]), ", ".join(figures["polls_failed"])],
        ["process memory after 10 runs in a row (RSS, MB)", memory[10], None],
        [f"process memory after {runs_in_a_row} runs in a row (RSS, MB)", memory[runs_in_a_row], None],
        [f"memory growth {runs_in_a_row} / 10 runs (target <= 1.5x)", growth, "met" if growth <= 1.5 else "not met"],
    ]
    return section(
        "serve under load (the local gateway, real HTTP, one process)",
        table(["figure", "value", "note"], rows),
        "All in one LocalRuntime + gateway, as `sandcastle serve` runs; each run is a 1-step `true` playbook "
        "(the 50 submitted at once are waited for before the long-polls). RSS is the whole process's.",
    )


def report(quick: bool = False) -> str:
    imports = _import_ms("sandcastle.handlers.api", 3 if quick else 7)
    latencies = _latencies(30 if quick else 200)
    runs_in_a_row = 40 if quick else 200
    serve = _serve_figures(runs_in_a_row)
    rows = [
        ["import sandcastle.handlers.api (fresh interpreter)", statistics.median(imports), min(imports), max(imports)]
    ]
    latency_rows = [
        [label, _percentile(values, 0.5), _percentile(values, 0.95), len(values)] for label, values in latencies.items()
    ]
    return "\n\n".join(
        [
            section("API handler cold import", table(["module", "median ms", "min ms", "max ms"], rows)),
            section(
                "API latency over HTTP (local runtime)",
                table(["request", "p50 ms", "p95 ms", "requests"], latency_rows),
                "Through the local gateway: cached authorizer answer, proxy event, emulated Lambda invoke, moto.",
            ),
            _serve_section(serve, runs_in_a_row),
        ]
    )


def main(quick: bool = False) -> None:
    """Print the figures (``python -m tests.benchmarks --only api`` runs this through ``report``)."""
    print(report(quick=quick))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
