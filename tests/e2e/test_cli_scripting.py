"""The CLI as scripts drive it: the exit-code table, ``--json`` parsed whole, Ctrl-C while following,
a broken pipe, a port in use, missing AWS credentials; real processes, real signals, a real ``serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
CLI = [sys.executable, "-m", "sandcastle.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "E2B_", "SANDCASTLE_", "AWS_"))}
    # no AWS credentials or region from this machine, and no instance metadata to look for
    env |= {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    env |= {"AWS_EC2_METADATA_DISABLED": "true"}
    return {**env, "SANDCASTLE_HOME": str(home), **extra}


def _sandcastle(*args: str, home: Path, cwd: Path = DEMO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=_env(home, **env), capture_output=True, text=True, timeout=300)


def _no_traceback(result: subprocess.CompletedProcess[str] | str) -> None:
    text = result if isinstance(result, str) else result.stderr
    assert "Traceback" not in text and "Exception ignored" not in text, text


# --- without a server ---------------------------------------------------------------------------


def test_version_and_a_usage_error(tmp_path: Path) -> None:
    version = _sandcastle("--version", home=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("sandcastle 0.")
    usage = _sandcastle("runs", "frobnicate", home=tmp_path)
    assert usage.returncode == 2 and "invalid choice: 'frobnicate'" in usage.stderr


def test_no_server_and_an_unreachable_url_exit_3(tmp_path: Path) -> None:
    none = _sandcastle("runs", "list", home=tmp_path)
    assert none.returncode == 3, none.stderr
    assert "no server: start `sandcastle serve`, or pass --url" in none.stderr
    _no_traceback(none)
    unreachable = _sandcastle("runs", "get", "run-x", "--url", "http://127.0.0.1:9", "--api-key", "k", home=tmp_path)
    assert unreachable.returncode == 3 and "cannot reach the server" in unreachable.stderr
    _no_traceback(unreachable)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "--tenant", "acme", "--table", "t"), "no AWS region: pass --region or set AWS_REGION"),
        (("--region", "eu-west-1", "reap", "--stack", "s"), "no AWS credentials: pass --profile"),
        (("keys", "revoke", "key_x", "--stack", "s", "--profile", "nope"), "pass an existing --profile"),
    ],
)
def test_missing_aws_credentials_or_region_is_a_line_and_exit_3(tmp_path: Path, args: tuple, message: str) -> None:
    result = _sandcastle(*args, home=tmp_path)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    _no_traceback(result)


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    # Given a reader that closes the pipe before the command writes (what `| head -1` does to a long list)
    process = subprocess.Popen(
        [*CLI, "completion", "bash"], env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    _no_traceback(stderr)


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = _sandcastle("completion", "bash", home=tmp_path)
    assert script.returncode == 0
    probe = (
        'eval "$SCRIPT"; COMP_WORDS=(sandcastle runs l); COMP_CWORD=2; _sandcastle; echo "${COMPREPLY[@]}";'
        'COMP_WORDS=(sandcastle runs logs --f); COMP_CWORD=3; _sandcastle; echo "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", probe], env={"SCRIPT": script.stdout}, capture_output=True, text=True)
    assert result.stdout.splitlines() == ["list logs", "--follow"], result.stderr


# --- with a running serve -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    home = tmp_path_factory.mktemp("scripting") / "home"
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--json"],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (home / "serve.json").exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        state = json.loads((home / "serve.json").read_text())
        yield home, state
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # serve --json: its URL and key as one JSON document on stdout, the words on stderr
    started = json.loads(process.stdout.read() if process.stdout else "")
    assert started["url"] == state["url"] and started["key"] == state["cli_key"]


@pytest.mark.bwrap
def test_run_json_is_only_json_on_stdout_and_runs_list_get_logs_read_it(server: tuple[Path, dict]) -> None:
    home, _ = server

    result = _sandcastle(
        "run", "Analyse sales.csv", "--file", "sales.csv", "--playbook", "playbook.json", "--json", home=home
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    run_id = document["run"]["run_id"]
    assert document["run"]["status"] == "SUCCEEDED" and document["events"][-1]["kind"] == "end"
    assert "status: SUCCEEDED (completed)" in result.stderr  # the transcript, for people, on stderr

    listed = _sandcastle("runs", "list", "--json", home=home)
    assert listed.returncode == 0 and run_id in [run["run_id"] for run in json.loads(listed.stdout)["runs"]]
    human = _sandcastle("runs", "list", home=home)
    headers = ["RUN", "STATUS", "SOURCE", "MODEL", "CREATED", "DURATION", "STEPS", "TOOLS"]
    assert human.stdout.splitlines()[0].split() == headers
    assert f"{run_id}  SUCCEEDED" in human.stdout

    got = _sandcastle("--json", "runs", "get", run_id, home=home)
    assert got.returncode == 0 and json.loads(got.stdout)["usage"]["tool_calls"] == 3
    logs = _sandcastle("runs", "logs", run_id, home=home)
    assert logs.returncode == 0 and "→ run_command python3 analyse.py input/sales.csv" in logs.stdout
    logs_json = _sandcastle("runs", "logs", run_id, "--json", home=home)
    assert [e["kind"] for e in json.loads(logs_json.stdout)["events"]][-1] == "end"

    missing = _sandcastle("runs", "get", "run-nope", "--json", home=home)
    assert missing.returncode == 2 and missing.stdout == "" and "run-nope" in missing.stderr


@pytest.mark.bwrap
def test_a_run_that_fails_exits_1_and_a_wrong_key_exits_3(server: tuple[Path, dict], tmp_path: Path) -> None:
    home, _ = server
    playbook = tmp_path / "fail.json"
    playbook.write_text(json.dumps([{"tool": "run_command", "arguments": {"command": "exit 3"}}]))

    failed = _sandcastle("run", "fail", "--playbook", str(playbook), "--json", home=home)
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["run"]["status"] == "FAILED"

    refused = _sandcastle("runs", "list", "--api-key", "sc_wrong", home=home)
    assert refused.returncode == 3 and "not authorised (401)" in refused.stderr
    _no_traceback(refused)


def _until(process: subprocess.Popen[str], text: str) -> list[str]:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came: {seen}")


@pytest.mark.bwrap
def test_ctrl_c_while_following_leaves_the_run_going_and_says_how_to_reattach(
    server: tuple[Path, dict], tmp_path: Path
) -> None:
    home, _ = server
    playbook = tmp_path / "slow.json"
    playbook.write_text(json.dumps([{"tool": "run_command", "arguments": {"command": "sleep 120"}}]))
    run = subprocess.Popen(
        [*CLI, "run", "wait", "--playbook", str(playbook)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = _until(run, "run ")[0].split()[1]
    _until(run, "→ run_command sleep 120")

    run.send_signal(signal.SIGINT)

    assert run.wait(timeout=60) == 130
    stderr = run.stderr.read() if run.stderr else ""
    assert (
        f"run {run_id} continues; follow with `sandcastle runs logs -f {run_id}`, "
        f"cancel with `sandcastle runs cancel {run_id}`" in stderr
    )
    _no_traceback(stderr)
    assert json.loads(_sandcastle("runs", "get", run_id, "--json", home=home).stdout)["status"] == "RUNNING"

    # re-attach, and Ctrl-C again
    follow = subprocess.Popen(
        [*CLI, "runs", "logs", "-f", run_id], env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _until(follow, "→ run_command sleep 120")
    follow.send_signal(signal.SIGINT)
    assert follow.wait(timeout=60) == 130
    _no_traceback(follow.stderr.read() if follow.stderr else "")

    cancelled = _sandcastle("runs", "cancel", run_id, "--json", home=home)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["run_id"] == run_id


@pytest.mark.bwrap
def test_ctrl_c_of_a_run_in_this_process_says_it_stops_with_it(tmp_path: Path) -> None:
    playbook = tmp_path / "slow.json"
    playbook.write_text(json.dumps([{"tool": "run_command", "arguments": {"command": "sleep 120"}}]))
    run = subprocess.Popen(
        [*CLI, "run", "wait", "--playbook", str(playbook), "--local"],
        env=_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = _until(run, "run ")[0].split()[1]
    _until(run, "→ run_command sleep 120")

    run.send_signal(signal.SIGINT)

    assert run.wait(timeout=120) == 130
    stderr = run.stderr.read() if run.stderr else ""
    assert f"interrupted: run {run_id} ran in this process and stops with it" in stderr
    _no_traceback(stderr)


@pytest.mark.bwrap
def test_run_through_a_serve_without_the_callers_model_says_so(server: tuple[Path, dict]) -> None:
    home, _ = server

    result = _sandcastle("run", "Say hi", home=home, OPENAI_BASE_URL="http://127.0.0.1:9/v1")

    assert result.returncode == 2
    assert (
        "the running `sandcastle serve`" in result.stderr
        and "has no model, but you set OPENAI_BASE_URL" in result.stderr
    )
    assert "pass --local" in result.stderr and "restart `sandcastle serve` with it set" in result.stderr


@pytest.mark.bwrap
def test_run_through_a_server_by_url_that_has_no_model_says_so_too(server: tuple[Path, dict]) -> None:
    home, state = server
    # by --url, the way a remote server is reached: no state file of it to compare with beforehand
    by_url = ("--url", state["url"] + "/", "--api-key", state["cli_key"])

    result = _sandcastle("run", "Say hi", *by_url, home=home, OPENAI_API_KEY="sk-mine")

    assert result.returncode == 2
    assert "model: no model is configured" in result.stderr and "you set OPENAI_API_KEY: pass --local" in result.stderr


@pytest.mark.bwrap
def test_schedule_errors_name_their_field_once_and_hint_a_cli_command(server: tuple[Path, dict]) -> None:
    home, _ = server

    bad = _sandcastle("schedules", "create", "--expression", "cron(nope)", "--task", "t", home=home)
    assert bad.returncode == 2
    assert "sandcastle: expression: " in bad.stderr and "expression: expression:" not in bad.stderr
    unknown = _sandcastle("schedules", "create", "--rate", "5 minutes", "--task", "nothing", home=home)
    assert unknown.returncode == 2
    assert "`sandcastle tasks put nothing --instructions ...`" in unknown.stderr


@pytest.mark.bwrap
def test_a_second_serve_on_a_port_in_use_is_a_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _sandcastle("serve", "--port", str(port), home=tmp_path / "home")
    assert result.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "another `sandcastle serve` running?" in result.stderr
    _no_traceback(result)


def test_templates_are_built_listed_as_json_and_deleted(tmp_path: Path) -> None:
    source = tmp_path / "app"
    source.mkdir()
    (source / "main.py").write_text("print('hi')\n")
    home = tmp_path / "home"

    built = _sandcastle("templates", "build", "web", "--from", str(source), "--json", home=home)
    listed = _sandcastle("templates", "list", "--json", home=home)
    people = _sandcastle("templates", "list", home=home)
    deleted = _sandcastle("templates", "delete", "web", home=home)
    again = _sandcastle("templates", "delete", "web", home=home)

    assert built.returncode == 0 and json.loads(built.stdout)["template_id"] == "web"
    assert [t["template_id"] for t in json.loads(listed.stdout)["templates"]] == ["web"]
    assert people.stdout.splitlines()[0].split()[:3] == ["NAME", "KIND", "CREATED"]
    assert deleted.returncode == 0 and again.returncode == 2
    assert again.stderr.strip() == "sandcastle: no template or snapshot named web"
    _no_traceback(again)
