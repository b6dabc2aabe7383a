"""The run loop's own cost, on the local stack: an instant model (a playbook) and a trivial tool.

Every step of a playbook run is one ``run_command: true``, so what is left of the wall time is
orchestration: the ASL interpreter (moto's), the Lambda dispatch, the handlers' DynamoDB calls
(moto's, in process) and our own code. The figures:

- wall time per agent step and per tool call, and the overhead per step (wall − tool time);
- a 1-step against a 20-step run: the fixed cost of a run and the cost of one more step;
- per step: state transitions, Lambda invocations, DynamoDB reads and writes;
- the largest state payload (it carries ids only, so it must not grow with steps or output);
- where the wall time goes: the interpreter, the handlers' AWS calls, the tools, our code.

Handler and AWS-call times are measured by wrapping ``LocalRuntime._dispatch`` and botocore's
``BaseClient._make_api_call`` here, in the benchmark only.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from tests.benchmarks import Spread, section, table

if TYPE_CHECKING:
    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.runs.requests import PlaybookCall

LONG_STEPS = 20
SHORT_STEPS = 1
LOUD_OUTPUT_BYTES = 100 * 1024
READS = ("GetItem", "Query", "BatchGetItem", "Scan")
WRITES = ("PutItem", "UpdateItem", "TransactWriteItems", "DeleteItem", "BatchWriteItem")
RUN_TIMEOUT_S = 120.0
FILLER_ITEMS = 2_000


@dataclass
class RunFigures:
    """What one measured run cost."""

    steps: int
    tool_calls: int
    tool_ms: int
    wall_ms: float
    submit_ms: float
    handler_ms: float
    aws_call_ms: float
    aws_call_ms_by_operation: dict[str, float]
    transitions: int
    invocations: Counter[str]
    api_calls: Counter[str]
    largest_lambda_payload: int
    largest_history_payload: int

    @property
    def overhead_ms_per_step(self) -> float:
        return (self.wall_ms - self.tool_ms) / self.steps

    @property
    def largest_payload(self) -> int:
        return max(self.largest_lambda_payload, self.largest_history_payload)

    def dynamodb(self, operations: tuple[str, ...]) -> int:
        return sum(self.api_calls[f"dynamodb.{name}"] for name in operations)


class _Clock:
    """Time spent inside handlers, and inside the AWS calls those handlers make."""

    def __init__(self) -> None:
        self.handler_s = 0.0
        self.aws_call_s = 0.0
        self.aws_call_s_by_operation: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._in_handler = threading.local()

    def reset(self) -> None:
        with self._lock:
            self.handler_s = 0.0
            self.aws_call_s = 0.0
            self.aws_call_s_by_operation.clear()

    @contextmanager
    def installed(self, runtime: LocalRuntime) -> Iterator[None]:
        from botocore.client import BaseClient

        dispatch = runtime._dispatch
        make_api_call = BaseClient._make_api_call
        clock = self

        def timed_dispatch(function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
            clock._in_handler.active = True
            started = time.perf_counter()
            try:
                return dispatch(function_name, body, response_headers)
            finally:
                clock._in_handler.active = False
                clock._add("handler_s", time.perf_counter() - started)

        def timed_api_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            if not getattr(clock._in_handler, "active", False):
                return make_api_call(client, operation_name, api_params)
            started = time.perf_counter()
            try:
                return make_api_call(client, operation_name, api_params)
            finally:
                operation = f"{client.meta.service_model.service_name}.{operation_name}"
                clock._add_aws_call(operation, time.perf_counter() - started)

        runtime._dispatch = timed_dispatch  # type: ignore[method-assign]
        try:
            with mock.patch.object(BaseClient, "_make_api_call", timed_api_call):
                yield
        finally:
            del runtime._dispatch

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + seconds)

    def _add_aws_call(self, operation: str, seconds: float) -> None:
        with self._lock:
            self.aws_call_s += seconds
            self.aws_call_s_by_operation[operation] += seconds


def report(quick: bool = False) -> str:
    """Measure the run loop and render the report's sections."""
    from sandcastle.runs.requests import PlaybookCall

    repetitions = 2 if quick else 5
    trivial = PlaybookCall(tool="run_command", arguments={"command": "true"})
    loud = PlaybookCall(
        tool="run_command", arguments={"command": f"head -c {LOUD_OUTPUT_BYTES} /dev/zero | tr '\\0' x"}
    )
    starts_ms: list[float] = []
    warmups: list[RunFigures] = []
    short: list[RunFigures] = []
    long: list[RunFigures] = []
    # A fresh runtime per repetition: moto's TransactWriteItems copies the whole table, so every
    # repetition should find the table as empty as the first did (see the table-fill section).
    for repetition in range(repetitions):
        with _runtime() as (runtime, clock, start_ms):
            starts_ms.append(start_ms)
            warmups.append(_measure(runtime, clock, [trivial] * SHORT_STEPS))  # first clients, lazy imports
            short.append(_measure(runtime, clock, [trivial] * SHORT_STEPS))
            long.append(_measure(runtime, clock, [trivial] * LONG_STEPS))
            if repetition == repetitions - 1:
                loud_run = _measure(runtime, clock, [loud])
    sections = [
        _timing_section(short, long, repetitions),
        _startup_section(starts_ms, warmups, short),
        _counts_section(short[-1], long[-1]),
        _payload_section(short, long, loud_run),
        _split_section(long),
    ]
    if not quick:
        with _runtime() as (runtime, clock, _):
            _measure(runtime, clock, [trivial] * SHORT_STEPS)
            empty_table = (_item_count(runtime), _measure(runtime, clock, [trivial] * SHORT_STEPS))
            _fill_table(runtime, FILLER_ITEMS)
            full_table = (_item_count(runtime), _measure(runtime, clock, [trivial] * SHORT_STEPS))
        sections.append(_table_fill_section(empty_table, full_table))
    return "\n\n".join(sections)


