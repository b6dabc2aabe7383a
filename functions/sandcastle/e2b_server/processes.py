"""envd's ``process.Process`` service, served through the SDK's own ``ProcessWSGIApplication``.

Each command runs through ``LocalSandbox.spawn`` (a fresh hardened ``bwrap``) and lives until it
exits, is killed, or its sandbox ends — whether or not a client is attached to its stream
(``commands.run(background=True)``, ``commands.connect(pid)``). Threads pump its stdout and stderr
(or, for a PTY, the pty's master side) into every subscribed stream as raw bytes (the wire carries
them base64 in JSON: nothing is decoded on this side). ``stdin=True`` gives it a pipe that
``send_input`` writes and ``close_stdin`` closes.

A PTY is a pseudo-terminal allocated on the host (``os.openpty``): the sandboxed process gets the
slave side as stdin, stdout and stderr, made its controlling terminal by util-linux ``setsid
--ctty`` inside the sandbox (so ``tput``, job control and ``SIGWINCH`` on resize work), and the
server keeps the master side, whose window size ``update`` sets. Each PTY has its own pair, so
keystrokes injected into it reach nobody else.

A command's timeout is the ``Start`` call's deadline (``Connect-Timeout-Ms``): when it passes the
server kills the whole tree — unlike E2B, where a client timeout only ends the stream
(e2b-dev/E2B#500) — and the stream ends ``deadline_exceeded``. When the sandbox itself is killed
(or times out) while a stream is open, the stream fails ``unavailable`` as envd's does, and the
SDK, probing ``/health``, reports the sandbox gone (``SandboxNotRunningException``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import shutil
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb as pb
from protobuf import Oneof

from sandcastle.e2b_server.registry import SandboxRecord
from sandcastle.errors import SandboxGone
from sandcastle.sandbox.local_sandbox import SandboxProcess

_READ_CHUNK_BYTES = 64 * 1024
_DEFAULT_KEEPALIVE_S = 50.0
_SIGNAL_EXIT_STATUS = "signal: killed"
_KILL_WAIT_S = 5.0
_SETSID = "setsid"
"""util-linux ``setsid``: ``--wait --ctty`` makes the PTY the session's controlling terminal."""

_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envd-spawner")
"""Every sandbox process is started from this one long-lived thread. bwrap's ``--die-with-parent``
is ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked it ends: started from a request's
thread, a background process would be killed as soon as its HTTP connection closed."""

Event = tuple[str, Any]
"""``("stdout"|"stderr"|"pty", bytes)``, ``("end", EndEvent)`` or ``("gone", None)`` (sandbox killed)."""


