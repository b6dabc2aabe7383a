"""A fake sandbox provider that records every call and executes nothing."""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sandcastle.errors import ProcessNotFound, SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, ProcessOutput, SandboxSpec


@dataclass
class FakeProcess:
    """A background process of a ``FakeSandbox``: it echoes what it is sent until killed."""

    command: str
    pending: bytes = b""
    stdin: list[bytes] = field(default_factory=list)
    running: bool = True
    exit_code: int | None = None


@dataclass
class FakeSandbox:
    sandbox_id: str
    spec: SandboxSpec
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    answer: Callable[[str], CommandResult] | None = None
    processes: dict[str, FakeProcess] = field(default_factory=dict)

    def run(self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict | None = None) -> CommandResult:
        self.commands.append(command)
        if self.answer:
            return self.answer(command)
        if command.startswith("cd ~/output") and "find . -type f -printf '%s %P\\0'" in command:
            listing = b"".join(
                f"{len(data)} {path.removeprefix('output/')}".encode() + b"\0"
                for path, data in sorted(self.files.items())
                if path.startswith("output/")
            )
            return CommandResult(exit_code=0, stdout=listing, stderr=b"", duration_ms=1)
        return CommandResult(exit_code=0, stdout=f"ran: {command}\n".encode(), stderr=b"", duration_ms=1)

    def write_file(self, path: str, data: bytes) -> None:
        self.files[_workspace_key(path)] = data

    def read_file(self, path: str) -> bytes:
        try:
            return self.files[_workspace_key(path)]
        except KeyError:
            raise FileNotFoundError(path) from None

    def start_process(self, command: str, *, cwd: str | None = None, env: dict | None = None) -> str:
        process_id = f"proc-{len(self.processes) + 1:012x}"
        self.processes[process_id] = FakeProcess(command, pending=f"started: {command}\n".encode())
        return process_id

    def process_output(self, process_id: str) -> ProcessOutput:
        process = self._process(process_id)
        output, process.pending = process.pending, b""
        return ProcessOutput(process_id, output, b"", process.running, process.exit_code)

    def write_stdin(self, process_id: str, data: bytes) -> None:
        process = self._process(process_id)
        if not process.running:
            raise ProcessNotFound(f"process {process_id} is not running")
        process.stdin.append(data)
        process.pending += b"read: " + data

    def kill_process(self, process_id: str) -> bool:
        process = self._process(process_id)
        was_running, process.running = process.running, False
        if was_running:
            process.exit_code = 137
        return was_running

    def list_processes(self) -> list[str]:
        return [process_id for process_id, process in self.processes.items() if process.running]

    def _process(self, process_id: str) -> FakeProcess:
        if process_id not in self.processes:
            raise ProcessNotFound(f"no background process {process_id} in this sandbox")
        return self.processes[process_id]


def _workspace_key(path: str) -> str:
    """The path relative to the home directory, as the real backends resolve it (``ValueError`` outside it)."""
    absolute = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if not absolute.startswith(SANDBOX_HOME + "/"):
        raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
    return absolute.removeprefix(SANDBOX_HOME + "/")


class FakeSandboxProvider:
    """Creates ``FakeSandbox``es; ``created``, ``connected`` and ``killed`` record what happened."""

    name = "fake"

    def __init__(self) -> None:
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.created: list[str] = []
        self.connected: list[str] = []
        self.killed: list[str] = []
        self.keep_alives: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def create(self, spec: SandboxSpec) -> FakeSandbox:
        with self._lock:
            sandbox = FakeSandbox(sandbox_id=f"fake-{len(self.created) + 1}", spec=spec)
            self.sandboxes[sandbox.sandbox_id] = sandbox
            self.created.append(sandbox.sandbox_id)
            return sandbox

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> FakeSandbox:
        with self._lock:
            self.connected.append(sandbox_id)
            if keep_alive_s is not None:
                self.keep_alives.append((sandbox_id, keep_alive_s))
            if sandbox_id not in self.sandboxes:
                raise SandboxGone(f"sandbox {sandbox_id} no longer exists")
            return self.sandboxes[sandbox_id]

    def kill(self, sandbox_id: str) -> bool:
        with self._lock:
            self.killed.append(sandbox_id)
            return self.sandboxes.pop(sandbox_id, None) is not None

    @property
    def live(self) -> list[str]:
        return list(self.sandboxes)
