"""What an agent step costs in the cloud: state transitions, Lambda invocations, DynamoDB and S3 requests,
counted on the local stack (moto executing the real ASL, the real handlers), and priced at the AWS list
prices of ``functions/sandcastle/pricing/prices.json``.

Counts are exact: the execution history's ``*StateEntered`` events (what Standard Workflows bill), the
emulated Lambda invocations, the botocore calls the handlers make. Two shapes of the same code are
measured, each on a playbook of 10 ``run_command: true`` calls and of 1 (so a step's own cost is the
difference over 9 steps, without the run's fixed part):

- **now**: the state machine as deployed — a turn with one tool call runs it in AgentStep;
- **before**: the same ASL with ``inline_tool_call`` false in AgentStep's parameters — every call goes
  through the RunTools map, the shape of the run loop before this change (4 transitions and 2
  invocations per step).

DynamoDB request units are estimated from the item sizes of each request and response by DynamoDB's
rounding rules (writes per 1 KB, transactional ×2; reads per 4 KB, eventually consistent ½). Lambda
duration is what each invocation took here (an instant model, `true` in the local E2B server), and
again with a model reply of ``MODEL_REPLY_S`` added to every AgentStep invocation — the part that
dominates a real run's Lambda bill, the same in both shapes.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from tests.benchmarks import section, table

if TYPE_CHECKING:
    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.pricing import AwsUsage

STEPS = 10
MODEL_REPLY_S = 2.0
"""A model reply's time, added to every AgentStep invocation for the second cost figure."""
S3_PUT_CLASS = {"PutObject", "CopyObject", "ListObjects", "ListObjectsV2", "CreateMultipartUpload", "UploadPart"}
DYNAMODB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}


@dataclass
class RunCounts:
    """What one run cost, counted."""

    tool_calls: int
    entered: Counter[str]
    invocations: Counter[str]
    durations_ms: dict[str, list[float]]
    requests: Counter[str]
    read_units: Decimal
    write_units: Decimal

    @property
    def transitions(self) -> int:
        return sum(self.entered.values())

    def dynamodb_requests(self) -> int:
        return sum(n for name, n in self.requests.items() if name.startswith("dynamodb."))

    def s3_requests(self, put_class: bool) -> int:
        return sum(
            n
            for name, n in self.requests.items()
            if name.startswith("s3.") and (name.removeprefix("s3.") in S3_PUT_CLASS) == put_class
        )


