"""The tools against an in-memory sandbox: apply_patch, list_files' confinement and parsing, read_file, schemas."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from sandcastle.errors import ToolInputError
from sandcastle.runs.records import ToolCall
from sandcastle.runs.tool_outputs import ReadTextOutput
from sandcastle.sandbox.base import CommandResult, SandboxSpec
from sandcastle.tools import TOOLS, ToolContext, parse_tool_call, tool_schemas
from tests.fakes.sandbox import FakeSandbox

CONTEXT = ToolContext(default_timeout_s=30, timeout_ceiling_s=60, remaining_run_s=300, output_limit_bytes=4096)


def _rm(sandbox: FakeSandbox, command: str) -> CommandResult:
    argv = shlex.split(command)
    assert argv[:3] == ["rm", "-f", "--"], command
    sandbox.files.pop(argv[3].removeprefix("/home/user/"), None)
    return CommandResult(exit_code=0, stdout=b"", stderr=b"", duration_ms=1)


@pytest.fixture
def sandbox() -> FakeSandbox:
    fake = FakeSandbox(sandbox_id="fake-1", spec=SandboxSpec(run_id="r", tenant="t", timeout_s=60))
    fake.answer = lambda command: _rm(fake, command)
    return fake


def call(sandbox: FakeSandbox, tool: str, **arguments: Any) -> dict[str, Any]:
    """The tool's output as its event stores it (the JSON shape the model reads)."""
    found = TOOLS[tool]
    return found.execute(sandbox, found.args_model.model_validate(arguments), CONTEXT).model_dump(exclude_none=True)


def patch(sandbox: FakeSandbox, text: str) -> dict[str, Any]:
    return call(sandbox, "apply_patch", patch=text)


APP = b"def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


# --- apply_patch ---


def test_a_hunk_edits_a_file(sandbox: FakeSandbox) -> None:
    sandbox.files["src/app.py"] = APP

    result = patch(
        sandbox,
        "--- a/src/app.py\n+++ b/src/app.py\n@@ -1,2 +1,3 @@\n def add(a, b):\n+    # adds\n     return a + b\n",
    )

    assert result == {"files": [{"path": "src/app.py", "action": "modified", "hunks": 1}]}
    assert sandbox.files["src/app.py"] == APP.replace(b"b):\n    return a + b", b"b):\n    # adds\n    return a + b")


def test_several_hunks_apply_in_order_even_when_the_line_numbers_are_off(sandbox: FakeSandbox) -> None:
    sandbox.files["app.py"] = b"# header\n# more\n" + APP

    result = patch(
        sandbox,
        "--- app.py\n+++ app.py\n"
        "@@ -1,2 +1,2 @@\n-def add(a, b):\n+def add(a: int, b: int):\n     return a + b\n"
        "@@ -5,2 +5,2 @@\n-def sub(a, b):\n+def sub(a: int, b: int):\n     return a - b\n",
    )

    assert result["files"] == [{"path": "app.py", "action": "modified", "hunks": 2}]
    assert sandbox.files["app.py"] == (
        b"# header\n# more\n"
        b"def add(a: int, b: int):\n    return a + b\n\n\ndef sub(a: int, b: int):\n    return a - b\n"
    )


def test_one_patch_edits_creates_and_deletes_several_files(sandbox: FakeSandbox) -> None:
    sandbox.files["app.py"] = APP
    sandbox.files["old.txt"] = b"bye\nnow\n"

    result = patch(
        sandbox,
        "diff --git a/app.py b/app.py\nindex 1111111..2222222 100644\n"
        "--- a/app.py\n+++ b/app.py\n@@ -5,2 +5,2 @@\n def sub(a, b):\n-    return a - b\n+    return b - a\n"
        "diff --git a/new/mod.py b/new/mod.py\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/new/mod.py\n@@ -0,0 +1,2 @@\n+import app\n+print(app.sub(1, 2))\n"
        "diff --git a/old.txt b/old.txt\ndeleted file mode 100644\n"
        "--- a/old.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-bye\n-now\n",
    )

    assert result["files"] == [
        {"path": "app.py", "action": "modified", "hunks": 1},
        {"path": "new/mod.py", "action": "created", "hunks": 1},
        {"path": "old.txt", "action": "deleted", "hunks": 1},
    ]
    assert sandbox.files["app.py"].endswith(b"    return b - a\n")
    assert sandbox.files["new/mod.py"] == b"import app\nprint(app.sub(1, 2))\n"
    assert "old.txt" not in sandbox.files
    assert sandbox.commands == ["rm -f -- /home/user/old.txt"]


