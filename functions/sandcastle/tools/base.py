"""What a tool is: a JSON schema the model sees, validated arguments, execution in a sandbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from sandcastle.large_values import clip_text, keep_value
from sandcastle.runs.tool_outputs import KeptStream, ToolOutput
from sandcastle.sandbox.base import Sandbox

__all__ = ["Tool", "ToolArgs", "ToolContext", "clip_text"]


class ToolArgs(BaseModel):
    """Base of every tool's arguments: unknown arguments are an error the model sees."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ToolContext:
    """Limits that apply to one tool invocation."""

    default_timeout_s: int
    timeout_ceiling_s: int
    remaining_run_s: float
    """Seconds left before the run's deadline: no command may outlast the run."""
    output_limit_bytes: int
    redact: Callable[[bytes], bytes] = lambda data: data
    """Replaces known secrets in output before anything is stored or shown to the model."""
    save_output: Callable[[str, bytes], str] | None = None
    """Stores a whole output that the event only keeps part of; returns where it lives."""

    def keep_output(self, name: str, data: bytes) -> KeptStream:
        """The transcript's form of an output: redacted, then kept by the one rule for large values
        (``large_values.keep_value``: clipped; when clipped or not UTF-8, saved whole with a pointer)."""
        return KeptStream.model_validate(keep_value(name, self.redact(data), self.output_limit_bytes, self.save_output))


class Tool(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    args_model: ClassVar[type[ToolArgs]]

    def execute(self, sandbox: Sandbox, args: Any, context: ToolContext) -> ToolOutput:
        """Execute in ``sandbox``; return the output recorded in the transcript."""
        ...
