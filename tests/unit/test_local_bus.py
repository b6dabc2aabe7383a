"""The local runtime's one event bus: execution status changes go through the same queue, delivery and
drain as ``PutEvents`` and S3 events, matched against the template's rules. No moto, no sockets: the
bus and the execution-status source run against a stub of the few things they use of the runtime."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.hooks import HierarchicalEmitter

import sandcastle.local
from sandcastle.local.rules import ExecutionStatusSource, status_change_event, watched
from sandcastle.local.runtime import DEFAULT_TEMPLATE, STATE_MACHINE
from sandcastle.local.template import Template
from sandcastle.local.triggers import LocalEventBus, event_rules, eventbridge_buckets, matches

REGION = "us-east-1"


class _StepFunctions:
    def __init__(self, machine: str) -> None:
        self.machine = machine

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        return {
            "executionArn": executionArn,
            "stateMachineArn": self.machine,
            "name": executionArn.rsplit(":", 1)[-1],
            "status": "RUNNING",
        }

    def get_paginator(self, _: str) -> Any:
        return SimpleNamespace(paginate=lambda **__: [{"executions": []}])


class _Host:
    """What the bus and its sources use of the runtime, and nothing more."""

    def __init__(self) -> None:
        self.template = Template.load(DEFAULT_TEMPLATE, region=REGION)
        self.region = REGION
        self.invoked: list[tuple[str, dict[str, Any]]] = []
        self._stepfunctions = _StepFunctions(self.template.arn(STATE_MACHINE))

    def invoke(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.invoked.append((function, payload))
        return {}

    def deps_client(self, service: str) -> Any:
        assert service == "stepfunctions"
        return self._stepfunctions


@pytest.fixture
def host() -> _Host:
    return _Host()


def _stop_execution(events: HierarchicalEmitter, arn: str) -> None:
    """What botocore emits around a successful ``StopExecution`` call."""
    context: dict[str, Any] = {}
    events.emit("provide-client-params.stepfunctions.StopExecution", params={"executionArn": arn}, context=context)
    response = SimpleNamespace(status_code=200)
    events.emit("after-call.stepfunctions.StopExecution", http_response=response, parsed={}, context=context)


def test_the_template_rule_on_execution_ends_is_one_of_the_bus_rules(host: _Host) -> None:
    rules = event_rules(host.template)

    statuses, machines = watched(rules, [])

    assert "OnExecutionEndFunction" in {rule.function for rule in rules}
    assert statuses == {"ABORTED", "TIMED_OUT", "FAILED"}
    assert machines == [host.template.arn(STATE_MACHINE)]


def test_a_stopped_execution_is_delivered_through_the_one_bus_to_the_rules_function(host: _Host) -> None:
    events = HierarchicalEmitter()
    bus = LocalEventBus(host, event_rules(host.template), eventbridge_buckets(host.template))
    source = ExecutionStatusSource.for_rules(host, bus)
    assert source is not None
    bus.start(events)
    source.start(events)
    arn = f"{host.template.arn(STATE_MACHINE).replace(':stateMachine:', ':execution:')}:run-1"
    try:
        _stop_execution(events, arn)
        _stop_execution(events, arn)  # an execution ends once
        bus.drain()
    finally:
        source.stop()
        bus.stop()

    [(function, event)] = host.invoked
    assert function == "OnExecutionEndFunction" and bus.delivered == host.invoked
    assert event["source"] == "aws.states" and event["detail"]["status"] == "ABORTED"
    assert event["detail"]["executionArn"] == arn and event["resources"] == [arn]
    assert event["account"] and event["region"] == REGION and event["id"]


def test_an_execution_status_the_rule_does_not_match_is_not_delivered(host: _Host) -> None:
    rules = event_rules(host.template)
    [rule] = [r for r in rules if r.function == "OnExecutionEndFunction"]
    execution = host.deps_client("stepfunctions").describe_execution(executionArn="arn:x:run-1")
    succeeded = status_change_event({**execution, "status": "SUCCEEDED"}, REGION)
    failed = status_change_event({**execution, "status": "FAILED"}, REGION)
    other_machine = status_change_event({**execution, "status": "FAILED", "stateMachineArn": "arn:other"}, REGION)

    assert matches(rule.pattern, failed)
    assert not matches(rule.pattern, succeeded) and not matches(rule.pattern, other_machine)


HELPERS = ("rules", "triggers", "scheduler", "inbox", "gateway", "run_archive")


@pytest.mark.parametrize("module", HELPERS)
def test_the_runtime_helpers_take_the_narrow_stack_not_the_runtime(module: str) -> None:
    source = (Path(sandcastle.local.__file__).parent / f"{module}.py").read_text()

    assert "LocalRuntime" not in source