def test_a_hunk_that_does_not_apply_names_file_hunk_and_line_and_changes_nothing(sandbox: FakeSandbox) -> None:
    sandbox.files["one.py"] = b"x = 1\n"
    sandbox.files["src/app.py"] = APP
    before = dict(sandbox.files)

    with pytest.raises(ToolInputError) as error:
        patch(
            sandbox,
            "--- a/one.py\n+++ b/one.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
            "--- a/src/app.py\n+++ b/src/app.py\n"
            "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a + b\n+    return b + a\n"
            "@@ -5,2 +5,2 @@\n def sub(a, b):\n-    return x\n+    return y\n",
        )

    assert str(error.value) == (
        'apply_patch: hunk 2 of src/app.py (@@ -5,2 +5,2 @@) does not apply: line 6 expected "    return x" '
        'but found "    return a - b"; nor do its lines occur together anywhere else in the file'
    )
    assert sandbox.files == before
    assert sandbox.commands == []


def test_no_newline_at_end_of_file_is_kept_added_and_removed(sandbox: FakeSandbox) -> None:
    sandbox.files["a.txt"] = b"one\ntwo"
    sandbox.files["b.txt"] = b"one\ntwo\n"

    patch(
        sandbox,
        "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n one\n-two\n\\ No newline at end of file\n+TWO\n"
        "--- a/b.txt\n+++ b/b.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n\\ No newline at end of file\n",
    )

    assert sandbox.files["a.txt"] == b"one\nTWO\n"
    assert sandbox.files["b.txt"] == b"one\nTWO"


def test_lines_added_after_a_last_line_without_newline_get_one(sandbox: FakeSandbox) -> None:
    sandbox.files["a.txt"] = b"one\ntwo"

    patch(sandbox, "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,3 @@\n one\n two\n+three\n")

    assert sandbox.files["a.txt"] == b"one\ntwo\nthree\n"


def test_a_crlf_file_keeps_its_line_endings_when_patched_with_lf_lines(sandbox: FakeSandbox) -> None:
    sandbox.files["win.txt"] = b"alpha\r\nbeta\r\ngamma\r\n"

    patch(sandbox, "--- a/win.txt\n+++ b/win.txt\n@@ -1,3 +1,3 @@\n alpha\n-beta\n+BETA\n gamma\n")

    assert sandbox.files["win.txt"] == b"alpha\r\nBETA\r\ngamma\r\n"


def test_a_crlf_patch_applies_to_a_crlf_file(sandbox: FakeSandbox) -> None:
    sandbox.files["win.txt"] = b"alpha\r\nbeta\r\n"

    patch(sandbox, "--- a/win.txt\r\n+++ b/win.txt\r\n@@ -1,2 +1,2 @@\r\n alpha\r\n-beta\r\n+BETA\r\n")

    assert sandbox.files["win.txt"] == b"alpha\r\nBETA\r\n"


def test_diff_dash_n_placeholders_create_and_delete(sandbox: FakeSandbox) -> None:
    sandbox.files["gone.txt"] = b"x\n"
    epoch = "1970-01-01 00:00:00.000000000 +0000"

    result = patch(
        sandbox,
        f"diff -ruN a/gone.txt b/gone.txt\n--- a/gone.txt\t2024-05-01 10:00:00.000000000 +0000\n"
        f"+++ b/gone.txt\t{epoch}\n@@ -1 +0,0 @@\n-x\n"
        f"diff -ruN a/new.txt b/new.txt\n--- a/new.txt\t{epoch}\n"
        f"+++ b/new.txt\t2024-05-01 10:00:00.000000000 +0000\n@@ -0,0 +1 @@\n+y\n",
    )

    assert [(f["path"], f["action"]) for f in result["files"]] == [("gone.txt", "deleted"), ("new.txt", "created")]
    assert sandbox.files == {"new.txt": b"y\n"}


def test_a_hunk_with_a_bare_header_is_placed_by_its_context(sandbox: FakeSandbox) -> None:
    sandbox.files["app.py"] = APP

    patch(sandbox, "--- a/app.py\n+++ b/app.py\n@@\n def sub(a, b):\n-    return a - b\n+    return a - b - 0\n")

    assert sandbox.files["app.py"].endswith(b"    return a - b - 0\n")


