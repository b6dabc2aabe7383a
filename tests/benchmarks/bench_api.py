"""The HTTP API's own cost: the API handler's cold import, and request latency over real HTTP on the local runtime.

- import time of ``sandcastle.handlers.api`` in a fresh interpreter (what a cold start pays);
- p50/p95 of ``GET /runs/{id}`` and ``GET /runs/{id}/events`` through the local gateway: real HTTP,
  the authorizer's cached answer, the proxy event, the emulated Lambda invoke, the resolver, moto.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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


def report(quick: bool = False) -> str:
    imports = _import_ms("sandcastle.handlers.api", 3 if quick else 7)
    latencies = _latencies(30 if quick else 200)
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
        ]
    )


def main(quick: bool = False) -> None:
    """Print the figures (``python -m tests.benchmarks --only api`` runs this through ``report``)."""
    print(report(quick=quick))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
