"""Tool outputs are typed models stored in the JSON shape the tools' plain dicts had."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sandcastle.runs.tool_outputs import (
    CommandOutput,
    KeptStream,
    ListEntry,
    ListFilesOutput,
    PatchedFile,
    PatchOutput,
    ReadBinaryOutput,
    ReadTextOutput,
    WriteFileOutput,
)
from sandcastle.runs.transcript import ToolResultData

# Each tool's output as the tools wrote it before it was typed (keys in the order they were written).
TODAYS_OUTPUTS: list[tuple[str, dict[str, Any], type]] = [
    (
        "run_command",
        {
            "exit_code": None,
            "stdout": {
                "text": "head\n… [10 bytes omitted] …\ntail",
                "bytes": 30,
                "truncated": True,
                "full_output": "s3://b/runs/r/outputs/000001-001-tool_result-stdout",
            },
            "stderr": {"text": "\ufffd", "bytes": 1, "not_utf8": True, "full_output": "s3://b/x-stderr"},
            "duration_ms": 30012,
            "timed_out": True,
            "timeout_s": 30.0,
        },
        CommandOutput,
    ),
    (
        "run_command",
        {"exit_code": 0, "stdout": {"text": "ok\n", "bytes": 3}, "stderr": {"text": "", "bytes": 0}, "duration_ms": 4},
        CommandOutput,
    ),
    ("write_file", {"path": "a.txt", "bytes": 5}, WriteFileOutput),
    (
        "read_file",
        {"path": "a.txt", "bytes": 9000, "offset": 0, "content": "x", "truncated": True, "next_offset": 4096},
        ReadTextOutput,
    ),
    ("read_file", {"path": "a.txt", "bytes": 5, "offset": 0, "content": "hello"}, ReadTextOutput),
    ("read_file", {"path": "b.bin", "bytes": 3, "binary": True}, ReadBinaryOutput),
    (
        "list_files",
        {
            "path": "/home/user",
            "entries": [{"path": "a.txt", "type": "file", "size": 5}, {"path": "src", "type": "dir", "size": 4096}],
            "truncated": True,
            "omitted": 7,
        },
        ListFilesOutput,
    ),
    ("list_files", {"path": "/home/user", "entries": []}, ListFilesOutput),
    ("apply_patch", {"files": [{"path": "a.py", "action": "modified", "hunks": 2}]}, PatchOutput),
]


@pytest.mark.parametrize(("tool", "output", "model"), TODAYS_OUTPUTS, ids=lambda v: v if isinstance(v, str) else None)
def test_a_stored_output_of_todays_shape_reads_back_typed_and_writes_back_the_same(
    tool: str, output: dict[str, Any], model: type
) -> None:
    # Given a tool result's item data as it is stored today
    stored = json.dumps({"tool_call_id": "c1", "tool": tool, "output": output, "duration_ms": 5})

    # When it is read
    result = ToolResultData.model_validate_json(stored)

    # Then its output is that tool's model, and it is stored and shown to the model exactly as before
    assert type(result.output) is model
    assert result.model_dump_json(exclude_none=True) == json.dumps(
        json.loads(stored), separators=(",", ":"), ensure_ascii=False
    )
    assert result.model_view() == json.dumps(output, ensure_ascii=False)


def test_a_new_output_s_json_equals_today_s() -> None:
    # Given outputs built by the models, as the tools build them (unset flags left None)
    command = CommandOutput(
        exit_code=0,
        stdout=KeptStream(text="ok\n", bytes=3),
        stderr=KeptStream(text="", bytes=0),
        duration_ms=4,
    )
    listing = ListFilesOutput(path="/home/user", entries=[])
    patch = PatchOutput(files=[PatchedFile(path="a.py", action="modified", hunks=2)])
    read = ReadTextOutput(path="a.txt", bytes=5, offset=0, content="hello")

    # Then each is stored with the keys, order and values of today's dicts
    by_shape = {json.dumps(o): o for _, o, _ in TODAYS_OUTPUTS}
    for output in (command, listing, patch, read, WriteFileOutput(path="a.txt", bytes=5)):
        text = json.dumps(output.model_dump(exclude_none=True))
        assert text in by_shape
    assert ListEntry(path="a", type="file", size=1).model_dump() == {"path": "a", "type": "file", "size": 1}


def test_an_output_with_a_key_no_tool_writes_is_refused() -> None:
    with pytest.raises(ValidationError):
        ToolResultData.model_validate({"tool_call_id": "c1", "output": {"path": "a", "bytes": 1, "colour": "red"}})


_ALLOWED = {Path("runs/transcript.py"), Path("runs/tool_outputs.py")}


def _is_output(node: ast.expr) -> bool:
    """``x.output``, or ``x.output or {}``."""
    if isinstance(node, ast.BoolOp):
        node = node.values[0]
    return isinstance(node, ast.Attribute) and node.attr == "output"


def _output_subscripts(source: str) -> list[int]:
    """Lines that subscript or ``.get(...)`` a tool output: ``x.output[...]``, ``(x.output or {}).get(...)``,
    or a name bound to one (``output = x.output or {}`` then ``output["path"]``)."""
    tree = ast.parse(source)
    names = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _is_output(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    lines = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Subscript):
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        if target is not None and (_is_output(target) or (isinstance(target, ast.Name) and target.id in names)):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_walk_finds_dict_access_to_an_output() -> None:
    assert _output_subscripts("x = result.output['exit_code']\ny = (result.output or {}).get('path')\n") == [1, 2]
    assert _output_subscripts("output = r.output or {}\nz = output['stdout']\nw = output.get('a')\n") == [2, 3]
    assert _output_subscripts("output = {}\nz = output['OutputKey']\n") == []  # not a tool's
    assert _output_subscripts("x = result.output.exit_code\n") == []


def test_no_module_outside_the_transcript_and_the_tools_reads_a_tool_output_by_key() -> None:
    # Given every module of the package but the transcript's and the tools'
    package = Path(__file__).parents[2] / "functions" / "sandcastle"
    found = {
        str(path.relative_to(package)): lines
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package) not in _ALLOWED and path.relative_to(package).parts[0] != "tools"
        if (lines := _output_subscripts(path.read_text()))
    }
    # Then none reads an ``output`` by key: tool outputs are models, read by attribute
    assert found == {}


@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_the_schema_of_a_command_s_output_names_its_fields(mode: str) -> None:
    schema = ToolResultData.model_json_schema(mode=mode)  # type: ignore[arg-type]
    command = schema["$defs"]["CommandOutput"]
    assert set(command["required"]) == {"exit_code", "stdout", "stderr", "duration_ms"}
    assert command["additionalProperties"] is False
