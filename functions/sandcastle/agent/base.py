"""The model port."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sandcastle.runs.records import ToolCall, Usage
from sandcastle.runs.transcript import Transcript


@dataclass(frozen=True)
class ModelTurn:
    """One reply of the model: text, tool calls, or both."""

    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    """The reply's ``input_tokens`` and ``output_tokens``."""
    model: str | None = None
    """The model name that answered, as the endpoint reports it."""


class Model(Protocol):
    """Decides the next move from the transcript so far."""

    backend: str
    """``openai`` or ``playbook``: recorded on the run."""

    def complete(
        self, transcript: Transcript, tools: list[dict[str, Any]], *, model: str | None, timeout_s: float
    ) -> ModelTurn:
        """One model turn on the run's ``transcript``; ``tools`` are the offered tools' JSON schemas
        (chat-completions ``function`` tools). How the transcript is put to the model is the adapter's.

        Raises ``ModelRateLimited`` / ``ModelUnavailable`` (retryable), ``ModelRequestRejected``.
        """
        ...
