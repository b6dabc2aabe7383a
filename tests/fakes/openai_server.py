"""A fake OpenAI-compatible chat-completions endpoint, over real HTTP on loopback.

Tests script what "the model" answers, point the real ``openai`` SDK at ``base_url``, and then
assert on what the model was sent::

    def test_agent_lists_files(fake_openai):
        fake_openai.reply_tool_calls([("run_command", {"command": "ls"})])
        fake_openai.reply_text("Done: two files.")
        ...  # run code that talks to fake_openai.base_url
        assert fake_openai.requests[1]["messages"][-1]["role"] == "tool"

Replies are served in the order they were scripted, one per ``POST /v1/chat/completions``,
whichever thread asks. With nothing left to serve it answers 500 "fake model has no scripted
reply left" (and tells the SDK not to retry), so a test that asks the model once more than it
planned fails loudly instead of hanging.

Import the fixture into a ``conftest.py`` to use it::

    from tests.fakes.openai_server import fake_openai  # noqa: F401
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

FAST_RETRY = {"retry-after-ms": "1"}
"""Headers that make the SDK retry after 1 ms.

``retry-after: 0`` does *not* do that: the SDK only honours a ``retry-after`` in (0, 120] s and
otherwise falls back to its own 0.5–8 s exponential backoff.
"""

DEFAULT_USAGE = (10, 5)
"""The ``(prompt_tokens, completion_tokens)`` a scripted reply reports unless told otherwise."""

NO_REPLY_LEFT = "fake model has no scripted reply left"

ToolCallSpec = tuple[str, dict[str, Any] | str] | tuple[str, dict[str, Any] | str, str]
"""``(name, arguments)`` or ``(name, arguments, id)``; a ``str`` is sent as the raw arguments text."""


@dataclass(frozen=True)
class _Reply:
    """One scripted HTTP answer."""

    status: int
    body: dict[str, Any] | list[Any] | str
    """A JSON value, or a ``str`` sent verbatim (to script a body that is not JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chat: bool = False
    """A chat.completion whose ``model`` is filled from the request when not scripted."""


class FakeOpenAIServer:
    """A scripted chat-completions server. Thread-safe; start it, or use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self._replies: deque[_Reply] = deque()
        self._requests: list[dict[str, Any]] = []
        self._request_headers: list[dict[str, str]] = []
        self._request_times: list[float] = []
        self._call_ids = itertools.count(1)
        self._completion_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> FakeOpenAIServer:
        """Listen on an ephemeral loopback port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("fake model server already started")
        self._stopping.clear()
        server = ThreadingHTTPServer((self._host, 0), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; replies still waiting out a ``delay_s`` are cut short."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``http://127.0.0.1:<port>/v1``) to give the SDK."""
        if self._server is None:
            raise RuntimeError("fake model server is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # --- what was received ---

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON body of every chat-completions request received, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers of every request received (lower-cased names), parallel to ``requests``."""
        with self._lock:
            return list(self._request_headers)

    @property
    def request_times(self) -> list[float]:
        """When each request arrived (``time.perf_counter()``), parallel to ``requests`` (a copy)."""
        with self._lock:
            return list(self._request_times)

    @property
    def pending(self) -> int:
        """How many scripted replies have not been served yet."""
        with self._lock:
            return len(self._replies)

    # --- scripting ---

    def reply_text(
        self,
        text: str | None,
        *,
        usage: tuple[int, int] | None = DEFAULT_USAGE,
        model: str | None = None,
        finish_reason: str = "stop",
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next request with an assistant message holding ``text``.

        ``usage`` is ``(prompt_tokens, completion_tokens)``, or ``None`` to leave the field out;
        ``model`` defaults to the model the request named; ``delay_s`` holds the answer back.
        """
        message = {"role": "assistant", "content": text}
        self._enqueue_chat(message, usage=usage, model=model, finish_reason=finish_reason, delay_s=delay_s)

    def reply_tool_calls(
        self,
        calls: Sequence[ToolCallSpec],
        *,
        text: str | None = None,
        usage: tuple[int, int] | None = DEFAULT_USAGE,
        model: str | None = None,
        delay_s: float = 0.0,
    ) -> list[str]:
        """Answer the next request with tool calls (parallel, when more than one); returns their ids.

        Each call is ``(name, arguments)`` or ``(name, arguments, id)``. A ``dict`` of arguments
        is JSON-encoded; a ``str`` is sent as is, so a test can script arguments that are not
        valid JSON. Ids default to ``call_<n>``, counting across the server's lifetime.
        """
        tool_calls = []
        for spec in calls:
            name, arguments = spec[0], spec[1]
            call_id = spec[2] if len(spec) > 2 else f"call_{next(self._call_ids)}"
            raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
            tool_calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}})
        message = {"role": "assistant", "content": text, "tool_calls": tool_calls}
        self._enqueue_chat(message, usage=usage, model=model, finish_reason="tool_calls", delay_s=delay_s)
        return [call["id"] for call in tool_calls]

    def reply_error(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        type: str | None = None,  # noqa: A002 - the field's name in the OpenAI error body
        code: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next request with ``status`` and an OpenAI-shaped error body.

        The body is ``{"error": {"message", "type", "code", "param"}}``; ``type`` defaults to what
        OpenAI sends for that status. Pass ``headers=FAST_RETRY`` (or ``retry-after-ms``) to keep
        the SDK's retries of 429/5xx fast.
        """
        default_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        error = {
            "message": message,
            "type": type or default_type,
            "code": code,
            "param": None,
        }
        self._enqueue(_Reply(status, {"error": error}, dict(headers or {}), delay_s))

    def reply_raw(
        self,
        json_body: dict[str, Any] | list[Any] | str,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next request with exactly ``json_body`` (a ``str`` is sent verbatim)."""
        self._enqueue(_Reply(status, json_body, dict(headers or {}), delay_s))

    def _enqueue_chat(
        self,
        message: dict[str, Any],
        *,
        usage: tuple[int, int] | None,
        model: str | None,
        finish_reason: str,
        delay_s: float,
    ) -> None:
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self._completion_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            prompt_tokens, completion_tokens = usage
            body["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        self._enqueue(_Reply(200, body, {}, delay_s, chat=True))

    def _enqueue(self, reply: _Reply) -> None:
        with self._lock:
            self._replies.append(reply)

    # --- serving (called on the server's threads) ---

    def _answer(self, method: str, path: str, headers: dict[str, str], raw_body: bytes) -> _Reply:
        """Record the request and take the next scripted reply for it."""
        if method != "POST" or path.split("?", 1)[0].rstrip("/") != "/v1/chat/completions":
            return _error_reply(404, f"fake model server: no route for {method} {path}")
        try:
            body = json.loads(raw_body or b"null")
        except ValueError as error:
            return _error_reply(400, f"fake model server: request body is not JSON: {error}")
        with self._lock:
            self._requests.append(body)
            self._request_headers.append(headers)
            self._request_times.append(time.perf_counter())
            reply = self._replies.popleft() if self._replies else None
        if reply is None:
            return _error_reply(500, NO_REPLY_LEFT, {"x-should-retry": "false"})
        if reply.chat and isinstance(reply.body, dict) and reply.body.get("model") is None:
            requested = body.get("model") if isinstance(body, dict) else None
            reply = replace(reply, body={**reply.body, "model": requested or "fake-model"})
        return reply


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def _error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    error = {"message": message, "type": "fake_server_error", "code": None, "param": None}
    return _Reply(status, {"error": error}, dict(headers or {}))


def _handler_for(fake: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # A reply's headers and body leave in one write, without Nagle's algorithm: two small writes on a
        # kept-alive connection otherwise wait out the client's delayed ACK (~40-50 ms per request).
        disable_nagle_algorithm = True
        wbufsize = 64 * 1024

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._serve()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = fake._answer(self.command, self.path, headers, raw_body)
            if reply.delay_s and fake._stopping.wait(reply.delay_s):
                self.close_connection = True
                return
            payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = payload.encode()
            try:
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout passed) before a delayed reply was ready.
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
            pass

    return _Handler


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A started ``FakeOpenAIServer``, stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server


__all__ = ["DEFAULT_USAGE", "FAST_RETRY", "NO_REPLY_LEFT", "FakeOpenAIServer", "fake_openai"]
