"""Triggers as a user drives them: ``sandcastle serve``, then ``tasks put``, ``upload`` and ``schedules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.bwrap

PLAYBOOK = [
    {"tool": "run_command", "arguments": {"command": "wc -l < input/sales.csv | tr -d ' ' > output/rows.txt"}},
]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "E2B_", "SANDCASTLE_"))}
    env["SANDCASTLE_HOME"] = str(home)
    return env


def _sandcastle(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandcastle.cli", *args],
        cwd=cwd,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandcastle.cli", "serve", "--port", "0"],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (home / "serve.json").exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield home
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_save_a_task_upload_a_csv_and_find_the_result_in_the_outbox(serve: Path, tmp_path: Path) -> None:
    (tmp_path / "playbook.json").write_text(json.dumps(PLAYBOOK))
    (tmp_path / "sales.csv").write_text("region,units\nnorth,3\nsouth,4\n")

    saved = _sandcastle(
        "tasks", "put", "count-rows", "--instructions", "Count the rows", "--playbook", "playbook.json",
        home=serve, cwd=tmp_path,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    listed = _sandcastle("tasks", "list", home=serve, cwd=tmp_path)
    assert listed.stdout.splitlines()[1].split() == ["count-rows", "playbook", "Count", "the", "rows"]
    as_json = _sandcastle("tasks", "list", "--json", home=serve, cwd=tmp_path)
    assert [task["name"] for task in json.loads(as_json.stdout)["tasks"]] == ["count-rows"]

    uploaded = _sandcastle("upload", "sales.csv", "--task", "count-rows", home=serve, cwd=tmp_path)

    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert "status: SUCCEEDED" in uploaded.stdout
    result_line = next(line for line in uploaded.stdout.splitlines() if line.startswith("result: "))
    result_file = Path(result_line.removeprefix("result: "))
    assert result_file.parent.parent == serve.resolve() / "outbox" / "default" / "count-rows"
    result = json.loads(result_file.read_text())
    assert result["status"] == "SUCCEEDED" and result["source"]["key"] == "inbox/default/count-rows/sales.csv"
    assert (result_file.parent / "rows.txt").read_text().strip() == "3"


def test_an_upload_of_an_unknown_task_reports_the_error(serve: Path, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n1\n")

    uploaded = _sandcastle("upload", "data.csv", "--task", "nope", home=serve, cwd=tmp_path)

    assert uploaded.returncode == 1
    assert "error: UnknownTask: tenant 'default' has no task named 'nope'" in uploaded.stdout
    assert "status: REJECTED" in uploaded.stdout


def test_schedules_are_created_listed_and_deleted(serve: Path, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PLAYBOOK))
    assert (
        _sandcastle(
            "tasks", "put", "nightly", "--instructions", "x", "--playbook", "p.json", home=serve, cwd=tmp_path
        ).returncode
        == 0
    )

    created = _sandcastle(
        "schedules", "create", "--cron", "0 2 * * ? *", "--timezone", "Europe/Paris", "--task", "nightly",
        home=serve, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    schedule_id = created.stdout.split()[1].rstrip(":")
    assert "cron(0 2 * * ? *) (Europe/Paris)" in created.stdout

    listed = _sandcastle("schedules", "list", home=serve, cwd=tmp_path)
    assert schedule_id in listed.stdout and "nightly" in listed.stdout

    bad = _sandcastle("schedules", "create", "--cron", "0 2 * * *", "--task", "nightly", home=serve, cwd=tmp_path)
    assert bad.returncode == 2 and "sandcastle: expression: cron() takes 6 fields" in bad.stderr

    assert _sandcastle("schedules", "delete", schedule_id, home=serve, cwd=tmp_path).returncode == 0
    assert schedule_id not in _sandcastle("schedules", "list", home=serve, cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "..", "--task", "count"], "tenant '..' is not 1-64 letters"),
        (["--tenant", "acme", "--task", "../../x"], "task '../../x' is not a task name"),
    ],
)
def test_an_upload_outside_the_inbox_convention_is_refused_before_anything_is_written(
    serve: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "data.csv").write_text("a\n")

    result = _sandcastle("upload", "data.csv", *args, "--timeout", "5", home=serve, cwd=tmp_path)

    assert result.returncode == 2 and message in result.stderr
    assert list(serve.rglob("data.csv")) == []  # nothing dropped, inside the inbox folder or beside it