def test_a_blank_context_line_without_its_space_still_matches(sandbox: FakeSandbox) -> None:
    sandbox.files["app.py"] = APP

    patch(sandbox, "--- a/app.py\n+++ b/app.py\n@@ -2,3 +2,3 @@\n     return a + b\n\n-\n+# sub\n")

    assert b"    return a + b\n\n# sub\ndef sub" in sandbox.files["app.py"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just some words\n", "no file headers found"),
        ("@@ -1 +1 @@\n-a\n+b\n", "no file headers found"),
        ("--- a/x\n+++ b/x\n", "x has no hunks"),
        ("--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n-a\n+b\n", "is cut short"),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n+c\n", "more lines than its header counts"),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\nnot a diff line\n", None),
        ("--- a/x\n+++ b/x\n@@ -one +two @@\n-a\n", "malformed header"),
        ("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "outside the home directory"),
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "outside the home directory"),
        ("--- a/missing.py\n+++ b/missing.py\n@@ -1 +1 @@\n-a\n+b\n", "missing.py does not exist"),
        ("--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+b\n", "x already exists"),
        ("--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n", "lines the patch does not remove remain"),
        ("--- a/x\n+++ b/x\nBinary files a/x and b/x differ\n", "binary patches are not supported"),
    ],
)
def test_a_bad_patch_is_an_error_the_model_reads(sandbox: FakeSandbox, text: str, message: str | None) -> None:
    sandbox.files["x"] = b"a\nb\n"

    if message is None:  # trailing junk after a complete hunk is ignored, as `patch` does
        patch(sandbox, text)
        assert sandbox.files["x"] == b"b\nb\n"
        return
    with pytest.raises(ToolInputError, match=message):
        patch(sandbox, text)
    assert sandbox.files == {"x": b"a\nb\n"}


def test_a_hunk_past_the_end_of_the_file_says_so(sandbox: FakeSandbox) -> None:
    sandbox.files["x"] = b"a\n"

    with pytest.raises(ToolInputError, match=r'hunk 1 of x \(@@ -3 \+3 @@\).*line 3 expected "c" but the file ends'):
        patch(sandbox, "--- a/x\n+++ b/x\n@@ -3 +3 @@\n-c\n+d\n")


def test_a_binary_target_is_refused(sandbox: FakeSandbox) -> None:
    sandbox.files["blob"] = b"a\0b\n"

    with pytest.raises(ToolInputError, match="blob is binary"):
        patch(sandbox, "--- a/blob\n+++ b/blob\n@@ -1 +1 @@\n-a\n+b\n")


def test_a_failed_write_restores_the_files_already_written(sandbox: FakeSandbox) -> None:
    sandbox.files["a.txt"] = b"a\n"
    sandbox.files["b.txt"] = b"b\n"
    real_write = sandbox.write_file

    def refuse_b(path: str, data: bytes) -> None:
        if path.endswith("b.txt"):
            raise ValueError("path 'b.txt' leads outside the sandbox workspace through a symlink")
        real_write(path, data)

    sandbox.write_file = refuse_b  # type: ignore[method-assign]

    with pytest.raises(ToolInputError, match="writing b.txt failed .*restored"):
        patch(sandbox, "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-b\n+B\n")
    assert sandbox.files == {"a.txt": b"a\n", "b.txt": b"b\n"}


def test_two_sections_for_one_file_are_reported_once(sandbox: FakeSandbox) -> None:
    sandbox.files["x"] = b"a\nb\n"

    result = patch(sandbox, "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+A\n--- a/x\n+++ b/x\n@@ -2 +2 @@\n-b\n+B\n")

    assert result == {"files": [{"path": "x", "action": "modified", "hunks": 2}]}
    assert sandbox.files["x"] == b"A\nB\n"


# --- list_files ---


def _find_output(total: int, *records: str) -> bytes:
    """What ``find | sort | sed`` prints: entries, then the count of all entries, each NUL-terminated."""
    return b"".join(record.encode() + b"\0" for record in records) + f"{total}\0".encode()


def test_list_files_returns_find_entries_in_tree_order(sandbox: FakeSandbox) -> None:
    stdout = _find_output(4, "1\td\t4096\tsrc", "1\tf\t10\tsrc-notes.txt", "2\tf\t42\tsrc/app.py", "1\tl\t6\tlink")
    sandbox.answer = lambda command: CommandResult(exit_code=0, stdout=stdout, stderr=b"", duration_ms=1)

    result = call(sandbox, "list_files")

    assert result == {
        "path": "/home/user",
        "entries": [
            {"path": "link", "type": "link", "size": 6},
            {"path": "src", "type": "dir", "size": 4096},
            {"path": "src/app.py", "type": "file", "size": 42},
            {"path": "src-notes.txt", "type": "file", "size": 10},
        ],
    }
    assert "find -H /home/user -mindepth 1 -maxdepth 2 " in sandbox.commands[0]


