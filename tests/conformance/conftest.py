"""The ``provider`` fixture: every sandbox backend, so each conformance test runs against all of them.

``local`` (bubblewrap, in-process) and ``e2b-local`` (the ``e2b`` backend: the real e2b SDK over
real HTTP against the local E2B-compatible sandbox server) always run; ``e2b`` (E2B's cloud) runs
when ``E2B_API_KEY`` is set and is reported as skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandcastle.sandbox.base import Sandbox, SandboxProvider, SandboxSpec

if TYPE_CHECKING:
    from sandcastle.e2b_server import SandboxServer


def _local_provider(tmp_path: Path) -> SandboxProvider:
    from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

    return LocalSandboxProvider(tmp_path / "sandboxes")


def _e2b_provider(tmp_path: Path) -> SandboxProvider:
    api_key = os.environ.get("E2B_API_KEY")
    if not api_key:
        pytest.skip("E2B_API_KEY not set")
    from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider

    return E2BSandboxProvider(api_key, os.environ.get("E2B_TEMPLATE", "base"))


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """The local E2B-compatible sandbox server, on a free loopback port for the whole session."""
    from sandcastle.e2b_server import SandboxServer

    with SandboxServer(tmp_path_factory.mktemp("e2b-server") / "sandboxes") as server:
        yield server


def _e2b_local_provider(server: SandboxServer) -> SandboxProvider:
    from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider

    return E2BSandboxProvider("local-key", "base", api_url=server.url, sandbox_url=server.url)


_BACKENDS: dict[str, Callable[[Path], SandboxProvider]] = {"local": _local_provider, "e2b": _e2b_provider}


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.bwrap),
        pytest.param("e2b-local", marks=pytest.mark.bwrap),
        "e2b",
    ]
)
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> SandboxProvider:
    """A sandbox provider of one backend (the test id names it: ``[local]``, ``[e2b-local]``, ``[e2b]``)."""
    if request.param == "e2b-local":
        return _e2b_local_provider(request.getfixturevalue("sandbox_server"))
    return _BACKENDS[request.param](tmp_path)


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.bwrap),
        pytest.param("e2b-local", marks=pytest.mark.bwrap),
        "e2b",
        "fake",
    ]
)
def file_sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox for the file contract, which the tests' ``FakeSandbox`` honours too (``[fake]``)."""
    if request.param == "fake":
        from tests.fakes.sandbox import FakeSandboxProvider

        provider: SandboxProvider = FakeSandboxProvider()
    elif request.param == "e2b-local":
        provider = _e2b_local_provider(request.getfixturevalue("sandbox_server"))
    else:
        provider = _BACKENDS[request.param](tmp_path)
    sandbox = provider.create(SandboxSpec(run_id="conformance", tenant="tests", timeout_s=300))
    yield sandbox
    provider.kill(sandbox.sandbox_id)


@pytest.fixture
def make_sandbox(provider: SandboxProvider) -> Iterator[Callable[[], Sandbox]]:
    """Creates sandboxes for the test and kills them all afterwards."""
    created: list[Sandbox] = []

    def make() -> Sandbox:
        sandbox = provider.create(SandboxSpec(run_id="conformance", tenant="tests", timeout_s=300))
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        provider.kill(sandbox.sandbox_id)


@pytest.fixture
def sandbox(make_sandbox: Callable[[], Sandbox]) -> Sandbox:
    """A fresh sandbox of the backend under test."""
    return make_sandbox()
