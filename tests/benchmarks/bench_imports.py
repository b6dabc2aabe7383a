"""What each handler costs at a cold start: its import time, in a fresh interpreter with a Lambda's environment.

A Lambda pays its module imports at every cold start, so each handler should import what it
uses and no more. For every ``sandcastle.handlers.<name>`` this measures, in one fresh
interpreter per repetition:

- the handler module's import time, and which heavy SDKs are in ``sys.modules`` after it;
- its first clients (the boto3 clients ``Dependencies`` builds on first use);
- the adapter it loads lazily on first real use (the openai model for ``agent_step``, the e2b
  SDK for the handlers that reach a sandbox in the cloud), as the extra import time on top.

Each handler's import time is printed against its target (200 ms for the API path — the API
handler, its authorizer, submit — and 250 ms for every other handler), as a ratio; the handlers
are measured round-robin, so a busy machine slows them alike. Byte-code is cached and the OS file
cache is warm, so a real cold start (reading from the deployment package) is slower; the
differences between handlers are what matter here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import Spread, section, table
from tests.template_support import handler_modules, load_template

HANDLERS = handler_modules()
ATTRIBUTED_HANDLER = "run_tool"
WATCHED = ("openai", "e2b", "moto", "boto3", "pydantic", "aws_lambda_powertools", "aws_xray_sdk")
TARGET_MS = {"api": 200.0, "authorizer": 200.0, "submit_run": 200.0}
"""Cold import targets: the API path's handlers 200 ms, every other 250 ms (``DEFAULT_TARGET_MS``)."""
DEFAULT_TARGET_MS = 250.0
FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
"""The Lambda code root of this checkout: the code measured."""

#: What each handler reaches on first use: the ``Dependencies`` attributes it touches (boto3
#: clients) and the modules it imports lazily in the cloud (the e2b backend, the openai model).
_E2B = ("sandcastle.sandbox.e2b_sandbox", "e2b")
FIRST_USE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "api": (("store", "objects", "executions"), ()),
    "authorizer": (("store",), ()),
    "on_execution_end": (("store", "executions"), _E2B),
    "on_upload": (("store", "objects", "executions", "inbox"), ()),
    "on_schedule": (("store", "objects", "executions", "schedules"), ()),
    "on_run_finished": (("store", "inbox"), ()),
    "reaper": (("store", "executions"), _E2B),
    "submit_run": (("store", "objects", "executions"), ()),
    "prepare_run": (("store", "objects"), ("sandcastle.sandbox.e2b_sandbox", "e2b")),
    "agent_step": (("store",), ("sandcastle.agent.openai_model",)),
    "run_tool": (("store",), ("sandcastle.sandbox.e2b_sandbox", "e2b")),
    "finish_run": (("store",), ("sandcastle.sandbox.e2b_sandbox", "e2b")),
    "fail_run": (("store",), ("sandcastle.sandbox.e2b_sandbox", "e2b")),
}

#: The environment a Lambda has (no AWS credentials are needed to import or build clients): the template's
#: plain global variables, with tracing off.
LAMBDA_ENVIRONMENT = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    **{
        name: value
        for name, value in load_template()["Globals"]["Function"]["Environment"]["Variables"].items()
        if isinstance(value, str)
    },
    "POWERTOOLS_TRACE_DISABLED": "true",
    "LANG": "C.UTF-8",
}

_PROBE = """
import json, sys, time
started = time.perf_counter()
import {module}
handler_s = time.perf_counter() - started
loaded = [name for name in {watched!r} if name in sys.modules]

from sandcastle.config import Settings
from sandcastle.wiring import Dependencies
started = time.perf_counter()
deps = Dependencies(Settings(sandbox_backend="local", state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:x"))
for name in {attributes!r}:
    getattr(deps, name)
clients_s = time.perf_counter() - started

started = time.perf_counter()
for name in {lazy!r}:
    __import__(name)
lazy_s = time.perf_counter() - started
print(json.dumps({{"handler_s": handler_s, "clients_s": clients_s, "lazy_s": lazy_s, "loaded": loaded}}))
"""


@dataclass
class HandlerImport:
    handler: str
    import_ms: Spread
    clients_ms: Spread
    lazy_ms: Spread
    lazy_modules: tuple[str, ...]
    loaded: frozenset[str]


REFERENCE_MODULE = "boto3"
"""Imported alone in the same rounds: about 150 ms on this machine when idle (NOTES), so a much larger
figure says the machine was busy and every figure of the table is inflated alike."""


def probe(handler: str) -> dict[str, object]:
    """One fresh interpreter: import ``sandcastle.handlers.<handler>``, then build what it uses first."""
    attributes, lazy = FIRST_USE[handler]
    script = _PROBE.format(module=f"sandcastle.handlers.{handler}", watched=WATCHED, attributes=attributes, lazy=lazy)
    return json.loads(_python(script).stdout.strip().splitlines()[-1])


