"""Listing a backend's sandboxes, for the reaper: what each is, whose run it serves, since when."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SandboxInfo:
    """One live sandbox of this app, as its backend lists it."""

    sandbox_id: str
    run_id: str | None
    """The run it was created for (its ``run_id`` metadata); None when it carries none."""
    created_at: datetime | None
    expires_at: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class SandboxLister(Protocol):
    """A sandbox provider that can list the sandboxes this app created (``app=sandcastle``)."""

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of this app that still exists."""
        ...
