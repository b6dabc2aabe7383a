"""The sandbox port: one protocol, two backends (``e2b`` and ``local``).

Paths given to a sandbox are absolute paths inside it (under ``SANDBOX_HOME``), or relative
to ``SANDBOX_HOME``. Agent-written code only ever executes through ``Sandbox.run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

SANDBOX_HOME = "/home/user"
"""The sandbox user's home directory: the run's private, persistent workspace (E2B's default)."""


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command. ``exit_code`` is None when the command was killed on timeout."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    duration_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class ProcessOutput:
    """A background process as one read finds it: what it printed since the previous read, and how it ended."""

    process_id: str
    stdout: bytes
    """New standard output since the previous read of this process (by anyone, in any invocation)."""
    stderr: bytes
    running: bool
    exit_code: int | None
    """Its exit status once ended (137 after ``kill_process``); None while running, or when unknown."""


@dataclass(frozen=True)
class SandboxSpec:
    """What a run asks of its sandbox at creation."""

    run_id: str
    tenant: str
    timeout_s: int
    """Seconds the sandbox lives unless killed first: the run's deadline plus a margin."""
    metadata: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    """E2B template; None means the provider's default."""
    allow_internet_access: bool = False
    envs: dict[str, str] = field(default_factory=dict)
    """Environment variables for every command (already checked against the allow-list)."""
    idempotency_key: str | None = None
    """A retried create with the same key returns the same sandbox instead of a second one (E2B)."""


@runtime_checkable
class Sandbox(Protocol):
    """A live sandbox that belongs to one run."""

    @property
    def sandbox_id(self) -> str: ...

    def run(
        self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run a shell command (``bash -lc``); on timeout kill its whole process tree."""
        ...

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file, creating parent directories."""
        ...

    def read_file(self, path: str) -> bytes:
        """Read a file; raises ``FileNotFoundError`` when it does not exist."""
        ...

    # --- background processes: they live until they exit, are killed, or the sandbox ends ---
    # Their state (output, exit status, the read cursor) lives in the sandbox itself
    # (``sandbox.background``), so any later invocation — another Lambda — can read them.

    def start_process(self, command: str, *, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
        """Start ``bash -lc command`` in the background; returns its process id (``proc-…``) at once."""
        ...

    def process_output(self, process_id: str) -> ProcessOutput:
        """What the process printed since the last read, and its exit status once ended.

        Raises ``ProcessNotFound`` for an id this sandbox never started.
        """
        ...

    def write_stdin(self, process_id: str, data: bytes) -> None:
        """Write to the process's standard input. ``ProcessNotFound`` when unknown or no longer running."""
        ...

    def kill_process(self, process_id: str) -> bool:
        """SIGKILL the process and its process group. False when it was no longer running."""
        ...

    def list_processes(self) -> list[str]:
        """The ids of the background processes still running."""
        ...


class SandboxProvider(Protocol):
    """Creates, reconnects to and kills sandboxes of one backend."""

    name: str

    def create(self, spec: SandboxSpec) -> Sandbox:
        """Create a sandbox for a run. Raises ``SandboxUnavailable`` when the service is busy."""
        ...

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> Sandbox:
        """Reconnect to a live sandbox by id. Raises ``SandboxGone`` when it no longer exists.

        ``keep_alive_s`` extends the sandbox's own timeout to that many seconds from now, so a
        sandbox follows its run's deadline and never dies in the middle of the run.
        """
        ...

    def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox and everything in it. Idempotent: False when it was already gone."""
        ...