def probe_reference() -> float:
    """Milliseconds to import ``REFERENCE_MODULE`` alone in a fresh interpreter."""
    script = _PROBE.format(module=REFERENCE_MODULE, watched=WATCHED, attributes=(), lazy=())
    return float(json.loads(_python(script).stdout.strip().splitlines()[-1])["handler_s"]) * 1000


def import_time_by_package(module: str) -> Counter[str]:
    """Milliseconds spent importing ``module``, by top-level package (``-X importtime`` self times)."""
    lines = _python(f"import {module}", "-X", "importtime").stderr.splitlines()
    by_package: Counter[str] = Counter()
    for line in lines:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        package = name.split(".", 1)[0]
        by_package["(standard library)" if package in sys.stdlib_module_names else package] += int(self_us) / 1000
    return by_package


def _python(script: str, *options: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(FUNCTIONS), **LAMBDA_ENVIRONMENT}
    completed = subprocess.run(
        [sys.executable, *options, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"python -c {script!r} failed:\n{completed.stderr}")
    return completed


def measure_all(repetitions: int) -> tuple[list[HandlerImport], Spread]:
    """Every handler, ``repetitions`` fresh interpreters each, taken round-robin; and the reference import."""
    samples: dict[str, list[dict[str, object]]] = {handler: [] for handler in HANDLERS}
    reference_ms: list[float] = []
    for _ in range(repetitions):
        for handler in HANDLERS:
            samples[handler].append(probe(handler))
        reference_ms.append(probe_reference())

    def spread(handler: str, key: str) -> Spread:
        return Spread.of([float(sample[key]) * 1000 for sample in samples[handler]])  # type: ignore[arg-type]

    results = [
        HandlerImport(
            handler=handler,
            import_ms=spread(handler, "handler_s"),
            clients_ms=spread(handler, "clients_s"),
            lazy_ms=spread(handler, "lazy_s"),
            lazy_modules=FIRST_USE[handler][1],
            loaded=frozenset(samples[handler][0]["loaded"]),  # type: ignore[arg-type]
        )
        for handler in HANDLERS
    ]
    return results, Spread.of(reference_ms)


def target_ms(handler: str) -> float:
    return TARGET_MS.get(handler, DEFAULT_TARGET_MS)


def report(quick: bool = False) -> str:
    repetitions = 3 if quick else 7
    results, reference = measure_all(repetitions)
    rows = [
        [
            result.handler,
            result.import_ms.median,
            target_ms(result.handler),
            f"{result.import_ms.median / target_ms(result.handler):.2f}",
            "yes" if result.import_ms.median <= target_ms(result.handler) else "NO",
            f"{result.import_ms.low:,.0f}–{result.import_ms.high:,.0f}",
            *("yes" if name in result.loaded else "no" for name in ("openai", "e2b", "aws_xray_sdk", "boto3")),
            result.clients_ms.median,
            result.lazy_ms.median if result.lazy_modules else None,
            " + ".join(result.lazy_modules) or "–",
        ]
        for result in results
    ]
    body = table(
        [
            "handler",
            "import ms",
            "target ms",
            "ratio",
            "meets",
            "min–max ms",
            "openai",
            "e2b",
            "x-ray",
            "boto3",
            "first clients ms",
            "lazy import ms",
            "imported on first use",
        ],
        rows,
        digits=0,
    )
    met = sum(1 for result in results if result.import_ms.median <= target_ms(result.handler))
    note = (
        f"{met} of {len(results)} handlers within target. Reference: import {REFERENCE_MODULE} alone took "
        f"{reference.median:,.0f} ms in the same rounds (about 150 ms on this machine idle; more means it was busy). "
        f"Import ms: median of {repetitions} fresh interpreters each "
        "(handlers round-robin), POWERTOOLS_TRACE_DISABLED=true; target 200 ms on the API path (api, authorizer, "
        "submit_run), 250 ms elsewhere; ratio = median / target. openai/e2b/x-ray/boto3: in sys.modules after "
        "importing the handler. First clients: the boto3 clients Dependencies builds for it (paid at its first "
        "invocation). Lazy import: the adapter it imports on first real use in the cloud (e2b backend; the openai "
        "model for a non-playbook run), timed after the handler and its clients. With tracing on (the cloud's "
        "default) Powertools' Tracer adds the X-Ray SDK to every handler's import."
    )
    return "\n\n".join(
        [
            section("Handler imports (fresh interpreter, Lambda environment)", body, note),
            _attribution_section(ATTRIBUTED_HANDLER),
        ]
    )


def _attribution_section(handler: str, top: int = 8) -> str:
    by_package = import_time_by_package(f"sandcastle.handlers.{handler}")
    total = sum(by_package.values())
    leading = by_package.most_common(top)
    rest = total - sum(ms for _, ms in leading)
    rows = [[package, ms, 100 * ms / total] for package, ms in leading]
    rows += [[f"{len(by_package) - len(leading)} other packages", rest, 100 * rest / total], ["total", total, 100.0]]
    note = "One run of python -X importtime; each module's self time, summed by its top-level package."
    return section(f"Where sandcastle.handlers.{handler}'s import time goes", table(["package", "ms", "%"], rows), note)