@contextmanager
def _runtime() -> Iterator[tuple[LocalRuntime, _Clock, float]]:
    """A fresh local runtime with the clock installed, and how long it took to start (ms)."""
    with tempfile.TemporaryDirectory(prefix="sandcastle-bench-") as home:
        started = time.perf_counter()
        from sandcastle.local.runtime import LocalRuntime

        clock = _Clock()
        with LocalRuntime(home=Path(home)) as runtime, clock.installed(runtime):
            yield runtime, clock, (time.perf_counter() - started) * 1000


def _item_count(runtime: LocalRuntime) -> int:
    client = runtime.deps_client("dynamodb")
    return int(client.describe_table(TableName=runtime.deps.settings.table_name)["Table"]["ItemCount"])


def _fill_table(runtime: LocalRuntime, items: int) -> None:
    """Store ``items`` transcript-sized events of other runs, as a runtime serving many runs would hold."""
    client = runtime.deps_client("dynamodb")
    table = runtime.deps.settings.table_name
    requests = [
        {
            "PutRequest": {
                "Item": {
                    "pk": {"S": f"RUN#filler-{index // 50}"},
                    "sk": {"S": f"EVT#{index % 50:06d}#0#tool_result"},
                    "data": {"S": "x" * 500},
                }
            }
        }
        for index in range(items)
    ]
    for start in range(0, len(requests), 25):
        client.batch_write_item(RequestItems={table: requests[start : start + 25]})


def _measure(runtime: LocalRuntime, clock: _Clock, playbook: list[PlaybookCall]) -> RunFigures:
    """Submit a playbook run, wait for its execution to end, and collect what it cost."""
    from sandcastle.runs.records import RunStatus
    from sandcastle.runs.requests import RunRequest

    request = RunRequest(instructions="bench", playbook=playbook, budgets={"max_steps": 50})
    runtime.stats.reset()
    clock.reset()
    started_epoch = time.time()
    started = time.perf_counter()
    run = runtime.submit(request)
    submitted = time.perf_counter()
    execution = _wait_for_execution(runtime, run.run_id)
    # The execution's own stop time (ms precision), so the polling interval adds nothing to the wall time.
    wall_s = execution["stopDate"].timestamp() - started_epoch
    final = runtime.get_run(run.run_id)
    if final.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run {run.run_id} ended {final.status.value}: {final.error}")
    history = _history(runtime, execution["executionArn"])
    return RunFigures(
        steps=final.usage.steps,
        tool_calls=final.usage.tool_calls,
        tool_ms=final.usage.tool_ms,
        wall_ms=wall_s * 1000,
        submit_ms=(submitted - started) * 1000,
        handler_ms=clock.handler_s * 1000,
        aws_call_ms=clock.aws_call_s * 1000,
        aws_call_ms_by_operation={name: s * 1000 for name, s in clock.aws_call_s_by_operation.items()},
        transitions=sum(1 for event in history if event["type"].endswith("StateEntered")),
        invocations=Counter(runtime.stats.invocations),
        api_calls=Counter(runtime.stats.api_calls),
        largest_lambda_payload=runtime.stats.largest_payload_bytes,
        largest_history_payload=max((_largest_io(event) for event in history), default=0),
    )