class RunningProcess:
    """A command of a sandbox: its output pumped to subscribers, its end broadcast, its deadline enforced."""

    def __init__(
        self,
        record: SandboxRecord,
        pid: int,
        config: pb.ProcessConfig,
        tag: str | None,
        spawned: SandboxProcess,
        timeout_s: float | None,
        terminal: int | None = None,
    ) -> None:
        self.record = record
        self.pid = pid
        self.config = config
        self.tag = tag
        self._spawned = spawned
        self._terminal = terminal
        """The pty's master fd for a PTY process (closed when the process ends), else None."""
        self._subscribers: list[queue.SimpleQueue[Event]] = []
        self._lock = threading.Lock()
        self._input_lock = threading.Lock()
        self._end: Event | None = None
        self.ended = threading.Event()
        """Set once the process has ended and left the sandbox's process table."""
        self.deadline_exceeded = False
        self.killed = False
        self.sandbox_gone = False
        self._timer = threading.Timer(timeout_s, self._on_deadline) if timeout_s else None

    @property
    def host_pid(self) -> int:
        """The host pid at the top of the command's process tree (for freezing a paused sandbox)."""
        return self._spawned.pid

    @property
    def is_pty(self) -> bool:
        return self._terminal is not None

    def start(self) -> None:
        """Start pumping output (subscribe first: nothing printed before is lost) and the deadline timer."""
        if self._terminal is not None:
            sources = [(self._terminal, "pty")]
        else:
            sources = [(self._spawned.stdout.fileno(), "stdout"), (self._spawned.stderr.fileno(), "stderr")]
        pumps = [threading.Thread(target=self._pump, args=source, daemon=True) for source in sources]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._finish, args=(pumps,), daemon=True, name=f"envd-wait-{self.pid}").start()
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def subscribe(self) -> queue.SimpleQueue[Event]:
        """A queue receiving every later output chunk and then the end (at once when it already ended)."""
        subscriber: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            if self._end is not None:
                subscriber.put(self._end)
            else:
                self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: queue.SimpleQueue[Event]) -> None:
        with self._lock, suppress(ValueError):
            self._subscribers.remove(subscriber)

    def kill(self, *, sandbox_gone: bool = False) -> None:
        """SIGKILL the command's whole process tree (it then ends with exit code -1, ``signal: killed``).

        ``sandbox_gone``: the sandbox is being killed, so open streams fail as envd's do then.
        """
        self.killed = True
        self.sandbox_gone = self.sandbox_gone or sandbox_gone
        self._spawned.kill()

    def write_input(self, data: bytes) -> None:
        """Write to the command's stdin pipe or its PTY; ``FAILED_PRECONDITION`` when it has neither (any more)."""
        with self._input_lock:
            if self._terminal is not None:
                target = self._terminal
            else:
                pipe = self._spawned.stdin
                if pipe is None or pipe.closed:
                    raise ConnectError(
                        Code.FAILED_PRECONDITION,
                        f"process {self.pid} has no open stdin: start it with stdin=True (and do not close it)",
                    )
                target = pipe.fileno()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(target, view) :]
            except OSError as error:
                raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} stopped reading its input") from error

    def close_stdin(self) -> None:
        """Close the stdin pipe (EOF for the command); PTYs have none (send Ctrl-D, b'\\x04', instead)."""
        if self._terminal is not None:
            raise ConnectError(
                Code.FAILED_PRECONDITION, f"process {self.pid} is a PTY: send Ctrl-D (b'\\x04') to end its input"
            )
        with self._input_lock:
            pipe = self._spawned.stdin
            if pipe is None:
                raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} was started without stdin=True")
            with suppress(OSError):
                pipe.close()

    def resize(self, cols: int, rows: int) -> None:
        """Set the PTY's window size (the terminal's foreground process group gets ``SIGWINCH``)."""
        if self._terminal is None:
            raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} is not a PTY; only PTYs can be resized")
        if not (0 < cols < 65536 and 0 < rows < 65536):
            raise ConnectError(Code.INVALID_ARGUMENT, f"pty size must be 1-65535 columns and rows, got {cols}x{rows}")
        with suppress(OSError):
            fcntl.ioctl(self._terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _on_deadline(self) -> None:
        self.deadline_exceeded = True
        self.kill()

    def _broadcast(self, event: Event) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.put(event)

    def _pump(self, fd: int, stream: str) -> None:
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK_BYTES)
            except OSError as error:
                if error.errno == errno.EIO:  # a pty's master once every slave is closed: the end
                    return
                raise
            if not chunk:
                return
            self._broadcast((stream, chunk))

    def _finish(self, pumps: list[threading.Thread]) -> None:
        exit_code = self._spawned.wait()
        for pump in pumps:
            pump.join(timeout=None if self._terminal is None else 2.0)
        if self._terminal is not None:
            with suppress(OSError):
                os.close(self._terminal)
        else:
            for pipe in (self._spawned.stdout, self._spawned.stderr, self._spawned.stdin):
                if pipe is not None:
                    with suppress(OSError):
                        pipe.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._spawned.limit_note:
            kind = "pty" if self._terminal is not None else "stderr"
            self._broadcast((kind, self._spawned.limit_note.encode() + b"\n"))
        end: Event
        if self.sandbox_gone:
            end = ("gone", None)
        elif self.killed:  # as envd reports a process ended by a signal
            end = ("end", pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=_SIGNAL_EXIT_STATUS))
        else:
            end = ("end", pb.ProcessEvent.EndEvent(exit_code=exit_code, exited=True, status=f"exit status {exit_code}"))
        with self.record.lock:
            self.record.processes.pop(self.pid, None)
        with self._lock:
            self._end = end
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.put(end)
        self.ended.set()


