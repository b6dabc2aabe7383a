"""Integration fixtures: the local runtime (moto + the real ASL + bubblewrap) talking to a fake model over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandcastle.local.runtime import LocalRuntime
from tests.fakes.openai_server import FakeOpenAIServer, fake_openai  # noqa: F401


@pytest.fixture
def runtime(tmp_path: Path, fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRuntime]:  # noqa: F811
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("MODEL_MAX_RETRIES", "0")  # let the state machine's Retry handle 429s and 5xx
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("SANDBOX_BACKEND", raising=False)
    with LocalRuntime(home=tmp_path / "home") as local:
        yield local


@pytest.fixture
def sandbox_root(runtime: LocalRuntime) -> Path:
    return runtime.home / "sandboxes"
