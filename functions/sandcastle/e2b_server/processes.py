"""envd's ``process.Process`` service, served through the SDK's own ``ProcessWSGIApplication``.

Each command runs through ``LocalSandbox.spawn`` (a fresh hardened ``bwrap``). Two threads pump
its stdout and stderr into every subscribed stream as raw bytes (the wire carries them base64 in
JSON: nothing is decoded on this side). A command's timeout is the ``Start`` call's deadline
(``Connect-Timeout-Ms``): when it passes the server kills the whole tree — unlike E2B, where a
client timeout only ends the stream (e2b-dev/E2B#500) — and the stream ends ``deadline_exceeded``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
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

Event = tuple[str, Any]
"""``("stdout"|"stderr", bytes)`` or ``("end", EndEvent)``."""


class RunningProcess:
    """A command of a sandbox: its pipes pumped to subscribers, its end broadcast, its deadline enforced."""

    def __init__(
        self,
        record: SandboxRecord,
        pid: int,
        config: pb.ProcessConfig,
        tag: str | None,
        spawned: SandboxProcess,
        timeout_s: float | None,
    ) -> None:
        self.record = record
        self.pid = pid
        self.config = config
        self.tag = tag
        self._spawned = spawned
        self._subscribers: list[queue.SimpleQueue[Event]] = []
        self._lock = threading.Lock()
        self._end: pb.ProcessEvent.EndEvent | None = None
        self.deadline_exceeded = False
        self.killed = False
        self._timer = threading.Timer(timeout_s, self._on_deadline) if timeout_s else None

    def start(self) -> None:
        """Start pumping output (subscribe first: nothing printed before is lost) and the deadline timer."""
        pumps = [
            threading.Thread(target=self._pump, args=(self._spawned.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(self._spawned.stderr, "stderr"), daemon=True),
        ]
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
                subscriber.put(("end", self._end))
            else:
                self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: queue.SimpleQueue[Event]) -> None:
        with self._lock, suppress(ValueError):
            self._subscribers.remove(subscriber)

    def kill(self) -> None:
        """SIGKILL the command's whole process tree (it then ends with exit code -1, ``signal: killed``)."""
        self.killed = True
        self._spawned.kill()

    def _on_deadline(self) -> None:
        self.deadline_exceeded = True
        self.kill()

    def _broadcast(self, event: Event) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.put(event)

    def _pump(self, pipe: Any, stream: str) -> None:
        fd = pipe.fileno()
        try:
            while chunk := os.read(fd, _READ_CHUNK_BYTES):
                self._broadcast((stream, chunk))
        finally:
            pipe.close()

    def _finish(self, pumps: list[threading.Thread]) -> None:
        for pump in pumps:
            pump.join()
        exit_code = self._spawned.wait()
        if self._timer is not None:
            self._timer.cancel()
        if self._spawned.limit_note:
            self._broadcast(("stderr", self._spawned.limit_note.encode() + b"\n"))
        if self.killed:  # as envd reports a process ended by a signal
            end = pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=_SIGNAL_EXIT_STATUS)
        else:
            end = pb.ProcessEvent.EndEvent(exit_code=exit_code, exited=True, status=f"exit status {exit_code}")
        with self.record.lock:
            self.record.processes.pop(self.pid, None)
        with self._lock:
            self._end = end
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.put(("end", end))


class ProcessService:
    """``process.Process`` (the sync protocol of ``process_connect``) over the server's sandboxes.

    ``sandbox_for`` maps a call's request headers to its sandbox (by ``E2b-Sandbox-Id``), raising
    the ``ConnectError`` the SDK expects when there is none.
    """

    def __init__(self, sandbox_for: Callable[[Any], SandboxRecord]) -> None:
        self._sandbox_for = sandbox_for

    def start(self, request: pb.StartRequest, ctx: Any) -> Iterator[pb.StartResponse]:
        """Spawn ``cmd args`` in the sandbox and stream its start, output and end."""
        record = self._sandbox_for(ctx.request_headers)
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "PTY sessions are not supported by this sandbox server")
        config = request.process or pb.ProcessConfig()
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd must not be empty")
        timeout_ms = ctx.timeout_ms
        try:
            spawned = record.sandbox.spawn(
                [config.cmd, *config.args],
                cwd=config.cwd if config.has_field("cwd") and config.cwd else None,
                env=dict(config.envs or {}),
            )
        except SandboxGone as error:
            raise _sandbox_not_found(record.sandbox_id) from error
        pid = record.allocate_pid()
        process = RunningProcess(
            record,
            pid,
            config,
            request.tag if request.has_field("tag") else None,
            spawned,
            timeout_ms / 1000 if timeout_ms else None,
        )
        with record.lock:
            record.processes[pid] = process
        subscriber = process.subscribe()
        process.start()
        keepalive_s = _keepalive_interval(ctx.request_headers)
        yield pb.StartResponse(event=_event("start", pb.ProcessEvent.StartEvent(pid=pid)))
        for event in _stream(process, subscriber, keepalive_s, deadline=None):
            yield pb.StartResponse(event=event)

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
        return pb.SendSignalResponse()

    def update(self, request: pb.UpdateRequest, ctx: Any) -> pb.UpdateResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "PTY resizing is not supported by this sandbox server")

    def send_input(self, request: pb.SendInputRequest, ctx: Any) -> pb.SendInputResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "stdin is not supported by this sandbox server (commands get /dev/null)")

    def stream_input(self, request: Iterator[pb.StreamInputRequest], ctx: Any) -> pb.StreamInputResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "stdin is not supported by this sandbox server (commands get /dev/null)")

    def close_stdin(self, request: pb.CloseStdinRequest, ctx: Any) -> pb.CloseStdinResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "stdin is not supported by this sandbox server (commands get /dev/null)")


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


def _keepalive_interval(headers: Any) -> float:
    try:
        return max(1.0, float(headers.get("keepalive-ping-interval") or _DEFAULT_KEEPALIVE_S))
    except ValueError:
        return _DEFAULT_KEEPALIVE_S


def _sandbox_not_found(sandbox_id: str) -> ConnectError:
    return ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
