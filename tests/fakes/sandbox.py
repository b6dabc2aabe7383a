"""A fake sandbox provider that records every call and executes nothing."""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sandcastle.errors import SandboxGone
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, SandboxSpec


@dataclass
class FakeSandbox:
    sandbox_id: str
    spec: SandboxSpec
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    answer: Callable[[str], CommandResult] | None = None

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
