"""Runs on the local runtime: the real ASL executing in moto, the real handlers, the real bubblewrap
sandbox, and a fake OpenAI-compatible model over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import Run, RunStatus, StopReason
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import EventKind
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap


def _run(runtime: LocalRuntime, instructions: str = "Do the task.", **fields) -> Run:
    run = runtime.submit(RunRequest.model_validate({"instructions": instructions, **fields}))
    return runtime.wait(run.run_id, timeout_s=120)


def _results(runtime: LocalRuntime, run_id: str) -> list[dict]:
    return [
        e.data.model_dump(mode="json", exclude_none=True)
        for e in runtime.events(run_id)
        if e.kind is EventKind.TOOL_RESULT
    ]


def _tool_messages(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def _no_sandbox_left(sandbox_root: Path) -> bool:
    return not sandbox_root.exists() or not any(sandbox_root.iterdir())


def test_a_multi_step_run_with_parallel_tool_calls_succeeds(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    fake_openai.reply_tool_calls(
        [("run_command", {"command": "echo one > one.txt"}), ("write_file", {"path": "two.txt", "content": "two\n"})]
    )
    fake_openai.reply_tool_calls([("run_command", {"command": "cat one.txt two.txt"})])
    fake_openai.reply_text("The files say one and two.")

    run = _run(runtime, "Write two files and show them.")

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.result == "The files say one and two." and run.stop_reason is StopReason.COMPLETED
    assert (run.usage.steps, run.usage.tool_calls) == (3, 3)
    assert (run.usage.input_tokens, run.usage.output_tokens) == (30, 15)
    results = _results(runtime, run.run_id)
    assert [r["tool"] for r in results] == ["run_command", "write_file", "run_command"]
    assert results[2]["output"]["stdout"]["text"] == "one\ntwo\n"
    # the model saw both results of the parallel turn, answered by id
    second = fake_openai.requests[1]
    assert {m["tool_call_id"] for m in _tool_messages(second)} == {c["id"] for c in second["messages"][2]["tool_calls"]}
    assert {t["function"]["name"] for t in fake_openai.requests[0]["tools"]} == {
        "run_command",
        "write_file",
        "read_file",
        "list_files",
        "apply_patch",
    }
    assert _no_sandbox_left(sandbox_root)
    assert runtime.execution(run.run_id)["status"] == "SUCCEEDED"


def test_a_failing_command_is_shown_to_the_model_which_recovers(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "python3 -c 'import no_such_module'"})])
    fake_openai.reply_tool_calls([("run_command", {"command": "python3 -c 'print(6 * 7)'"})])
    fake_openai.reply_text("42")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED and run.result == "42"
    failed = json.loads(_tool_messages(fake_openai.requests[1])[0]["content"])
    assert failed["exit_code"] == 1 and "ModuleNotFoundError" in failed["stderr"]["text"]
    assert _results(runtime, run.run_id)[1]["output"]["stdout"]["text"] == "42\n"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (("run_command", '{"command": "touch ~/should-not-exist"'), "not valid JSON"),
        (("rm_rf_everything", {"path": "/"}), "unknown tool 'rm_rf_everything'"),
        (("run_command", {"command": "touch ~/should-not-exist", "sudo": True}), "sudo: Extra inputs"),
    ],
)
def test_a_bad_tool_call_is_an_error_the_model_sees_never_executed(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, call: tuple, error: str
) -> None:
    fake_openai.reply_tool_calls([call])
    fake_openai.reply_tool_calls([("run_command", {"command": "ls -a ~"})])
    fake_openai.reply_text("Understood.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED
    seen = json.loads(_tool_messages(fake_openai.requests[1])[0]["content"])
    assert error in seen["error"]
    listing = _results(runtime, run.run_id)[1]["output"]["stdout"]["text"]
    assert "should-not-exist" not in listing


def test_a_rate_limited_model_is_retried_by_the_state_machine(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_error(429, "Rate limit reached for requests")
    fake_openai.reply_text("Done after waiting.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED and run.result == "Done after waiting."
    assert len(fake_openai.requests) == 2 and run.usage.steps == 1
    history = runtime.deps.executions.client.get_execution_history(
        executionArn=runtime.execution(run.run_id)["executionArn"]
    )["events"]
    failures = [e for e in history if e["type"] == "TaskFailed"]
    assert [f["taskFailedEventDetails"]["error"] for f in failures] == ["ModelRateLimited"]


def test_a_rejected_model_request_fails_the_run_and_kills_the_sandbox(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "echo working"})])
    fake_openai.reply_error(400, "This model's maximum context length is 8192 tokens.")

    run = _run(runtime)

    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "ModelRequestRejected"
    assert "maximum context length is 8192 tokens" in run.error.message
    kinds = [e.kind for e in runtime.events(run.run_id)]
    assert kinds[-2:] == [EventKind.ERROR, EventKind.END]
    assert _no_sandbox_left(sandbox_root)
    assert runtime.execution(run.run_id)["status"] == "FAILED"


def test_an_empty_model_reply_fails_the_run_with_a_clear_error(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    fake_openai.reply_raw(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}],
        }
    )
    run = _run(runtime)
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.type == "ModelReplyInvalid" and "no content and no tool calls" in run.error.message
    assert _no_sandbox_left(sandbox_root)


def test_the_step_budget_ends_the_run_with_its_stop_reason(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "echo thinking"})], text="Let me look first.")
    fake_openai.reply_tool_calls([("run_command", {"command": "echo still thinking"})], text="Almost there.")

    run = _run(runtime, budgets={"max_steps": 2})

    assert run.status is RunStatus.BUDGET_EXCEEDED and run.stop_reason is StopReason.MAX_STEPS
    assert run.result == "Almost there."
    assert len(fake_openai.requests) == 2 and run.usage.tool_calls == 2
    assert _no_sandbox_left(sandbox_root)


def test_the_deadline_kills_a_runaway_command_and_times_the_run_out(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer, sandbox_root: Path
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "sleep 60", "timeout_s": 600})])

    run = _run(runtime, budgets={"timeout_s": 10})

    assert run.status is RunStatus.TIMED_OUT and run.stop_reason is StopReason.TIMEOUT
    output = _results(runtime, run.run_id)[0]["output"]
    assert output["timed_out"] is True and output["exit_code"] is None and output["duration_ms"] < 15_000
    assert _no_sandbox_left(sandbox_root)


def test_the_state_payload_carries_ids_not_transcript(runtime: LocalRuntime, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "python3 -c \"print('MARKER' * 20000)\""})])
    fake_openai.reply_text("Printed a lot: MARKER.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED
    history = runtime.deps.executions.client.get_execution_history(
        executionArn=runtime.execution(run.run_id)["executionArn"], maxResults=1000
    )["events"]
    payloads = [json.dumps(details) for e in history for key, details in e.items() if key.endswith("EventDetails")]
    assert payloads and not any("MARKER" in p for p in payloads)
    assert runtime.stats.largest_payload_bytes < 1024
    stored = _results(runtime, run.run_id)[0]["output"]["stdout"]
    assert stored["truncated"] is True and stored["bytes"] == 120_001


def test_input_files_land_in_the_sandbox(runtime: LocalRuntime, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "wc -l < ~/input/data.csv"})])
    fake_openai.reply_text("3 lines")

    run = _run(runtime, files=[{"name": "data.csv", "content_base64": "YQpiCmMK"}])

    assert run.status is RunStatus.SUCCEEDED
    assert _results(runtime, run.run_id)[0]["output"]["stdout"]["text"].strip() == "3"
    assert "~/input/data.csv" in fake_openai.requests[0]["messages"][1]["content"]


def test_many_parallel_tool_calls_are_all_recorded_once(runtime: LocalRuntime, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": f"echo {n} > n{n}.txt; echo {n}"}) for n in range(8)])
    fake_openai.reply_tool_calls([("run_command", {"command": "cat n*.txt | sort -n | tr '\\n' ' '"})])
    fake_openai.reply_text("All eight.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED and run.usage.tool_calls == 9
    results = _results(runtime, run.run_id)
    assert [r["output"]["stdout"]["text"] for r in results[:8]] == [f"{n}\n" for n in range(8)]
    assert results[8]["output"]["stdout"]["text"] == "0 1 2 3 4 5 6 7 "


def test_a_failing_playbook_step_fails_the_run_naming_the_step(runtime: LocalRuntime, sandbox_root: Path) -> None:
    playbook = [
        {"tool": "run_command", "arguments": {"command": "echo one"}},
        {"tool": "run_command", "arguments": {"command": "echo half; exit 3"}},
        {"tool": "run_command", "arguments": {"command": "touch never-ran"}},
    ]

    run = _run(runtime, playbook=playbook)

    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.type == "PlaybookStepFailed"
    assert run.error.message.startswith("playbook step 2 (run_command) failed: the command exited with 3")
    assert len(_results(runtime, run.run_id)) == 2
    assert _no_sandbox_left(sandbox_root)


def test_playbook_steps_that_may_fail_say_so(runtime: LocalRuntime) -> None:
    playbook = [
        {"tool": "run_command", "arguments": {"command": "exit 3"}, "continue_on_error": True},
        {"tool": "read_file", "arguments": {"path": "missing.txt"}, "continue_on_error": True},
        {"tool": "run_command", "arguments": {"command": "echo done"}},
    ]

    run = _run(runtime, playbook=playbook)

    assert run.status is RunStatus.SUCCEEDED
    results = _results(runtime, run.run_id)
    assert results[0]["output"]["exit_code"] == 3 and "error" in results[1]
    assert "done" in (run.result or "")


def test_a_playbook_command_that_times_out_fails_the_run(runtime: LocalRuntime) -> None:
    run = _run(runtime, playbook=[{"tool": "run_command", "arguments": {"command": "sleep 30", "timeout_s": 1}}])

    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.message.startswith("playbook step 1 (run_command) failed: the command timed out after 1 s")


def test_a_playbook_tool_error_fails_the_run(runtime: LocalRuntime) -> None:
    run = _run(runtime, playbook=[{"tool": "read_file", "arguments": {"path": "missing.txt"}}])

    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.message.startswith("playbook step 1 (read_file) failed: ")
    assert "missing.txt" in run.error.message
