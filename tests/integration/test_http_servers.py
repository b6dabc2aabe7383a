"""The loopback HTTP servers answer without Nagle's algorithm (TCP_NODELAY on every accepted connection): a
reply written as headers then body on a kept-alive connection would otherwise wait out the client's
delayed ACK, ~40-50 ms a request. The fake model server, the local E2B server and the local gateway."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandcastle.e2b_server import SandboxServer
from sandcastle.local.runtime import LocalRuntime
from tests.fakes.openai_server import FakeOpenAIServer


class _Closed(list[bool]):
    """Whether each connection the server served had TCP_NODELAY, read as the server closes it."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.one = threading.Event()
        shutdown_request = server.shutdown_request

        def recording(connection: socket.socket) -> None:
            self.append(bool(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            shutdown_request(connection)
            self.one.set()

        server.shutdown_request = recording

    def after_one(self) -> list[bool]:
        """The list once a connection was closed (the server closes it on its thread, after answering)."""
        self.one.wait(timeout=30)
        return list(self)


def _get(url: str) -> None:
    with contextlib.suppress(urllib.error.HTTPError):  # any answer will do: the socket option is checked
        urllib.request.urlopen(url, timeout=30).read()


def test_the_fake_model_server_sets_tcp_nodelay(fake_openai: FakeOpenAIServer) -> None:
    accepted = _Closed(fake_openai._server)
    fake_openai.reply_text("hi")

    request = urllib.request.Request(fake_openai.base_url + "/chat/completions", data=b"{}", method="POST")
    urllib.request.urlopen(request, timeout=30).read()

    assert accepted.after_one() == [True]


def test_the_local_e2b_server_sets_tcp_nodelay(tmp_path: Path) -> None:
    with SandboxServer(tmp_path / "e2b", api_key="k") as server:
        accepted = _Closed(server._httpd)
        _get(server.url + "/health")

        assert accepted.after_one() == [True]


@pytest.mark.bwrap
def test_the_local_gateway_sets_tcp_nodelay(runtime: LocalRuntime) -> None:
    gateway = runtime.start_gateway(port=0)
    accepted = _Closed(gateway.server)
    _get(gateway.url + "/runs")

    assert accepted.after_one() == [True]
