"""What an in-process run leaves on disk: its record, transcript and artifacts under
``$SANDCASTLE_HOME/runs/<run_id>/``, so they outlive the process whose emulated AWS held them."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from sandcastle.runs.records import Run
from sandcastle.wiring import Dependencies


def archive_dir(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id


def archive_run(run: Run, deps: Dependencies, home: Path) -> Path:
    """Write ``run.json`` (the run and its transcript) and download the artifacts; return the folder."""
    folder = archive_dir(home, run.run_id)
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for artifact in run.artifacts:
        target = artifacts / _safe_relative(artifact.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(deps.objects.get(artifact.s3_key))
    events = [event.model_dump(mode="json") for event in deps.store.list_events(run.run_id)]
    document = {"run": run.model_dump(mode="json"), "events": events}
    (folder / "run.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return folder


def archived_run(home: Path, run_id: str) -> Run | None:
    """The archived run, or None when this machine never ran it in process."""
    path = archive_dir(home, run_id) / "run.json"
    if not path.is_file():
        return None
    return Run.model_validate(json.loads(path.read_text())["run"])


def _safe_relative(name: str) -> Path:
    """An artifact name as a path that stays inside the archive (names come from the sandbox)."""
    parts = [part for part in PurePosixPath(name).parts if part not in ("", ".", "..", "/")]
    if not parts:
        raise ValueError(f"artifact name {name!r} is not a relative file path")
    return Path(*parts)
