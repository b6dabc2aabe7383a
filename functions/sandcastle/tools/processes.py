"""``process_output``, ``write_stdin``, ``kill_process``: the model's hands on its background processes.

A background process (``run_command`` with ``background: true``) keeps its output and status in
the sandbox (``sandbox.background``), so each of these tools — a Lambda invocation of its own —
reads what it printed since the last read, whichever invocation read last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field

from sandcastle.errors import ProcessNotFound, ToolInputError
from sandcastle.runs.tool_outputs import BackgroundOutput
from sandcastle.sandbox.base import Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext

MAX_YIELD_MS = 30_000
"""The longest a tool call waits for a background process's output."""
_POLL_S = 0.25
"""How often a waiting tool call reads the process again (each read is a few file reads in the sandbox)."""
_PROCESS_ID_FIELD = Field(min_length=1, max_length=64, description="The process_id run_command returned.")


@contextmanager
def process_errors() -> Iterator[None]:
    """An unknown or ended process is the model's to fix: a tool error it reads."""
    try:
        yield
    except ProcessNotFound as error:
        raise ToolInputError(str(error)) from None


def collect_output(sandbox: Sandbox, process_id: str, yield_ms: int, context: ToolContext) -> BackgroundOutput:
    """The process's new output over the next ``yield_ms`` (less when it exits first, or the run ends)."""
    deadline = time.monotonic() + min(yield_ms / 1000, max(0.0, context.remaining_run_s - 1))
    stdout, stderr = bytearray(), bytearray()
    while True:
        seen = sandbox.process_output(process_id)
        stdout += seen.stdout
        stderr += seen.stderr
        if not seen.running or time.monotonic() + _POLL_S > deadline:
            break
        time.sleep(_POLL_S)
    return BackgroundOutput(
        process_id=process_id,
        running=seen.running,
        exit_code=seen.exit_code,
        stdout=context.keep_output("stdout", bytes(stdout)),
        stderr=context.keep_output("stderr", bytes(stderr)),
    )


class ProcessOutputArgs(ToolArgs):
    process_id: str = _PROCESS_ID_FIELD
    yield_ms: int = Field(
        default=0, ge=0, le=MAX_YIELD_MS, description="Milliseconds to wait for more output (returns early on exit)."
    )


class ProcessOutputTool:
    name: ClassVar[str] = "process_output"
    description: ClassVar[str] = (
        "Read what a background process printed since you last read it, and its exit code once it has ended."
    )
    args_model: ClassVar[type[ToolArgs]] = ProcessOutputArgs

    def execute(self, sandbox: Sandbox, args: ProcessOutputArgs, context: ToolContext) -> BackgroundOutput:
        with process_errors():
            return collect_output(sandbox, args.process_id, args.yield_ms, context)


class WriteStdinArgs(ToolArgs):
    process_id: str = _PROCESS_ID_FIELD
    text: str = Field(description="What to write to its standard input (add \\n to end a line).")
    yield_ms: int = Field(
        default=500, ge=0, le=MAX_YIELD_MS, description="Milliseconds to wait for its answer (returns early on exit)."
    )


class WriteStdin:
    name: ClassVar[str] = "write_stdin"
    description: ClassVar[str] = (
        "Write text to the standard input of a running background process, then return what it printed."
    )
    args_model: ClassVar[type[ToolArgs]] = WriteStdinArgs

    def execute(self, sandbox: Sandbox, args: WriteStdinArgs, context: ToolContext) -> BackgroundOutput:
        with process_errors():
            sandbox.write_stdin(args.process_id, args.text.encode())
            return collect_output(sandbox, args.process_id, args.yield_ms, context)


class KillProcessArgs(ToolArgs):
    process_id: str = _PROCESS_ID_FIELD


class KillProcess:
    name: ClassVar[str] = "kill_process"
    description: ClassVar[str] = (
        "Kill a background process (and the processes it started); returns what it printed since the last read."
    )
    args_model: ClassVar[type[ToolArgs]] = KillProcessArgs

    def execute(self, sandbox: Sandbox, args: KillProcessArgs, context: ToolContext) -> BackgroundOutput:
        with process_errors():
            sandbox.kill_process(args.process_id)
            return collect_output(sandbox, args.process_id, 0, context)
