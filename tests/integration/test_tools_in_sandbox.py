"""list_files and apply_patch in the real local (bubblewrap) sandbox, with patches made by the real ``diff``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandcastle.errors import ToolInputError
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider
from sandcastle.tools import TOOLS, ToolContext

pytestmark = pytest.mark.bwrap

CONTEXT = ToolContext(default_timeout_s=30, timeout_ceiling_s=60, remaining_run_s=120, output_limit_bytes=16_384)

CALC = """\
import sys


def total(numbers):
    return sum(numbers)


def mean(numbers):
    return total(numbers) / len(numbers)


if __name__ == "__main__":
    values = [float(arg) for arg in sys.argv[1:]]
    print(mean(values))
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[LocalSandbox]:
    provider = LocalSandboxProvider(tmp_path)
    sandbox = provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=120))
    yield sandbox
    provider.kill(sandbox.sandbox_id)


def call(sandbox: LocalSandbox, tool: str, **arguments: Any) -> dict[str, Any]:
    found = TOOLS[tool]
    """The tool's output as its event stores it (the JSON shape the model reads)."""
    return found.execute(sandbox, found.args_model.model_validate(arguments), CONTEXT).model_dump(exclude_none=True)


def shell(sandbox: LocalSandbox, command: str) -> str:
    output = call(sandbox, "run_command", command=command)
    assert output["exit_code"] == 0, output
    return output["stdout"]["text"]


def test_list_files_shows_a_tree_made_by_commands(sandbox: LocalSandbox) -> None:
    shell(
        sandbox,
        "mkdir -p proj/src/pkg/deep 'proj/with space' && printf 'hello' > proj/src/main.py "
        "&& touch proj/src/pkg/__init__.py proj/src/pkg/deep/too_deep.py 'proj/with space/a b.txt' "
        "&& ln -s src/main.py proj/entry",
    )

    listing = call(sandbox, "list_files", path="proj", depth=3)

    assert listing == {
        "path": "/home/user/proj",
        "entries": [
            {"path": "entry", "type": "link", "size": len("src/main.py")},
            {"path": "src", "type": "dir", "size": listing["entries"][1]["size"]},
            {"path": "src/main.py", "type": "file", "size": 5},
            {"path": "src/pkg", "type": "dir", "size": listing["entries"][3]["size"]},
            {"path": "src/pkg/__init__.py", "type": "file", "size": 0},
            {"path": "src/pkg/deep", "type": "dir", "size": listing["entries"][5]["size"]},
            {"path": "with space", "type": "dir", "size": listing["entries"][6]["size"]},
            {"path": "with space/a b.txt", "type": "file", "size": 0},
        ],
    }


def test_list_files_keeps_the_shallowest_entries_of_a_big_tree(sandbox: LocalSandbox) -> None:
    shell(sandbox, "mkdir -p big/sub && touch big/top.txt && cd big/sub && touch $(seq -f 'f%04g' 1 1200)")

    listing = call(sandbox, "list_files", path="big")

    assert listing["truncated"] is True and listing["omitted"] == 1202 - 1000
    assert [entry["path"] for entry in listing["entries"][:2]] == ["sub", "sub/f0001"]
    assert {"path": "top.txt", "type": "file", "size": 0} in listing["entries"]


def test_list_files_of_a_missing_directory_or_outside_home_is_an_error(sandbox: LocalSandbox) -> None:
    with pytest.raises(ToolInputError, match="path: nowhere does not exist"):
        call(sandbox, "list_files", path="nowhere")
    with pytest.raises(ToolInputError, match="outside the home directory"):
        call(sandbox, "list_files", path="/etc")


def test_a_patch_made_by_diff_fixes_a_program_that_then_runs(sandbox: LocalSandbox) -> None:
    call(sandbox, "write_file", path="calc/calc.py", content=CALC)
    assert "ZeroDivisionError" in call(sandbox, "run_command", command="python3 calc/calc.py")["stderr"]["text"]
    # Given a patch made in the sandbox by diff -ruN from a fixed copy, plus a new test file
    shell(
        sandbox,
        "mkdir -p work && cp -r calc work/a && cp -r calc work/b && cd work "
        "&& sed -i 's|    return total(numbers) / len(numbers)|"
        "    if not numbers:\\n        return 0.0\\n    return total(numbers) / len(numbers)|' b/calc.py "
        "&& printf 'from calc import mean\\nassert mean([]) == 0.0\\nprint(\"ok\")\\n' > b/check.py",
    )
    diff = call(sandbox, "run_command", command="cd work && diff -ruN a b")
    assert diff["exit_code"] == 1, diff
    patch_text = diff["stdout"]["text"]
    assert "--- a/calc.py" in patch_text and "+++ b/check.py" in patch_text

    # When it is applied to the original directory (paths a/x and b/x → calc/x)
    result = call(sandbox, "apply_patch", patch=patch_text.replace(" a/", " a/calc/").replace(" b/", " b/calc/"))

    # Then the program works and the new file exists
    assert result == {
        "files": [
            {"path": "calc/calc.py", "action": "modified", "hunks": 1},
            {"path": "calc/check.py", "action": "created", "hunks": 1},
        ]
    }
    assert shell(sandbox, "cd calc && python3 calc.py 1 2 3 && python3 calc.py && python3 check.py") == "2.0\n0.0\nok\n"
    assert sandbox.read_file("calc/calc.py") == sandbox.read_file("work/b/calc.py")


