"""The ``playbook`` policy: a fixed list of tool calls, then a summary.

For jobs that need no reasoning, for the offline demo and for tests. It is deterministic:
the next call is chosen by how many turns the transcript already holds, so a retried step
makes the same decision.
"""

from __future__ import annotations

import json
from typing import Any

from sandcastle.agent.base import ModelTurn
from sandcastle.runs.models import PlaybookCall, ToolCall


class PlaybookModel:
    """Plays ``playbook`` one call per turn; after the last call, answers with a summary."""

    backend = "playbook"

    def __init__(self, playbook: list[PlaybookCall]) -> None:
        self._playbook = playbook

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, model: str | None, timeout_s: float
    ) -> ModelTurn:
        turn = sum(1 for message in messages if message["role"] == "assistant")
        if turn < len(self._playbook):
            call = self._playbook[turn]
            return ModelTurn(
                text=None,
                tool_calls=[ToolCall(id=f"pb_{turn + 1}", name=call.tool, arguments=json.dumps(call.arguments))],
                model="playbook",
            )
        return ModelTurn(text=self._summary(messages), model="playbook")

    def _summary(self, messages: list[dict[str, Any]]) -> str:
        results = [message for message in messages if message["role"] == "tool"]
        summary = f"Playbook finished: {len(self._playbook)} tool call(s) executed."
        if not results:
            return summary
        last = json.loads(results[-1]["content"])
        if "error" in last:
            return f"{summary} The last one failed: {last['error']}"
        stdout = (last.get("stdout") or {}).get("text", "").strip()
        exit_code = last.get("exit_code")
        if exit_code not in (None, 0):
            summary += f" The last command exited with {exit_code}."
        return f"{summary}\n\n{stdout}" if stdout else summary
