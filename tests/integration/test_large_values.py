"""Values too large for one DynamoDB item, on the local runtime: the real ASL executing, the real
sandbox, a fake OpenAI-compatible model over real HTTP. A huge tool-call argument is kept in S3 with
a pointer, and the tool still runs with the whole of it."""

from __future__ import annotations

import hashlib
import json

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import EventKind
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.bwrap


def _s3(runtime: LocalRuntime, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    assert bucket == runtime.deps.objects.bucket
    return runtime.deps.objects.get(key)


def test_a_600_kb_write_file_argument_runs_and_its_event_keeps_a_pointer(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    # Given a model that writes a 600 KB file, then checks it
    content = "".join(f"line {n:07d}\n" for n in range(600 * 1024 // 13 + 1))[: 600 * 1024]
    arguments = {"path": "output/big.txt", "content": content}
    fake_openai.reply_tool_calls([("write_file", arguments, "call_big")])
    fake_openai.reply_tool_calls([("run_command", {"command": "wc -c < output/big.txt; sha256sum output/big.txt"})])
    fake_openai.reply_text("Written and checked.")

    # When the run goes through the state machine
    run = runtime.wait(runtime.submit(RunRequest(instructions="Write the big file.")).run_id, timeout_s=180)

    # Then the file is in the sandbox, whole
    assert run.status is RunStatus.SUCCEEDED, run.error
    results = [
        e.data.model_dump(mode="json", exclude_none=True)
        for e in runtime.events(run.run_id)
        if e.kind is EventKind.TOOL_RESULT
    ]
    assert "error" not in results[0], results[0]
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert results[1]["output"]["stdout"]["text"] == f"{600 * 1024}\n{digest}  output/big.txt\n"
    assert [a.size for a in run.artifacts if a.name == "big.txt"] == [600 * 1024]

    # and the assistant event keeps the head and tail of the arguments and a pointer to the whole
    assistant = next(e for e in runtime.events(run.run_id) if e.kind is EventKind.ASSISTANT)
    (call,) = assistant.data.model_dump(mode="json", exclude_none=True)["tool_calls"]
    kept = call["arguments_kept"]
    assert kept["truncated"] is True and kept["bytes"] == len(json.dumps(arguments).encode())
    assert len(call["arguments"].encode()) < 20_000
    assert json.loads(_s3(runtime, kept["full_output"])) == arguments

    # and the model's next turn still sees the call it made, answered
    messages = fake_openai.requests[1]["messages"]
    (made,) = next(m for m in messages if m["role"] == "assistant")["tool_calls"]
    assert (made["id"], made["function"]["name"]) == ("call_big", "write_file")
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == ["call_big"]
