"""Triggers on the local runtime: an upload starts a run and its result lands in the outbox; a schedule
fires on a controlled clock; the reaper clears sandboxes whose run is over. Real ASL, real bubblewrap."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.payloads import ScheduleFire
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import ScheduleRequest, TaskDefinition
from sandcastle.runs.schedules import create_schedule, fire_schedule
from sandcastle.runs.tasks import put_task
from sandcastle.runs.uploads import upload_run_id

pytestmark = pytest.mark.bwrap

CSV = b"region,units\nnorth,3\nsouth,4\n"
COUNT_ROWS = [
    {"tool": "run_command", "arguments": {"command": "ls input && wc -l < input/*.csv > output/rows.txt"}},
]
REPORT = [{"tool": "run_command", "arguments": {"command": "date -u +%FT%TZ > output/fired-at.txt"}}]
"""A scheduled task's playbook: a schedule brings no input files (``ls input`` would fail the run)."""


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def _task(runtime: LocalRuntime, name: str = "count-rows", playbook: list | None = None, **extra: Any) -> None:
    definition = TaskDefinition(instructions="Count the rows", playbook=playbook or COUNT_ROWS, **extra)
    put_task("acme", name, definition, runtime.deps)


def _outbox(runtime: LocalRuntime, key: str) -> dict[str, Any]:
    bucket = runtime.deps.settings.inbox_bucket
    return json.loads(runtime.deps_client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def _wait_for(predicate: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not met")


def _sandboxes(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("lsb-*")) if root.exists() else []


# ---------------------------------------------------------------- uploads


def test_an_upload_runs_its_task_and_the_result_lands_in_the_outbox(runtime: LocalRuntime) -> None:
    _task(runtime)
    triggers = runtime.triggers
    assert triggers is not None

    receipt = triggers.inbox.put("inbox/acme/count-rows/sales q3 ünïcode.csv", CSV)
    run = runtime.wait(_wait_for(lambda: _run_or_none(runtime, receipt.run_id)).run_id, timeout_s=120)
    triggers.bus.drain()

    assert run.status is RunStatus.SUCCEEDED
    assert run.source == "s3" and run.origin and run.origin.task == "count-rows"
    assert [f.name for f in run.files] == ["sales q3 ünïcode.csv"]
    prefix = f"outbox/acme/count-rows/{run.run_id}/"
    result = _outbox(runtime, prefix + "result.json")
    assert result["status"] == "SUCCEEDED"
    assert result["source"]["key"] == "inbox/acme/count-rows/sales q3 ünïcode.csv"
    assert result["usage"]["tool_calls"] == 1
    assert [a["name"] for a in result["artifacts"]] == ["rows.txt"]
    rows = runtime.deps_client("s3").get_object(Bucket=runtime.deps.settings.inbox_bucket, Key=prefix + "rows.txt")
    assert rows["Body"].read().strip() == b"3"
    # and the local outbox folder mirrors it
    mirrored = runtime.home / "outbox" / "acme" / "count-rows" / run.run_id
    assert json.loads((mirrored / "result.json").read_text())["status"] == "SUCCEEDED"
    assert (mirrored / "rows.txt").read_text().strip() == "3"


def test_the_same_event_twice_starts_one_run(runtime: LocalRuntime) -> None:
    _task(runtime)
    triggers = runtime.triggers
    assert triggers is not None
    receipt = triggers.inbox.put("inbox/acme/count-rows/data.csv", CSV)
    triggers.bus.drain()
    [(_, event)] = [(f, e) for f, e in triggers.bus.delivered if f == "OnUploadFunction"]

    again = runtime.invoke("OnUploadFunction", event)  # EventBridge delivers at least once

    assert again["uploads"][0]["status"] == "duplicate"
    assert again["uploads"][0]["run_id"] == receipt.run_id
    runtime.wait(receipt.run_id, timeout_s=120)
    assert runtime.stats.invocations["PrepareRunFunction"] == 1


def test_a_file_dropped_into_the_inbox_folder_runs(runtime: LocalRuntime) -> None:
    _task(runtime)
    triggers = runtime.triggers
    assert triggers is not None
    dropped = runtime.home / "inbox" / "acme" / "count-rows" / "drop.csv"
    dropped.parent.mkdir(parents=True, exist_ok=True)
    dropped.write_bytes(CSV)

    [receipt] = triggers.inbox.scan(settle_s=0)

    assert not dropped.exists()
    assert receipt.run_id == upload_run_id(receipt.bucket, receipt.key, receipt.version_id)
    assert runtime.wait(_wait_for(lambda: _run_or_none(runtime, receipt.run_id)).run_id).status is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("key", "data", "error_type", "result_prefix"),
    [
        ("inbox/acme/no-such-task/data.csv", CSV, "UnknownTask", "outbox/acme/no-such-task/"),
        ("inbox/acme/count-rows/empty.csv", b"", "EmptyFile", "outbox/acme/count-rows/"),
        ("inbox/acme/small/big.csv", b"x" * 100, "FileTooLarge", "outbox/acme/small/"),
        ("inbox/acme/data.csv", CSV, "InvalidKey", "outbox/acme/_/"),
        ("inbox/acme/_/data.csv", CSV, "MissingInstructions", "outbox/acme/_/"),
    ],
)
def test_a_bad_upload_gets_its_result_json_and_no_sandbox(
    runtime: LocalRuntime, sandbox_root: Path, key: str, data: bytes, error_type: str, result_prefix: str
) -> None:
    _task(runtime)
    _task(runtime, "small", max_input_bytes=10)
    triggers = runtime.triggers
    assert triggers is not None

    receipt = triggers.inbox.put(key, data)
    triggers.bus.drain()

    result = _outbox(runtime, f"{result_prefix}{receipt.run_id}/result.json")
    assert result["status"] == "REJECTED"
    assert result["error"]["type"] == error_type
    assert _run_or_none(runtime, receipt.run_id) is None
    assert _sandboxes(sandbox_root) == []
    assert runtime.stats.invocations["PrepareRunFunction"] == 0


def test_an_upload_with_its_own_instructions_needs_no_saved_task(runtime: LocalRuntime) -> None:
    triggers = runtime.triggers
    assert triggers is not None

    receipt = triggers.inbox.put("inbox/acme/_/notes.txt", b"hello", metadata={"instructions": "Résumé the notes"})
    run = runtime.wait(_wait_for(lambda: _run_or_none(runtime, receipt.run_id)).run_id, timeout_s=120)
    triggers.bus.drain()

    assert run.instructions == "Résumé the notes"
    assert run.model_backend == "openai"  # the fake OpenAI endpoint of the integration fixtures
    assert _outbox(runtime, f"outbox/acme/_/{run.run_id}/result.json")["run_id"] == run.run_id


# ---------------------------------------------------------------- schedules


def test_a_schedule_fires_at_its_time_once(runtime: LocalRuntime) -> None:
    triggers = runtime.triggers
    assert triggers is not None
    clock = FakeClock(datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1))
    triggers.scheduler.set_clock(clock)
    _task(runtime, playbook=REPORT)
    schedule = create_schedule("acme", ScheduleRequest(expression="rate(10 minutes)", task="count-rows"), runtime.deps)

    clock.advance(minutes=9, seconds=59)
    assert [f for f in triggers.scheduler.tick() if f.function != "sandcastle-local-ReaperFunction"] == []
    clock.advance(seconds=2)
    fired = [f for f in triggers.scheduler.tick() if f.schedule == schedule.schedule_id]

    [fire] = fired
    assert fire.result["status"] == "started"
    run = runtime.wait(fire.result["run_id"], timeout_s=120)
    assert run.status is RunStatus.SUCCEEDED and run.source == "schedule"
    assert run.origin and run.origin.schedule_id == schedule.schedule_id
    assert triggers.scheduler.tick() == []  # nothing more until the next time
    # a re-fire of the same time (a retried delivery) starts nothing new
    again = runtime.invoke(
        "OnScheduleFunction",
        {"schedule_id": schedule.schedule_id, "tenant": "acme", "scheduled_time": fire.scheduled_time},
    )
    assert again == {"status": "duplicate", "run_id": run.run_id, "reason": None}


