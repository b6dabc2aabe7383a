"""A model reply too large for its DynamoDB item: its largest values are kept in S3 with pointers, the
turn is recorded, and the run's answer stays small enough for the run item."""

from __future__ import annotations

from sandcastle.large_values import RESULT_LIMIT_BYTES, fit_reply
from sandcastle.runs.lifecycle import finish_run, prepare_run
from sandcastle.runs.payloads import StepState
from sandcastle.runs.records import RunStatus, ToolCall
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.runs.transcript import AssistantData, EventKind
from sandcastle.runs.turns import agent_step
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel


def test_a_500_kb_answer_is_kept_in_s3_and_the_run_ends_with_its_head_and_tail(
    deps: Dependencies, model: FakeModel
) -> None:
    answer = "A" * 250_000 + "B" * 250_000
    run_id = submit_run(RunRequest(instructions="Answer at length."), deps).run_id
    prepare_run(run_id, deps)
    model.then_text(answer)

    finish_run(agent_step(StepState(run_id=run_id), deps, time_left_s=60), deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED
    (assistant,) = [e for e in deps.store.list_events(run_id) if e.kind is EventKind.ASSISTANT]
    kept = assistant.data.text_kept.model_dump(exclude_none=True)
    assert kept["bytes"] == 500_000 and kept["truncated"] is True
    key = kept["full_output"].removeprefix(f"s3://{deps.objects.bucket}/")
    assert deps.objects.get(key) == answer.encode()
    assert run.result and run.result.startswith("A") and run.result.endswith("B")


def test_a_long_answer_after_long_instructions_ends_the_run_with_its_head_and_tail(
    deps: Dependencies, model: FakeModel
) -> None:
    answer = "C" * 125_000 + "D" * 125_000  # fits its event; not the run item beside the instructions
    run_id = submit_run(RunRequest(instructions="é" * 99_000), deps).run_id  # 198 KB
    prepare_run(run_id, deps)
    model.then_text(answer)

    finish_run(agent_step(StepState(run_id=run_id), deps, time_left_s=60), deps)

    run = deps.store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.result and run.result.startswith("C") and run.result.endswith("D")
    assert len(run.result.encode()) <= RESULT_LIMIT_BYTES + 100
    (assistant,) = [e for e in deps.store.list_events(run_id) if e.kind is EventKind.ASSISTANT]
    assert assistant.data.text == answer  # the whole answer is in the transcript


def test_a_reply_that_fits_is_kept_as_it_is() -> None:
    data = AssistantData(text="hi", tool_calls=[ToolCall(id="c1", name="write_file", arguments="{}")], model="m")

    assert fit_reply(data, limit=100, save=lambda name, value: "s3://never") == data


def test_many_large_arguments_are_kept_largest_first_until_the_reply_fits() -> None:
    saved: dict[str, bytes] = {}

    def save(name: str, value: bytes) -> str:
        saved[name] = value
        return f"s3://bucket/{name}"

    calls = [ToolCall(id=f"c{i}", name="write_file", arguments="x" * (100_000 + i)) for i in range(4)]
    fitted = fit_reply(AssistantData(tool_calls=calls), limit=1000, save=save, budget=250_000)

    assert sorted(saved) == ["call2-arguments", "call3-arguments"]  # the two largest were enough
    assert [bool(c.arguments_kept) for c in fitted.tool_calls] == [False, False, True, True]
    kept = fitted.tool_calls[3].arguments_kept
    assert kept is not None and kept.full_output == "s3://bucket/call3-arguments"