@dataclass
class _Meter:
    """Counts the handlers' AWS calls and estimates their DynamoDB request units; times each invocation."""

    requests: Counter[str] = field(default_factory=Counter)
    read_units: Decimal = Decimal(0)
    write_units: Decimal = Decimal(0)
    durations_ms: dict[str, list[float]] = field(default_factory=dict)
    _pending_updates: list[tuple[dict[str, Any], Decimal]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_handler: threading.local = field(default_factory=threading.local)

    def reset(self) -> None:
        self.requests.clear()
        self.read_units = self.write_units = Decimal(0)
        self.durations_ms = {}
        self._pending_updates = []

    @contextmanager
    def installed(self, runtime: LocalRuntime) -> Iterator[None]:
        from botocore.client import BaseClient

        dispatch = runtime._dispatch
        make_api_call = BaseClient._make_api_call
        meter = self

        def timed_dispatch(function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
            name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0]
            logical_id = runtime._by_name[name].logical_id if name in runtime._by_name else name
            meter._in_handler.active = True
            started = time.perf_counter()
            try:
                return dispatch(function_name, body, response_headers)
            finally:
                meter._in_handler.active = False
                with meter._lock:
                    meter.durations_ms.setdefault(logical_id, []).append((time.perf_counter() - started) * 1000)

        def counted_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            response = make_api_call(client, operation, params)
            if getattr(meter._in_handler, "active", False):
                meter._count(client.meta.service_model.service_name, operation, params, response)
            return response

        runtime._dispatch = timed_dispatch  # type: ignore[method-assign]
        try:
            with mock.patch.object(BaseClient, "_make_api_call", counted_api_call):
                yield
        finally:
            del runtime._dispatch

    def _count(self, service: str, operation: str, params: dict[str, Any], response: dict[str, Any]) -> None:
        with self._lock:
            self.requests[f"{service}.{operation}"] += 1
            if service != "dynamodb":
                return
            consistent = Decimal(1) if params.get("ConsistentRead") else Decimal("0.5")
            if operation == "GetItem":
                self.read_units += consistent * max(1, math.ceil(item_size(response.get("Item", {})) / 4096))
            elif operation == "Query":
                size = sum(item_size(item) for item in response.get("Items", []))
                self.read_units += consistent * max(1, math.ceil(size / 4096))
            elif operation == "PutItem":
                self.write_units += max(1, math.ceil(item_size(params["Item"]) / 1024))
            elif operation == "UpdateItem":
                self._pending_updates.append(({"TableName": params["TableName"], "Key": params["Key"]}, Decimal(1)))
            elif operation == "TransactWriteItems":
                for entry in params["TransactItems"]:
                    if "Put" in entry:
                        self.write_units += 2 * max(1, math.ceil(item_size(entry["Put"]["Item"]) / 1024))
                    elif "Update" in entry:
                        target = entry["Update"]
                        self._pending_updates.append(
                            ({"TableName": target["TableName"], "Key": target["Key"]}, Decimal(2))
                        )
                    else:  # ConditionCheck, Delete
                        self.write_units += 2

    def settle(self, client: Any) -> None:
        """Price the updates by their items' sizes now (read outside any handler: neither counted nor checked)."""
        sizes: dict[str, int] = {}
        for key, factor in self._pending_updates:
            marker = repr(key)
            if marker not in sizes:
                sizes[marker] = item_size(client.get_item(**key, ConsistentRead=True).get("Item", {}))
            self.write_units += factor * max(1, math.ceil(sizes[marker] / 1024))
        self._pending_updates = []


def item_size(item: dict[str, Any]) -> int:
    """A DynamoDB item's size by DynamoDB's rules: attribute names plus values (numbers ~ digits/2 + 1)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, content), *_ = value.items()
    if kind == "S":
        return len(content.encode())
    if kind == "N":
        return len(content.lstrip("-").replace(".", "")) // 2 + 1
    if kind == "B":
        return len(content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in content.items())
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in content)
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: v}) for v in content)
    return 0


def report(quick: bool = False) -> str:
    from sandcastle.runs.requests import PlaybookCall

    call = PlaybookCall(tool="run_command", arguments={"command": "true"})
    measured: dict[str, dict[int, RunCounts]] = {}
    with _runtime() as (runtime, meter):
        memory = {spec.logical_id: spec.memory_mb for spec in runtime.functions.values()}
        architecture = _architectures(runtime)
        _measure(runtime, meter, [call])  # warm-up: first clients, lazy imports
        for shape in ("now", "before"):
            _use_shape(runtime, inline=shape == "now")
            measured[shape] = {n: _measure(runtime, meter, [call] * n) for n in (1, STEPS)}
        _use_shape(runtime, inline=True)
    return "\n\n".join(
        [
            _counts_section(measured),
            _cost_section(measured, memory, architecture),
        ]
    )


@contextmanager
def _runtime() -> Iterator[tuple[LocalRuntime, _Meter]]:
    from sandcastle.local.runtime import LocalRuntime

    with tempfile.TemporaryDirectory(prefix="sandcastle-bench-") as home:
        meter = _Meter()
        with LocalRuntime(home=Path(home)) as runtime, meter.installed(runtime):
            yield runtime, meter


def _architectures(runtime: LocalRuntime) -> dict[str, str]:
    default = runtime.template.body.get("Globals", {}).get("Function", {}).get("Architectures", ["x86_64"])[0]
    return {
        logical_id: runtime.template.body["Resources"][logical_id]["Properties"].get("Architectures", [default])[0]
        for logical_id in runtime.functions
    }


def _use_shape(runtime: LocalRuntime, *, inline: bool) -> None:
    """The deployed definition, or the same with AgentStep told to leave every call to the RunTools map."""
    definition = runtime.template.state_machine_definition("AgentRunStateMachine")
    flag = '"inline_tool_call": true'
    if flag not in definition:
        raise RuntimeError(f"the ASL no longer passes {flag} to AgentStep; update this benchmark")
    if not inline:
        definition = definition.replace(flag, '"inline_tool_call": false')
    client = runtime.deps.executions.client
    client.update_state_machine(stateMachineArn=runtime.state_machine_arn, definition=definition)


def _measure(runtime: LocalRuntime, meter: _Meter, playbook: list[Any]) -> RunCounts:
    from sandcastle.runs.records import RunStatus
    from sandcastle.runs.requests import RunRequest

    meter.reset()
    runtime.stats.reset()
    run = runtime.submit(RunRequest(instructions="bench", playbook=playbook, budgets={"max_steps": 50}))
    deadline = time.monotonic() + 120
    while runtime.execution(run.run_id)["status"] == "RUNNING":  # ended: every invocation has returned
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark run {run.run_id} still running after 120 s")
        time.sleep(0.05)
    final = runtime.get_run(run.run_id)
    if final.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run {run.run_id} ended {final.status.value}: {final.error}")
    meter.settle(runtime.deps_client("dynamodb"))
    history = _history(runtime, runtime.execution(run.run_id)["executionArn"])
    entered = Counter(e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered"))
    if Counter(runtime.stats.invocations) != Counter({k: len(v) for k, v in meter.durations_ms.items()}):
        raise RuntimeError("the benchmark's invocation count disagrees with the runtime's")
    return RunCounts(
        tool_calls=final.usage.tool_calls,
        entered=entered,
        invocations=Counter(runtime.stats.invocations),
        durations_ms={k: list(v) for k, v in meter.durations_ms.items()},
        requests=Counter(meter.requests),
        read_units=meter.read_units,
        write_units=meter.write_units,
    )


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


# --- rendering ---


def _per_step(runs: dict[int, RunCounts], value: Any) -> float:
    return (value(runs[STEPS]) - value(runs[1])) / (STEPS - 1)


def _counts_section(measured: dict[str, dict[int, RunCounts]]) -> str:
    now, before = measured["now"], measured["before"]
    functions = sorted({f for shape in measured.values() for f in shape[STEPS].invocations})
    states = sorted({s for shape in measured.values() for s in shape[STEPS].entered})
    dynamodb_ops = sorted(
        {o for shape in measured.values() for o in shape[STEPS].requests if o.startswith("dynamodb.")}
    )

    def row(label: str, value: Any) -> list[Any]:
        return [label, _per_step(now, value), _per_step(before, value), value(now[STEPS]), value(before[STEPS])]

    rows = [
        row("state transitions", lambda r: r.transitions),
        *(row(f"  {s}", lambda r, s=s: r.entered[s]) for s in states),
        row("Lambda invocations", lambda r: sum(r.invocations.values())),
        *(row(f"  {f}", lambda r, f=f: r.invocations[f]) for f in functions),
        row("DynamoDB requests", lambda r: r.dynamodb_requests()),
        *(row(f"  {o.removeprefix('dynamodb.')}", lambda r, o=o: r.requests[o]) for o in dynamodb_ops),
        row("DynamoDB read units (est.)", lambda r: float(r.read_units)),
        row("DynamoDB write units (est.)", lambda r: float(r.write_units)),
        row("S3 requests", lambda r: r.s3_requests(True) + r.s3_requests(False)),
        row(
            "other AWS calls (EventBridge)",
            lambda r: sum(n for o, n in r.requests.items() if not o.startswith(("dynamodb.", "s3."))),
        ),
    ]
    body = table(
        ["count", "per step now", "per step before", f"{STEPS}-step run now", f"{STEPS}-step run before"],
        rows,
        digits=2,
    )
    per_step_transitions = _per_step(now, lambda r: r.transitions)
    per_step_invocations = _per_step(now, lambda r: sum(r.invocations.values()))
    note = (
        f"A step is a turn with one `run_command: true`; per step = ({STEPS}-call run − 1-call run) / {STEPS - 1}. "
        f"A {STEPS}-step run also has PrepareRun, the answering turn and FinishRun. "
        f"Target ≤ 2 transitions and 1 invocation per step: now {per_step_transitions:.2f} and "
        f"{per_step_invocations:.2f} ({per_step_transitions / 2:.2f}× and {per_step_invocations:.2f}× the target). "
        "'before' is this code with AgentStep's inline_tool_call false, which is the earlier run loop's shape. "
        "Submission (PutItem, StartExecution; the API's Lambda in the cloud) is not counted."
    )
    return section("Cloud: work per agent step (counted on the local stack)", body, note)


def _usage(runs: RunCounts, memory: dict[str, int], architecture: dict[str, str], model_s: float) -> AwsUsage:
    from sandcastle.pricing import AwsUsage, LambdaUsage

    return AwsUsage(
        state_transitions=runs.transitions,
        lambdas=[
            LambdaUsage(
                function=function,
                memory_mb=memory[function],
                architecture=architecture[function],  # type: ignore[arg-type]
                durations_ms=[ms + (model_s * 1000 if function == "AgentStepFunction" else 0) for ms in durations],
            )
            for function, durations in runs.durations_ms.items()
        ],
        dynamodb_read_units=runs.read_units,
        dynamodb_write_units=runs.write_units,
        s3_put_requests=runs.s3_requests(True),
        s3_get_requests=runs.s3_requests(False),
    )


def _cost_section(
    measured: dict[str, dict[int, RunCounts]], memory: dict[str, int], architecture: dict[str, str]
) -> str:
    from sandcastle.pricing import aws_cost, price_table

    rows: list[list[Any]] = []
    totals: dict[tuple[str, float], Decimal] = {}
    for model_s, label in ((0.0, "as measured here"), (MODEL_REPLY_S, f"+ {MODEL_REPLY_S:g} s model reply per turn")):
        for shape in ("now", "before"):
            cost = aws_cost(_usage(measured[shape][STEPS], memory, architecture, model_s))
            totals[(shape, model_s)] = cost.total
            micro = [float(v * 1_000_000) for v in (cost.step_functions, cost.lambda_requests, cost.lambda_duration)]
            rows.append(
                [
                    f"{shape}, Lambda time {label}",
                    *micro,
                    float(cost.dynamodb * 1_000_000),
                    float(cost.s3 * 1_000_000),
                    float(cost.total * 1_000_000),
                    100 * float(cost.step_functions / cost.total),
                ]
            )
    body = table(
        [
            f"{STEPS}-step run, micro-USD",
            "Step Functions",
            "Lambda requests",
            "Lambda GB-s",
            "DynamoDB",
            "S3",
            "total",
            "Step Functions %",
        ],
        rows,
        digits=2,
    )
    aws = price_table().sections["aws"]
    checked = sorted({str(p.checked) for p in aws.prices.values()})
    ratios = ", ".join(
        f"{label}: now {float(totals[('now', m)] / totals[('before', m)]):.2f}× before"
        for m, label in ((0.0, "as measured"), (MODEL_REPLY_S, f"with a {MODEL_REPLY_S:g} s model"))
    )
    invoked = {f for shape in measured.values() for f in shape[STEPS].invocations}
    memory_note = ", ".join(sorted({f"{memory[f]} MB {architecture[f]}" for f in invoked}))
    note = (
        f"List prices, {aws.region}, read {', '.join(checked)} (functions/sandcastle/pricing/prices.json; no free tier "
        f"deducted). Lambda at the template's memory ({memory_note}), each invocation's duration rounded up to 1 ms. "
        f"Ratios — {ratios}. EventBridge events, CloudWatch logs, storage and the model and sandbox providers "
        "are not priced here."
    )
    return section(f"Cloud: AWS cost of a {STEPS}-step run", body, note)