def _wait_for_execution(runtime: LocalRuntime, run_id: str, poll_s: float = 0.05) -> dict[str, Any]:
    """The ended execution. Polling is slow on purpose: each poll competes with the run for the GIL."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (execution := runtime.execution(run_id))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark run {run_id} still running after {RUN_TIMEOUT_S:.0f} s")
        time.sleep(poll_s)
    return execution


def _history(runtime: LocalRuntime, execution_arn: str) -> list[dict[str, Any]]:
    client = runtime.deps.executions.client
    events: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
    while True:
        page = client.get_execution_history(**arguments)
        events.extend(page["events"])
        if not page.get("nextToken"):
            return events
        arguments["nextToken"] = page["nextToken"]


def _largest_io(event: dict[str, Any]) -> int:
    """The largest ``input``/``output`` (in UTF-8 bytes) among an event's details."""
    sizes = [
        len(details[field].encode())
        for key, details in event.items()
        if key.endswith("EventDetails") and isinstance(details, dict)
        for field in ("input", "output")
        if isinstance(details.get(field), str)
    ]
    return max(sizes, default=0)


# --- rendering ---


def _spread(runs: list[RunFigures], value: Callable[[RunFigures], float]) -> list[float]:
    figure = Spread.of([value(run) for run in runs])
    return [figure.median, figure.low, figure.high]


def _timing_section(short: list[RunFigures], long: list[RunFigures], repetitions: int) -> str:
    rows: list[list[Any]] = []
    for label, runs in ((f"{LONG_STEPS} tool steps", long), (f"{SHORT_STEPS} tool step", short)):
        steps = runs[0].steps
        rows += [
            [f"{label}: wall per run ({steps} agent steps)", *_spread(runs, lambda r: r.wall_ms)],
            [f"{label}: wall per agent step", *_spread(runs, lambda r: r.wall_ms / r.steps)],
            [f"{label}: wall per tool call", *_spread(runs, lambda r: r.wall_ms / r.tool_calls)],
            [f"{label}: tool time per tool call", *_spread(runs, lambda r: r.tool_ms / r.tool_calls)],
            [f"{label}: overhead per agent step", *_spread(runs, lambda r: r.overhead_ms_per_step)],
        ]
    body = table(["figure", "median ms", "min ms", "max ms"], rows)

    wall_long = Spread.of([r.wall_ms for r in long]).median
    wall_short = Spread.of([r.wall_ms for r in short]).median
    overhead_long = Spread.of([r.wall_ms - r.tool_ms for r in long]).median
    overhead_short = Spread.of([r.wall_ms - r.tool_ms for r in short]).median
    added_steps = long[0].steps - short[0].steps
    slope = (wall_long - wall_short) / added_steps
    overhead_slope = (overhead_long - overhead_short) / added_steps
    fixed = wall_short - slope * short[0].steps
    overhead_fixed = overhead_short - overhead_slope * short[0].steps
    fit = table(
        ["fit (medians)", "wall ms", "wall − tool ms"],
        [
            ["fixed cost per run", fixed, overhead_fixed],
            ["cost per added agent step (slope)", slope, overhead_slope],
        ],
    )
    note = (
        f"{repetitions} repetitions, each in a fresh runtime after one warm-up run. An agent step is a model "
        "turn: a playbook of N calls takes N+1 (the last turn answers). "
        "Overhead = (wall − usage.tool_ms) / agent steps."
    )
    return section("Run loop: wall time (instant model, `run_command: true`)", body + "\n\n" + fit, note)


def _startup_section(starts_ms: list[float], warmups: list[RunFigures], short: list[RunFigures]) -> str:
    later_starts = Spread.of(starts_ms[1:]).median if len(starts_ms) > 1 else None
    later_warmups = Spread.of([r.wall_ms for r in warmups[1:]]).median if len(warmups) > 1 else None
    rows = [
        ["LocalRuntime start", starts_ms[0], later_starts],
        ["its first 1-step run", warmups[0].wall_ms, later_warmups],
        ["a warm 1-step run (median)", None, Spread.of([r.wall_ms for r in short]).median],
    ]
    note = (
        "The first start in a process imports moto, boto3 and the handlers; the first run builds the handlers' "
        "clients and imports what they load lazily."
    )
    return section("Run loop: start-up", table(["figure", "first in process ms", "later (median) ms"], rows), note)


