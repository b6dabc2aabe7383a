"""How a run ends: artifacts kept with a manifest, the sandbox killed, a Run Finished event announced."""

from __future__ import annotations

import hashlib
import json

from sandcastle.runs.lifecycle import fail_run, finish_run, prepare_run
from sandcastle.runs.payloads import FailInput, StepState
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider
from tests.unit.conftest import RecordingEventBus


def _run_with_outputs(deps: Dependencies, sandboxes: FakeSandboxProvider, files: dict[str, bytes]) -> str:
    run_id = submit_run(RunRequest(instructions="make a report"), deps).run_id
    prepare_run(run_id, deps)
    sandbox = sandboxes.sandboxes[deps.store.get_run(run_id).sandbox_id or ""]
    sandbox.files.update({f"output/{name}": data for name, data in files.items()})
    return run_id


def test_a_finished_run_keeps_its_output_files_with_a_manifest(
    deps: Dependencies, sandboxes: FakeSandboxProvider, model: FakeModel, events: RecordingEventBus
) -> None:
    files = {"report.md": b"# Report\n", "charts/sales.csv": b"a,b\n1,2\n"}
    run_id = _run_with_outputs(deps, sandboxes, files)
    model.then_text("Report written.")

    finish_run(agent_step(StepState(run_id=run_id), deps, time_left_s=60), deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert [(a.name, a.size, a.content_type) for a in run.artifacts] == [
        ("charts/sales.csv", 8, "text/csv"),
        ("report.md", 9, "text/markdown"),
    ]
    for artifact in run.artifacts:
        data = deps.objects.get(artifact.s3_key)
        assert data == files[artifact.name] and artifact.sha256 == hashlib.sha256(data).hexdigest()
    manifest = json.loads(deps.objects.get(f"runs/{run_id}/manifest.json"))
    assert [entry["name"] for entry in manifest["artifacts"]] == ["charts/sales.csv", "report.md"]
    assert deps.store.list_events(run_id)[-1].data.artifacts == deps.store.get_run(run_id).artifacts
    assert sandboxes.live == []

    (announced,) = events.entries
    detail = json.loads(announced["Detail"])
    assert announced["DetailType"] == "Run Finished" and announced["Source"] == "sandcastle"
    assert detail["run_id"] == run_id and detail["status"] == "SUCCEEDED" and detail["tenant"] == "default"
    assert [a["name"] for a in detail["artifacts"]] == ["charts/sales.csv", "report.md"]


def test_artifacts_over_the_caps_are_skipped_and_listed_in_the_manifest(
    deps: Dependencies, sandboxes: FakeSandboxProvider, model: FakeModel
) -> None:
    deps.settings = deps.settings.model_copy(update={"max_artifact_bytes": 10})
    run_id = _run_with_outputs(deps, sandboxes, {"small.txt": b"ok", "big.bin": b"x" * 11})
    model.then_text("done")

    finish_run(agent_step(StepState(run_id=run_id), deps, time_left_s=60), deps)

    assert [a.name for a in deps.store.get_run(run_id).artifacts] == ["small.txt"]
    manifest = json.loads(deps.objects.get(f"runs/{run_id}/manifest.json"))
    assert manifest["skipped"] == [{"name": "big.bin", "size": 11, "reason": "larger than 10 bytes"}]


def test_a_failed_run_keeps_its_artifacts_too(
    deps: Dependencies, sandboxes: FakeSandboxProvider, events: RecordingEventBus
) -> None:
    run_id = _run_with_outputs(deps, sandboxes, {"partial.log": b"step 1 ok\n"})

    fail_run(FailInput.model_validate({"run_id": run_id, "error": {"Error": "SandboxGone"}}), deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.FAILED and [a.name for a in run.artifacts] == ["partial.log"]
    assert sandboxes.live == []
    assert json.loads(events.entries[0]["Detail"])["status"] == "FAILED"


def test_a_retried_finish_after_the_sandbox_was_killed_keeps_the_manifest(
    deps: Dependencies, sandboxes: FakeSandboxProvider, model: FakeModel
) -> None:
    run_id = _run_with_outputs(deps, sandboxes, {"result.json": b"{}"})
    model.then_text("done")
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    from sandcastle.runs.artifacts import export_artifacts

    export_artifacts(deps.store.get_run(run_id), deps)  # the first attempt got this far…
    sandboxes.kill(deps.store.get_run(run_id).sandbox_id or "")  # …and killed the sandbox, then died

    finish_run(state, deps)

    assert [a.name for a in deps.store.get_run(run_id).artifacts] == ["result.json"]
