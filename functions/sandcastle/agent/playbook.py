"""The ``playbook`` policy: a fixed list of tool calls, then a summary.

For jobs that need no reasoning, for the offline demo and for tests. It is deterministic:
the next call is chosen by how many turns the transcript already holds, so a retried step
makes the same decision.
"""

from __future__ import annotations

import json
from typing import Any

from sandcastle.agent.base import ModelTurn
from sandcastle.runs.records import ToolCall
from sandcastle.runs.requests import PlaybookCall
from sandcastle.runs.transcript import ToolResultData, Transcript


class PlaybookModel:
    """Plays ``playbook`` one call per turn; after the last call, answers with a summary."""

    backend = "playbook"

    def __init__(self, playbook: list[PlaybookCall]) -> None:
        self._playbook = playbook

    def complete(
        self, transcript: Transcript, tools: list[dict[str, Any]], *, model: str | None, timeout_s: float
    ) -> ModelTurn:
        turn = len(transcript.replies())
        if turn < len(self._playbook):
            call = self._playbook[turn]
            return ModelTurn(
                text=None,
                tool_calls=[ToolCall(id=f"pb_{turn + 1}", name=call.tool, arguments=json.dumps(call.arguments))],
                model="playbook",
            )
        return ModelTurn(text=self._summary(transcript.results()), model="playbook")

    def _summary(self, results: list[ToolResultData]) -> str:
        summary = f"Playbook finished: {len(self._playbook)} tool call(s) executed."
        if not results:
            return summary
        last = results[-1]
        if last.error:
            return f"{summary} The last one failed: {last.error}"
        command = last.command()
        stdout = command.stdout.text.strip() if command else ""
        if command and command.exit_code not in (None, 0):
            summary += f" The last command exited with {command.exit_code}."
        return f"{summary}\n\n{stdout}" if stdout else summary
