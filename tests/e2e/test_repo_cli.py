"""``sandcastle run --repo PATH@REF --push BRANCH`` as a user drives it: a real process, the local runtime, a local
bare repository; plus the CLI's reading of ``URL[@REF]``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandcastle.cli.run import repository_option
from tests.e2e.test_cli import _sandcastle
from tests.integration.git_servers import git, make_origin

pytestmark = pytest.mark.bwrap


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("git@github.com:acme/app.git", {"url": "git@github.com:acme/app.git"}),
        ("git@github.com:acme/app.git@main", {"url": "git@github.com:acme/app.git", "ref": "main"}),
        ("https://github.com/acme/app.git@feature/x", {"url": "https://github.com/acme/app.git", "ref": "feature/x"}),
        ("https://user@host/app.git", {"url": "https://user@host/app.git"}),
        ("git://127.0.0.1:9418/o.git@v1", {"url": "git://127.0.0.1:9418/o.git", "ref": "v1"}),
    ],
)
def test_a_trailing_ref_is_split_off_only_a_whole_url(text: str, option: dict[str, str]) -> None:
    assert repository_option(text) == option


def test_run_with_repo_and_push_prints_the_change_and_leaves_the_branch(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "remotes", {"hello.py": b"print('hello')\n"})
    playbook = tmp_path / "playbook.json"
    patch = (
        "*** Begin Patch\n*** Update File: repo/hello.py\n@@\n-print('hello')\n+print('hello, world')\n*** End Patch"
    )
    playbook.write_text(
        json.dumps(
            [
                {"tool": "apply_patch", "arguments": {"patch": patch}},
                {"tool": "run_command", "arguments": {"command": "python3 ~/repo/hello.py"}},
            ]
        )
    )

    result = _sandcastle(
        "run",
        "Greet the world",
        "--local",
        "--playbook",
        str(playbook),
        "--repo",
        f"{origin}@main",
        "--push",
        "greet",
        cwd=tmp_path,
        home=tmp_path / "home",
    )

    assert result.returncode == 0, result.stderr
    pushed = git("rev-parse", "refs/heads/greet", cwd=origin).strip()
    assert f"change: 1 files, +1 -1 against {git('rev-parse', 'main', cwd=origin)[:12]}" in result.stdout
    assert f"pushed {pushed[:12]} to greet" in result.stdout
    assert "changes.patch" in result.stdout and "changes.json" in result.stdout
    assert git("show", "refs/heads/greet:hello.py", cwd=origin) == "print('hello, world')\n"


def test_push_without_repo_is_refused(tmp_path: Path) -> None:
    result = _sandcastle("run", "x", "--local", "--push", "b", cwd=tmp_path, home=tmp_path / "home")

    assert result.returncode == 2 and "--push" in result.stderr and "needs --repo" in result.stderr
