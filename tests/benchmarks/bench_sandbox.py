"""What a sandbox costs: a command's round trip, creating a sandbox (and its first command), a
background process's first output, and sequential throughput.

For the ``local`` backend (bubblewrap, with the limits and cgroups it uses in production), for the
``e2b`` backend against the local E2B server (``e2b-local``) and, when ``E2B_API_KEY`` is set,
against E2B's cloud. The round trip of ``true`` is set against a bare
``subprocess.run(["true"])`` in this process, so the ratio is the price of the isolation.

``python -m tests.benchmarks.bench_sandbox [--quick]`` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sandcastle.sandbox.base import SandboxProvider, SandboxSpec
from tests.benchmarks import p95, section, table, timings_ms

_THROUGHPUT_COMMANDS = 100


def _measure(provider: SandboxProvider, quick: bool) -> list[tuple[str, float | None, float | None, str]]:
    """Rows of (figure, median, p95, unit) for one backend."""
    repeat = 15 if quick else 50
    creations = 3 if quick else 10
    spec = SandboxSpec(run_id="bench", tenant="bench", timeout_s=600)
    sandbox = provider.create(spec)
    try:
        sandbox.run("true", timeout_s=60)  # warm caches
        round_trip = timings_ms(lambda: sandbox.run("true", timeout_s=60), repeat)
        bare = timings_ms(lambda: subprocess.run(["true"], check=True), repeat)
        commands = 20 if quick else _THROUGHPUT_COMMANDS
        started = time.perf_counter()
        for number in range(commands):
            sandbox.run(f"echo {number} > out.txt", timeout_s=60)
        throughput = commands / (time.perf_counter() - started)
    finally:
        provider.kill(sandbox.sandbox_id)

    create_only: list[float] = []
    first_command: list[float] = []
    first_output: list[float] = []

    def create_and_run() -> None:
        started = time.perf_counter()
        created = provider.create(spec)
        created_at = time.perf_counter()
        try:
            created.run("true", timeout_s=60)
            ran_at = time.perf_counter()
            process_id = created.start_process("echo ready; sleep 60")
            while not created.process_output(process_id).stdout:
                time.sleep(0.005)
            first_output.append((time.perf_counter() - ran_at) * 1000)
        finally:
            provider.kill(created.sandbox_id)
        create_only.append((created_at - started) * 1000)
        first_command.append((ran_at - created_at) * 1000)

    creation = timings_ms(create_and_run, creations)
    to_first = [created + ran for created, ran in zip(create_only, first_command, strict=True)]
    ratio = statistics.median(round_trip) / statistics.median(bare)
    return [
        ("round trip of `true`", statistics.median(round_trip), p95(round_trip), "ms"),
        ("bare subprocess.run(['true'])", statistics.median(bare), p95(bare), "ms"),
        ("ratio (sandbox / bare, medians)", ratio, None, "×"),
        ("create (the sandbox and its init)", statistics.median(create_only), p95(create_only), "ms"),
        ("first command after create", statistics.median(first_command), p95(first_command), "ms"),
        ("create -> first command done", statistics.median(to_first), p95(to_first), "ms"),
        ("create, first command, kill", statistics.median(creation), p95(creation), "ms"),
        ("background start -> first output read", statistics.median(first_output), p95(first_output), "ms"),
        (f"throughput ({commands} small commands, sequential)", throughput, None, "commands/s"),
    ]


def _local_section(quick: bool) -> str:
    from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as root:
        provider = LocalSandboxProvider(Path(root) / "sandboxes")
        rows = _measure(provider, quick)
        cgroups = provider.cgroups
        mechanism = (
            f"one cgroup v{cgroups.version} per sandbox (memory, pids) + rlimits"
            if cgroups
            else "rlimits only (no writable cgroup)"
        )
        runs_as = f"uid {provider.sandbox_uid}" if provider.sandbox_uid is not None else f"uid {os.geteuid()} (userns)"
    body = table(["figure", "median", "p95", "unit"], rows, digits=1)
    return section("local (bubblewrap)", body, note=f"Limits: {mechanism}; commands run as {runs_as}.")


def _e2b_local_section(quick: bool) -> str:
    """The ``e2b`` backend (the real e2b SDK over HTTP) against the local E2B-compatible server."""
    from sandcastle.e2b_server import SandboxServer
    from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider

    with tempfile.TemporaryDirectory(prefix="bench-e2b-local-") as root, SandboxServer(Path(root)) as server:
        provider = E2BSandboxProvider("local-key", "base", api_url=server.url, sandbox_url=server.url)
        rows = _measure(provider, quick)
    return section(
        "e2b-local (the e2b SDK against `sandcastle sandbox-server`)",
        table(["figure", "median", "p95", "unit"], rows, digits=1),
    )


def _e2b_section(quick: bool) -> str:
    api_key = os.environ.get("E2B_API_KEY")
    if not api_key:
        return "e2b: skipped (E2B_API_KEY not set)"
    from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider

    provider = E2BSandboxProvider(api_key, os.environ.get("E2B_TEMPLATE", "base"))
    return section("e2b", table(["figure", "median", "p95", "unit"], _measure(provider, quick), digits=1))


def report(quick: bool = False) -> str:
    """The sandbox figures as text (the ``python -m tests.benchmarks`` entry point)."""
    return "\n\n".join([_local_section(quick), _e2b_local_section(quick), _e2b_section(quick)])


def main(quick: bool) -> None:
    """Measure and print the sandbox figures (fewer repetitions when ``quick``)."""
    print(report(quick), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_sandbox", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    main(parser.parse_args().quick)
