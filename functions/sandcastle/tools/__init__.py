"""The tools the model can call, and the checks a tool call passes before it runs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from sandcastle.errors import ToolInputError
from sandcastle.runs.records import ToolCall
from sandcastle.tools.base import Tool, ToolArgs, ToolContext
from sandcastle.tools.commands import RunCommand
from sandcastle.tools.files import ReadFile, WriteFile
from sandcastle.tools.listing import ListFiles
from sandcastle.tools.patch import ApplyPatch
from sandcastle.tools.processes import KillProcess, ProcessOutputTool, WriteStdin
from sandcastle.validation import describe_issues

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        RunCommand(),
        ProcessOutputTool(),
        WriteStdin(),
        KillProcess(),
        ListFiles(),
        ReadFile(),
        WriteFile(),
        ApplyPatch(),
    )
}

__all__ = ["TOOLS", "Tool", "ToolContext", "parse_tool_call", "tool_schemas"]


def tool_schemas() -> list[dict[str, Any]]:
    """The tools in the chat-completions ``tools`` format."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.args_model.model_json_schema(),
            },
        }
        for tool in TOOLS.values()
    ]


def parse_tool_call(call: ToolCall) -> tuple[Tool, ToolArgs]:
    """The tool and its validated arguments; ``ToolInputError`` saying what was wrong otherwise."""
    tool = TOOLS.get(call.name)
    if tool is None:
        raise ToolInputError(f"unknown tool {call.name!r}; available tools: {', '.join(sorted(TOOLS))}")
    try:
        raw = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as error:
        raise ToolInputError(f"arguments of {call.name} are not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ToolInputError(f"arguments of {call.name} must be a JSON object")
    try:
        return tool, tool.args_model.model_validate(raw)
    except ValidationError as error:
        problems = describe_issues(error.errors(), whole="arguments")
        raise ToolInputError(f"invalid arguments for {call.name}: {problems}") from error
