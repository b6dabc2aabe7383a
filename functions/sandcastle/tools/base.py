"""What a tool is: a JSON schema the model sees, validated arguments, execution in a sandbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from sandcastle.sandbox.base import Sandbox


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

    def keep_output(self, name: str, data: bytes) -> dict[str, Any]:
        """The transcript's form of an output: redacted, clipped, and — when clipped or not UTF-8 —
        the exact bytes saved whole, with a pointer the model can read."""
        data = self.redact(data)
        kept = clip_text(data, self.output_limit_bytes)
        if self.save_output is not None and (kept.get("truncated") or kept.get("not_utf8")):
            kept["full_output"] = self.save_output(name, data)
        return kept


class Tool(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    args_model: ClassVar[type[ToolArgs]]

    def execute(self, sandbox: Sandbox, args: Any, context: ToolContext) -> dict[str, Any]:
        """Execute in ``sandbox``; return the output recorded in the transcript."""
        ...


def clip_text(data: bytes, limit: int) -> dict[str, Any]:
    """Decode output for the transcript: head and tail within ``limit`` bytes, flags for what was lost.

    Bytes that are not valid UTF-8 are replaced (and flagged), never a crash.
    """
    total = len(data)
    truncated = total > limit
    if truncated:
        head = data[: limit // 2]
        tail = data[-(limit - len(head)) :]
        omitted = total - len(head) - len(tail)
        text = (
            head.decode("utf-8", errors="replace")
            + f"\n… [{omitted} bytes omitted] …\n"
            + tail.decode("utf-8", errors="replace")
        )
    else:
        text = data.decode("utf-8", errors="replace")
    try:
        data.decode("utf-8")
        binary = False
    except UnicodeDecodeError:
        binary = True
    result: dict[str, Any] = {"text": text, "bytes": total}
    if truncated:
        result["truncated"] = True
    if binary:
        result["not_utf8"] = True
    return result
