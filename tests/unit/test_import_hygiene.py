"""Each handler imports what it uses, no more: a cold start pays for every SDK in ``sys.modules``.

Every case runs in a fresh interpreter: it imports the handler module, then builds what the
handler touches on its first call (``Dependencies`` from ``sandcastle.wiring``, local sandbox
backend; boto3 clients are fine) and reports which heavy SDKs got loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.template_support import handler_modules

WATCHED = ("openai", "e2b", "moto")

_PROBE = """
import json, sys
from datetime import datetime, timezone

import sandcastle.handlers.{handler}
from sandcastle.config import Settings
from sandcastle.runs.records import Run
from sandcastle.wiring import Dependencies

deps = Dependencies(Settings(sandbox_backend="local", openai_base_url="http://127.0.0.1:9/v1"))
for name in {attributes!r}:
    getattr(deps, name)
if {model_backend!r}:
    run = Run.model_validate({{
        "run_id": "r-1", "tenant": "default", "source": "cli", "status": "RUNNING", "instructions": "x",
        "model_backend": {model_backend!r}, "playbook": [{{"tool": "run_command", "arguments": {{"command": "true"}}}}],
        "budgets": {{"max_steps": 1, "max_tool_calls": 1, "timeout_s": 60}},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }})
    deps.model_for(run)
print(json.dumps(sorted(name for name in {watched!r} if name in sys.modules)))
"""

# handler -> (what its first call builds, the model backend it asks for, the SDKs it must not load)
CASES = {
    "submit_run": (("store", "objects", "executions"), None, {"openai", "e2b", "moto"}),
    "prepare_run": (("store", "objects", "sandboxes"), None, {"openai", "moto"}),
    "agent_step": (("store",), "openai", {"e2b", "moto"}),
    "agent_step, playbook run": (("store",), "playbook", {"openai", "e2b", "moto"}),
    "run_tool": (("store", "sandboxes"), None, {"openai", "moto"}),
    "finish_run": (("store", "sandboxes"), None, {"openai", "moto"}),
    "fail_run": (("store", "sandboxes"), None, {"openai", "moto"}),
}


def _loaded_after_first_use(handler: str, attributes: tuple[str, ...], model_backend: str | None, cwd: Path) -> set:
    script = _PROBE.format(handler=handler, attributes=attributes, model_backend=model_backend, watched=WATCHED)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "sandcastle",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:probe",
        **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ},  # this checkout's code
    }
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, f"importing and building {handler} failed:\n{completed.stderr}"
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("case", list(CASES))
def test_a_handler_loads_only_the_sdks_it_uses(case: str, tmp_path: Path) -> None:
    # Given a fresh interpreter with a Lambda's environment
    handler = case.split(",", 1)[0]
    attributes, model_backend, forbidden = CASES[case]

    # When the handler module is imported and what its first call uses is built
    loaded = _loaded_after_first_use(handler, attributes, model_backend, tmp_path)

    # Then none of the SDKs it has no use for is loaded
    assert not loaded & forbidden, f"{case} loaded {sorted(loaded & forbidden)}; import them lazily where they are used"


def test_the_openai_model_is_what_loads_openai(tmp_path: Path) -> None:
    # The check above would pass vacuously if openai were never importable here; agent_step does load it.
    loaded = _loaded_after_first_use("agent_step", ("store",), "openai", tmp_path)

    assert "openai" in loaded


# --- what importing a handler module pulls in (its cold start before the first invocation) ---

HANDLERS = handler_modules()
TOOL_REGISTRY = "sandcastle.tools"
"""The tools' schemas and execution code (patch parsing, file walks): for AgentStep and RunTool only."""
ARTIFACT_CODE = "sandcastle.runs.artifacts"
"""Copying ``~/output/`` to S3: for the endings, imported when they export."""
XRAY_SDK = "aws_xray_sdk"

#: handler -> the modules its import must not load (with tracing off, as the benchmark and the local runtime run)
NOT_AT_IMPORT: dict[str, set[str]] = {
    handler: {XRAY_SDK, ARTIFACT_CODE} | ({TOOL_REGISTRY} if handler not in ("agent_step", "run_tool") else set())
    for handler in HANDLERS
}

_MODULES_PROBE = """
import json, sys
import sandcastle.handlers.{handler}
print(json.dumps(sorted(name for name in {watched!r} if name in sys.modules)))
"""


def _loaded_by_import(handler: str, cwd: Path, **environment: str) -> set[str]:
    watched = (TOOL_REGISTRY, ARTIFACT_CODE, XRAY_SDK)
    script = _MODULES_PROBE.format(handler=handler, watched=watched)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "sandcastle",
        **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ},
        **environment,
    }
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, f"importing {handler} failed:\n{completed.stderr}"
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_handler_module_imports_neither_tracing_nor_code_it_does_not_run(handler: str, tmp_path: Path) -> None:
    # Given a fresh interpreter with tracing off; When the handler module is imported
    loaded = _loaded_by_import(handler, tmp_path, POWERTOOLS_TRACE_DISABLED="true")

    # Then no X-Ray SDK, and no tool registry or artifact export where the handler needs at most their names
    assert not loaded & NOT_AT_IMPORT[handler], f"importing {handler} loaded {sorted(loaded & NOT_AT_IMPORT[handler])}"


def test_with_tracing_on_a_handler_is_traced_through_the_xray_sdk(tmp_path: Path) -> None:
    # In a Lambda with tracing on (the cloud) the Tracer is built, loading the X-Ray SDK: the check above is not void.
    loaded = _loaded_by_import("run_tool", tmp_path, LAMBDA_TASK_ROOT=str(tmp_path))

    assert XRAY_SDK in loaded and TOOL_REGISTRY in loaded


@pytest.mark.parametrize(
    ("environment", "traced"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({}, False),  # not in a Lambda: no X-Ray daemon to send to
    ],
)
def test_tracing_is_on_where_powertools_would_trace(
    environment: dict[str, str], traced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandcastle.handlers._observability import tracing_enabled

    for name in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert tracing_enabled() is traced