def test_a_cron_schedule_in_a_time_zone(runtime: LocalRuntime) -> None:
    triggers = runtime.triggers
    assert triggers is not None
    clock = FakeClock(datetime(2031, 3, 3, 8, 59, tzinfo=UTC))  # 09:59 in Berlin, a Monday
    triggers.scheduler.set_clock(clock)
    _task(runtime, playbook=REPORT)
    schedule = create_schedule(
        "acme",
        ScheduleRequest(expression="cron(0 10 ? * 2-6 *)", timezone="Europe/Berlin", task="count-rows"),
        runtime.deps,
    )

    clock.advance(minutes=2)
    [fire] = [f for f in triggers.scheduler.tick() if f.schedule == schedule.schedule_id]

    assert fire.scheduled_time == "2031-03-03T09:00:00Z"
    runtime.wait(fire.result["run_id"], timeout_s=120)


def test_overlap_skip_and_allow(runtime: LocalRuntime) -> None:
    slow = [{"tool": "run_command", "arguments": {"command": "sleep 3"}}]
    put_task("acme", "slow", TaskDefinition(instructions="wait", playbook=slow), runtime.deps)
    skip = create_schedule("acme", ScheduleRequest(expression="rate(1 minute)", task="slow"), runtime.deps)
    allow = create_schedule(
        "acme", ScheduleRequest(expression="rate(1 minute)", task="slow", overlap="allow"), runtime.deps
    )

    def fire(schedule_id: str, minute: int) -> Any:
        when = f"2031-01-01T00:0{minute}:00Z"
        return fire_schedule(ScheduleFire(schedule_id=schedule_id, tenant="acme", scheduled_time=when), runtime.deps)

    first, second = fire(skip.schedule_id, 1), fire(skip.schedule_id, 2)
    assert first.status == "started" and second.status == "skipped"
    assert first.run_id in (second.reason or "")
    stored = runtime.deps.schedules.get("acme", skip.schedule_id)
    assert stored and [s.scheduled_time for s in stored.skips] == ["2031-01-01T00:02:00Z"]

    one, two = fire(allow.schedule_id, 1), fire(allow.schedule_id, 2)
    assert one.status == two.status == "started" and one.run_id != two.run_id

    for run_id in (first.run_id, one.run_id, two.run_id):
        runtime.wait(run_id or "", timeout_s=120)
    assert fire(skip.schedule_id, 3).status == "started"  # the previous run has ended


