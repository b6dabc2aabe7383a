"""The CLI's one follow loop, over the in-process and the HTTP transports' "events after a cursor" pages."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sandcastle.cli.transport import EventPage, HttpTransport, LocalTransport, follow
from sandcastle.local.changes import ChangeSignal
from sandcastle.runs.records import RunStatus
from sandcastle.runs.transcript import Event, UserData, user_event


def _event(key: str) -> Event:
    return user_event("run-1", UserData(text=key)).model_copy(update={"key": key})


class ScriptedSource:
    """Answers with the given pages in turn and records the cursor each page was asked with."""

    def __init__(self, *pages: EventPage) -> None:
        self.pages = list(pages)
        self.asked: list[str | None] = []

    def events_after(self, run_id: str, cursor: str | None) -> EventPage:
        self.asked.append(cursor)
        return self.pages.pop(0)


def test_follow_yields_every_page_and_resumes_each_from_the_last_cursor() -> None:
    # Given a run whose events land over three pages, one of them empty while it runs
    source = ScriptedSource(
        EventPage(events=[_event("EVT#1"), _event("EVT#2")], cursor="EVT#2", ended=False),
        EventPage(events=[], cursor=None, ended=False),
        EventPage(events=[_event("EVT#3")], cursor="EVT#3", ended=False),
        EventPage(events=[], cursor="EVT#3", ended=True),
    )

    # When it is followed
    keys = [event.key for event in follow(source, "run-1")]

    # Then every event comes once, in order, each page asked after the last event seen
    assert keys == ["EVT#1", "EVT#2", "EVT#3"]
    assert source.asked == [None, "EVT#2", "EVT#2", "EVT#3"]


def test_follow_reads_on_after_the_page_that_saw_the_end_brought_events() -> None:
    # Given a run that ended while its last events were landing: the end is seen on a page with events
    source = ScriptedSource(
        EventPage(events=[_event("EVT#1")], cursor="EVT#1", ended=True),
        EventPage(events=[_event("EVT#2")], cursor="EVT#2", ended=True),
        EventPage(events=[], cursor="EVT#2", ended=True),
    )

    # When it is followed, then the transcript ends at the first empty page read after the end, not before
    assert [event.key for event in follow(source, "run-1")] == ["EVT#1", "EVT#2"]
    assert source.pages == []


def test_follow_gives_up_past_its_deadline() -> None:
    source = ScriptedSource(*[EventPage(events=[], cursor=None, ended=False)] * 3)

    with pytest.raises(TimeoutError, match="run-1 did not end"):
        list(follow(source, "run-1", timeout_s=-1))


class FakeClient:
    def __init__(self, *pages: dict[str, Any]) -> None:
        self.pages = list(pages)
        self.asked: list[tuple[str | None, float]] = []
        self.base_url = "http://127.0.0.1:9"

    def events(self, run_id: str, *, after: str | None = None, wait_s: float = 0) -> dict[str, Any]:
        self.asked.append((after, wait_s))
        return self.pages.pop(0)


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "TIMED_OUT", "BUDGET_EXCEEDED", "CANCELLED"])
def test_over_http_a_page_of_an_ended_run_is_the_end_once_it_brings_nothing(status: str) -> None:
    # Given the events endpoint: one page while the run runs, then the run has ended
    event = _event("EVT#1").model_dump(mode="json")
    client = FakeClient(
        {"events": [event], "cursor": "EVT#1", "status": "RUNNING"},
        {"events": [], "cursor": None, "status": status},
    )

    # When the HTTP transport is followed
    events = list(follow(HttpTransport(client, wait_s=5), "run-1"))  # type: ignore[arg-type]

    # Then the events are typed, the endpoint is long-polled from the last cursor, and it stops there
    assert [e.key for e in events] == ["EVT#1"]
    assert client.asked == [(None, 5), ("EVT#1", 5)]


class FakeRuntime:
    """A local runtime whose run never ends but whose execution has stopped (as after a crash of FailRun)."""

    def __init__(self, execution_status: str) -> None:
        self.execution_status = execution_status
        self.reads = 0
        self.changes = ChangeSignal()

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(status=RunStatus.RUNNING)

    def execution(self, run_id: str) -> dict[str, str]:
        return {"status": self.execution_status}

    def events(self, run_id: str, after: str | None = None) -> list[Event]:
        self.reads += 1
        assert self.reads < 10, "followed past the end"
        return [_event("EVT#1")] if after is None else []


def test_in_process_an_execution_that_stopped_without_ending_the_run_ends_the_follow() -> None:
    runtime = FakeRuntime("FAILED")

    events = list(follow(LocalTransport(runtime, poll_s=0), "run-1"))  # type: ignore[arg-type]

    assert [e.key for e in events] == ["EVT#1"]
    assert runtime.reads == 2


def test_in_process_a_running_execution_is_not_the_end() -> None:
    page = LocalTransport(FakeRuntime("RUNNING"), poll_s=0).events_after("run-1", "EVT#1")  # type: ignore[arg-type]

    assert page == EventPage(events=[], cursor="EVT#1", ended=False)


class RecordingSignal(ChangeSignal):
    """A store whose writes land while the follower reads, and which records what it was waited on with."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[int, float]] = []

    def wait(self, seen: int, timeout_s: float) -> int:
        self.waits.append((seen, timeout_s))
        return super().wait(seen, timeout_s)


class WritingRuntime(FakeRuntime):
    def events(self, run_id: str, after: str | None = None) -> list[Event]:
        self.changes.bump()  # an event lands just after the read found nothing
        return []


def test_in_process_the_follower_waits_for_the_next_store_write_seen_from_before_its_reads() -> None:
    # Given a running run with nothing new, and a write landing while the follower reads
    runtime = WritingRuntime("RUNNING")
    runtime.changes = RecordingSignal()
    transport = LocalTransport(runtime, idle_s=30)  # type: ignore[arg-type]

    # When it asks for the events after its cursor
    page = transport.events_after("run-1", "EVT#1")

    # Then it waited on the store's version from before the reads (so that write wakes it at once), not a poll
    assert page == EventPage(events=[], cursor="EVT#1", ended=False)
    assert runtime.changes.waits == [(0, 30)]
    assert runtime.changes.version == 1


def test_a_change_signal_wakes_a_waiter_and_a_stale_version_returns_at_once() -> None:
    import threading

    signal = ChangeSignal()
    woken: list[int] = []
    waiter = threading.Thread(target=lambda: woken.append(signal.wait(0, timeout_s=60)))
    waiter.start()
    signal.bump()
    waiter.join(timeout=60)

    assert woken == [1]
    assert signal.wait(0, timeout_s=60) == 1  # already moved: no wait
