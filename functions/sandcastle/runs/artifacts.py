"""Artifacts: what a run leaves under ``~/output/`` is copied to S3, with a manifest, when it ends; a run on a
repository adds its change (``changes.patch``, ``changes.json``: ``runs/repository.py``)."""

from __future__ import annotations

import hashlib
import mimetypes

from aws_lambda_powertools import Logger
from pydantic import BaseModel, Field

from sandcastle.errors import SandboxGone
from sandcastle.runs.records import Artifact, Run
from sandcastle.runs.repository import PATCH_NAME, SUMMARY_NAME, export_changes
from sandcastle.sandbox.base import Sandbox
from sandcastle.wiring import Dependencies

logger = Logger(child=True)

_LIST_OUTPUT = "cd ~/output 2>/dev/null && find . -type f -printf '%s %P\\0' || true"


class SkippedOutput(BaseModel):
    """An ``~/output/`` file that was not kept, and why."""

    name: str
    size: int
    reason: str


class Manifest(BaseModel):
    """``runs/<id>/manifest.json``: what a run's output became."""

    run_id: str
    artifacts: list[Artifact]
    skipped: list[SkippedOutput] = Field(default_factory=list)


def manifest_key(run_id: str) -> str:
    return f"runs/{run_id}/manifest.json"


def artifact_key(run_id: str, name: str) -> str:
    return f"runs/{run_id}/artifacts/{name}"


def export_artifacts(run: Run, deps: Dependencies) -> list[Artifact]:
    """Copy the run's ``~/output/`` files to S3 and write the manifest; return what was copied.

    Safe to repeat: the same files go to the same keys. When the sandbox is already gone (a
    retry after it was killed, or a failure that took it), the manifest an earlier attempt
    wrote is the answer; with no manifest there are no artifacts.
    """
    if not run.sandbox_id:
        return []
    try:
        sandbox = deps.sandboxes.connect(run.sandbox_id)
        return _copy_outputs(run, sandbox, deps)
    except SandboxGone:
        return _stored_manifest(run, deps)


def _copy_outputs(run: Run, sandbox: Sandbox, deps: Dependencies) -> list[Artifact]:
    settings = deps.settings
    listing = sandbox.run(_LIST_OUTPUT, timeout_s=60)
    entries = []
    for record in listing.stdout.split(b"\0"):
        if not record:
            continue
        size_text, _, name = record.decode("utf-8", errors="replace").partition(" ")
        entries.append((name, int(size_text)))
    entries.sort()

    artifacts: list[Artifact] = []
    skipped: list[SkippedOutput] = []
    total = 0
    reserved = {PATCH_NAME, SUMMARY_NAME} if run.repository is not None else set()
    for name, size in entries:
        reason = None
        if name in reserved:
            reason = "the name of the repository's change, which the run exports itself"
        elif len(artifacts) >= settings.max_artifacts:
            reason = f"more than {settings.max_artifacts} files"
        elif size > settings.max_artifact_bytes:
            reason = f"larger than {settings.max_artifact_bytes} bytes"
        elif total + size > settings.max_artifacts_total_bytes:
            reason = f"the run's artifacts would exceed {settings.max_artifacts_total_bytes} bytes"
        if reason:
            skipped.append(SkippedOutput(name=name, size=size, reason=reason))
            continue
        data = sandbox.read_file(f"output/{name}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        total += len(data)
        artifacts.append(store_artifact(run.run_id, name, data, content_type, deps))
    artifacts += export_changes(run, sandbox, deps)
    manifest = Manifest(run_id=run.run_id, artifacts=artifacts, skipped=skipped)
    deps.objects.put(
        manifest_key(run.run_id), manifest.model_dump_json(indent=2).encode(), content_type="application/json"
    )
    if skipped:
        logger.warning("some output files were not kept", extra={"skipped": [entry.model_dump() for entry in skipped]})
    return artifacts


def store_artifact(run_id: str, name: str, data: bytes, content_type: str, deps: Dependencies) -> Artifact:
    """Put one artifact at its key; what the manifest lists of it."""
    key = artifact_key(run_id, name)
    deps.objects.put(key, data, content_type=content_type)
    return Artifact(
        name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), content_type=content_type, s3_key=key
    )


def _stored_manifest(run: Run, deps: Dependencies) -> list[Artifact]:
    try:
        stored = deps.objects.get(manifest_key(run.run_id))
    except FileNotFoundError:
        return []
    return Manifest.model_validate_json(stored).artifacts
