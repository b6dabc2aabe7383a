"""The two ways the CLI submits a run and follows its transcript, and the one loop that follows it.

A transport is the in-process local runtime (``LocalTransport``) or a running API over HTTP
(``HttpTransport``, through ``sandcastle.client``). Both answer one question, "the events after
this cursor, and had the run ended before they were read?" (``EventPage``); ``follow`` is the only
loop over it: it yields each page's events and stops at the first empty page read after the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.records import Run, RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import Event, EventKind, parse_event

if TYPE_CHECKING:
    from sandcastle.client import SandcastleClient
    from sandcastle.local.runtime import LocalRuntime


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    cursor: str | None
    """Where the next page starts (the last event's key, or the cursor asked with when there was none)."""
    ended: bool
    """The run had ended before these events were read: an empty page with it is the end of the transcript."""


class EventSource(Protocol):
    def events_after(self, run_id: str, cursor: str | None) -> EventPage:
        """The run's events after ``cursor`` (waiting a little when there are none yet)."""
        ...


class Transport(EventSource, Protocol):
    """Where runs are submitted and read: the local runtime in this process, or a running API."""

    errors: tuple[type[Exception], ...]
    """What it raises for a refused request or an unreachable API: the CLI reports them in a line."""
    where: str
    """What those reports start with (the API's URL)."""

    def submit(self, request: RunRequest) -> Run: ...

    def get_run(self, run_id: str) -> Run: ...


def follow(source: EventSource, run_id: str, *, timeout_s: float | None = None) -> Iterator[Event]:
    """Yield the run's events as they land, until a page read after the run ended brings none."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    cursor: str | None = None
    while True:
        page = source.events_after(run_id, cursor)
        yield from page.events
        cursor = page.cursor or cursor
        if page.ended and not page.events:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end within {timeout_s} s")


def watch(
    source: EventSource, run: Run, *, spinner: bool, timeout_s: float | None = None, out: TextIO | None = None
) -> list[Event]:
    """Print the run's header and its transcript as it lands (a spinner while the model thinks); return the events."""
    from sandcastle.cli.printer import EventPrinter
    from sandcastle.cli.spinner import Spinner

    printer = EventPrinter(out or sys.stdout)
    printer.header(run)
    events = []
    if not spinner:
        for event in follow(source, run.run_id, timeout_s=timeout_s):
            events.append(event)
            printer.event(event)
        return events
    with Spinner(sys.stderr) as spin:
        for event in follow(source, run.run_id, timeout_s=timeout_s):
            events.append(event)
            spin.pause()
            printer.event(event)
            spin.resume(thinking=event.kind in (EventKind.USER, EventKind.TOOL_RESULT))
    return events


class Snapshot:
    """The events there are now, as if the run had ended: what ``runs logs`` without ``-f`` prints."""

    def __init__(self, source: EventSource) -> None:
        self.source = source

    def events_after(self, run_id: str, cursor: str | None) -> EventPage:
        page = self.source.events_after(run_id, cursor)
        return EventPage(events=page.events, cursor=page.cursor, ended=True)


class LocalTransport:
    """The local runtime in this process: the store is read directly, and when nothing is new the follower
    waits for the runtime's next store write (``runtime.changes``) rather than polling; ``idle_s`` bounds a
    wait (an execution that stops without writing), ``poll_s`` is the grace FailRun gets for its last events."""

    errors: tuple[type[Exception], ...] = (InvalidRunRequest, ValidationError)
    where = ""

    def __init__(self, runtime: LocalRuntime, *, poll_s: float = 0.05, idle_s: float = 1.0) -> None:
        self.runtime = runtime
        self.poll_s = poll_s
        self.idle_s = idle_s

    def submit(self, request: RunRequest) -> Run:
        return self.runtime.submit(request)

    def get_run(self, run_id: str) -> Run:
        return self.runtime.get_run(run_id)

    def events_after(self, run_id: str, cursor: str | None) -> EventPage:
        seen = self.runtime.changes.version  # before the reads: a write landing after them ends the wait
        ended = self._ended(run_id)  # read before the events: a run seen ended has written them all
        events = self.runtime.events(run_id, after=cursor)
        if not events and not ended:
            self.runtime.changes.wait(seen, timeout_s=self.idle_s)
        return EventPage(events=events, cursor=events[-1].key if events else cursor, ended=ended)

    def _ended(self, run_id: str) -> bool:
        """The run ended, or its execution stopped without ending it (then nothing more will come)."""
        if self.runtime.get_run(run_id).status.terminal:
            return True
        if self.runtime.execution(run_id)["status"] != "RUNNING":
            time.sleep(self.poll_s * 4)  # FailRun may be writing its last events
            return True
        return False


class HttpTransport:
    """A running API (``sandcastle serve`` or ``SANDCASTLE_URL``): the events endpoint, long-polled."""

    def __init__(self, client: SandcastleClient, *, wait_s: float = 20) -> None:
        from sandcastle.client import ApiError

        self.client = client
        self.wait_s = wait_s
        self.errors: tuple[type[Exception], ...] = (ApiError, OSError)
        self.where = f"{client.base_url}: "

    def submit(self, request: RunRequest) -> Run:
        body = request.model_dump(mode="json", exclude={"tenant", "source"}, exclude_none=True)
        return Run.model_validate(self.client.submit(self.client.stage_large_files(body)))

    def get_run(self, run_id: str) -> Run:
        return Run.model_validate(self.client.get_run(run_id))

    def events_after(self, run_id: str, cursor: str | None) -> EventPage:
        page: dict[str, Any] = self.client.events(run_id, after=cursor, wait_s=self.wait_s)
        events = [parse_event(raw) for raw in page["events"]]
        return EventPage(events=events, cursor=page.get("cursor") or cursor, ended=RunStatus(page["status"]).terminal)