def _counts_section(short: RunFigures, long: RunFigures) -> str:
    added = long.steps - short.steps

    def row(label: str, value: Callable[[RunFigures], int]) -> list[Any]:
        return [label, value(short), value(long), (value(long) - value(short)) / added, value(long) / long.steps]

    rows = [
        row("agent steps", lambda r: r.steps),
        row("tool calls", lambda r: r.tool_calls),
        row("state transitions (*StateEntered)", lambda r: r.transitions),
        row("Lambda invocations", lambda r: sum(r.invocations.values())),
        *(
            row(f"  {function}", lambda r, f=function: r.invocations[f])
            for function in sorted(long.invocations, key=lambda f: -long.invocations[f])
        ),
        row("DynamoDB reads", lambda r: r.dynamodb(READS)),
        *(
            row(f"  {operation}", lambda r, o=operation: r.api_calls[f"dynamodb.{o}"])
            for operation in READS
            if long.api_calls[f"dynamodb.{operation}"]
        ),
        row("DynamoDB writes", lambda r: r.dynamodb(WRITES)),
        *(
            row(f"  {operation}", lambda r, o=operation: r.api_calls[f"dynamodb.{o}"])
            for operation in WRITES
            if long.api_calls[f"dynamodb.{operation}"]
        ),
        row(
            "other AWS calls in handlers",
            lambda r: sum(n for name, n in r.api_calls.items() if not name.startswith("dynamodb.")),
        ),
    ]
    body = table(
        ["per run", f"{SHORT_STEPS}-step run", f"{LONG_STEPS}-step run", "per added step", "per step (avg)"],
        rows,
        digits=2,
    )
    note = (
        "Counted inside handlers only (submit_run is called in process by LocalRuntime.submit, so its "
        "PutItem and StartExecution are not here). Transitions are what Standard Workflows bill."
    )
    return section("Run loop: work per agent step", body, note)


def _payload_section(short: list[RunFigures], long: list[RunFigures], loud: RunFigures) -> str:
    columns = {
        f"{SHORT_STEPS} step": short,
        f"{LONG_STEPS} steps": long,
        f"{LOUD_OUTPUT_BYTES // 1024} KB stdout": [loud],
    }
    rows = [
        [
            "largest Lambda request/response",
            *(max(r.largest_lambda_payload for r in runs) for runs in columns.values()),
        ],
        [
            "largest input/output in the history",
            *(max(r.largest_history_payload for r in runs) for runs in columns.values()),
        ],
        ["largest state payload", *(max(r.largest_payload for r in runs) for runs in columns.values())],
    ]
    body = table(["bytes", *columns], rows)
    note = "The state carries ids and routing facts only: the three columns should match within a few bytes."
    return section("Run loop: state payload size", body, note)


def _split_section(long: list[RunFigures]) -> str:
    run = min(long, key=lambda r: abs(r.wall_ms - Spread.of([x.wall_ms for x in long]).median))
    handlers_other = run.handler_ms - run.aws_call_ms - run.tool_ms
    outside = run.wall_ms - run.submit_ms - run.handler_ms
    parts = [
        ("submit (validate, PutItem, StartExecution; in process)", run.submit_ms),
        ("ASL interpreter + Lambda emulation (wall − handlers)", outside),
        ("handlers", run.handler_ms),
        ("  tools (usage.tool_ms: bwrap + the command)", float(run.tool_ms)),
        ("  AWS calls (moto's DynamoDB, in process)", run.aws_call_ms),
        ("  our code, Powertools, pydantic (the rest)", handlers_other),
    ]
    rows = [[label, ms, ms / run.steps, 100 * ms / run.wall_ms] for label, ms in parts]
    rows.append(["wall", run.wall_ms, run.wall_ms / run.steps, 100.0])
    body = table(["component", "ms per run", "ms per step", "% of wall"], rows)
    calls = [
        [operation, run.api_calls[operation], ms, ms / run.api_calls[operation]]
        for operation, ms in sorted(run.aws_call_ms_by_operation.items(), key=lambda item: -item[1])
        if run.api_calls[operation]
    ]
    body += "\n\n" + table(["AWS call (in handlers)", "calls per run", "ms per run", "ms per call"], calls)
    note = (
        f"The median {LONG_STEPS}-step run. Locally the AWS calls are in-process emulation; in the cloud each "
        "is a network round trip (single-digit ms for DynamoDB), and each transition is Step Functions' own latency. "
        "Each agent step's Query reads the whole transcript, so its cost grows with the run's length."
    )
    return section("Run loop: where the wall time goes", body, note)


def _table_fill_section(empty: tuple[int, RunFigures], full: tuple[int, RunFigures]) -> str:
    def row(label: str, items: int, run: RunFigures) -> list[Any]:
        calls = run.api_calls["dynamodb.TransactWriteItems"]
        transact_ms = run.aws_call_ms_by_operation.get("dynamodb.TransactWriteItems", 0.0)
        return [label, items, run.wall_ms, transact_ms / calls if calls else None]

    rows = [row("fresh runtime", *empty), row(f"after {FILLER_ITEMS:,} more items", *full)]
    body = table(["1-step run", "items in table before", "wall ms", "TransactWriteItems ms per call"], rows)
    note = (
        "moto's TransactWriteItems deep-copies the whole table (for rollback) once per item written, so a "
        "long-lived local runtime (a test session, the gateway) gets slower as runs accumulate. Not a cloud cost."
    )
    return section("Local runtime: slowdown as the table fills", body, note)
