"""``sandcastle run`` as a user drives it: a real process, the local runtime, the bubblewrap sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"

pytestmark = pytest.mark.bwrap


def _sandcastle(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "E2B_"))}
    env["SANDCASTLE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "sandcastle.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_demo_run_succeeds_and_shows_its_transcript(tmp_path: Path) -> None:
    result = _sandcastle(
        "run",
        "Analyse sales.csv",
        "--file",
        "sales.csv",
        "--playbook",
        "playbook.json",
        cwd=DEMO,
        home=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "status: SUCCEEDED (completed)" in out
    assert "→ write_file analyse.py" in out and "→ run_command python3 analyse.py input/sales.csv" in out
    assert "12 sales, total revenue 1171.00" in out
    assert "best-selling product: widget (50 units)" in out
    assert "usage: 4 steps, 3 tool calls" in out
    # the functions' logs went to the log file, not into the transcript on stdout
    assert '"level"' not in out
    assert (tmp_path / "logs" / "functions.log").exists()
    # what the script left in ~/output is an artifact, kept on this machine after the process ended
    assert "artifacts (1) in" in out and "summary.json" in out
    run_id = out.split()[1]
    listing = _sandcastle("artifacts", run_id, "--download", str(tmp_path / "got"), cwd=DEMO, home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split() == ["NAME", "BYTES", "SHA256", "WHERE"]
    assert listing.stdout.splitlines()[1].startswith("summary.json  ")
    summary = json.loads((tmp_path / "got" / "summary.json").read_text())
    assert summary["rows"] == 12 and summary["total"] == 1171.0


def test_artifacts_of_an_unknown_run_are_a_clear_error(tmp_path: Path) -> None:
    result = _sandcastle("artifacts", "run-nope", cwd=DEMO, home=tmp_path)
    assert result.returncode == 2 and "no run run-nope on this machine" in result.stderr


def test_a_run_that_does_not_succeed_exits_non_zero(tmp_path: Path) -> None:
    result = _sandcastle(
        "run",
        "Analyse sales.csv",
        "--file",
        "sales.csv",
        "--playbook",
        "playbook.json",
        "--max-steps",
        "2",
        "--json",
        cwd=DEMO,
        home=tmp_path,
    )

    assert result.returncode == 1
    assert "status: BUDGET_EXCEEDED (max_steps)" in result.stderr  # with --json, words go to stderr
    document = json.loads(result.stdout)
    assert document["run"]["status"] == "BUDGET_EXCEEDED"
    assert [e["kind"] for e in document["events"]][-1] == "end"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "x", "--file", "missing.csv"), "--file: missing.csv: no such file"),
        (("run", "  ", "--playbook", "playbook.json"), "instructions: String should have at least 1 character"),
        (("run", "x", "--playbook", "playbook.json", "--max-steps", "100000"), "budgets.max_steps: must be at most"),
        (("run", "x"), "no model is configured: set OPENAI_API_KEY or OPENAI_BASE_URL, or give a playbook"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = _sandcastle(*args, cwd=DEMO, home=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