def test_a_git_style_patch_deletes_and_edits_crlf_files(sandbox: LocalSandbox) -> None:
    sandbox.write_file("repo/old.txt", b"obsolete\n")
    sandbox.write_file("repo/win.bat", b"@echo off\r\necho one\r\n")

    result = call(
        sandbox,
        "apply_patch",
        patch="--- a/repo/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-obsolete\n"
        "--- a/repo/win.bat\n+++ b/repo/win.bat\n@@ -1,2 +1,3 @@\n @echo off\n echo one\n+echo two\n",
    )

    assert [entry["action"] for entry in result["files"]] == ["deleted", "modified"]
    assert shell(sandbox, "ls repo") == "win.bat\n"
    assert sandbox.read_file("repo/win.bat") == b"@echo off\r\necho one\r\necho two\r\n"


def test_a_failing_patch_leaves_every_file_byte_identical(sandbox: LocalSandbox) -> None:
    call(sandbox, "write_file", path="calc/calc.py", content=CALC)
    sandbox.write_file("calc/data.bin.txt", "naïve\r\nline\n".encode())
    sandbox.write_file("calc/doomed.txt", b"keep me\n")
    before = shell(sandbox, "cd calc && sha256sum * && ls -la --time-style=+%s")

    with pytest.raises(ToolInputError) as error:
        call(
            sandbox,
            "apply_patch",
            patch="--- a/calc/data.bin.txt\n+++ b/calc/data.bin.txt\n@@ -1,2 +1,2 @@\n naïve\n-line\n+LINE\n"
            "--- a/calc/doomed.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-keep me\n"
            "--- /dev/null\n+++ b/calc/new.py\n@@ -0,0 +1 @@\n+print('new')\n"
            "--- a/calc/calc.py\n+++ b/calc/calc.py\n@@ -8,2 +8,2 @@\n def mean(numbers):\n"
            "-    return total(numbers) / count(numbers)\n+    return 0\n",
        )

    assert str(error.value).startswith(
        "apply_patch: hunk 1 of calc/calc.py (@@ -8,2 +8,2 @@) does not apply: "
        'line 9 expected "    return total(numbers) / count(numbers)" '
        'but found "    return total(numbers) / len(numbers)"'
    )
    assert shell(sandbox, "cd calc && sha256sum * && ls -la --time-style=+%s") == before


def test_a_patch_cannot_reach_outside_home_through_a_symlink(sandbox: LocalSandbox) -> None:
    shell(sandbox, "ln -s /etc etc_link")

    with pytest.raises(ToolInputError, match="outside the sandbox workspace"):
        call(sandbox, "apply_patch", patch="--- a/etc_link/hostname\n+++ b/etc_link/hostname\n@@ -1 +1 @@\n-a\n+b\n")


def test_file_tools_report_fifos_escaping_symlinks_and_a_full_workspace_as_tool_errors(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a disk quota needs root (a mounted workspace filesystem)")
    provider = LocalSandboxProvider(tmp_path, disk_quota_mb=16)
    sandbox = provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=120))
    try:
        shell(sandbox, "mkfifo pipe && ln -s /dev/zero zero && echo a > small.txt")
        errors = {}
        for name, tool, arguments in [
            ("read fifo", "read_file", {"path": "pipe"}),
            ("read device link", "read_file", {"path": "zero"}),
            ("patch fifo", "apply_patch", {"patch": "--- a/pipe\n+++ b/pipe\n@@ -1 +1 @@\n-a\n+b\n"}),
        ]:
            with pytest.raises(ToolInputError) as raised:
                call(sandbox, tool, **arguments)
            errors[name] = str(raised.value)
        call(sandbox, "run_command", command="head -c 64M /dev/zero > filler")
        with pytest.raises(ToolInputError, match="disk quota exceeded: the workspace /home/user is full"):
            call(sandbox, "write_file", path="more.txt", content="x" * 100_000)
    finally:
        provider.kill(sandbox.sandbox_id)

    assert "is a FIFO, not a regular file" in errors["read fifo"]
    assert "outside the sandbox workspace" in errors["read device link"]
    assert "is a FIFO, not a regular file" in errors["patch fifo"]