class ProcessService:
    """``process.Process`` (the sync protocol of ``process_connect``) over the server's sandboxes.

    ``sandbox_for`` maps a call's request headers to its sandbox (by ``E2b-Sandbox-Id``), raising
    the ``ConnectError`` the SDK expects when there is none.
    """

    def __init__(self, sandbox_for: Callable[[Any], SandboxRecord]) -> None:
        self._sandbox_for = sandbox_for

    def start(self, request: pb.StartRequest, ctx: Any) -> Iterator[pb.StartResponse]:
        """Spawn ``cmd args`` in the sandbox (on a PTY when asked) and stream its start, output and end."""
        record = self._sandbox_for(ctx.request_headers)
        config = request.process or pb.ProcessConfig()
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd must not be empty")
        # envd's default for an unset ``stdin`` is an open pipe (the proto keeps it for old clients).
        timeout_ms = ctx.timeout_ms
        process = _launch(
            record,
            config,
            tag=request.tag if request.has_field("tag") else None,
            pty=request.pty,
            stdin=request.stdin if request.has_field("stdin") else True,
            timeout_s=timeout_ms / 1000 if timeout_ms else None,
        )
        subscriber = process.subscribe()
        process.start()
        keepalive_s = _keepalive_interval(ctx.request_headers)
        yield pb.StartResponse(event=_event("start", pb.ProcessEvent.StartEvent(pid=process.pid)))
        for event in _stream(process, subscriber, keepalive_s, deadline=None):
            yield pb.StartResponse(event=event)

    def start_in_background(self, record: SandboxRecord, command: str) -> None:
        """Start a template's start command (``bash -lc``) in a new sandbox, with no stream attached."""
        config = pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", command])
        _launch(record, config, tag="start-command", pty=None, stdin=False, timeout_s=None).start()

    def connect(self, request: pb.ConnectRequest, ctx: Any) -> Iterator[pb.ConnectResponse]:
        """Attach to a running process: its pid, then its later output and end."""
        record = self._sandbox_for(ctx.request_headers)
        process = _select(record, request.process)
        subscriber = process.subscribe()
        timeout_ms = ctx.timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        keepalive_s = _keepalive_interval(ctx.request_headers)
        yield pb.ConnectResponse(event=_event("start", pb.ProcessEvent.StartEvent(pid=process.pid)))
        for event in _stream(process, subscriber, keepalive_s, deadline=deadline):
            yield pb.ConnectResponse(event=event)

    def list(self, request: pb.ListRequest, ctx: Any) -> pb.ListResponse:
        """The sandbox's running processes."""
        record = self._sandbox_for(ctx.request_headers)
        with record.lock:
            processes = sorted(record.processes.values(), key=lambda process: process.pid)
        return pb.ListResponse(
            processes=[pb.ProcessInfo(config=process.config, pid=process.pid, tag=process.tag) for process in processes]
        )

    def send_signal(self, request: pb.SendSignalRequest, ctx: Any) -> pb.SendSignalResponse:
        """SIGKILL or SIGTERM: either ends the process's whole tree (its PID namespace dies with bwrap)."""
        record = self._sandbox_for(ctx.request_headers)
        process = _select(record, request.process)
        if request.signal not in (pb.Signal.SIGKILL, pb.Signal.SIGTERM):
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported signal {request.signal}; send SIGKILL or SIGTERM")
        process.kill()
        process.ended.wait(timeout=_KILL_WAIT_S)  # once answered, the process is gone from ``list``
        return pb.SendSignalResponse()

    def update(self, request: pb.UpdateRequest, ctx: Any) -> pb.UpdateResponse:
        """Resize a PTY."""
        record = self._sandbox_for(ctx.request_headers)
        process = _select(record, request.process)
        if request.pty is None or request.pty.size is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "update needs pty.size (cols and rows)")
        process.resize(request.pty.size.cols, request.pty.size.rows)
        return pb.UpdateResponse()

    def send_input(self, request: pb.SendInputRequest, ctx: Any) -> pb.SendInputResponse:
        """Write bytes to a process's stdin (``input.stdin``) or its PTY (``input.pty``)."""
        record = self._sandbox_for(ctx.request_headers)
        process = _select(record, request.process)
        process.write_input(_input_bytes(process, request.input))
        return pb.SendInputResponse()

    def stream_input(self, request: Iterator[pb.StreamInputRequest], ctx: Any) -> pb.StreamInputResponse:
        """A client stream: a start event naming the process, then data events written in order."""
        record = self._sandbox_for(ctx.request_headers)
        process: RunningProcess | None = None
        for message in request:
            event = message.event
            if event is None or event.field == "keepalive":
                continue
            if event.field == "start":
                process = _select(record, event.value.process)
            elif process is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "stream_input must start with an event naming the process")
            else:
                process.write_input(_input_bytes(process, event.value.input))
        return pb.StreamInputResponse()

    def close_stdin(self, request: pb.CloseStdinRequest, ctx: Any) -> pb.CloseStdinResponse:
        """Close a process's stdin: the command reads EOF."""
        record = self._sandbox_for(ctx.request_headers)
        _select(record, request.process).close_stdin()
        return pb.CloseStdinResponse()


