"""The model port."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sandcastle.runs.models import ToolCall


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ModelTurn:
    """One reply of the model: text, tool calls, or both."""

    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str | None = None
    """The model name that answered, as the endpoint reports it."""


class Model(Protocol):
    """Decides the next move from the conversation so far."""

    backend: str
    """``openai`` or ``playbook``: recorded on the run."""

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, model: str | None, timeout_s: float
    ) -> ModelTurn:
        """One model turn. ``messages`` and ``tools`` are in the chat-completions format.

        Raises ``ModelRateLimited`` / ``ModelUnavailable`` (retryable), ``ModelRequestRejected``.
        """
        ...
