"""The host's side of a local sandbox's init (``sandbox_init``): starting it, and talking to it.

A sandbox's init is started once (``launch``) and lives as long as the sandbox: every command,
background process and file a command creates belongs to that one set of namespaces. The host
reaches it through a unix socket ``init.sock`` in the sandbox's directory, which only the host
user can enter (the sandbox never sees it: the init inherits the listening socket instead), and
through ``/proc/self/fd/<dir>/init.sock`` so the path's length never matters.

``launch`` starts bwrap from one long-lived thread: ``bwrap --die-with-parent`` ties the sandbox
to the *thread* that started it (``PR_SET_PDEATHSIG``), and the threads a tool call runs on end.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from sandcastle.errors import InitUnreachable

INIT_SOCKET = "init.sock"
INIT_RECORD = "init.json"
_REQUEST_TIMEOUT_S = 30.0
_MAX_REPLY_BYTES = 1024 * 1024


def listening_socket(sandbox_dir: Path) -> socket.socket:
    """A fresh listening socket at ``<sandbox_dir>/init.sock`` (any stale one replaced), inheritable."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with _directory(sandbox_dir) as path:
            with suppress(FileNotFoundError):
                os.unlink(path)
            listener.bind(path)
        listener.listen(128)
        listener.set_inheritable(True)
    except BaseException:
        listener.close()
        raise
    return listener


def launch(argv: list[str], *, pass_fds: Sequence[int], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` (the init's bwrap) from the launcher thread; its output goes to ``log``."""
    done: queue.SimpleQueue[subprocess.Popen[bytes] | BaseException] = queue.SimpleQueue()

    def start() -> None:
        try:
            with open(log, "ab") as output:
                done.put(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=output,
                        start_new_session=True,
                        env=env,
                        pass_fds=tuple(pass_fds),
                    )
                )
        except BaseException as error:
            done.put(error)

    _launcher().put(start)
    outcome = done.get()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def record_init(sandbox_dir: Path, pid: int) -> None:
    """Note the init's host pid (and its start time, so a reused pid is never mistaken for it)."""
    record = {"pid": pid, "started": _start_time(pid)}
    partial = sandbox_dir / f".{INIT_RECORD}.partial"
    partial.write_text(json.dumps(record))
    partial.replace(sandbox_dir / INIT_RECORD)


def recorded_init_pid(sandbox_dir: Path) -> int | None:
    """The host pid of the sandbox's init (bwrap) while that very process lives, else None."""
    try:
        record = json.loads((sandbox_dir / INIT_RECORD).read_text())
        pid, started = int(record["pid"]), record["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if started is not None and _start_time(pid) == started else None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (host pids), parents first."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in _tasks(current):
            with suppress(OSError):
                pending += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def request(sandbox_dir: Path, message: dict[str, Any], *, timeout_s: float = _REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the init and return its one answer."""
    with connect(sandbox_dir, timeout_s=timeout_s) as connection:
        connection.send(json.dumps(message).encode())
        return read_message(connection)


def connect(sandbox_dir: Path, *, timeout_s: float | None = _REQUEST_TIMEOUT_S) -> socket.socket:
    """A connection to the sandbox's init; ``InitUnreachable`` when none listens."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.settimeout(timeout_s)
    try:
        with _directory(sandbox_dir) as path:
            connection.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as error:
        connection.close()
        raise InitUnreachable(f"the sandbox's init is not running ({error.strerror})") from None
    except BaseException:
        connection.close()
        raise
    return connection


def read_message(connection: socket.socket) -> dict[str, Any]:
    """The next message from the init; ``InitUnreachable`` when it went away (or answered nonsense)."""
    try:
        data = connection.recv(_MAX_REPLY_BYTES)
    except (TimeoutError, ConnectionResetError) as error:
        raise InitUnreachable(f"the sandbox's init did not answer ({error})") from None
    if not data:
        raise InitUnreachable("the sandbox's init closed the connection")
    try:
        message = json.loads(data)
    except ValueError:
        raise InitUnreachable("the sandbox's init answered something that is not JSON") from None
    if not isinstance(message, dict):
        raise InitUnreachable("the sandbox's init answered something that is not an object")
    return message


class _directory:
    """``/proc/self/fd/<n>/init.sock`` for a directory opened ``O_PATH`` (a unix socket path is at most 108 bytes)."""

    def __init__(self, sandbox_dir: Path) -> None:
        self._sandbox_dir = sandbox_dir
        self._fd = -1

    def __enter__(self) -> str:
        try:
            self._fd = os.open(self._sandbox_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InitUnreachable(f"the sandbox directory {self._sandbox_dir} is gone") from None
        return f"/proc/self/fd/{self._fd}/{INIT_SOCKET}"

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


_launcher_queue: queue.SimpleQueue[Callable[[], None]] | None = None
_launcher_lock = threading.Lock()


def _launcher() -> queue.SimpleQueue[Callable[[], None]]:
    """The queue of the thread that starts every init of this process (it lives as long as the process)."""
    global _launcher_queue
    with _launcher_lock:
        if _launcher_queue is None:
            jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    jobs.get()()

            threading.Thread(target=serve, name="sandbox-init-launcher", daemon=True).start()
            _launcher_queue = jobs
        return _launcher_queue