def test_list_files_says_how_many_entries_were_left_out(sandbox: FakeSandbox) -> None:
    stdout = _find_output(1500, "1\tf\t1\tweird\nname with\ttab")
    sandbox.answer = lambda command: CommandResult(exit_code=0, stdout=stdout, stderr=b"", duration_ms=1)

    result = call(sandbox, "list_files", path="src/../src", depth=10)

    assert result["path"] == "/home/user/src"
    assert result["entries"] == [{"path": "weird\nname with\ttab", "type": "file", "size": 1}]
    assert result["truncated"] is True and result["omitted"] == 1499
    assert "find -H /home/user/src -mindepth 1 -maxdepth 10 " in sandbox.commands[0]


def test_list_files_quotes_the_path_for_the_shell(sandbox: FakeSandbox) -> None:
    sandbox.answer = lambda command: CommandResult(exit_code=0, stdout=b"", stderr=b"", duration_ms=1)

    assert call(sandbox, "list_files", path="it's $(here)")["entries"] == []
    assert shlex.quote("/home/user/it's $(here)") in sandbox.commands[0]


@pytest.mark.parametrize("path", ["..", "../other", "/etc", "/home/user/../../etc", "/home/username", "a/../../b"])
def test_list_files_refuses_paths_outside_home_before_running_anything(sandbox: FakeSandbox, path: str) -> None:
    with pytest.raises(ToolInputError, match="outside the home directory"):
        call(sandbox, "list_files", path=path)
    assert sandbox.commands == []


@pytest.mark.parametrize(
    ("exit_code", "message"),
    [(3, "path: nope does not exist"), (4, "path: nope is a file, not a directory")],
)
def test_list_files_reports_a_missing_path_or_a_file(sandbox: FakeSandbox, exit_code: int, message: str) -> None:
    sandbox.answer = lambda command: CommandResult(exit_code=exit_code, stdout=b"", stderr=b"", duration_ms=1)

    with pytest.raises(ToolInputError, match=message):
        call(sandbox, "list_files", path="nope")


def test_list_files_depth_is_bounded() -> None:
    with pytest.raises(ToolInputError, match="depth"):
        parse_tool_call(ToolCall(id="c", name="list_files", arguments='{"depth": 11}'))


# --- read_file ---


def test_read_file_treats_invalid_utf8_as_binary(sandbox: FakeSandbox) -> None:
    sandbox.files["latin1.txt"] = "café\n".encode("latin-1")

    assert call(sandbox, "read_file", path="latin1.txt") == {"path": "latin1.txt", "bytes": 5, "binary": True}


def test_read_file_does_not_call_a_cut_character_binary(sandbox: FakeSandbox) -> None:
    sandbox.files["menu.txt"] = "crème brûlée\n".encode()  # è is bytes 2-3, û bytes 9-10

    first = call(sandbox, "read_file", path="menu.txt", limit=3)
    second = call(sandbox, "read_file", path="menu.txt", offset=first["next_offset"], limit=8)
    middle = call(sandbox, "read_file", path="menu.txt", offset=3, limit=6)

    assert first == {"path": "menu.txt", "bytes": 16, "offset": 0, "content": "cr", "truncated": True, "next_offset": 2}
    assert second["content"] == "ème br" and second["next_offset"] == 9
    assert middle["offset"] == 4 and middle["content"] == "me br"


def test_read_file_reports_nul_bytes_as_binary_and_an_offset_past_the_end(sandbox: FakeSandbox) -> None:
    sandbox.files["blob"] = b"\x7fELF\0\0"

    assert call(sandbox, "read_file", path="blob")["binary"] is True
    with pytest.raises(ToolInputError, match="offset: 9 is past the end of blob"):
        call(sandbox, "read_file", path="blob", offset=9)


# --- background processes ---


def test_a_background_command_returns_its_process_id_and_output_so_far(sandbox: FakeSandbox) -> None:
    started = call(sandbox, "run_command", command="python3 -m http.server", background=True, yield_ms=0)

    process_id = started["process_id"]
    assert started == {
        "process_id": process_id,
        "running": True,
        "stdout": {"text": "started: python3 -m http.server\n", "bytes": 32},
        "stderr": {"text": "", "bytes": 0},
    }
    assert sandbox.commands == []  # it was started as a background process, not run
    assert call(sandbox, "process_output", process_id=process_id)["stdout"]["text"] == ""  # only what is new


