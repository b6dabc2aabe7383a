"""The EventBridge rule on execution status changes, emulated for the local runtime.

moto emits no "Step Functions Execution Status Change" events, so the runtime stands in for the
template's rule (the function whose ``EventBridgeRule`` event matches ``aws.states``): right after
a successful ``StopExecution`` — moto may leave an execution that waits on a task token RUNNING —
and whenever an execution is seen in one of the rule's statuses, it invokes that function once
per execution, asynchronously, with the event EventBridge would deliver.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sandcastle.local.template import ACCOUNT_ID, Template

if TYPE_CHECKING:
    from sandcastle.local.runtime import LocalRuntime

logger = logging.getLogger(__name__)

DETAIL_TYPE = "Step Functions Execution Status Change"


@dataclass(frozen=True)
class ExecutionRule:
    """A function of the template triggered by execution status changes, and the statuses it matches."""

    function: str
    statuses: frozenset[str]


def execution_rule(template: Template) -> ExecutionRule | None:
    """The template's rule on Step Functions execution status changes, if it has one."""
    for logical_id, resource in template.of_type("AWS::Serverless::Function").items():
        for event in resource.get("Properties", {}).get("Events", {}).values():
            if event.get("Type") != "EventBridgeRule":
                continue
            pattern = event.get("Properties", {}).get("Pattern", {})
            if "aws.states" in pattern.get("source", []) and DETAIL_TYPE in pattern.get("detail-type", []):
                statuses = pattern.get("detail", {}).get("status", ["ABORTED", "TIMED_OUT", "FAILED"])
                return ExecutionRule(function=logical_id, statuses=frozenset(statuses))
    return None


def status_change_event(execution: dict[str, Any], region: str) -> dict[str, Any]:
    """The EventBridge event for ``execution`` (a ``DescribeExecution`` answer, its status set)."""

    def when(value: Any) -> int | None:
        return int(value.timestamp() * 1000) if isinstance(value, datetime) else None

    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPE,
        "source": "aws.states",
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [execution["executionArn"]],
        "detail": {
            "executionArn": execution["executionArn"],
            "stateMachineArn": execution["stateMachineArn"],
            "name": execution["name"],
            "status": execution["status"],
            "startDate": when(execution.get("startDate")),
            "stopDate": when(execution.get("stopDate")),
            "input": execution.get("input"),
            "output": execution.get("output"),
            "error": execution.get("error"),
            "cause": execution.get("cause"),
        },
    }


class ExecutionRuleEmulator:
    """Fires ``rule.function`` for executions of ``state_machine_arn`` that end in the rule's statuses."""

    def __init__(
        self, runtime: LocalRuntime, rule: ExecutionRule, state_machine_arn: str, *, poll_s: float = 0.5
    ) -> None:
        self.runtime = runtime
        self.rule = rule
        self.state_machine_arn = state_machine_arn
        self.poll_s = poll_s
        self.fired: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, events: Any) -> None:
        """Hook ``StopExecution`` on the session's event system ``events``; start watching."""
        events.register("provide-client-params.stepfunctions.StopExecution", self._remember_stopped)
        events.register("after-call.stepfunctions.StopExecution", self._stopped)
        for target, name in ((self._deliver, "rule-deliver"), (self._watch, "rule-watch")):
            thread = threading.Thread(target=target, name=f"sandcastle-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def drain(self, timeout_s: float = 10) -> None:
        """Wait until every event fired so far has been delivered."""
        done = threading.Event()
        self._queue.put({"_drain": done})
        done.wait(timeout_s)

    # --- sources of events ---

    def _remember_stopped(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["sandcastle_stopped_execution"] = params.get("executionArn")

    def _stopped(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        arn = context.get("sandcastle_stopped_execution")
        if arn and getattr(http_response, "status_code", 500) < 300 and "ABORTED" in self.rule.statuses:
            self._fire(arn, status="ABORTED")

    def _watch(self) -> None:
        client = self.runtime.deps_client("stepfunctions")
        while not self._stop.wait(self.poll_s):
            for status in sorted(self.rule.statuses):
                try:
                    pages = client.get_paginator("list_executions").paginate(
                        stateMachineArn=self.state_machine_arn, statusFilter=status
                    )
                    arns = [e["executionArn"] for page in pages for e in page["executions"]]
                except Exception:  # the runtime may be stopping
                    logger.debug("could not list executions", exc_info=True)
                    continue
                for arn in arns:
                    self._fire(arn, status=status)

    def _fire(self, arn: str, *, status: str) -> None:
        with self._lock:
            if arn in self.fired:
                return
            self.fired.add(arn)
        self._queue.put({"arn": arn, "status": status})

    # --- delivery ---

    def _deliver(self) -> None:
        client = self.runtime.deps_client("stepfunctions")
        while True:
            item = self._queue.get()
            if item is None:
                return
            if "_drain" in item:
                item["_drain"].set()
                continue
            try:
                execution = client.describe_execution(executionArn=item["arn"])
                execution["status"] = item["status"]  # moto may still say RUNNING after a stop
                self.runtime.invoke(
                    self.rule.function,
                    json.loads(json.dumps(status_change_event(execution, self.runtime.region), default=str)),
                )
            except Exception:
                logger.exception("the execution-end rule's function failed for %s", item["arn"])
