"""The seams between the domain and its adapters: ``runs/`` speaks only our errors, and every ending of a
run kills its sandbox and keeps its files through one helper each."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import sandcastle.runs
from sandcastle.errors import SandboxGone
from sandcastle.runs.cancel import cancel_run
from sandcastle.runs.cleanup import keep_artifacts, kill_sandbox
from sandcastle.runs.lifecycle import fail_run, finish_run, prepare_run
from sandcastle.runs.payloads import FailInput, StepState
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import PlaybookCall, RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies
from tests.fakes.sandbox import FakeSandboxProvider

PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "ls"})]
VENDOR_SDKS = ("botocore", "boto3")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_of_the_domain_imports_the_aws_sdk() -> None:
    # Given every module of sandcastle.runs (imports inside functions included)
    folder = Path(sandcastle.runs.__file__).parent
    modules = [folder / f"{info.name}.py" for info in pkgutil.iter_modules([str(folder)])]
    assert len(modules) > 10

    # Then none imports botocore or boto3: the adapters under store/ turn ClientError into our errors
    offenders = {
        path.name: sorted(name for name in _imports(path) if name.split(".")[0] in VENDOR_SDKS) for path in modules
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_run_data_is_three_modules_that_import_one_way() -> None:
    # Given the run's data: what a caller sends, what is stored, what the state machine carries
    folder = Path(sandcastle.runs.__file__).parent
    data = ("requests", "records", "payloads")

    def runs_imports(module: str) -> set[str]:
        return {name for name in _imports(folder / f"{module}.py") if name.startswith("sandcastle.runs")}

    # Then requests import none of the rest (but the approval policy, a leaf they carry), records only the
    # requests they keep (and the policy), payloads only records
    assert {module: runs_imports(module) for module in data} == {
        "requests": {"sandcastle.runs.policy"},
        "records": {"sandcastle.runs.requests", "sandcastle.runs.policy"},
        "payloads": {"sandcastle.runs.records"},
    }
    assert runs_imports("policy") == set()
    # And the module they were split from is gone, not kept as a re-export
    assert not (folder / "models.py").exists()


class GoneSandboxes(FakeSandboxProvider):
    """A provider whose sandboxes are already gone when they are killed (expired, or killed by another)."""

    def kill(self, sandbox_id: str) -> bool:
        super().kill(sandbox_id)
        raise SandboxGone(f"sandbox {sandbox_id} does not exist")


class BrokenSandboxes(FakeSandboxProvider):
    """A provider that cannot kill anything (the sandbox service is down)."""

    def kill(self, sandbox_id: str) -> bool:
        super().kill(sandbox_id)
        raise RuntimeError("the sandbox service is down")


def _prepared(deps: Dependencies, provider: FakeSandboxProvider) -> str:
    deps.sandboxes = provider  # type: ignore[assignment]
    run_id = submit_run(RunRequest(instructions="x", playbook=PLAYBOOK), deps).run_id
    prepare_run(run_id, deps)
    return run_id


def test_killing_a_sandbox_that_is_gone_is_not_an_error(deps: Dependencies) -> None:
    deps.sandboxes = GoneSandboxes()  # type: ignore[assignment]

    assert kill_sandbox("sbx-gone", deps) is False
    assert kill_sandbox("sbx-gone", deps, reraise=True) is False  # not even for the reaper
    assert kill_sandbox(None, deps) is False


def test_a_kill_that_fails_is_logged_or_raised_for_the_reaper(deps: Dependencies) -> None:
    deps.sandboxes = BrokenSandboxes()  # type: ignore[assignment]

    assert kill_sandbox("sbx-1", deps) is False
    with pytest.raises(RuntimeError, match="service is down"):
        kill_sandbox("sbx-1", deps, reraise=True)


@pytest.mark.parametrize("provider", [GoneSandboxes, BrokenSandboxes])
@pytest.mark.parametrize("ending", ["finish", "fail", "cancel"])
def test_every_ending_reaches_its_status_when_the_sandbox_cannot_be_killed(
    deps: Dependencies, provider: type[FakeSandboxProvider], ending: str
) -> None:
    sandboxes = provider()
    run_id = _prepared(deps, sandboxes)

    if ending == "finish":
        finish_run(StepState(run_id=run_id, step=1), deps)
    elif ending == "fail":
        fail_run(FailInput.model_validate({"run_id": run_id, "error": {"Error": "Boom", "Cause": "x"}}), deps)
    else:
        cancel_run(run_id, "default", deps, by="test")

    expected = {"finish": RunStatus.SUCCEEDED, "fail": RunStatus.FAILED, "cancel": RunStatus.CANCELLED}[ending]
    assert deps.store.get_run(run_id).status is expected
    assert sandboxes.killed == [deps.store.get_run(run_id).sandbox_id]


def test_artifacts_that_cannot_be_kept_are_reported_not_raised(deps: Dependencies) -> None:
    sandboxes = FakeSandboxProvider()
    run_id = _prepared(deps, sandboxes)
    deps.redactor.add("sk-this-is-a-long-secret")

    def unreachable(sandbox_id: str) -> object:
        raise OSError("connection refused by sk-this-is-a-long-secret")

    sandboxes.connect = unreachable  # type: ignore[method-assign]
    kept = keep_artifacts(deps.store.get_run(run_id), deps)

    assert kept.artifacts == []
    assert kept.failure is not None and kept.failure.startswith("OSError: connection refused")
    assert "sk-this-is-a-long-secret" not in kept.failure
