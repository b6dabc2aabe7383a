"""The typed transcript: items written in the earlier format read back, new items keep that format, and
every report of a finished run renders its one ``RunOutcome``."""

from __future__ import annotations

import io
import json

import boto3

from sandcastle.cli.printer import EventPrinter
from sandcastle.runs.lifecycle import finish_run, prepare_run
from sandcastle.runs.payloads import StepState, ToolTask
from sandcastle.runs.records import Artifact, RunOutcome, RunStatus, StopReason
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.tool_calls import run_tool
from sandcastle.runs.transcript import (
    AssistantEvent,
    EndEvent,
    ErrorEvent,
    SystemEvent,
    ToolResultEvent,
    Transcript,
    UserEvent,
)
from sandcastle.runs.turns import agent_step
from sandcastle.runs.uploads import start_upload_run, write_outbox
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider
from tests.unit.conftest import RecordingEventBus
from tests.unit.test_api import Call, api  # noqa: F401 - the fixture
from tests.unit.test_uploads import _put, _result, inbox_deps  # noqa: F401 - the fixture

REGION = "us-east-1"

#: Event items as the code before the typed transcript wrote them (``data`` built as dicts by hand).
TODAYS_ITEMS = [
    (
        "EVT#000000#000#system",
        "system",
        0,
        {"text": "You are...", "tools": ["run_command"], "model_backend": "openai", "model": None},
    ),
    ("EVT#000000#001#user", "user", 0, {"text": "Count the rows", "files": ["data.csv"]}),
    (
        "EVT#000001#000#assistant",
        "assistant",
        1,
        {
            "text": None,
            "tool_calls": [{"id": "c1", "name": "run_command", "arguments": '{"command": "wc -l input/*"}'}],
            "usage": {"input_tokens": 11, "output_tokens": 5},
            "model": "gpt-x",
        },
    ),
    (
        "EVT#000001#001#tool_result",
        "tool_result",
        1,
        {
            "tool_call_id": "c1",
            "tool": "run_command",
            "output": {
                "exit_code": 0,
                "stdout": {"text": "2 x\n", "bytes": 4},
                "stderr": {"text": "", "bytes": 0},
                "duration_ms": 11,
            },
            "duration_ms": 12,
        },
    ),
    (
        "EVT#000002#000#assistant",
        "assistant",
        2,
        {"text": "2 rows.", "tool_calls": [], "usage": {"input_tokens": 20, "output_tokens": 3}, "model": "gpt-x"},
    ),
    ("EVT#999998#000#error", "error", 2, {"type": "Boom", "message": "it broke"}),
    (
        "EVT#999999#000#end",
        "end",
        2,
        {
            "status": "FAILED",
            "stop_reason": None,
            "result": "2 rows.",
            "error": {"type": "Boom", "message": "it broke"},
            "usage": {"steps": 2, "input_tokens": 31, "output_tokens": 8, "tool_calls": 1, "tool_ms": 12},
            "artifacts": ["report.md"],
        },
    ),
]


def _put_raw(deps: Dependencies, run_id: str, key: str, kind: str, step: int, data: dict) -> None:
    boto3.client("dynamodb", region_name=REGION).put_item(
        TableName=deps.settings.table_name,
        Item={
            "pk": {"S": f"RUN#{run_id}"},
            "sk": {"S": key},
            "kind": {"S": kind},
            "step": {"N": str(step)},
            "at": {"S": "2026-11-30T10:00:00+00:00"},
            "data": {"S": json.dumps(data)},
            "expires_at": {"N": "1900000000"},
        },
    )


def _raw_data(deps: Dependencies, run_id: str, key: str) -> dict:
    item = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=deps.settings.table_name, Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": key}}
    )["Item"]
    return json.loads(item["data"]["S"])


def test_event_items_written_in_the_earlier_format_read_back_typed(deps: Dependencies) -> None:
    # Given a run whose transcript was written before events were typed
    for key, kind, step, data in TODAYS_ITEMS:
        _put_raw(deps, "old", key, kind, step, data)

    # When it is read
    transcript = Transcript(deps.store.list_events("old"))

    # Then every event is its kind's model, with the values it was written with
    assert [type(e) for e in transcript] == [
        SystemEvent,
        UserEvent,
        AssistantEvent,
        ToolResultEvent,
        AssistantEvent,
        ErrorEvent,
        EndEvent,
    ]
    first = transcript.assistant(1)
    assert first is not None and first.tool_calls[0].arguments == '{"command": "wc -l input/*"}'
    assert (first.usage.input_tokens, first.usage.output_tokens) == (11, 5)
    (result,) = transcript.results(1)
    command = result.command()
    assert command is not None and command.exit_code == 0 and command.stdout.text == "2 x\n"
    assert result.duration_ms == 12
    assert transcript.last_answer() == "2 rows."
    outcome = transcript.outcome()
    assert outcome is not None and outcome.status is RunStatus.FAILED and outcome.usage.steps == 2
    assert [a.name for a in outcome.artifacts] == ["report.md"]  # an earlier END event listed names only


