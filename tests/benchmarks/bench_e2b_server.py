"""What the local E2B costs: the e2b SDK over HTTP against ``sandcastle.e2b_server``.

Sandbox create and kill, create → first command (from the empty ``base`` template and from a
template of 200 files, 4 MiB), the round trip of ``commands.run("true")`` (set against the
in-process ``local`` backend's ``run("true")``, so the ratio is the price of the protocol: HTTP,
Connect, JSON), and a 1 MiB file write + read.

``python -m tests.benchmarks.bench_e2b_server [--quick]`` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sandcastle.sandbox.base import SandboxSpec
from tests.benchmarks import p95, section, table, timings_ms


def report(quick: bool = False) -> str:
    """The local E2B figures as text (the ``python -m tests.benchmarks`` entry point)."""
    from e2b import Sandbox

    from sandcastle.e2b_server import SandboxServer
    from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

    repeat = 15 if quick else 50
    lifecycles = 5 if quick else 20
    payload = os.urandom(1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="bench-e2b-server-") as root, SandboxServer(Path(root) / "e2b") as server:
        options = {"api_key": "bench", "api_url": server.url, "sandbox_url": server.url}
        creates: list[float] = []
        kills: list[float] = []
        for _ in range(lifecycles):
            started = time.perf_counter()
            created = Sandbox.create(timeout=120, **options)
            creates.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            Sandbox.kill(created.sandbox_id, **options)
            kills.append((time.perf_counter() - started) * 1000)

        template_files = Path(root) / "template"
        for index in range(200):
            (template_files / f"dir{index % 10}").mkdir(parents=True, exist_ok=True)
            (template_files / f"dir{index % 10}" / f"file{index}.bin").write_bytes(os.urandom(20 * 1024))
        server.registry.templates.build("bench", template_files)
        first_command: dict[str, list[float]] = {"base": [], "bench": []}
        for _ in range(lifecycles):
            for template in first_command:
                started = time.perf_counter()
                fresh = Sandbox.create(template, timeout=120, **options)
                fresh.commands.run("true")
                first_command[template].append((time.perf_counter() - started) * 1000)
                Sandbox.kill(fresh.sandbox_id, **options)

        sandbox = Sandbox.create(timeout=600, **options)
        sandbox.commands.run("true")  # warm the connection pool
        sdk_true = timings_ms(lambda: sandbox.commands.run("true"), repeat)

        def write_and_read() -> None:
            sandbox.files.write("bench.bin", payload)
            assert bytes(sandbox.files.read("bench.bin", format="bytes")) == payload

        files = timings_ms(write_and_read, max(5, repeat // 3))
        Sandbox.kill(sandbox.sandbox_id, **options)

        local = LocalSandboxProvider(Path(root) / "local")
        local_sandbox = local.create(SandboxSpec(run_id="bench", tenant="bench", timeout_s=600))
        local_sandbox.run("true", timeout_s=60)
        local_true = timings_ms(lambda: local_sandbox.run("true", timeout_s=60), repeat)
        local.kill(local_sandbox.sandbox_id)

    ratio = statistics.median(sdk_true) / statistics.median(local_true)
    rows = [
        ("Sandbox.create", statistics.median(creates), p95(creates), "ms"),
        ("Sandbox.kill", statistics.median(kills), p95(kills), "ms"),
        ("create → first command (base)", statistics.median(first_command["base"]), p95(first_command["base"]), "ms"),
        (
            "create → first command (template: 200 files, 4 MiB)",
            statistics.median(first_command["bench"]),
            p95(first_command["bench"]),
            "ms",
        ),
        ('commands.run("true") through the SDK', statistics.median(sdk_true), p95(sdk_true), "ms"),
        ('local backend run("true"), in-process', statistics.median(local_true), p95(local_true), "ms"),
        ("ratio (SDK + server / in-process, medians)", ratio, None, "×"),
        ("files.write + files.read of 1 MiB", statistics.median(files), p95(files), "ms"),
    ]
    body = table(["figure", "median", "p95", "unit"], rows, digits=1)
    return section(
        "local E2B (e2b SDK → sandcastle.e2b_server → bubblewrap)",
        body,
        note="One server on a loopback port; HTTP/1.1, a connection per request (wsgiref), Connect JSON.",
    )


def main(quick: bool) -> None:
    """Measure and print the local E2B figures (fewer repetitions when ``quick``)."""
    print(report(quick), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_e2b_server", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    main(parser.parse_args().quick)
