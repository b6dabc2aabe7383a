"""``sandcastle serve`` as a user drives it: a real server process, ``keys create`` against it, and
``sandcastle run`` talking to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"

pytestmark = pytest.mark.bwrap


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "E2B_", "SANDCASTLE_"))}
    return {**env, "SANDCASTLE_HOME": str(home), **extra}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    home = tmp_path / "home"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandcastle.cli", "serve", "--port", "0", "--tenant", "acme"],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (home / "serve.json").exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield home, json.loads((home / "serve.json").read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert not (home / "serve.json").exists()


def _sandcastle(*args: str, home: Path, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandcastle.cli", *args],
        cwd=cwd,
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_serve_answers_over_http_with_the_key_it_printed(server: tuple[Path, dict]) -> None:
    _, state = server
    request = urllib.request.Request(f"{state['url']}/runs", headers={"Authorization": f"Bearer {state['cli_key']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and json.loads(response.read()) == {"runs": [], "cursor": None}
    assert (server[0] / "serve.json").stat().st_mode & 0o077 == 0


def test_keys_create_and_revoke_against_a_running_serve(server: tuple[Path, dict]) -> None:
    home, state = server

    created = _sandcastle("keys", "create", "--tenant", "beta", home=home)

    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    key_id = created.stdout.split("(")[1].split(")")[0]
    request = urllib.request.Request(f"{state['url']}/runs", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    revoked = _sandcastle("keys", "revoke", key_id, home=home)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout


def test_run_goes_through_the_server_when_one_is_running(server: tuple[Path, dict]) -> None:
    home, state = server

    result = _sandcastle(
        "run",
        "Analyse sales.csv",
        "--file",
        "sales.csv",
        "--playbook",
        "playbook.json",
        home=home,
        cwd=DEMO,
        SANDCASTLE_URL=state["url"],
        SANDCASTLE_API_KEY=state["cli_key"],
    )

    assert result.returncode == 0, result.stderr
    assert "status: SUCCEEDED (completed)" in result.stdout
    assert "12 sales, total revenue 1171.00" in result.stdout
    # the run is the server's: it is listed there
    request = urllib.request.Request(f"{state['url']}/runs", headers={"Authorization": f"Bearer {state['cli_key']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert [run["source"] for run in json.loads(response.read())["runs"]] == ["api"]


def test_run_uploads_a_file_over_the_inline_cap_through_serve(server: tuple[Path, dict], tmp_path: Path) -> None:
    home, state = server
    big = tmp_path / "big;data #1.bin"
    big.write_bytes(b"0123456789abcdef" * (3 * 1024 * 1024 // 16))  # 3 MiB: over the 1 MiB inline cap
    playbook = tmp_path / "playbook.json"
    playbook.write_text(json.dumps([{"tool": "run_command", "arguments": {"command": "wc -c ~/input/*"}}]))

    result = _sandcastle("run", "Count the bytes", "--file", str(big), "--playbook", str(playbook), "--json", home=home)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [stored] = report["run"]["files"]
    assert stored["name"] == big.name and stored["size"] == 3 * 1024 * 1024
    assert f"3145728 /home/user/input/{big.name}" in json.dumps(report["events"], ensure_ascii=False)


@pytest.mark.parametrize("tenant", ["..", ".", "a/b"])
def test_keys_create_refuses_a_tenant_that_is_not_a_name(server: tuple[Path, dict], tenant: str) -> None:
    home, _ = server

    created = _sandcastle("keys", "create", "--tenant", tenant, home=home)

    assert created.returncode != 0
    assert f"tenant: tenant '{tenant}' is not 1-64 letters, digits" in created.stderr


def test_serve_refuses_a_first_tenant_that_is_not_a_name(tmp_path: Path) -> None:
    result = _sandcastle("serve", "--port", "0", "--tenant", "..", home=tmp_path / "home")

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--tenant: tenant '..' is not 1-64 letters, digits" in result.stderr
