"""A tenant's unfinished runs, counted atomically: a slot is taken when a run is stored and freed exactly
once when it reaches a terminal status — however it gets there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from sandcastle.errors import ExecutionError, TooManyActiveRuns
from sandcastle.runs.admission import admit_run
from sandcastle.runs.cancel import cancel_run
from sandcastle.runs.lifecycle import fail_run, finish_run, prepare_run
from sandcastle.runs.payloads import FailInput, StepState
from sandcastle.runs.reaper import reap
from sandcastle.runs.records import RunStatus, StopReason
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies
from tests.unit.test_reaper import ListingProvider

PLAYBOOK = [{"tool": "run_command", "arguments": {"command": "true"}}]


def _started(deps: Dependencies) -> str:
    run_id = submit_run(RunRequest(instructions="x", playbook=PLAYBOOK, tenant="acme"), deps).run_id
    prepare_run(run_id, deps)
    return run_id


def _finish(deps: Dependencies, run_id: str) -> None:
    finish_run(StepState(run_id=run_id, step=1, stop_reason=StopReason.COMPLETED), deps)


def _fail(deps: Dependencies, run_id: str) -> None:
    fail_run(FailInput.model_validate({"run_id": run_id, "error": {"Error": "Boom", "Cause": "it broke"}}), deps)


def _cancel(deps: Dependencies, run_id: str) -> None:
    cancel_run(run_id, "acme", deps, by="key_1")


def _reap_overdue(deps: Dependencies, run_id: str) -> None:
    deps.store.update_run(run_id, RunUpdate(set={"deadline": datetime.now(UTC) - timedelta(hours=1)}))
    reap(deps, now=datetime.now(UTC) + timedelta(minutes=2))  # past the sandboxes' grace, not the other deadline


@pytest.mark.parametrize(
    ("end", "status"),
    [
        (_finish, RunStatus.SUCCEEDED),
        (_fail, RunStatus.FAILED),
        (_cancel, RunStatus.CANCELLED),
        (_reap_overdue, RunStatus.TIMED_OUT),
    ],
)
def test_a_run_that_ends_frees_its_slot_once(
    deps: Dependencies, end: Callable[[Dependencies, str], None], status: RunStatus
) -> None:
    # Given two unfinished runs of a tenant (in sandboxes the reaper can list)
    deps.sandboxes = ListingProvider()  # type: ignore[assignment]
    run_id = _started(deps)
    _started(deps)
    assert deps.store.active_runs("acme") == 2

    # When one ends — and its end is delivered again, and the other ways to end it come too
    end(deps, run_id)
    for again in (end, _finish, _fail, _cancel):
        again(deps, run_id)

    # Then its slot is free, once
    assert deps.store.get_run(run_id).status is status
    assert deps.store.active_runs("acme") == 1


def test_a_freed_slot_admits_the_next_run(deps: Dependencies) -> None:
    deps.settings = deps.settings.model_copy(update={"max_active_runs_per_tenant": 1})
    request = RunRequest(instructions="x", playbook=PLAYBOOK, tenant="acme")
    first = admit_run(request, deps).run
    with pytest.raises(TooManyActiveRuns):
        admit_run(request, deps)

    _fail(deps, first.run_id)

    assert admit_run(request, deps).run.status is RunStatus.QUEUED


def test_a_run_whose_execution_cannot_start_frees_its_slot(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    def refuse(**kwargs: object) -> None:
        raise ClientError({"Error": {"Code": "StateMachineDoesNotExist", "Message": "gone"}}, "StartExecution")

    monkeypatch.setattr(deps.executions.client, "start_execution", refuse)
    with pytest.raises(ExecutionError, match="StateMachineDoesNotExist"):
        submit_run(RunRequest(instructions="x", playbook=PLAYBOOK, tenant="acme"), deps)

    assert deps.store.active_runs("acme") == 0


def test_an_update_that_ends_a_run_must_free_its_slot(deps: Dependencies) -> None:
    run_id = _started(deps)

    with pytest.raises(ValueError, match="release_slot_of"):
        deps.store.update_run(run_id, RunUpdate(set={"status": RunStatus.SUCCEEDED}, require_not_terminal=True))
    with pytest.raises(ValueError, match="exactly-once"):
        deps.store.update_run(run_id, RunUpdate(set={"status": RunStatus.SUCCEEDED}, release_slot_of="acme"))
    assert deps.store.active_runs("acme") == 1
