"""The init of a local sandbox: the one long-lived process every command of the sandbox descends from.

This file runs *inside* the sandbox, under the system's ``python3 -I -S`` (its source is passed
with ``-c``; it imports only the standard library), as the sandbox user: ``bwrap`` started it
exactly as it used to start each command — in the sandbox's namespaces, without capabilities,
with ``no_new_privs`` and the seccomp filter, in the sandbox's cgroup. Whatever it starts
inherits all of that: nothing has to *join* the sandbox from outside, so nothing ever holds a
capability inside it. (bwrap's own pid 1, above this process, reaps orphans.)

It accepts requests on a listening unix socket it inherits as ``argv[1]`` (the host bound it in a
directory only the host can reach). One request per connection, as JSON, with file descriptors
passed alongside (``SCM_RIGHTS``):

- ``{"op": "run", "argv": [...]}`` with the command's stdin, stdout and stderr: start it in a
  session of its own, answer ``{"pid"}``, later ``{"exit": returncode}``. With ``"terminal":
  true`` the three are a pty's slave side and the command is started in this init's session: the
  ``setsid --ctty`` at the head of its argv (not a group leader, so it does not fork) makes it
  the leader of a new session, and so of its own process group, with the pty as its controlling
  terminal. ``{"op": "signal",
  "signal": n}`` on the same connection signals its process group; a connection closed before the
  command ended kills the group (its caller is gone).
- ``{"op": "start", "id", "argv"}``: a background process; its stdin is a pipe this init keeps.
- ``{"op": "stdin", "id", "data"}`` (base64), ``{"op": "kill", "id"}``, ``{"op": "list"}``.

The host trusts nothing it reads back beyond a number: code in the sandbox runs as the same user
and could replace this process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading

_MAX_REQUEST_BYTES = 4 * 1024 * 1024
_KILL_WAIT_S = 10
_BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

_background: dict[str, subprocess.Popen[bytes]] = {}
_background_lock = threading.Lock()


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    listener.set_inheritable(False)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve, args=(connection,), daemon=True).start()


def _send(connection: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        connection.send(json.dumps(message).encode())


def _serve(connection: socket.socket) -> None:
    with connection:
        try:
            data, fds, _, _ = socket.recv_fds(connection, _MAX_REQUEST_BYTES, 3)
        except OSError:
            return
        try:
            request = json.loads(data) if data else {}
            handler = _HANDLERS.get(request.get("op"))
            if handler is None:
                _send(connection, {"error": f"unknown request {request.get('op')!r}"})
            else:
                handler(connection, request, fds)
        except Exception as error:  # a bad request must never end the init
            _send(connection, {"error": f"{type(error).__name__}: {error}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _run(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    stdin, stdout, stderr = fds
    process = subprocess.Popen(
        list(request["argv"]),  # type: ignore[call-overload]
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=not request.get("terminal"),
        env=_BASE_ENV,
    )
    for fd in fds:
        os.close(fd)
    fds.clear()
    _send(connection, {"pid": process.pid})
    threading.Thread(target=_follow_signals, args=(connection, process), daemon=True).start()
    _send(connection, {"exit": process.wait()})


def _follow_signals(connection: socket.socket, process: subprocess.Popen[bytes]) -> None:
    """Signals the caller sends for its command; the caller gone before the command ended kills it."""
    while True:
        try:
            data = connection.recv(4096)
        except OSError:
            data = b""
        if not data:
            if process.returncode is None:
                _kill_group(process, signal.SIGKILL)
            return
        try:
            number = int(json.loads(data)["signal"])
        except (ValueError, KeyError, TypeError):
            continue
        _kill_group(process, number)


def _kill_group(process: subprocess.Popen[bytes], number: int) -> bool:
    if process.poll() is not None:
        return False
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:  # a terminal command before its setsid: no group of its own yet
        try:
            os.kill(process.pid, number)
        except OSError:
            return False
    except OSError:
        return False
    return True


def _start(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    process_id = str(request["id"])
    process = subprocess.Popen(
        list(request["argv"]),  # type: ignore[call-overload]
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=_BASE_ENV,
    )
    with _background_lock:
        _background[process_id] = process
    threading.Thread(target=_reap, args=(process_id, process), daemon=True).start()
    _send(connection, {"pid": process.pid})


def _reap(process_id: str, process: subprocess.Popen[bytes]) -> None:
    process.wait()
    with _background_lock:
        _background.pop(process_id, None)
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


def _stdin(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    with _background_lock:
        process = _background.get(str(request["id"]))
    if process is None or process.stdin is None:
        _send(connection, {"error": "not running"})
        return
    try:
        process.stdin.write(base64.b64decode(str(request["data"])))
        process.stdin.flush()
    except (BrokenPipeError, ValueError):
        _send(connection, {"error": "the process closed its standard input"})
        return
    _send(connection, {"ok": True})


def _kill(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    with _background_lock:
        process = _background.get(str(request["id"]))
    killed = process is not None and _kill_group(process, signal.SIGKILL)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_KILL_WAIT_S)  # so that a list right after the kill no longer shows it
        with _background_lock:
            _background.pop(str(request["id"]), None)
    _send(connection, {"killed": killed})


def _list(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    with _background_lock:
        running = [{"id": key, "pid": process.pid} for key, process in _background.items()]
    _send(connection, {"processes": running})


def _ping(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    _send(connection, {"ok": True})


_HANDLERS = {"run": _run, "start": _start, "stdin": _stdin, "kill": _kill, "list": _list, "ping": _ping}

if __name__ == "__main__":
    main()
