"""The CLI finds the ``serve`` its state file names, even while that server is slow to answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from sandcastle.client import find_server, write_serve_state


def _slow_health(delay_s: float):  # noqa: ANN202 - a werkzeug handler
    def answer(request: Request) -> Response:
        time.sleep(delay_s)  # the first request of a fresh serve loads the API handler
        return Response(json.dumps({"service": "sandcastle"}), content_type="application/json")

    return answer


@pytest.fixture(autouse=True)
def _no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDCASTLE_URL", raising=False)
    monkeypatch.delenv("SANDCASTLE_API_KEY", raising=False)


def test_the_serve_a_state_file_names_is_found_though_its_first_answer_is_slow(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/health").respond_with_handler(_slow_health(1.5))
    write_serve_state(tmp_path, {"url": httpserver.url_for("/").rstrip("/"), "cli_key": "sc_test", "pid": 1})

    found = find_server(tmp_path)

    assert found is not None
    client, state = found
    assert client.base_url == httpserver.url_for("/").rstrip("/") and state is not None


def test_no_state_file_and_nothing_answering_is_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandcastle.client.DEFAULT_LOCAL_URL", "http://127.0.0.1:9")  # discard: nothing listens

    assert find_server(tmp_path) is None
