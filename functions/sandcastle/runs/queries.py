"""Reading runs for a tenant: one run, a page of runs, its transcript (long-polled), its artifacts.

Every function takes the caller's tenant: a run of another tenant is ``RunNotFound``, exactly as
a run that does not exist (a tenant never learns another tenant's run ids exist).
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from pydantic import BaseModel

from sandcastle.errors import InvalidRunRequest, RunNotFound
from sandcastle.runs.records import Artifact, Run, RunStatus
from sandcastle.runs.transcript import Event
from sandcastle.wiring import Dependencies

MAX_WAIT_S = 20.0


class RunPage(BaseModel):
    runs: list[Run]
    cursor: str | None


class EventPage(BaseModel):
    events: list[Event]
    cursor: str | None
    status: RunStatus


class ArtifactLink(BaseModel):
    artifact: Artifact
    url: str


def get_tenant_run(run_id: str, tenant: str, deps: Dependencies) -> Run:
    """The run, if it belongs to ``tenant``; else ``RunNotFound`` (also for another tenant's run)."""
    try:
        run = deps.store.get_run(run_id)
    except RunNotFound:
        raise RunNotFound(f"run {run_id} not found") from None
    if run.tenant != tenant:
        raise RunNotFound(f"run {run_id} not found")
    return run


def list_tenant_runs(
    tenant: str, deps: Dependencies, *, limit: int, cursor: str | None = None, status: RunStatus | None = None
) -> RunPage:
    """A page of the tenant's runs, newest first; ``cursor`` continues where the last page stopped."""
    start = _decode_cursor(cursor, tenant) if cursor else None
    runs, position = deps.store.list_runs_by_tenant(tenant, limit=limit, start=start, status=status)
    return RunPage(runs=runs, cursor=_encode_cursor(position) if position else None)


def read_events(
    run_id: str,
    tenant: str,
    deps: Dependencies,
    *,
    after: str | None = None,
    limit: int = 100,
    wait_s: float = 0.0,
) -> EventPage:
    """The run's events after the event key ``after``, in order.

    With ``wait_s`` > 0 and nothing new yet, polls until an event lands, the run ends or the wait
    is over — whichever comes first. The returned cursor (the last event's key, or ``after`` when
    there was none) resumes the transcript exactly where this page stopped.
    """
    if after is not None and not after.startswith("EVT#"):
        raise InvalidRunRequest("is not an event cursor (use the cursor a previous page returned)", field="after")
    run = get_tenant_run(run_id, tenant, deps)
    deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
    while True:
        # The status is read before the events: a run seen ended has written all its events.
        events = deps.store.list_events(run_id, after=after, limit=limit)
        if events or run.status.terminal or time.monotonic() >= deadline:
            return EventPage(events=events, cursor=events[-1].key if events else after, status=run.status)
        time.sleep(min(deps.settings.events_poll_interval_s, max(0.0, deadline - time.monotonic())))
        run = deps.store.get_run(run_id)


def artifact_links(run_id: str, tenant: str, deps: Dependencies) -> list[ArtifactLink]:
    """The run's artifact manifest, each with a URL to download it from."""
    run = get_tenant_run(run_id, tenant, deps)
    links = deps.download_links()
    return [
        ArtifactLink(artifact=a, url=links.url(a.s3_key, run_id=run.run_id, filename=a.name.rsplit("/", 1)[-1]))
        for a in run.artifacts
    ]


def _encode_cursor(position: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, tenant: str) -> dict[str, str]:
    """The index position in ``cursor``; a cursor that is not ours (or another tenant's) is a 422."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if (
        not isinstance(position, dict)
        or set(position) != {"pk", "sk", "gsi1pk", "gsi1sk"}
        or not all(isinstance(v, str) for v in position.values())
        or position["gsi1pk"] != f"TENANT#{tenant}"
    ):
        raise InvalidRunRequest("is not a cursor this listing returned", field="cursor")
    return position
