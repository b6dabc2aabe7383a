"""Step Functions execution status changes, observed for the local event bus (moto emits none).

EventBridge receives a "Step Functions Execution Status Change" event whenever an execution ends;
moto sends none. This source stands in for Step Functions: right after a successful
``StopExecution`` — moto may leave an execution that waits on a task token RUNNING — and whenever
an execution of a watched state machine is seen in one of the statuses the template's rules
match, it publishes that event, once per execution, into the runtime's one event bus
(``local/triggers.py``), which matches it against the rules and delivers it like any other.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sandcastle.local.triggers import envelope

if TYPE_CHECKING:
    from sandcastle.local.stack import Stack
    from sandcastle.local.triggers import EventRule, LocalEventBus

logger = logging.getLogger(__name__)

DETAIL_TYPE = "Step Functions Execution Status Change"
ENDED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


def watched(rules: list[EventRule], state_machines: list[str]) -> tuple[frozenset[str], list[str]]:
    """The statuses and state machines the rules on execution status changes match (no rule: nothing)."""
    statuses: set[str] = set()
    arns: set[str] = set()
    for rule in rules:
        pattern = rule.pattern
        if "aws.states" not in pattern.get("source", []) or DETAIL_TYPE not in pattern.get("detail-type", []):
            continue
        detail = pattern.get("detail", {})
        statuses.update(s for s in detail.get("status", ENDED) if isinstance(s, str))
        arns.update(a for a in detail.get("stateMachineArn", state_machines) if isinstance(a, str))
    return frozenset(statuses & ENDED), sorted(arns)


def status_change_event(execution: dict[str, Any], region: str) -> dict[str, Any]:
    """The EventBridge event for ``execution`` (a ``DescribeExecution`` answer, its status set)."""

    def when(value: Any) -> int | None:
        return int(value.timestamp() * 1000) if isinstance(value, datetime) else None

    event = envelope(
        source="aws.states",
        detail_type=DETAIL_TYPE,
        resources=[execution["executionArn"]],
        detail={
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
        region=region,
    )
    return json.loads(json.dumps(event, default=str))


class ExecutionStatusSource:
    """Publishes, into ``bus``, the end of every execution of ``state_machine_arns`` in one of ``statuses``."""

    def __init__(
        self,
        stack: Stack,
        bus: LocalEventBus,
        statuses: frozenset[str],
        state_machine_arns: list[str],
        *,
        poll_s: float = 0.5,
    ) -> None:
        self.stack = stack
        self.bus = bus
        self.statuses = statuses
        self.state_machine_arns = state_machine_arns
        self.poll_s = poll_s
        self.fired: set[str] = set()
        """The executions whose end was published."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_rules(cls, stack: Stack, bus: LocalEventBus) -> ExecutionStatusSource | None:
        """The source of what ``bus``'s rules match of execution status changes; None when they match none."""
        machines = [stack.template.arn(i) for i in stack.template.of_type("AWS::Serverless::StateMachine")]
        statuses, arns = watched(bus.rules, machines)
        return cls(stack, bus, statuses, arns) if statuses and arns else None

    def start(self, events: Any) -> None:
        """Hook ``StopExecution`` on the session's event system ``events``; start watching."""
        events.register("provide-client-params.stepfunctions.StopExecution", self._remember_stopped)
        events.register("after-call.stepfunctions.StopExecution", self._stopped)
        # The client is made here, not on the thread: making one copies the session's handlers,
        # which must not race with the other triggers registering theirs.
        client = self.stack.deps_client("stepfunctions")
        self._thread = threading.Thread(
            target=self._watch, args=(client,), name="sandcastle-execution-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # --- observing the executions ---

    def _remember_stopped(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["sandcastle_stopped_execution"] = params.get("executionArn")

    def _stopped(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        arn = context.get("sandcastle_stopped_execution")
        if arn and getattr(http_response, "status_code", 500) < 300 and "ABORTED" in self.statuses:
            self._fire(arn, status="ABORTED")

    def _watch(self, client: Any) -> None:
        while not self._stop.wait(self.poll_s):
            for machine in self.state_machine_arns:
                for status in sorted(self.statuses):
                    try:
                        pages = client.get_paginator("list_executions").paginate(
                            stateMachineArn=machine, statusFilter=status
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
        self.bus.publish_built(lambda: self._event(arn, status))

    def _event(self, arn: str, status: str) -> dict[str, Any]:
        execution = self.stack.deps_client("stepfunctions").describe_execution(executionArn=arn)
        execution["status"] = status  # moto may still say RUNNING after a stop
        return status_change_event(execution, self.stack.region)
