"""The ``e2b`` sandbox backend: E2B cloud sandboxes through the e2b SDK.

This is the only module that imports ``e2b``, and it does so lazily, inside the functions that
need it: the SDK costs about 330 ms at a cold start, which handlers that never touch a sandbox
should not pay. Every e2b exception is turned into one of ours here; the API key never appears
in a message we raise, nor in the exception chain attached to it.
"""

from __future__ import annotations

import errno
import math
import posixpath
import re
import shlex
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sandcastle.errors import DiskQuotaExceeded, ProcessNotFound, SandboxError, SandboxGone, SandboxUnavailable
from sandcastle.sandbox import background
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, ProcessOutput, SandboxSpec
from sandcastle.sandbox.listing import SandboxInfo

_KILL_BACKSTOP_GRACE_S = 5
"""Seconds the client waits past a command's deadline before killing it through envd itself."""
_SIGKILL_EXIT_CODE = 128 + 9
_TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_AUTHENTICATION_FAILED = "E2B rejected the API key; check E2B_API_KEY / the E2B secret"
_PROCESS_ID_IN_ARGS = re.compile(r"(?<=/\.sandcastle/processes/)proc-[0-9a-f]+")
_MAX_HELD = 32
"""Connected sandboxes a provider keeps (most recently used): one container serves a handful of runs."""


@dataclass
class _Held:
    """A sandbox this container is connected to, and when E2B will end it as far as this container set it."""

    sandbox: E2BSandbox
    alive_until: float | None
    """Monotonic time of the timeout this container last set (at create or keep-alive); None when unknown."""


