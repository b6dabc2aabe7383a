"""The reaper: kills what outlived its run, times out overdue runs, never touches a live run's sandbox."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandcastle.runs.reaper import reap
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import PlaybookCall, RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.e2b_sandbox import E2BSandboxProvider
from sandcastle.sandbox.listing import SandboxInfo
from sandcastle.store.dynamo import RunUpdate
from sandcastle.wiring import Dependencies
from tests.fakes.sandbox import FakeSandboxProvider

PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "ls"})]
LATER = timedelta(minutes=2)


class ListingProvider(FakeSandboxProvider):
    """The fake provider, able to list its sandboxes as a backend does."""

    def __init__(self) -> None:
        super().__init__()
        self.born: dict[str, datetime] = {}

    def create(self, spec: SandboxSpec) -> Any:
        sandbox = super().create(spec)
        self.born[sandbox.sandbox_id] = datetime.now(UTC)
        return sandbox

    def list_sandboxes(self) -> list[SandboxInfo]:
        with self._lock:
            return [
                SandboxInfo(
                    s.sandbox_id, s.spec.run_id or None, self.born[s.sandbox_id], metadata={"app": "sandcastle"}
                )
                for s in self.sandboxes.values()
            ]


@pytest.fixture
def provider(deps: Dependencies) -> ListingProvider:
    listing = ListingProvider()
    deps.sandboxes = listing  # type: ignore[assignment]
    return listing


def _run(
    deps: Dependencies, provider: ListingProvider, status: RunStatus, *, deadline: datetime | None = None
) -> tuple[str, str]:
    run = submit_run(RunRequest(instructions="x", playbook=PLAYBOOK), deps)
    sandbox = provider.create(SandboxSpec(run_id=run.run_id, tenant="default", timeout_s=600))
    fields: dict[str, Any] = {"status": status}
    if deadline:
        fields["deadline"] = deadline
    ending = {"require_not_terminal": True, "release_slot_of": run.tenant} if status.terminal else {}
    deps.store.update_run(run.run_id, RunUpdate(set=fields, **ending))
    deps.store.claim_sandbox(run.run_id, sandbox.sandbox_id)
    return run.run_id, sandbox.sandbox_id


def test_it_kills_sandboxes_of_ended_and_unknown_runs_and_leaves_live_ones(
    deps: Dependencies, provider: ListingProvider
) -> None:
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    _, ended = _run(deps, provider, RunStatus.SUCCEEDED)
    _, live = _run(deps, provider, RunStatus.RUNNING, deadline=in_an_hour)
    unknown = provider.create(SandboxSpec(run_id="run-nobody", tenant="default", timeout_s=600)).sandbox_id
    no_run = provider.create(SandboxSpec(run_id="", tenant="default", timeout_s=600)).sandbox_id
    live_run, _ = _run(deps, provider, RunStatus.RUNNING, deadline=in_an_hour)
    loser = provider.create(SandboxSpec(run_id=live_run, tenant="default", timeout_s=600)).sandbox_id

    report = reap(deps, now=datetime.now(UTC) + LATER)

    assert sorted(provider.killed) == sorted([ended, unknown, no_run, loser])
    assert live in provider.sandboxes
    assert report.killed == 4 and report.left_alone == 2 and report.timed_out == 0 and report.errors == 0
    reasons = {a["sandbox_id"]: a["reason"] for a in report.actions}
    assert reasons[ended] == "its run ended SUCCEEDED" and reasons[unknown] == "its run is unknown"


def test_a_young_sandbox_is_left_alone_even_without_a_run(deps: Dependencies, provider: ListingProvider) -> None:
    provider.create(SandboxSpec(run_id="run-not-recorded-yet", tenant="default", timeout_s=600))

    report = reap(deps, now=datetime.now(UTC) + timedelta(seconds=30))

    assert provider.killed == [] and report.left_alone == 1


def test_a_run_past_its_deadline_is_timed_out_and_its_sandbox_killed(
    deps: Dependencies, provider: ListingProvider
) -> None:
    run_id, sandbox_id = _run(deps, provider, RunStatus.RUNNING, deadline=datetime.now(UTC) + timedelta(seconds=30))
    provider.sandboxes[sandbox_id].files["output/partial.csv"] = b"a,b\n"

    report = reap(deps, now=datetime.now(UTC) + LATER)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.TIMED_OUT and run.error and run.error.type == "DeadlineExceeded"
    assert [a.name for a in run.artifacts] == ["partial.csv"]  # kept before the sandbox was killed
    assert "the reaper ended it" in run.error.message
    assert provider.killed == [sandbox_id] and report.timed_out == 1
    assert deps.events.entries[-1]["DetailType"] == "Run Finished"  # type: ignore[attr-defined]
    assert [e.kind.value for e in deps.store.list_events(run_id)][-1] == "end"


def test_two_reapers_at_once_kill_each_sandbox_once(deps: Dependencies, provider: ListingProvider) -> None:
    orphans = [provider.create(SandboxSpec(run_id=f"run-{i}", tenant="t", timeout_s=600)).sandbox_id for i in range(8)]
    overdue, _ = _run(deps, provider, RunStatus.RUNNING, deadline=datetime.now(UTC))
    reports = []
    start = threading.Barrier(2)
    # DynamoDB isolates transactions; moto does not across threads (a failed transaction restores a snapshot
    # of the whole table, undoing the other thread's commit), so its transactions are serialised here.
    client, lock = deps.store._client, threading.Lock()
    transact = client.transact_write_items

    def isolated(**request: Any) -> Any:
        with lock:
            return transact(**request)

    client.transact_write_items = isolated

    def one_reaper() -> None:
        start.wait()
        reports.append(reap(deps, now=datetime.now(UTC) + LATER))

    threads = [threading.Thread(target=one_reaper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.killed for r in reports) == len(orphans) + 1
    assert sum(r.errors for r in reports) == 0
    assert provider.sandboxes == {}
    assert deps.store.get_run(overdue).status is RunStatus.TIMED_OUT
    ends = [e for e in deps.store.list_events(overdue) if e.kind.value == "end"]
    assert len(ends) == 1


# ---------------------------------------------------------------- the E2B listing


@dataclass
class FakeE2BInfo:
    sandbox_id: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime


@dataclass
class FakeE2B:
    """Stands in for ``e2b.Sandbox``'s class methods ``list`` and ``kill``, two pages of results."""

    items: list[FakeE2BInfo]
    queries: list[Any] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)

    def list(self, query: Any = None, api_key: str | None = None) -> Any:
        self.queries.append(query)
        pages = [self.items[:1], self.items[1:]]

        class Paginator:
            @property
            def has_next(self) -> bool:
                return bool(pages)

            def next_items(self) -> list[FakeE2BInfo]:
                return pages.pop(0)

        return Paginator()

    def kill(self, sandbox_id: str, api_key: str | None = None) -> bool:
        self.killed.append(sandbox_id)
        return True


