"""How a run reads on a terminal: its header, one line per step, tool and result, and the summary."""

from __future__ import annotations

import json
from typing import TextIO

from sandcastle.runs.records import Run, RunOutcome
from sandcastle.runs.tool_outputs import (
    BackgroundOutput,
    CommandOutput,
    ListFilesOutput,
    ReadBinaryOutput,
    ReadTextOutput,
    WriteFileOutput,
)
from sandcastle.runs.transcript import (
    ApprovalDecidedEvent,
    ApprovalRequestedEvent,
    AssistantEvent,
    EndEvent,
    ErrorEvent,
    Event,
    SystemEvent,
    ToolResultData,
    ToolResultEvent,
    UserEvent,
    UserMessageEvent,
)


class EventPrinter:
    """Renders transcript events for a terminal: one line per step, tool and result."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def header(self, run: Run) -> None:
        model = run.model or run.model_backend
        self._line(
            f"run {run.run_id} · model {model} · budgets {run.budgets.max_steps} steps, "
            f"{run.budgets.max_tool_calls} tool calls, {run.budgets.timeout_s} s"
        )

    def event(self, event: Event) -> None:
        if isinstance(event, SystemEvent):
            self._line(f"sandbox ready · tools: {', '.join(event.data.tools)}")
        elif isinstance(event, UserEvent):
            self._line(f"▶ {event.data.text}")
        elif isinstance(event, AssistantEvent):
            reply = event.data
            if reply.text and reply.tool_calls:  # a final answer is shown once, at the end
                self._line(f"[step {event.step}] 🤖 {reply.text}")
            for call in reply.tool_calls:
                self._line(f"[step {event.step}] → {call.name} {_brief_arguments(call.arguments)}")
        elif isinstance(event, ToolResultEvent):
            self._result(event.step, event.data)
        elif isinstance(event, ErrorEvent):
            self._line(f"✗ {event.data.type}: {event.data.message}")
        elif isinstance(event, EndEvent):
            self.summary(event.data)
        elif isinstance(event, ApprovalRequestedEvent):
            asked = event.data
            why = f" ({asked.reason})" if asked.reason else ""
            self._line(
                f"[step {event.step}] ⏸ approval needed{why}: {asked.tool_call_id} {asked.tool} "
                f"{_brief_arguments(asked.arguments)} — sandcastle approve|reject {event.run_id} {asked.tool_call_id}"
            )
        elif isinstance(event, ApprovalDecidedEvent):
            decided = event.data
            verdict = "expired" if decided.expired else {"approve": "approved", "reject": "rejected"}[decided.decision]
            by = f" by {decided.decided_by}" if decided.decided_by else ""
            self._line(f"[step {event.step}]   {verdict}{by}: {decided.tool_call_id}")
        elif isinstance(event, UserMessageEvent):
            self._line(f"✉ {event.data.text}")

    def _result(self, step: int, result: ToolResultData) -> None:
        name = result.tool or "?"
        if result.error:
            self._line(f"[step {step}]   ✗ {name}: {result.error}")
            return
        output = result.output
        if isinstance(output, CommandOutput):
            status = "timed out" if output.timed_out else f"exit {output.exit_code}"
            mark = "✓" if output.exit_code == 0 else "✗"
            self._line(f"[step {step}]   {mark} {name}: {status} in {result.duration_ms} ms")
            for stream in (output.stdout, output.stderr):
                for line in stream.text.rstrip().splitlines()[:20]:
                    self._line(f"      {line}")
        elif isinstance(output, BackgroundOutput):
            status = "running" if output.running else f"exit {output.exit_code}"
            self._line(f"[step {step}]   ✓ {name}: {output.process_id} {status} in {result.duration_ms} ms")
            for stream in (output.stdout, output.stderr):
                for line in stream.text.rstrip().splitlines()[:20]:
                    self._line(f"      {line}")
        else:
            sized = isinstance(output, WriteFileOutput | ReadTextOutput | ReadBinaryOutput)
            size = output.bytes if sized else ""
            path = output.path if sized or isinstance(output, ListFilesOutput) else ""
            self._line(f"[step {step}]   ✓ {name}: {size} bytes {path} in {result.duration_ms} ms")

    def summary(self, outcome: RunOutcome) -> None:
        """How the run ended: status, error, answer and usage."""
        usage = outcome.usage
        self._line("")
        self._line(
            f"status: {outcome.status.value}" + (f" ({outcome.stop_reason.value})" if outcome.stop_reason else "")
        )
        if outcome.error:
            self._line(f"error: {outcome.error.type}: {outcome.error.message}")
        if outcome.result:
            self._line("answer:")
            for line in outcome.result.splitlines():
                self._line(f"  {line}")
        delivery = outcome.delivery
        if delivery:
            self._line(
                f"change: {delivery.files_changed} files, +{delivery.insertions} -{delivery.deletions} "
                f"against {delivery.base_commit[:12]}"
                + (f"; pushed {delivery.pushed_sha[:12]} to {delivery.pushed_branch}" if delivery.pushed_sha else "")
            )
            if delivery.push_error:
                self._line(f"not pushed: {delivery.push_error}")
        self._line(
            f"usage: {usage.steps} steps, {usage.tool_calls} tool calls ({usage.tool_ms} ms in tools), "
            f"{usage.input_tokens} input + {usage.output_tokens} output tokens"
        )

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def print_artifacts(run: Run, where: str, out: TextIO) -> None:
    if not run.artifacts:
        return
    print(f"artifacts ({len(run.artifacts)}) in {where}", file=out, flush=True)
    for artifact in run.artifacts:
        print(f"  {artifact.name}  {artifact.size} bytes  sha256 {artifact.sha256[:12]}…", file=out, flush=True)


def _brief_arguments(arguments: str, limit: int = 100) -> str:
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return f"(invalid JSON) {arguments[:limit]}"
    if isinstance(parsed, dict):
        if "command" in parsed:
            text = str(parsed["command"])
        elif "path" in parsed:
            text = str(parsed["path"])
        else:
            text = json.dumps(parsed)
    else:
        text = json.dumps(parsed)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
