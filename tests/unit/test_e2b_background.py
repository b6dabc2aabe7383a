"""The e2b adapter's background processes, against a fake at the SDK boundary (``commands`` and ``files``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from e2b import CommandResult as E2BCommandResult
from e2b.exceptions import FileNotFoundException

from sandcastle.errors import ProcessNotFound
from sandcastle.sandbox.e2b_sandbox import E2BSandbox


@dataclass
class Info:
    pid: int
    cmd: str
    args: list[str]
    tag: str | None = None


class Handle:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.disconnected = False

    def disconnect(self) -> None:
        self.disconnected = True

    def wait(self, on_stdout: Any = None, on_stderr: Any = None) -> E2BCommandResult:
        return E2BCommandResult(stdout="", stderr="", exit_code=0, error=None)


@dataclass
class Commands:
    started: list[dict[str, Any]] = field(default_factory=list)
    handles: list[Handle] = field(default_factory=list)
    running: dict[int, Info] = field(default_factory=dict)
    stdin: list[tuple[int, bytes]] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)

    def run(self, cmd: str, **options: Any) -> Handle:
        handle = Handle(2000 + len(self.started))
        self.started.append({"cmd": cmd, **options})
        self.handles.append(handle)
        if options.get("stdin"):
            self.running[handle.pid] = Info(handle.pid, "/bin/bash", ["-l", "-c", cmd])
        return handle

    def list(self) -> list[Info]:
        return list(self.running.values())

    def send_stdin(self, pid: int, data: bytes) -> None:
        self.stdin.append((pid, data))

    def kill(self, pid: int) -> bool:
        self.killed.append(pid)
        return self.running.pop(pid, None) is not None


class Files(dict[str, bytes]):
    def write(self, path: str, data: bytes) -> None:
        self[path] = data

    def read(self, path: str, format: str = "text") -> bytes:
        if path not in self:
            raise FileNotFoundException(f"{path} not found")
        return self[path]


@dataclass
class FakeSdkSandbox:
    sandbox_id: str = "sbx-1"
    commands: Commands = field(default_factory=Commands)
    files: Files = field(default_factory=Files)


@pytest.fixture
def sdk() -> FakeSdkSandbox:
    return FakeSdkSandbox()


def test_a_process_is_started_in_the_background_with_stdin_and_its_stream_dropped(sdk: FakeSdkSandbox) -> None:
    sandbox = E2BSandbox(sdk, "key")

    process_id = sandbox.start_process("python3 -m http.server", cwd="site", env={"PORT": "1"})

    started, handle = sdk.commands.started[0], sdk.commands.handles[0]
    directory = f"/home/user/.sandcastle/processes/{process_id}"
    assert started["background"] is True and started["stdin"] is True and started["timeout"] == 0
    assert (started["cwd"], started["envs"]) == ("/home/user/site", {"PORT": "1"})
    assert started["cmd"].startswith("exec setsid -w bash -c ")  # a session of its own, so its group can be killed
    assert handle.disconnected
    assert sdk.files[f"{directory}/command"] == b"python3 -m http.server"
    assert sdk.files[f"{directory}/pid"] == str(handle.pid).encode()
    assert sandbox.list_processes() == [process_id]


def test_stdin_goes_to_the_envd_pid_and_a_process_that_ended_takes_none(sdk: FakeSdkSandbox) -> None:
    sandbox = E2BSandbox(sdk, "key")
    process_id = sandbox.start_process("cat")
    pid = sdk.commands.handles[0].pid

    sandbox.write_stdin(process_id, b"hi\n")
    sdk.commands.running.clear()

    assert sdk.commands.stdin == [(pid, b"hi\n")]
    with pytest.raises(ProcessNotFound, match="is not running"):
        sandbox.write_stdin(process_id, b"again\n")


def test_kill_kills_the_group_then_the_envd_pid_and_records_exit_137(sdk: FakeSdkSandbox) -> None:
    sandbox = E2BSandbox(sdk, "key")
    process_id = sandbox.start_process("sleep 100")
    pid = sdk.commands.handles[0].pid

    assert sandbox.kill_process(process_id) is True

    assert "kill -KILL -- -$(cat /home/user/.sandcastle/processes/" in sdk.commands.started[1]["cmd"]
    assert sdk.commands.killed == [pid]
    ended = sandbox.process_output(process_id)
    assert (ended.running, ended.exit_code) == (False, 137)
    assert sandbox.kill_process(process_id) is False


def test_an_id_the_sandbox_never_started_is_not_found(sdk: FakeSdkSandbox) -> None:
    sandbox = E2BSandbox(sdk, "key")

    with pytest.raises(ProcessNotFound, match="no background process proc-00000000abcd"):
        sandbox.write_stdin("proc-00000000abcd", b"x")
    with pytest.raises(ProcessNotFound, match="is not a process id"):
        sandbox.kill_process("../../etc")
