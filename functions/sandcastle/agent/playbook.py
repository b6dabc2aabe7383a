"""The ``playbook`` policy: a fixed list of tool calls, then a summary.

For jobs that need no reasoning, for the offline demo, scripted jobs and tests. It is
deterministic: the next call is chosen by how many turns the transcript already holds, so a
retried step makes the same decision. A step that fails — a tool error, a command that exits
non-zero or times out — ends the run FAILED (``PlaybookStepFailed``, naming the step) unless the
step says ``"continue_on_error": true``: a scripted job reports failure as failure.
"""

from __future__ import annotations

import json
from typing import Any

from sandcastle.agent.base import ModelTurn
from sandcastle.errors import PlaybookStepFailed
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
        if turn:
            self._stop_if_failed(turn, transcript.results())
        if turn < len(self._playbook):
            call = self._playbook[turn]
            return ModelTurn(
                text=None,
                tool_calls=[ToolCall(id=f"pb_{turn + 1}", name=call.tool, arguments=json.dumps(call.arguments))],
                model="playbook",
            )
        return ModelTurn(text=self._summary(transcript.results()), model="playbook")

    def _stop_if_failed(self, turn: int, results: list[ToolResultData]) -> None:
        """Raise when step ``turn`` (1-based; its result is the last one: one call per turn) failed."""
        step = self._playbook[turn - 1]
        if step.continue_on_error:
            return
        reason = _failure(results[-1])
        if reason:
            raise PlaybookStepFailed(
                f"playbook step {turn} ({step.tool}) failed: {reason}; "
                'set "continue_on_error": true on the step to go on after a failure'
            )

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


def _failure(result: ToolResultData) -> str | None:
    """Why a step's result is a failure, or None when it succeeded."""
    if result.error:
        return result.error
    command = result.command()
    if command is None:
        return None
    if command.timed_out:
        return f"the command timed out after {command.timeout_s:g} s" if command.timeout_s else "the command timed out"
    if command.exit_code not in (None, 0):
        return f"the command exited with {command.exit_code}"
    return None
