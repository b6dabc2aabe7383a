"""The event bus port: where a run's ``Run Finished`` and ``Run Waiting`` events go (EventBridge)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class EventBus(Protocol):
    """What the domain uses of an EventBridge client: ``PutEvents`` (the boto3 client satisfies it)."""

    def put_events(self, *, Entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:  # noqa: N803 - boto3's name
        """Put the entries; the answer's ``FailedEntryCount`` says how many were refused."""
        ...


def put_run_event(bus: EventBus, bus_name: str, detail_type: str, run_id: str, detail: Mapping[str, Any]) -> None:
    """Put one of a run's events (``Run Finished``, ``Run Waiting``) on the bus, as ``sandcastle`` with the run
    as its resource; ``RuntimeError`` when EventBridge refuses it (the step fails and is retried or caught)."""
    response = bus.put_events(
        Entries=[
            {
                "Source": "sandcastle",
                "DetailType": detail_type,
                "Detail": json.dumps(detail),
                "EventBusName": bus_name,
                "Resources": [run_id],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"EventBridge refused the {detail_type} event: {response['Entries']}")