def _launch(
    record: SandboxRecord,
    config: pb.ProcessConfig,
    *,
    tag: str | None,
    pty: pb.PTY | None,
    stdin: bool,
    timeout_s: float | None,
) -> RunningProcess:
    """Spawn a process of the sandbox and register it under a new pid (not started pumping yet)."""
    program = [config.cmd, *config.args]
    terminal = slave = None
    if pty is not None:
        size = pty.size or pb.PTY.Size(cols=80, rows=24)
        terminal, slave = _open_pty(size.cols or 80, size.rows or 24)
        program = [_setsid(), "--wait", "--ctty", *program]
    try:
        spawned = _SPAWNER.submit(
            record.sandbox.spawn,
            program,
            cwd=config.cwd if config.has_field("cwd") and config.cwd else None,
            env=dict(config.envs or {}),
            stdin=stdin and terminal is None,
            terminal=slave,
        ).result()
    except SandboxGone as error:
        if terminal is not None:
            os.close(terminal)
        raise _sandbox_not_found(record.sandbox_id) from error
    finally:
        if slave is not None:
            os.close(slave)  # the sandboxed process holds its own copies
    process = RunningProcess(record, record.allocate_pid(), config, tag, spawned, timeout_s, terminal=terminal)
    with record.lock:
        record.processes[process.pid] = process
    return process


def _stream(
    process: RunningProcess, subscriber: queue.SimpleQueue[Event], keepalive_s: float, *, deadline: float | None
) -> Iterator[pb.ProcessEvent]:
    """The process events for one stream: output, keepalives while idle, then the end (or an error)."""
    try:
        while True:
            wait_s = keepalive_s if deadline is None else min(keepalive_s, deadline - time.monotonic())
            if wait_s <= 0:
                raise ConnectError(Code.DEADLINE_EXCEEDED, f"the stream of process {process.pid} reached its timeout")
            try:
                kind, payload = subscriber.get(timeout=wait_s)
            except queue.Empty:
                yield _event("keepalive", pb.ProcessEvent.KeepAlive())
                continue
            if kind == "gone":
                raise ConnectError(
                    Code.UNAVAILABLE,
                    f"the connection to sandbox {process.record.sandbox_id} ended before the stream of "
                    f"process {process.pid} completed",
                )
            if kind == "end":
                if process.deadline_exceeded:
                    raise ConnectError(
                        Code.DEADLINE_EXCEEDED,
                        f"process {process.pid} exceeded its timeout and was killed with its whole process tree",
                    )
                yield _event("end", payload)
                return
            yield _event("data", pb.ProcessEvent.DataEvent(output=Oneof(kind, payload)))
    finally:
        process.unsubscribe(subscriber)


def _event(kind: str, payload: Any) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof(kind, payload))


def _select(record: SandboxRecord, selector: pb.ProcessSelector | None) -> RunningProcess:
    """The running process a selector (pid or tag) names; NOT_FOUND when there is none."""
    chosen = selector.selector if selector is not None else None
    with record.lock:
        if chosen is not None and chosen.field == "pid" and chosen.value in record.processes:
            return record.processes[chosen.value]
        if chosen is not None and chosen.field == "tag":
            for process in record.processes.values():
                if process.tag == chosen.value:
                    return process
    described = f"{chosen.field} {chosen.value}" if chosen is not None else "no selector"
    raise ConnectError(Code.NOT_FOUND, f"process with {described} not found")


def _input_bytes(process: RunningProcess, given: pb.ProcessInput | None) -> bytes:
    """The bytes of a ``ProcessInput``, which must match the process: ``pty`` for a PTY, ``stdin`` otherwise."""
    chosen = given.input if given is not None else None
    if chosen is None:
        raise ConnectError(Code.INVALID_ARGUMENT, "input must set stdin or pty")
    expected = "pty" if process.is_pty else "stdin"
    if chosen.field != expected:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"process {process.pid} takes input.{expected}, not input.{chosen.field}"
        )
    return bytes(chosen.value)


def _open_pty(cols: int, rows: int) -> tuple[int, int]:
    """A new pty pair ``(master, slave)`` of the given size; the master is non-inheritable."""
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.set_inheritable(slave, True)
    return master, slave


def _setsid() -> str:
    found = shutil.which(_SETSID, path="/usr/bin:/bin")
    if found is None:
        raise ConnectError(Code.UNIMPLEMENTED, "PTYs need util-linux setsid here (apt-get install util-linux)")
    return found


def _keepalive_interval(headers: Any) -> float:
    try:
        return max(1.0, float(headers.get("keepalive-ping-interval") or _DEFAULT_KEEPALIVE_S))
    except ValueError:
        return _DEFAULT_KEEPALIVE_S


def _sandbox_not_found(sandbox_id: str) -> ConnectError:
    return ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
