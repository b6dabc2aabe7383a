"""The local sandbox's init (``sandbox_init``) as a plain process: its request protocol, and that no request ends it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandcastle.sandbox import local_init, sandbox_init


@pytest.fixture
def init_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory whose ``init.sock`` is served by the init, run here without any sandbox around it."""
    listener = local_init.listening_socket(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", Path(sandbox_init.__file__).read_text(), str(listener.fileno())],
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    yield tmp_path
    process.kill()
    process.wait()


def _raw(init_dir: Path, data: bytes) -> dict:
    with local_init.connect(init_dir) as connection:
        connection.send(data)
        return local_init.read_message(connection)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json", "JSONDecodeError"),
        (json.dumps({"op": "format-disk"}).encode(), "unknown request 'format-disk'"),
        (json.dumps({"op": "run", "argv": ["/no/such/program"]}).encode(), "ValueError"),  # no fds passed
        (json.dumps({"op": "start", "id": "proc-1", "argv": ["/no/such/program"]}).encode(), "FileNotFoundError"),
    ],
)
def test_a_bad_request_is_answered_with_an_error_and_the_init_lives_on(init_dir: Path, data: bytes, error: str) -> None:
    assert error in _raw(init_dir, data)["error"]
    assert local_init.request(init_dir, {"op": "ping"}) == {"ok": True}


def test_a_command_gets_the_callers_pipes_and_reports_its_exit(init_dir: Path) -> None:
    stdout_read, stdout_write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    with local_init.connect(init_dir) as connection:
        message = json.dumps({"op": "run", "argv": ["/bin/sh", "-c", "echo hi; exit 3"]}).encode()
        socket.send_fds(connection, [message], [devnull, stdout_write, devnull])
        os.close(stdout_write)
        os.close(devnull)
        assert "pid" in local_init.read_message(connection)
        assert local_init.read_message(connection) == {"exit": 3}
    with os.fdopen(stdout_read, "rb") as stdout:
        assert stdout.read() == b"hi\n"


def test_a_background_process_is_listed_fed_and_killed(init_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["/bin/sh", "-c", f'read line; echo "$line" > {out}; sleep 60']

    assert "pid" in local_init.request(init_dir, {"op": "start", "id": "proc-a", "argv": argv})
    assert local_init.request(init_dir, {"op": "stdin", "id": "proc-a", "data": "aGVsbG8K"}) == {"ok": True}
    assert [entry["id"] for entry in local_init.request(init_dir, {"op": "list"})["processes"]] == ["proc-a"]
    deadline = time.monotonic() + 10
    while not out.exists() or not out.read_text():
        assert time.monotonic() < deadline, "the process never read its stdin"
        time.sleep(0.02)
    assert local_init.request(init_dir, {"op": "kill", "id": "proc-a"}) == {"killed": True}

    assert local_init.request(init_dir, {"op": "list"}) == {"processes": []}
    assert local_init.request(init_dir, {"op": "kill", "id": "proc-a"}) == {"killed": False}
    assert local_init.request(init_dir, {"op": "stdin", "id": "proc-a", "data": ""}) == {"error": "not running"}
    assert out.read_text() == "hello\n"


def test_a_terminal_command_is_left_to_make_its_own_session_and_a_signal_reaches_it_before(init_dir: Path) -> None:
    # On a terminal the command's argv begins with ``setsid --ctty``, which forks (and so escapes
    # its group) if it already leads one: the init must not start it in a session of its own.
    devnull = os.open(os.devnull, os.O_RDWR)
    with local_init.connect(init_dir) as connection:
        message = json.dumps({"op": "run", "argv": ["/bin/sh", "-c", "exec sleep 60"], "terminal": True}).encode()
        socket.send_fds(connection, [message], [devnull] * 3)
        os.close(devnull)
        pid = local_init.read_message(connection)["pid"]
        assert os.getsid(pid) != pid
        connection.send(json.dumps({"signal": signal.SIGTERM}).encode())  # it has no group of its own yet
        assert local_init.read_message(connection) == {"exit": -signal.SIGTERM}