# ---------------------------------------------------------------- the reaper


def test_the_reaper_kills_what_outlived_its_run_and_leaves_live_runs_alone(
    runtime: LocalRuntime, sandbox_root: Path
) -> None:
    from sandcastle.runs.reaper import reap
    from sandcastle.sandbox.base import SandboxSpec

    slow = [{"tool": "run_command", "arguments": {"command": "sleep 4"}}]
    put_task("acme", "slow", TaskDefinition(instructions="wait", playbook=slow), runtime.deps)
    triggers = runtime.triggers
    assert triggers is not None
    live = triggers.inbox.put("inbox/acme/slow/x.csv", CSV)
    _wait_for(lambda: (r := _run_or_none(runtime, live.run_id)) and r.sandbox_id)
    orphan = runtime.deps.sandboxes.create(SandboxSpec(run_id="run-gone", tenant="acme", timeout_s=600))

    report = reap(runtime.deps, now=datetime.now(UTC) + timedelta(seconds=90))

    assert report.killed == 1 and report.left_alone == 1
    assert orphan.sandbox_id not in _sandboxes(sandbox_root)
    assert runtime.wait(live.run_id, timeout_s=120).status is RunStatus.SUCCEEDED


def _run_or_none(runtime: LocalRuntime, run_id: str) -> Any:
    from sandcastle.errors import RunNotFound

    try:
        return runtime.get_run(run_id)
    except RunNotFound:
        return None
