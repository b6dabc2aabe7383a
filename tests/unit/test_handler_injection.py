"""Handlers take their dependencies: every handler module makes its handler with ``make_handler(deps)``, and a
test passes its own bundle in rather than patching ``sandcastle.wiring``."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import sandcastle.handlers
from sandcastle import wiring
from sandcastle.runs.requests import PlaybookCall, RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies, get_dependencies, using
from tests.unit.test_api import _context

HANDLERS = sorted(
    info.name
    for info in pkgutil.iter_modules(sandcastle.handlers.__path__)
    if not info.name.startswith("_") and info.name != "authorizer"  # the authorizer takes its key store: below
)


@pytest.mark.parametrize("name", HANDLERS)
def test_every_handler_module_makes_its_handler_on_injectable_dependencies(name: str) -> None:
    module = importlib.import_module(f"sandcastle.handlers.{name}")

    assert callable(module.make_handler) and callable(module.handler)
    assert "get_dependencies()" not in open(module.__file__).read()  # noqa: SIM115 - read once


def test_a_handler_made_on_a_bundle_runs_on_it(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandcastle.handlers import on_execution_end

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setattr(on_execution_end.metrics, "namespace", "Sandcastle")
    run = submit_run(RunRequest(instructions="x", playbook=[PlaybookCall(tool="run_command", arguments={})]), deps)
    change = {"executionArn": f"{deps.settings.state_machine_arn}:{run.run_id}", "name": run.run_id}
    before = wiring._container

    event = {"detail": {**change, "stateMachineArn": deps.settings.state_machine_arn, "status": "FAILED"}}
    result = on_execution_end.make_handler(lambda: deps)(event, _context("OnExecutionEnd"))

    assert result["status"] == "FAILED" and deps.store.get_run(run.run_id).status.value == "FAILED"
    assert wiring._container is before  # nothing built from the environment, nothing patched


def test_using_answers_its_bundle_only_inside_the_block(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wiring, "_container", object())  # what this container would answer

    with using(deps):
        assert get_dependencies() is deps

    assert get_dependencies() is wiring._container


def test_the_authorizer_looks_keys_up_in_the_store_it_is_given(deps: Dependencies) -> None:
    from sandcastle.handlers import authorizer
    from sandcastle.store.keys import ApiKeyStore

    store = ApiKeyStore(deps.settings.table_name)
    created = store.create("acme")
    event = {"type": "REQUEST", "methodArn": "arn:aws:execute-api:us-east-1:1:a/v1/GET/runs"}

    answer = authorizer.make_handler(lambda: store)(
        {**event, "headers": {"Authorization": f"Bearer {created.key}"}}, _context("ApiAuthorizer")
    )

    assert answer["context"] == {"tenant": "acme", "key_id": created.key_id}
    assert "_keys" not in vars(authorizer)  # no module-level store for tests to patch