def test_the_e2b_backend_lists_this_apps_sandboxes_and_the_reaper_kills_orphans(deps: Dependencies) -> None:
    live_run = submit_run(RunRequest(instructions="x", playbook=PLAYBOOK), deps)
    old = datetime.now(UTC) - timedelta(minutes=10)
    sdk = FakeE2B(
        [
            FakeE2BInfo("sbx-orphan", {"app": "sandcastle", "run_id": "run-gone"}, old, old + timedelta(hours=1)),
            FakeE2BInfo("sbx-live", {"app": "sandcastle", "run_id": live_run.run_id}, old, old + timedelta(hours=1)),
        ]
    )
    provider = E2BSandboxProvider("e2b_test_key", "base", sandbox_factory=sdk)
    deps.sandboxes = provider  # type: ignore[assignment]

    listed = provider.list_sandboxes()
    report = reap(deps)

    assert [info.sandbox_id for info in listed] == ["sbx-orphan", "sbx-live"]
    assert listed[0].run_id == "run-gone" and listed[0].created_at == old
    assert sdk.queries[0].metadata == {"app": "sandcastle"}
    assert sdk.killed == ["sbx-orphan"] and report.killed == 1 and report.left_alone == 1


def test_an_overdue_runs_output_that_cannot_be_kept_is_reported_not_swallowed(
    deps: Dependencies, provider: ListingProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    run_id, sandbox_id = _run(deps, provider, RunStatus.RUNNING, deadline=datetime.now(UTC) + timedelta(seconds=30))
    provider.sandboxes[sandbox_id].files["output/partial.csv"] = b"a,b\n"

    def denied(*args: Any, **kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized: s3:PutObject"}}, "PutObject")

    monkeypatch.setattr(deps.objects, "put", denied)

    report = reap(deps, now=datetime.now(UTC) + LATER)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.TIMED_OUT and run.artifacts == []  # the run still ends
    assert run.error and "its output files could not be kept (ClientError" in run.error.message
    assert report.errors == 1 and report.timed_out == 1
    [lost] = [a for a in report.actions if a["action"] == "artifacts_not_kept"]
    assert lost["run_id"] == run_id and "AccessDenied" in lost["error"]
