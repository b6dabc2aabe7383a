"""A run's events go on the bus as one shape; a refused entry is an error, never silently dropped."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from sandcastle.store.event_bus import put_run_event


class Bus:
    def __init__(self, failed: int = 0) -> None:
        self.failed = failed
        self.entries: list[Mapping[str, Any]] = []

    def put_events(self, *, Entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:  # noqa: N803
        self.entries.extend(Entries)
        return {"FailedEntryCount": self.failed, "Entries": [{"ErrorCode": "ThrottlingException"}] * self.failed}


def test_a_run_event_names_its_run_and_carries_its_detail() -> None:
    bus = Bus()

    put_run_event(bus, "sandcastle-bus", "Run Waiting", "run-1", {"run_id": "run-1", "step": 2})

    [entry] = bus.entries
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        "sandcastle",
        "Run Waiting",
        "sandcastle-bus",
    )
    assert entry["Resources"] == ["run-1"] and json.loads(entry["Detail"]) == {"run_id": "run-1", "step": 2}


def test_an_event_the_bus_refuses_is_an_error_naming_it() -> None:
    with pytest.raises(RuntimeError, match="EventBridge refused the Run Finished event: .*ThrottlingException"):
        put_run_event(Bus(failed=1), "sandcastle-bus", "Run Finished", "run-1", {})
