"""A steering message is placed in the run's current step, and only while that is still its step."""

from __future__ import annotations

import pytest

from sandcastle.errors import RunBusy
from sandcastle.runs.lifecycle import prepare_run
from sandcastle.runs.messages import send_message
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.transcript import EventKind
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies


def _running(deps: Dependencies) -> str:
    run_id = submit_run(RunRequest(instructions="Work."), deps).run_id
    prepare_run(run_id, deps)
    return run_id


def _move_to_next_step(deps: Dependencies, run_id: str) -> None:
    step = deps.store.get_run(run_id).step
    deps.store.update_run(run_id, RunUpdate(set={"step": step + 1}))


def test_a_message_racing_a_new_turn_lands_in_the_new_turn(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run moves to step 1 between the message's read of the run and its write: a reader may hold step 0
    as complete by then, so the message must not be written there."""
    run_id = _running(deps)
    append = deps.store.append_event
    raced: list[bool] = []

    def append_after_a_turn_began(event, update=None):
        if not raced:
            raced.append(True)
            _move_to_next_step(deps, run_id)
        return append(event, update)

    monkeypatch.setattr(deps.store, "append_event", append_after_a_turn_began)

    event = send_message(run_id, "default", "use python 3", deps, by="key_1")

    [stored] = [e for e in deps.store.list_events(run_id) if e.kind is EventKind.USER_MESSAGE]
    assert event.step == stored.step == 1 and stored.data.text == "use python 3"


def test_a_run_that_never_stops_moving_is_told_to_the_sender(
    deps: Dependencies, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _running(deps)
    append = deps.store.append_event

    def append_after_a_turn_began(event, update=None):
        _move_to_next_step(deps, run_id)
        return append(event, update)

    monkeypatch.setattr(deps.store, "append_event", append_after_a_turn_began)

    with pytest.raises(RunBusy, match="send it again"):
        send_message(run_id, "default", "hello", deps, by="key_1")
    assert not [e for e in deps.store.list_events(run_id) if e.kind is EventKind.USER_MESSAGE]
