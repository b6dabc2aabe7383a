"""The event bus port: where a run's ``Run Finished`` event goes (EventBridge in the cloud and locally)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class EventBus(Protocol):
    """What the domain uses of an EventBridge client: ``PutEvents`` (the boto3 client satisfies it)."""

    def put_events(self, *, Entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:  # noqa: N803 - boto3's name
        """Put the entries; the answer's ``FailedEntryCount`` says how many were refused."""
        ...
