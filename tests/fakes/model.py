"""A fake model with queued replies, recording what it was asked."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from sandcastle.agent.base import ModelTurn
from sandcastle.runs.records import ToolCall, Usage
from sandcastle.runs.transcript import Transcript


class FakeModel:
    backend = "openai"

    def __init__(self) -> None:
        self.replies: deque[ModelTurn | Exception] = deque()
        self.calls: list[Transcript] = []

    def then_text(self, text: str) -> FakeModel:
        self.replies.append(ModelTurn(text=text, usage=Usage(input_tokens=7, output_tokens=3), model="fake"))
        return self

    def then_tools(self, *calls: tuple[str, dict[str, Any] | str]) -> FakeModel:
        turn = len(self.replies) + 1
        self.replies.append(
            ModelTurn(
                text=None,
                tool_calls=[
                    ToolCall(
                        id=f"call_{turn}_{i}", name=name, arguments=args if isinstance(args, str) else json.dumps(args)
                    )
                    for i, (name, args) in enumerate(calls)
                ],
                usage=Usage(input_tokens=11, output_tokens=5),
                model="fake",
            )
        )
        return self

    def then_raise(self, error: Exception) -> FakeModel:
        self.replies.append(error)
        return self

    def complete(
        self, transcript: Transcript, tools: list[dict[str, Any]], *, model: str | None, timeout_s: float
    ) -> ModelTurn:
        self.calls.append(transcript)
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        return reply
