"""What a caller sends: a run, a saved task, a schedule (the API, the CLI, the inbox and schedules all
submit these). Validation here is the first refusal a bad request meets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sandcastle.names import FileName, TenantName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budgets(_Strict):
    """Per-run limits. Unset fields take the configured defaults; each has a hard ceiling."""

    max_steps: int | None = Field(default=None, ge=1)
    """Model turns at most."""
    max_tool_calls: int | None = Field(default=None, ge=1)
    """Tool invocations at most, over the whole run."""
    timeout_s: int | None = Field(default=None, ge=10)
    """Wall-clock seconds from the start of the run; the sandbox's own timeout follows it."""


class PlaybookCall(_Strict):
    """One scripted tool call of a playbook run."""

    tool: Annotated[str, StringConstraints(min_length=1)]
    arguments: dict[str, Any] = Field(default_factory=dict)
    continue_on_error: bool = False
    """Go on to the next step when this one fails (a tool error, or a command's non-zero exit or timeout);
    otherwise such a failure ends the run FAILED, naming the step."""


class InputFile(_Strict):
    """A file placed at ``~/input/<name>`` in the sandbox: inline (base64) or an S3 object."""

    name: FileName
    """Kept exactly (``;``, ``"``, ``#``, ``%``, ``\\``, spaces, Unicode); refused: ``/``, control characters,
    a leading ``.``, over 255 bytes (``sandcastle.names``)."""
    content_base64: str | None = None
    s3_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """A key under ``uploads/<your tenant>/`` (``POST /uploads`` gives one); copied to the run at submission."""


class SandboxOptions(_Strict):
    """What a run asks of its sandbox."""

    template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")] | None = None
    """E2B template (name or id); the configured default when unset."""
    allow_internet_access: bool = False
    """Outbound internet from the sandbox (E2B only; the local sandbox never has a network)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for every command; names must be on the configured allow-list."""


class RunRequest(_Strict):
    """What a user asks for."""

    instructions: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    """The task, in words."""
    tenant: TenantName = "default"
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """The model name for an OpenAI-compatible endpoint; the configured default when unset."""
    playbook: list[PlaybookCall] | None = Field(default=None, min_length=1, max_length=500)
    """Scripted tool calls, executed in order instead of asking a model."""
    budgets: Budgets = Field(default_factory=Budgets)
    files: list[InputFile] = Field(default_factory=list, max_length=100)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
    source: Literal["api", "s3", "schedule", "cli"] = "cli"


TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A saved task's name: letters, digits, ``_``, ``.``, ``-``; it starts with a letter or digit (so ``_`` is free)."""


class TaskDefinition(_Strict):
    """A saved run template: what ``PUT /tasks/{name}`` takes and a schedule may carry inline."""

    instructions: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    playbook: list[PlaybookCall] | None = Field(default=None, min_length=1, max_length=500)
    budgets: Budgets = Field(default_factory=Budgets)
    sandbox: SandboxOptions = Field(default_factory=SandboxOptions)
    max_input_bytes: int | None = Field(default=None, ge=1)
    """Uploads larger than this are refused (a ``result.json`` with the error); the configured cap when unset."""
    allow_empty_input: bool = False
    """Whether an empty uploaded file may start a run; by default it is refused."""


class ScheduleRequest(_Strict):
    """The body of ``POST /schedules``: when, and what to run (a saved task, or a run template inline)."""

    expression: Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=256)]
    """``cron(min hour day-of-month month day-of-week year)``, ``rate(5 minutes)`` or ``at(2026-12-01T09:00:00)``,
    as EventBridge Scheduler reads them."""
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    """An IANA time zone (``Europe/Berlin``) the expression is read in."""
    task: TaskName | None = None
    """A saved task's name; give this or ``run``."""
    run: TaskDefinition | None = None
    """A run template inline; give this or ``task``."""
    overlap: Literal["skip", "allow"] = "skip"
    """``skip``: no new run while the previous one is still going (the skip is recorded); ``allow``: start anyway."""
    description: Annotated[str, StringConstraints(max_length=512)] | None = None