def test_new_event_items_keep_the_earlier_keys_and_shape(
    deps: Dependencies, model: FakeModel, sandboxes: FakeSandboxProvider
) -> None:
    run_id = submit_run(RunRequest(instructions="list files"), deps).run_id
    prepare_run(run_id, deps)
    model.then_tools(("run_command", {"command": "ls"})).then_text("Done.")
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)
    finish_run(agent_step(state, deps, time_left_s=60), deps)

    # Then each item keeps the keys the earlier code wrote (null values are left out), nothing else
    today = {key: set(data) for key, _, _, data in TODAYS_ITEMS}
    for key in ("EVT#000000#000#system", "EVT#000000#001#user", "EVT#000001#001#tool_result"):
        assert set(_raw_data(deps, run_id, key)) == today[key], key
    assistant = _raw_data(deps, run_id, "EVT#000001#000#assistant")
    assert set(assistant) == today["EVT#000001#000#assistant"] - {"text"}  # it said nothing: no text
    assert assistant["usage"] == {"input_tokens": 11, "output_tokens": 5}  # the reply's tokens, nothing else
    assert set(assistant["tool_calls"][0]) == {"id", "name", "arguments"}
    end = _raw_data(deps, run_id, "EVT#999999#000#end")
    assert set(end) == today["EVT#999999#000#end"] - {"error"}
    assert set(end["usage"]) == {"steps", "input_tokens", "output_tokens", "tool_calls", "tool_ms"}
    assert end["artifacts"] == []


def test_every_report_of_a_finished_run_renders_its_one_outcome(
    inbox_deps: Dependencies,  # noqa: F811
    api: Call,  # noqa: F811
    sandboxes: FakeSandboxProvider,
    events: RecordingEventBus,
) -> None:
    # Given an upload's run that ran its playbook and left a file in ~/output
    deps = inbox_deps
    run_id = start_upload_run(_put(deps, "inbox/acme/count/data.csv"), deps).run_id or ""
    prepare_run(run_id, deps)
    sandboxes.sandboxes[deps.store.get_run(run_id).sandbox_id or ""].files["output/report.md"] = b"# 2 rows\n"
    state = agent_step(StepState(run_id=run_id), deps, time_left_s=60)
    run_tool(ToolTask(run_id=run_id, step=1, tool_call_id=state.tool_call_ids[0]), deps)

    # When it finishes
    finish_run(agent_step(state, deps, time_left_s=60), deps)
    result_key = write_outbox(run_id, deps) or ""

    # Then its END event, the Run Finished detail, result.json and GET /runs/{id} are one outcome
    end = Transcript(deps.store.list_events(run_id)).outcome()
    assert end is not None and end.status is RunStatus.SUCCEEDED and end.stop_reason is StopReason.COMPLETED
    assert end.result and end.result.startswith("Playbook finished") and end.usage.steps == 2
    assert [a.name for a in end.artifacts] == ["report.md"]
    (announced,) = events.entries
    detail = RunOutcome.model_validate(json.loads(announced["Detail"]))
    outbox = RunOutcome.model_validate(_result(deps, result_key))
    status, _, view = api("GET", f"/runs/{run_id}")
    assert status == 200
    assert detail == outbox == RunOutcome.model_validate(view) == end
    assert [Artifact.model_validate(a) for a in _result(deps, result_key)["artifacts"]] == end.artifacts

    # and the CLI's summary is that outcome's
    shown, expected = io.StringIO(), io.StringIO()
    EventPrinter(shown).event(deps.store.list_events(run_id)[-1])
    EventPrinter(expected).summary(detail)
    assert shown.getvalue() == expected.getvalue()
    assert "status: SUCCEEDED (completed)" in shown.getvalue() and "usage: 2 steps, 1 tool calls" in shown.getvalue()


def test_the_openapi_document_describes_events_as_a_union_told_apart_by_kind(api: Call) -> None:  # noqa: F811
    status, _, document = api("GET", "/openapi.json", tenant=None)

    assert status == 200
    schemas = document["components"]["schemas"]
    events = schemas["EventList"]["properties"]["events"]["items"]
    assert events["discriminator"]["propertyName"] == "kind"
    mapping = events["discriminator"]["mapping"]
    assert set(mapping) == {
        "system",
        "user",
        "assistant",
        "tool_result",
        "error",
        "end",
        "approval_requested",
        "approval_decided",
        "user_message",
    }
    assert {ref["$ref"] for ref in events["oneOf"]} == set(mapping.values())
    for ref in mapping.values():
        event = schemas[ref.rsplit("/", 1)[-1]]
        assert "kind" in event["required"] and "$ref" in event["properties"]["data"]  # a typed payload, not a dict
    reply = schemas["AssistantData"]["properties"]
    assert reply["tool_calls"]["items"]["$ref"].endswith("/ToolCall") and reply["usage"]["$ref"].endswith("/Usage")
