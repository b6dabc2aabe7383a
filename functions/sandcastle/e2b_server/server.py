"""One HTTP server on one port: E2B's lifecycle API and every sandbox's envd, routed by ``E2b-Sandbox-Id``.

The SDK is pointed at it with ``api_url`` and ``sandbox_url`` both set to ``server.url`` (or
``E2B_API_URL`` / ``E2B_SANDBOX_URL``): with a ``sandbox_url`` the SDK sends every envd request
to that one URL and names the sandbox in the ``E2b-Sandbox-Id`` header (plus its
``X-Access-Token``), which is how this server tells sandboxes apart. (Debug mode would give no
sandbox ids at all — ``debug_sandbox_id`` for every sandbox — and per-sandbox hosts would need DNS.)

The server is the stdlib's ``wsgiref`` with a thread per connection; the Connect services are the
SDK's generated ``ProcessWSGIApplication`` / ``FilesystemWSGIApplication``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem.filesystem_connect import FilesystemWSGIApplication
from e2b.envd.process.process_connect import ProcessWSGIApplication

from sandcastle.e2b_server import filesystem
from sandcastle.e2b_server.api import LifecycleApi
from sandcastle.e2b_server.filesystem import FilesystemService, HttpAnswer
from sandcastle.e2b_server.processes import ProcessService
from sandcastle.e2b_server.registry import SandboxRecord, SandboxRegistry
from sandcastle.e2b_server.templates import TemplateStore
from sandcastle.errors import SandboxNotFound
from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

logger = logging.getLogger(__name__)

_PROCESS_PREFIX = "/process.Process/"
_FILESYSTEM_PREFIX = "/filesystem.Filesystem/"
_MAX_BODY_BYTES = 1024 * 1024 * 1024


class SandboxServer:
    """An E2B-compatible sandbox server whose sandboxes are hardened bubblewrap workspaces.

        with SandboxServer(Path(".sandcastle/sandboxes")) as server:
            sandbox = e2b.Sandbox.create(api_key="local", api_url=server.url, sandbox_url=server.url)

    ``port=0`` picks a free port. ``api_key`` (when set) must be sent by clients as ``X-API-KEY``;
    unset, any key is accepted. ``provider`` replaces the default ``LocalSandboxProvider(root)``
    (e.g. to set limits or the sandbox uid). Templates and snapshots live in ``templates_root``
    (default: ``templates`` next to ``root``), where ``sandcastle templates build`` puts them.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        provider: LocalSandboxProvider | None = None,
        max_sandboxes: int = 100,
        reap_interval_s: float = 0.25,
        templates_root: Path | None = None,
    ) -> None:
        self.registry = SandboxRegistry(
            provider or LocalSandboxProvider(root),
            max_sandboxes=max_sandboxes,
            reap_interval_s=reap_interval_s,
            templates=TemplateStore(templates_root or Path(root).parent / "templates"),
        )
        self._host = host
        self._port = port
        self._app = _Router(self.registry, LifecycleApi(self.registry, api_key=api_key))
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` — both the API URL and the sandbox URL to give the SDK."""
        if self._httpd is None:
            raise RuntimeError("the sandbox server is not started; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def client_environment(self, api_key: str = "local") -> dict[str, str]:
        """The environment variables that point the e2b SDK (and Sandcastle's ``e2b`` backend) here."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": api_key}

    def start(self) -> SandboxServer:
        """Bind and serve on a background thread; start the reaper that ends timed-out sandboxes."""
        self._httpd = make_server(
            self._host, self._port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="e2b-server", daemon=True)
        self._thread.start()
        self.registry.adopt_existing()
        self.registry.start_reaper()
        logger.info("E2B-compatible sandbox server on %s", self.url)
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted (for ``sandcastle sandbox-server``)."""
        if self._httpd is None:
            self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    def stop(self, *, kill_sandboxes: bool = True) -> None:
        """Stop serving and (by default) kill every sandbox."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.registry.close(kill_sandboxes=kill_sandboxes)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Router:
    """The WSGI application: envd's RPCs and ``/files`` by sandbox header, everything else to the API."""

    def __init__(self, registry: SandboxRegistry, api: LifecycleApi) -> None:
        self._registry = registry
        self._api = api
        processes = ProcessService(self._sandbox_for_rpc)
        registry.start_command = processes.start_in_background
        self._process_app = ProcessWSGIApplication(processes)
        self._filesystem_app = FilesystemWSGIApplication(FilesystemService(self._sandbox_for_rpc))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        # wsgiref hands the application the raw socket, which never reads as ended: bound it by
        # Content-Length, or decode the chunks (the SDK streams the request bodies of its
        # server-streaming RPCs and of file-like uploads), so a reader that drains it stops.
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            environ["wsgi.input"] = _DechunkedInput(environ["wsgi.input"])
            del environ["HTTP_TRANSFER_ENCODING"]
        else:
            environ["wsgi.input"] = _BoundedInput(environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0))
        try:
            if path.startswith(_PROCESS_PREFIX):
                return self._process_app(environ, start_response)
            if path.startswith(_FILESYSTEM_PREFIX):
                return self._filesystem_app(environ, start_response)
            answer = self._handle_http(environ, path)
        except Exception:  # a bug must still answer, not drop the connection
            logger.exception("sandbox server: %s %s failed", environ.get("REQUEST_METHOD"), path)
            answer = filesystem._json_error(500, "internal error in the sandbox server; see its log")
        status, headers, body = answer
        start_response(_status_line(status), [*headers.items(), ("Content-Length", str(len(body)))])
        return [body]

    def _handle_http(self, environ: dict[str, Any], path: str) -> HttpAnswer:
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if path in ("/files", "/health"):
            try:
                if path == "/files" and "signature" in parse_qs(query) and not environ.get("HTTP_X_ACCESS_TOKEN"):
                    record = self._sandbox_for_signed_url(environ.get("HTTP_E2B_SANDBOX_ID"), method, query)
                else:
                    record = self._sandbox_for(environ.get("HTTP_E2B_SANDBOX_ID"), environ.get("HTTP_X_ACCESS_TOKEN"))
            except SandboxNotFound as error:
                return filesystem._json_error(502, str(error))
            except PermissionError as error:
                return filesystem._json_error(401, str(error))
            if path == "/health":
                return 204, {}, b""
            if method == "GET":
                return filesystem.download(record, query)
            if method == "POST":
                return filesystem.upload(record, query, _request_headers(environ), _read_body(environ))
            return filesystem._json_error(405, f"{method} is not allowed on {path}")
        return self._api.handle(method, path, query, _request_headers(environ), _read_body(environ))

    def _sandbox_for_signed_url(self, sandbox_id: str | None, method: str, query: str) -> SandboxRecord:
        """The sandbox whose access token signed this ``/files`` URL (``Sandbox.download_url``/``upload_url``).

        A signed URL names no sandbox (it is meant for a plain browser or ``curl``), so the signature
        is checked against each running sandbox's token: ``v1_`` + base64(sha256(
        ``path:operation:user:token[:expiration]``)), the SDK's ``get_signature``. ``PermissionError``
        (401) when none matches or it has expired.
        """
        parameters = parse_qs(query)
        signature = parameters["signature"][0]
        expiration = parameters.get("signature_expiration", [None])[0]
        if expiration is not None:
            try:
                expires_at = int(expiration)
            except ValueError:
                raise PermissionError("signature_expiration must be a Unix time in seconds") from None
            if expires_at < time.time():
                raise PermissionError("signature is already expired")
        parts = [
            parameters.get("path", [""])[0],
            "read" if method == "GET" else "write",
            parameters.get("username", [""])[0],
        ]
        candidates = [self._registry.get_running(sandbox_id)] if sandbox_id else self._registry.list(states={"running"})
        for record in candidates:
            raw = ":".join([*parts, record.access_token, *([expiration] if expiration is not None else [])])
            expected = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
            if hmac.compare_digest(signature, expected):
                return record
        raise PermissionError("invalid signature: the URL was not signed by a running sandbox's access token")

    def _sandbox_for_rpc(self, headers: Any) -> SandboxRecord:
        try:
            return self._sandbox_for(headers.get("e2b-sandbox-id"), headers.get("x-access-token"))
        except SandboxNotFound as error:
            raise ConnectError(Code.UNAVAILABLE, str(error)) from None
        except PermissionError as error:
            raise ConnectError(Code.UNAUTHENTICATED, str(error)) from None

    def _sandbox_for(self, sandbox_id: str | None, access_token: str | None) -> SandboxRecord:
        """The sandbox an envd request names, once its access token checks out (no client reaches another's sandbox)."""
        if not sandbox_id:
            raise SandboxNotFound("no E2b-Sandbox-Id header: the sandbox was not found")
        record = self._registry.get_running(sandbox_id)
        if not hmac.compare_digest(access_token or "", record.access_token):
            raise PermissionError(f"wrong or missing X-Access-Token for sandbox {sandbox_id}")
        return record


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Requests go to the debug log, not to stderr."""

    disable_nagle_algorithm = True  # TCP_NODELAY: headers and body (separate writes) leave at once

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        logger.debug("sandbox server: " + format, *args)


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers, names lowercased (``Content-Type`` included)."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    return headers


def _read_body(environ: dict[str, Any]) -> bytes:
    """The whole request body (its ``wsgi.input`` is bounded or dechunked by the router)."""
    return environ["wsgi.input"].read()


class _BoundedInput:
    """A ``wsgi.input`` that ends after ``Content-Length`` bytes."""

    def __init__(self, raw: Any, length: int) -> None:
        if length > _MAX_BODY_BYTES:
            raise ValueError(f"request body of {length} bytes is over the {_MAX_BODY_BYTES} byte limit")
        self._raw = raw
        self._left = length

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size is None or size < 0 else min(size, self._left)
        if wanted <= 0:
            return b""
        parts = []
        while wanted > 0:
            data = self._raw.read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
            self._left -= len(data)
            if size is not None and size >= 0:
                break
        return b"".join(parts)


class _DechunkedInput:
    """A ``wsgi.input`` that decodes ``Transfer-Encoding: chunked`` and ends at the last chunk."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._left_in_chunk = 0
        self._done = False
        self._total = 0

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        while not self._done and (wanted is None or wanted > 0):
            if self._left_in_chunk == 0:
                self._left_in_chunk = int(self._raw.readline().split(b";", 1)[0].strip() or b"0", 16)
                if self._left_in_chunk == 0:
                    while self._raw.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    self._done = True
                    break
                self._total += self._left_in_chunk
                if self._total > _MAX_BODY_BYTES:
                    raise ValueError(f"request body is over the {_MAX_BODY_BYTES} byte limit")
            take = self._left_in_chunk if wanted is None else min(wanted, self._left_in_chunk)
            data = self._raw.read(take)
            if not data:
                raise ValueError("the client closed the connection in the middle of a chunk")
            parts.append(data)
            self._left_in_chunk -= len(data)
            if wanted is not None:
                wanted -= len(data)
            if self._left_in_chunk == 0:
                self._raw.readline()  # the CRLF ending the chunk
            if wanted is not None and parts:
                break  # a short read is allowed; return what one chunk gave
        return b"".join(parts)


def _status_line(status: int) -> str:
    from http import HTTPStatus

    return f"{status} {HTTPStatus(status).phrase}"