def test_write_stdin_feeds_the_process_and_returns_its_answer(sandbox: FakeSandbox) -> None:
    process_id = call(sandbox, "run_command", command="cat", background=True, yield_ms=0)["process_id"]

    answered = call(sandbox, "write_stdin", process_id=process_id, text="hello\n", yield_ms=0)

    assert sandbox.processes[process_id].stdin == [b"hello\n"]
    assert answered["stdout"]["text"] == "read: hello\n"


def test_kill_process_ends_it_with_exit_137_and_it_then_takes_no_input(sandbox: FakeSandbox) -> None:
    process_id = call(sandbox, "run_command", command="sleep 100", background=True, yield_ms=0)["process_id"]

    killed = call(sandbox, "kill_process", process_id=process_id)

    assert (killed["running"], killed["exit_code"]) == (False, 137)
    with pytest.raises(ToolInputError, match=f"process {process_id} is not running"):
        call(sandbox, "write_stdin", process_id=process_id, text="x")


@pytest.mark.parametrize("tool", ["process_output", "write_stdin", "kill_process"])
def test_an_unknown_process_is_a_tool_error_the_model_reads(sandbox: FakeSandbox, tool: str) -> None:
    arguments = {"process_id": "proc-0000000000ff"} | ({"text": "x"} if tool == "write_stdin" else {})

    with pytest.raises(ToolInputError, match="no background process proc-0000000000ff"):
        call(sandbox, tool, **arguments)


# --- schemas ---


def test_every_tool_has_an_object_schema_that_forbids_unknown_arguments() -> None:
    schemas = tool_schemas()

    assert {schema["function"]["name"] for schema in schemas} == {
        "run_command",
        "process_output",
        "write_stdin",
        "kill_process",
        "list_files",
        "read_file",
        "write_file",
        "apply_patch",
    }
    for schema in schemas:
        parameters = schema["function"]["parameters"]
        assert schema["type"] == "function" and schema["function"]["description"]
        assert parameters["type"] == "object"
        assert parameters["properties"]
        assert parameters["additionalProperties"] is False
        for name in parameters.get("required", []):
            assert name in parameters["properties"]


def test_an_unknown_argument_is_refused() -> None:
    with pytest.raises(ToolInputError, match="invalid arguments for apply_patch: diff: Extra inputs"):
        parse_tool_call(ToolCall(id="c", name="apply_patch", arguments='{"patch": "x", "diff": "y"}'))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"command": "echo $A", "env": {"A=B": "x"}}, r"env: .*'A=B' is not a variable name"),
        ({"command": "true", "env": {"": "x"}}, r"env: .*'' is not a variable name"),
        ({"command": "true", "env": {"1X": "x"}}, r"env: .*'1X' is not a variable name"),
        ({"command": "env", "env": {"A": "x\u0000y"}}, r"env: .*the value of A must not contain NUL"),
        ({"command": "echo a\u0000b"}, r"command: .*must not contain NUL"),
        ({"command": "pwd", "cwd": "src\u0000"}, r"cwd: .*must not contain NUL"),
    ],
)
def test_a_command_the_shell_could_not_be_given_is_refused_naming_the_argument(
    arguments: dict[str, Any], message: str
) -> None:
    """A NUL byte or a name with ``=`` would crash the step or set another variable than asked."""
    with pytest.raises(ToolInputError, match="invalid arguments for run_command: " + message):
        parse_tool_call(ToolCall(id="c", name="run_command", arguments=json.dumps(arguments)))


def test_a_command_with_ordinary_variables_is_accepted() -> None:
    _, args = parse_tool_call(
        ToolCall(id="c", name="run_command", arguments='{"command": "env", "env": {"_A1": "x=y", "B": ""}}')
    )
    assert args.env == {"_A1": "x=y", "B": ""}


def test_read_file_content_passes_through_the_context_redaction(sandbox: FakeSandbox) -> None:
    sandbox.files["env.txt"] = b"TOKEN=s3cr3t\n"
    context = ToolContext(
        default_timeout_s=30,
        timeout_ceiling_s=60,
        remaining_run_s=300,
        output_limit_bytes=4096,
        redact=lambda data: data.replace(b"s3cr3t", b"[REDACTED]"),
    )

    output = TOOLS["read_file"].execute(sandbox, TOOLS["read_file"].args_model(path="env.txt"), context)

    assert isinstance(output, ReadTextOutput) and output.content == "TOKEN=[REDACTED]\n"
