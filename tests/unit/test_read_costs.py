"""What one invocation of each run-loop handler asks of DynamoDB: counted exactly, the same at step 50 as at step 2.

The count is taken where every request of the store goes out: botocore's ``before-call`` event on the
store's own client (and ``after-call`` for the items a Query returned). The run loop is driven through
the handlers on one ``Dependencies`` bundle, as one warm container (or the local runtime) runs them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandcastle.handlers import agent_step, finish_run, prepare_run, run_tool
from sandcastle.local.runtime import LocalLambdaContext
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel

STEPS = 50


def _context(name: str) -> LocalLambdaContext:
    """A Lambda context with the template's AgentStep timeout (900 s): time for a turn and its call."""
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    return LocalLambdaContext(function_name=name, invoked_function_arn=arn, memory_limit_in_mb=512, timeout_s=900)


@dataclass
class DynamoDBRequests:
    """The requests a client sent (by operation) and the items its Queries returned, since the last ``reset``."""

    operations: Counter[str] = field(default_factory=Counter)
    items_queried: int = 0

    def before_call(self, model: Any, **_: Any) -> None:
        self.operations[model.name] += 1

    def after_query(self, parsed: dict[str, Any], **_: Any) -> None:
        self.items_queried += len(parsed.get("Items", []))

    def reset(self) -> None:
        self.operations.clear()
        self.items_queried = 0

    @property
    def total(self) -> int:
        return sum(self.operations.values())


@pytest.fixture
def requests_of(deps: Dependencies) -> Iterator[DynamoDBRequests]:
    counted = DynamoDBRequests()
    events = deps.store.client.meta.events
    events.register("before-call.dynamodb", counted.before_call)
    events.register("after-call.dynamodb.Query", counted.after_query)
    yield counted
    events.unregister("before-call.dynamodb", counted.before_call)
    events.unregister("after-call.dynamodb.Query", counted.after_query)


@pytest.fixture
def handlers(deps: Dependencies, monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[dict], Any]]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    made = {}
    for name, module in {
        "PrepareRun": prepare_run,
        "AgentStep": agent_step,
        "RunTool": run_tool,
        "FinishRun": finish_run,
    }.items():
        monkeypatch.setattr(module.metrics, "namespace", "Sandcastle")
        handler = module.make_handler(lambda: deps)
        made[name] = lambda event, handler=handler, name=name: handler(event, _context(name))
    return made


def _long_run(deps: Dependencies, model: FakeModel, steps: int) -> str:
    deps.settings = deps.settings.model_copy(update={"max_steps_ceiling": steps + 1})
    for _ in range(steps):
        model.then_tools(("run_command", {"command": "true"}))
    model.then_text("done")
    request = RunRequest.model_validate({"instructions": "loop", "budgets": {"max_steps": steps + 1}})
    return submit_run(request, deps).run_id


def test_each_handler_invocation_makes_a_fixed_number_of_requests_whatever_the_step(
    deps: Dependencies, model: FakeModel, handlers: dict, requests_of: DynamoDBRequests
) -> None:
    # Given a run whose model asks for one command per turn, for 50 turns, then answers
    run_id = _long_run(deps, model, STEPS)
    state = handlers["PrepareRun"]({"run_id": run_id})
    agent_steps: dict[int, tuple[Counter[str], int]] = {}
    tool_runs: list[Counter[str]] = []

    # When the loop runs through the handlers, as the state machine would call them
    while True:
        requests_of.reset()
        state = handlers["AgentStep"](state)
        agent_steps[state["step"]] = (Counter(requests_of.operations), requests_of.items_queried)
        if state["next"] != "tools":
            break
        for call_id in state["tool_call_ids"]:
            requests_of.reset()
            handlers["RunTool"]({"run_id": run_id, "step": state["step"], "tool_call_id": call_id})
            tool_runs.append(Counter(requests_of.operations))
    requests_of.reset()
    assert handlers["FinishRun"](state)["status"] == "SUCCEEDED"
    finish = Counter(requests_of.operations)

    # Then an AgentStep reads the run item once, queries the transcript once and records its turn in one
    # transaction: the same requests, and the same number of items read, at turn 50 as at turn 2
    one_turn = Counter({"GetItem": 1, "Query": 1, "TransactWriteItems": 1})
    assert agent_steps[2] == agent_steps[STEPS] == (one_turn, 4)  # the last two turns' events, not the run's
    assert all(operations == one_turn for operations, _ in agent_steps.values())
    # a RunTool reads the run item once and its turn's events in one Query, then writes its result
    assert len(tool_runs) == STEPS
    assert all(operations == one_turn for operations in tool_runs)
    # FinishRun reads the run item once (not again to end it, nor to announce it)
    assert finish == one_turn


def test_an_agent_step_that_runs_its_turns_call_reads_as_little_at_step_50_as_at_step_2(
    deps: Dependencies, model: FakeModel, handlers: dict, requests_of: DynamoDBRequests
) -> None:
    # Given the same run, with AgentStep running a turn's one call itself (as the state machine asks it to)
    run_id = _long_run(deps, model, STEPS)
    state = {**handlers["PrepareRun"]({"run_id": run_id}), "inline_tool_call": True}
    agent_steps: dict[int, tuple[Counter[str], int]] = {}

    # When the loop runs
    while state.get("next") in (None, "agent"):
        requests_of.reset()
        state = handlers["AgentStep"](state)
        agent_steps[state["step"]] = (Counter(requests_of.operations), requests_of.items_queried)
    assert state["next"] == "finish"

    # Then each step reads the run once and the transcript's tail once, and writes its turn and its result
    turn_and_call = Counter({"GetItem": 1, "Query": 1, "TransactWriteItems": 2})
    assert agent_steps[2] == agent_steps[STEPS] == (turn_and_call, 4)
    assert all(operations == turn_and_call for operations, _ in list(agent_steps.values())[:-1])
