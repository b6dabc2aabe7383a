"""``run_command``: a shell command in the run's sandbox, in the foreground or the background."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, field_validator

from sandcastle.runs.tool_outputs import BackgroundOutput, CommandOutput
from sandcastle.sandbox.base import Sandbox
from sandcastle.tools.base import ToolArgs, ToolContext
from sandcastle.tools.processes import MAX_YIELD_MS, collect_output, process_errors


class RunCommandArgs(ToolArgs):
    command: str = Field(min_length=1, description="The shell command (bash) to run.")
    cwd: str | None = Field(default=None, description="Working directory; defaults to the home directory.")
    timeout_s: int | None = Field(default=None, ge=1, description="Seconds before the command is killed.")
    env: dict[str, str] | None = Field(
        default=None,
        description="Extra environment variables (names: letters, digits and _, not starting with a digit).",
    )
    background: bool = Field(
        default=False,
        description=(
            "Start the command in the background (a server, a watcher, a long build) and return its "
            "process_id with the output so far; it runs until it exits, kill_process, or the run ends. "
            "Read it with process_output, feed it with write_stdin."
        ),
    )
    yield_ms: int = Field(
        default=1000,
        ge=0,
        le=MAX_YIELD_MS,
        description="With background: milliseconds to wait for its first output (returns early if it exits).",
    )

    @field_validator("command", "cwd")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\0" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("env")
    @classmethod
    def _environment_variables(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for name, value in (env or {}).items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits and _, not starting with a digit)")
            if "\0" in value:
                raise ValueError(f"the value of {name} must not contain NUL characters")
        return env


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RunCommand:
    name: ClassVar[str] = "run_command"
    description: ClassVar[str] = (
        "Run a shell command in your sandbox (Linux, bash, no network). Your home directory persists "
        "between commands, and so do processes started in the background (background: true): a "
        "server started by one call answers the next on localhost. Input files are under ~/input. "
        "Returns exit code, stdout and stderr (or, in the background, a process_id)."
    )
    args_model: ClassVar[type[ToolArgs]] = RunCommandArgs

    def execute(self, sandbox: Sandbox, args: RunCommandArgs, context: ToolContext) -> CommandOutput | BackgroundOutput:
        if args.background:
            with process_errors():
                process_id = sandbox.start_process(args.command, cwd=args.cwd, env=args.env)
                return collect_output(sandbox, process_id, args.yield_ms, context)
        timeout = min(args.timeout_s or context.default_timeout_s, context.timeout_ceiling_s)
        timeout = max(1.0, min(float(timeout), context.remaining_run_s))
        result = sandbox.run(args.command, timeout_s=timeout, cwd=args.cwd, env=args.env)
        return CommandOutput(
            exit_code=result.exit_code,
            stdout=context.keep_output("stdout", result.stdout),
            stderr=context.keep_output("stderr", result.stderr),
            duration_ms=result.duration_ms,
            timed_out=True if result.timed_out else None,
            timeout_s=timeout if result.timed_out else None,
        )
