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
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sandcastle.errors import SandboxError, SandboxGone, SandboxUnavailable
from sandcastle.sandbox.base import SANDBOX_HOME, CommandResult, SandboxSpec
from sandcastle.sandbox.listing import SandboxInfo

_KILL_BACKSTOP_GRACE_S = 5
"""Seconds the client waits past a command's deadline before killing it through envd itself."""
_SIGKILL_EXIT_CODE = 128 + 9
_TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_AUTHENTICATION_FAILED = "E2B rejected the API key; check E2B_API_KEY / the E2B secret"


class E2BSandboxProvider:
    """Creates, reconnects to and kills E2B sandboxes.

    ``sandbox_factory`` stands in for ``e2b.Sandbox`` (its ``create``/``connect``/``kill``
    class methods); tests pass a fake, production leaves it unset.
    """

    name = "e2b"

    def __init__(self, api_key: str, template: str, *, sandbox_factory: Any = None) -> None:
        self._api_key = api_key
        self._template = template
        self._sandbox_factory = sandbox_factory

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
                api_key=self._api_key,
                allow_internet_access=spec.allow_internet_access,
                **options,
            )
        return E2BSandbox(sandbox, self._api_key)

    def connect(self, sandbox_id: str, *, keep_alive_s: int | None = None) -> E2BSandbox:
        """Reconnect to a live sandbox. Raises ``SandboxGone`` when it was killed or timed out.

        With ``keep_alive_s`` the sandbox's timeout is reset to that many seconds from now (the
        run's remaining time plus a margin): the sandbox follows its run instead of dying mid-run.
        """
        with _translated_errors(self._api_key):
            sandbox = self._sdk_sandbox().connect(sandbox_id, api_key=self._api_key)
            if keep_alive_s is not None:
                sandbox.set_timeout(max(1, int(keep_alive_s)))
        return E2BSandbox(sandbox, self._api_key)

    def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox. Idempotent: False when E2B no longer knows it."""
        try:
            with _translated_errors(self._api_key):
                return bool(self._sdk_sandbox().kill(sandbox_id, api_key=self._api_key))
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
            paginator = self._sdk_sandbox().list(
                query=SandboxQuery(metadata={"app": "sandcastle"}), api_key=self._api_key
            )
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

    def __init__(self, sandbox: Any, api_key: str) -> None:
        self._sandbox = sandbox
        self._api_key = api_key

    @property
    def sandbox_id(self) -> str:
        """E2B's id of the sandbox."""
        return str(self._sandbox.sandbox_id)

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
        """
        from e2b import (
            CommandExitException,
            SandboxNotRunningException,
            SandboxUnreachableException,
            TimeoutException,
        )

        deadline_s = max(1, math.ceil(timeout_s))
        stdout: list[str] = []
        stderr: list[str] = []
        started = time.monotonic()
        with _translated_errors(self._api_key):
            handle = self._sandbox.commands.run(
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
            stdout="".join(stdout).encode(),
            stderr="".join(stderr).encode(),
            duration_ms=int(elapsed_s * 1000),
            timed_out=timed_out,
        )

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file (E2B creates the parent directories)."""
        with _translated_errors(self._api_key, path=path):
            self._sandbox.files.write(_sandbox_path(path), data)

    def read_file(self, path: str) -> bytes:
        """Read a file; raises ``FileNotFoundError`` when it does not exist."""
        with _translated_errors(self._api_key, path=path):
            return bytes(self._sandbox.files.read(_sandbox_path(path), format="bytes"))


def _under_deadline(command: str, deadline_s: int) -> str:
    """The shell line envd runs: the command under ``timeout``, then an explicit ``exit``.

    The trailing ``exit`` keeps envd's bash from exec-ing ``timeout`` in its place, so a
    SIGKILLed group surfaces as the exit status 137 rather than as a signal.
    """
    return f"timeout -s KILL {deadline_s} bash -lc {shlex.quote(command)}; exit $?"


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