class E2BSandboxProvider:
    """Creates, reconnects to and kills E2B sandboxes.

    ``sandbox_factory`` stands in for ``e2b.Sandbox`` (its ``create``/``connect``/``kill``
    class methods); tests pass a fake, production leaves it unset.

    ``api_url`` and ``sandbox_url`` point the SDK at another E2B-compatible service — the local
    sandbox server (``sandcastle.e2b_server``) sets both to its own URL; ``debug`` is the SDK's
    debug mode. Unset, the SDK uses E2B's cloud (or its own ``E2B_*`` environment variables).

    The provider keeps the sandboxes it created or connected to (one provider per container:
    ``wiring``), so a run's next tool call in this container costs no connect round trip, and it
    tracks the timeout it set, so the keep-alive is sent again only when less than half of what the
    caller asks remains. A kept sandbox is dropped when this provider kills it, when its timeout
    passed, and when E2B answers that it is gone (killed elsewhere: the reaper, a cancel, another
    container's FinishRun) — that use raises ``SandboxGone`` as a fresh connect would.
    """

    name = "e2b"

    def __init__(
        self,
        api_key: str,
        template: str,
        *,
        sandbox_factory: Any = None,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        debug: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_key = api_key
        self._clock = clock
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._lock = threading.Lock()
        self._template = template
        self._sandbox_factory = sandbox_factory
        self._connection: dict[str, Any] = {"api_key": api_key}
        """The SDK's connection options, passed on every call."""
        for option, value in (("api_url", api_url), ("sandbox_url", sandbox_url), ("debug", debug)):
            if value is not None:
                self._connection[option] = value

    def create(self, spec: SandboxSpec) -> E2BSandbox:
        """Create a sandbox that E2B kills after ``spec.timeout_s`` seconds unless kept alive.

        The sandbox's metadata carries ``app``, ``run_id`` and ``tenant`` (which the run's own
        metadata cannot override), so sandboxes can be listed per run or per tenant. Internet
        access is off unless the run asked for it; ``spec.idempotency_key`` (the run id) makes a
        retried create return the sandbox the first attempt made instead of leaking a second.
        """
        metadata = {**spec.metadata, "app": "sandcastle", "run_id": spec.run_id, "tenant": spec.tenant}
        options: dict[str, Any] = {}
        if spec.idempotency_key:
            options["idempotency_key"] = spec.idempotency_key
        with _translated_errors(self._api_key):
            sandbox = self._sdk_sandbox().create(
                template=spec.template or self._template,
                timeout=spec.timeout_s,
                metadata=metadata,
                envs=dict(spec.envs) or None,
                allow_internet_access=spec.allow_internet_access,
                **options,
                **self._connection,
            )
        # The timeout an idempotent retry's create answers is the first attempt's, of unknown age: not tracked.
        return self._hold(sandbox, alive_until=None).sandbox

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> E2BSandbox:
        """Reconnect to a live sandbox. Raises ``SandboxGone`` when it was killed or timed out.

        With ``keep_alive_s`` the sandbox's timeout is reset to that many seconds from now (the
        run's remaining time plus a margin): the sandbox follows its run instead of dying mid-run.
        A sandbox this container already holds is reused without a round trip, and its timeout is
        reset only when less than half of ``keep_alive_s`` is left of the one this container set.
        """
        now = self._clock()
        held = self._kept(sandbox_id, now)
        if held is None:
            with _translated_errors(self._api_key):
                sdk_sandbox = self._sdk_sandbox().connect(sandbox_id, **self._connection)
            held = self._hold(sdk_sandbox, alive_until=None)
        if keep_alive_s is not None and (held.alive_until is None or held.alive_until - now < keep_alive_s / 2):
            timeout = max(1, int(keep_alive_s))
            with held.sandbox.errors():
                held.sandbox.sdk_sandbox.set_timeout(timeout)
            held.alive_until = now + timeout
        return held.sandbox

    def _kept(self, sandbox_id: str, now: float) -> _Held | None:
        with self._lock:
            held = self._held.get(sandbox_id)
            if held is None:
                return None
            if held.alive_until is not None and held.alive_until <= now:  # its timeout passed: E2B ended it
                del self._held[sandbox_id]
                return None
            self._held.move_to_end(sandbox_id)
            return held

    def _hold(self, sdk_sandbox: Any, *, alive_until: float | None) -> _Held:
        held = _Held(E2BSandbox(sdk_sandbox, self._api_key, on_gone=self._forget), alive_until)
        with self._lock:
            self._held[held.sandbox.sandbox_id] = held
            while len(self._held) > _MAX_HELD:
                self._held.popitem(last=False)
        return held

    def _forget(self, sandbox_id: str) -> None:
        with self._lock:
            self._held.pop(sandbox_id, None)

    def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox. Idempotent: False when E2B no longer knows it."""
        self._forget(sandbox_id)
        try:
            with _translated_errors(self._api_key):
                return bool(self._sdk_sandbox().kill(sandbox_id, **self._connection))
        except SandboxGone:
            return False

    def _sdk_sandbox(self) -> Any:
        if self._sandbox_factory is None:
            from e2b import Sandbox

            self._sandbox_factory = Sandbox
        return self._sandbox_factory

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every E2B sandbox of this app (metadata ``app=sandcastle``), for the reaper, all pages."""
        from e2b import SandboxQuery

        infos: list[SandboxInfo] = []
        with _translated_errors(self._api_key):
            paginator = self._sdk_sandbox().list(query=SandboxQuery(metadata={"app": "sandcastle"}), **self._connection)
            while paginator.has_next:
                for item in paginator.next_items():
                    metadata = dict(item.metadata or {})
                    infos.append(
                        SandboxInfo(
                            sandbox_id=str(item.sandbox_id),
                            run_id=metadata.get("run_id"),
                            created_at=item.started_at,
                            expires_at=item.end_at,
                            metadata=metadata,
                        )
                    )
        return infos


class E2BSandbox:
    """A live E2B sandbox, wrapping an ``e2b.Sandbox``."""

    def __init__(self, sandbox: Any, api_key: str, *, on_gone: Callable[[str], None] | None = None) -> None:
        self._sandbox = sandbox
        self._api_key = api_key
        self._on_gone = on_gone
        self._commands = _ByteCommands.wrapping(sandbox)

    @property
    def sandbox_id(self) -> str:
        """E2B's id of the sandbox."""
        return str(self._sandbox.sandbox_id)

    @property
    def sdk_sandbox(self) -> Any:
        """The ``e2b.Sandbox`` this wraps."""
        return self._sandbox

    @contextmanager
    def errors(self, *, path: str | None = None) -> Iterator[None]:
        """Our errors for the SDK's (``_translated_errors``); a sandbox found gone is reported to ``on_gone``."""
        try:
            with _translated_errors(self._api_key, path=path):
                yield
        except SandboxGone:
            if self._on_gone is not None:
                self._on_gone(self.sandbox_id)
            raise

    def run(
        self, command: str, *, timeout_s: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run ``bash -lc command``; on timeout kill its whole process tree and report ``timed_out``.

        A timeout on the SDK's side only ends the client's stream: the command itself keeps
        running in the sandbox (e2b-dev/E2B#500), and envd's kill signals one pid, not the tree.
        So the deadline is enforced inside the sandbox: the command runs under coreutils
        ``timeout -s KILL``, which puts it in a process group of its own and SIGKILLs that whole
        group (background children included) when the deadline passes; the exit status is then
        137. The SDK's stream timeout is set a few seconds later as a backstop: if it fires, the
        client kills the command through envd (``commands.kill``) and reports a timeout too.
        Output printed before the kill is returned either way. A lost connection is not a
        timeout: it raises ``SandboxUnavailable`` (or ``SandboxGone``), and the in-sandbox
        deadline still ends the command.

        Output is kept byte-exact: the SDK's ``commands.run`` decodes it as UTF-8 with
        replacement characters, so the command is started through the SDK's own envd process
        client instead (``_ByteCommands``), which hands over the raw bytes envd sent.
        """
        from e2b import (
            CommandExitException,
            SandboxNotRunningException,
            SandboxUnreachableException,
            TimeoutException,
        )

        deadline_s = max(1, math.ceil(timeout_s))
        stdout: list[bytes | str] = []
        stderr: list[bytes | str] = []
        started = time.monotonic()
        with self.errors():
            handle = self._commands.run(
                _under_deadline(command, deadline_s),
                background=True,
                cwd=_sandbox_path(cwd) if cwd else None,
                envs=env,
                timeout=deadline_s + _KILL_BACKSTOP_GRACE_S,
            )
            try:
                exit_code: int | None = handle.wait(on_stdout=stdout.append, on_stderr=stderr.append).exit_code
            except CommandExitException as exited:
                exit_code = exited.exit_code
            except (SandboxNotRunningException, SandboxUnreachableException):
                raise
            except TimeoutException:
                self._sandbox.commands.kill(handle.pid)
                exit_code = None
        elapsed_s = time.monotonic() - started
        timed_out = exit_code is None or (exit_code == _SIGKILL_EXIT_CODE and elapsed_s >= deadline_s)
        return CommandResult(
            exit_code=None if timed_out else exit_code,
            stdout=_joined(stdout),
            stderr=_without_kill_notice(_joined(stderr)) if timed_out else _joined(stderr),
            duration_ms=int(elapsed_s * 1000),
            timed_out=timed_out,
        )

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file (E2B creates the parent directories).

        A path envd refuses (outside the workspace, not a regular file) raises ``ValueError``;
        a full disk raises ``DiskQuotaExceeded``: both are the model's to fix, not a failed run.
        """
        with self.errors(path=path):
            self._sandbox.files.write(_sandbox_path(path), data)

    def read_file(self, path: str) -> bytes:
        """Read a file; ``FileNotFoundError`` when it does not exist, ``ValueError`` when envd refuses the path."""
        with self.errors(path=path):
            return bytes(self._sandbox.files.read(_sandbox_path(path), format="bytes"))

    # --- background processes: envd keeps them (and their stdin); their output is kept in files ---

    def start_process(self, command: str, *, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
        """``commands.run(background=True, stdin=True)`` of the ``background`` wrapper, in a session of its own.

        envd's stream of it is dropped at once (the process lives on, as E2B's do): its output goes to
        its files in the sandbox, which ``process_output`` reads in any later invocation. Its envd pid
        is kept beside them, for ``write_stdin``.
        """
        process_id = background.new_process_id()
        directory = background.process_dir(process_id)
        self.write_file(f"{directory}/command", command.encode())
        line = f"exec setsid -w bash -c {shlex.quote(background.wrapper(process_id, command))}"
        with self.errors():
            handle = self._sandbox.commands.run(
                line, background=True, stdin=True, cwd=_sandbox_path(cwd) if cwd else None, envs=env, timeout=0
            )
            handle.disconnect()
        self.write_file(f"{directory}/pid", str(handle.pid).encode())
        return process_id

    def process_output(self, process_id: str) -> ProcessOutput:
        """New output since the last read (kept in the sandbox), and the exit status once it ended."""
        running = process_id in self.list_processes()
        return background.read_output(process_id, read=self.read_file, write=self.write_file, running=running)

    def write_stdin(self, process_id: str, data: bytes) -> None:
        """``commands.send_stdin`` to the process's envd pid; ``ProcessNotFound`` when it is not running."""
        pid = self._envd_pid(process_id)
        if process_id not in self.list_processes():
            raise ProcessNotFound(f"process {process_id} is not running")
        with self.errors():
            self._sandbox.commands.send_stdin(pid, data)

    def kill_process(self, process_id: str) -> bool:
        """SIGKILL the process's session (envd's own kill signals one pid, not its group); exit status 137."""
        directory = background.process_dir(process_id)
        pid = self._envd_pid(process_id)
        if process_id not in self.list_processes():
            return False
        self.run(f"kill -KILL -- -$(cat {shlex.quote(directory)}/pgid) 2>/dev/null", timeout_s=30)
        with self.errors():
            self._sandbox.commands.kill(pid)
        try:
            self.read_file(f"{directory}/exit")
        except FileNotFoundError:
            self.write_file(f"{directory}/exit", f"{background.KILLED_EXIT_CODE}\n".encode())
        return True

    def list_processes(self) -> list[str]:
        """The background processes envd still runs (told by the process id in their command line)."""
        with self.errors():
            processes = self._sandbox.commands.list()
        running = []
        for process in processes:
            found = _PROCESS_ID_IN_ARGS.search(" ".join([process.cmd or "", *(process.args or [])]))
            if found:
                running.append(found.group())
        return running

    def _envd_pid(self, process_id: str) -> int:
        directory = background.process_dir(process_id)
        try:
            return int(self.read_file(f"{directory}/pid"))
        except (FileNotFoundError, ValueError):
            raise ProcessNotFound(f"no background process {process_id} in this sandbox") from None


class _ByteCommands:
    """``commands.run(..., background=True)`` whose handle streams output as the bytes envd sent.

    Built on the SDK's generated envd process client (``process_connect.ProcessClientSync`` via
    ``e2b.envd.client_sync.create_rpc_client``, with the sandbox's own URL and headers) and its
    error mapping, so it behaves like ``Sandbox.commands`` except that nothing is decoded.
    """

    def __init__(self, sandbox: Any) -> None:
        from e2b.api.client_sync import get_envd_api
        from e2b.envd.client_sync import create_rpc_client
        from e2b.envd.process import process_connect

        self._rpc = create_rpc_client(
            process_connect.ProcessClientSync, sandbox.envd_api_url, sandbox.connection_config
        )
        self._health_api = get_envd_api(sandbox.connection_config, sandbox.envd_api_url, retry_connect=False)

    @classmethod
    def wrapping(cls, sandbox: Any) -> Any:
        """Byte commands for a real ``e2b.Sandbox``; anything else (a test's fake) keeps its own ``commands``."""
        from e2b import Sandbox

        return cls(sandbox) if isinstance(sandbox, Sandbox) else sandbox.commands

    def run(
        self, cmd: str, *, background: bool, cwd: str | None, envs: dict[str, str] | None, timeout: float
    ) -> _ByteHandle:
        from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
        from e2b.envd.process import process_pb
        from e2b.envd.utils import authentication_header, extract_start_pid, timeout_to_ms
        from packaging.version import Version

        assert background, "the byte path always returns a handle"
        events = self._rpc.start(
            process_pb.StartRequest(
                process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", cmd], envs=envs, cwd=cwd),
                stdin=False,
            ),
            headers={
                **authentication_header(Version("0.4.0"), "user"),
                KEEPALIVE_PING_HEADER: str(KEEPALIVE_PING_INTERVAL_SEC),
            },
            timeout_ms=timeout_to_ms(timeout),
        )
        try:
            pid = extract_start_pid(next(events), "start process")
        except Exception as error:
            events.close()
            raise self.translated(error) from None
        return _ByteHandle(pid, events, self)

    def translated(self, error: Exception) -> Exception:
        """An envd RPC error as the SDK's exception (probing the sandbox's health when the connection failed)."""
        from e2b.envd.api import check_sandbox_health
        from e2b.envd.rpc import handle_rpc_exception_with_health
        from e2b.exceptions import SandboxUnreachableException

        mapped = handle_rpc_exception_with_health(error, lambda: check_sandbox_health(self._health_api))
        if mapped is error and not isinstance(error, SandboxUnreachableException):
            return SandboxUnreachableException(f"the command stream failed: {error}")
        return mapped


class _ByteHandle:
    """A started command: ``wait`` streams its raw output to the callbacks, then returns or raises like the SDK's."""

    def __init__(self, pid: int, events: Any, commands: _ByteCommands) -> None:
        self.pid = pid
        self._events = events
        self._commands = commands

    def wait(self, on_stdout: Any, on_stderr: Any) -> Any:
        from e2b import CommandExitException, CommandResult
        from protobuf import Oneof

        try:
            for response in self._events:
                match response.event.event if response.event is not None else None:
                    case Oneof(field="data", value=data):
                        match data.output:
                            case Oneof(field="stdout", value=chunk):
                                on_stdout(bytes(chunk))
                            case Oneof(field="stderr", value=chunk):
                                on_stderr(bytes(chunk))
                    case Oneof(field="end", value=end):
                        if end.exit_code != 0:
                            raise CommandExitException(stdout="", stderr="", exit_code=end.exit_code, error=end.error)
                        return CommandResult(stdout="", stderr="", exit_code=0, error=None)
        except CommandExitException:
            raise
        except Exception as error:
            raise self._commands.translated(error) from None
        finally:
            self._events.close()
        raise self._commands.translated(RuntimeError("the command stream ended without an end event"))


_KILL_NOTICE = re.compile(rb"(?:\A|\n)[^\n]*: line \d+: +\d+ Killed +timeout -s KILL \d+ bash -c .*\Z", re.DOTALL)
"""What the outer shell of ``_under_deadline`` prints last when ``timeout`` SIGKILLs its group."""


def _without_kill_notice(stderr: bytes) -> bytes:
    """The command's stderr without the wrapper shell's ``Killed`` job notice (not the command's output)."""
    match = _KILL_NOTICE.search(stderr)
    if match is None:
        return stderr
    return stderr[: match.start()] + (b"\n" if match.group().startswith(b"\n") else b"")


def _joined(chunks: list[bytes | str]) -> bytes:
    return b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks)


def _under_deadline(command: str, deadline_s: int) -> str:
    """The shell line envd runs: the command under ``timeout``, then an explicit ``exit``.

    envd's shell is the one login shell (``bash -l``); the command's own ``bash -c`` inherits its
    environment rather than reading the profiles a second time.

    The trailing ``exit`` keeps envd's bash from exec-ing ``timeout`` in its place, so a
    SIGKILLed group surfaces as the exit status 137 rather than as a signal.
    """
    return f"timeout -s KILL {deadline_s} bash -c {shlex.quote(command)}; exit $?"


def _sandbox_path(path: str) -> str:
    """An absolute path under ``/home/user``; ``ValueError`` when ``path`` points elsewhere."""
    absolute = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if absolute != SANDBOX_HOME and not absolute.startswith(SANDBOX_HOME + "/"):
        raise ValueError(f"path {path!r} is outside the sandbox workspace {SANDBOX_HOME}")
    return absolute


@contextmanager
def _translated_errors(api_key: str, *, path: str | None = None) -> Iterator[None]:
    """Turn e2b (and transport) exceptions into Sandcastle's, keeping the API key out of them."""
    import httpx
    from e2b import exceptions as e2b_errors

    try:
        yield
    except e2b_errors.AuthenticationException:
        raise SandboxError(_AUTHENTICATION_FAILED) from None
    except (e2b_errors.RateLimitException, e2b_errors.ServiceBusyException) as error:
        raise SandboxUnavailable(
            f"E2B is rate limiting or busy ({_describe(error, api_key)}); retry later"
        ) from _safe_cause(error, api_key)
    except e2b_errors.FileNotFoundException:
        raise FileNotFoundError(errno.ENOENT, "no such file in the sandbox", path) from None
    except e2b_errors.InvalidArgumentException as error:
        if path is None:
            raise SandboxError(f"E2B refused the request ({_describe(error, api_key)})") from None
        raise ValueError(_describe_path_error(error, api_key)) from None
    except e2b_errors.NotEnoughSpaceException as error:
        if path is None:
            raise SandboxError(f"E2B refused the request ({_describe(error, api_key)})") from None
        raise DiskQuotaExceeded(
            f"disk quota exceeded: the sandbox's disk is full ({_describe_path_error(error, api_key)}); "
            "delete files to make room"
        ) from None
    except (e2b_errors.NotFoundException, e2b_errors.SandboxNotRunningException) as error:
        raise SandboxGone(f"the E2B sandbox no longer exists ({_describe(error, api_key)})") from _safe_cause(
            error, api_key
        )
    except (e2b_errors.TimeoutException, httpx.TransportError) as error:
        raise SandboxUnavailable(
            f"E2B could not be reached in time ({_describe(error, api_key)}); retry later"
        ) from _safe_cause(error, api_key)
    except e2b_errors.SandboxException as error:
        if error.status_code in _TRANSIENT_HTTP_STATUSES:
            raise SandboxUnavailable(
                f"E2B failed transiently ({_describe(error, api_key)}); retry later"
            ) from _safe_cause(error, api_key)
        raise SandboxError(f"E2B refused the request ({_describe(error, api_key)})") from _safe_cause(error, api_key)


def _describe_path_error(error: BaseException, api_key: str) -> str:
    """The message envd gave for a refused path (without the SDK's status prefix)."""
    text = str(error).replace(api_key, "***") if api_key else str(error)
    return re.sub(r"^\d{3}: ", "", text) or type(error).__name__


def _describe(error: BaseException, api_key: str) -> str:
    text = str(error).replace(api_key, "***") if api_key else str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _safe_cause(error: BaseException, api_key: str) -> BaseException | None:
    """The error to chain ours to, or None when any message in its chain contains the key."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if api_key and api_key in str(current):
            return None
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return error
