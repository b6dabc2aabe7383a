"""What a run keeps of its tools' output and files, on the local runtime with the real sandbox:
clipped output with the whole in S3, exact bytes for non-UTF-8 output, secrets replaced,
artifacts copied with a manifest."""

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

SECRET = "hunter2-correct-horse-battery"


def _run(runtime: LocalRuntime, **fields):
    run = runtime.submit(RunRequest.model_validate({"instructions": "Do it.", **fields}))
    return runtime.wait(run.run_id, timeout_s=120)


def _results(runtime: LocalRuntime, run_id: str) -> list[dict]:
    return [
        e.data.model_dump(mode="json", exclude_none=True)
        for e in runtime.events(run_id)
        if e.kind is EventKind.TOOL_RESULT
    ]


def _s3(runtime: LocalRuntime, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    assert bucket == runtime.deps.objects.bucket
    return runtime.deps.objects.get(key)


def test_long_output_is_clipped_in_the_event_and_kept_whole_in_s3(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "seq 1 50000"})])
    fake_openai.reply_text("Counted.")

    run = _run(runtime)

    stdout = _results(runtime, run.run_id)[0]["output"]["stdout"]
    expected = "".join(f"{n}\n" for n in range(1, 50001)).encode()
    assert stdout["truncated"] is True and stdout["bytes"] == len(expected)
    assert stdout["text"].startswith("1\n2\n3\n") and stdout["text"].endswith("49999\n50000\n")
    assert len(stdout["text"].encode()) < runtime.deps.settings.output_limit_bytes + 100
    assert _s3(runtime, stdout["full_output"]) == expected
    # the model was told where the whole output lives
    seen = json.loads([m for m in fake_openai.requests[1]["messages"] if m["role"] == "tool"][0]["content"])
    assert seen["stdout"]["full_output"] == stdout["full_output"]


def test_output_that_is_not_utf8_is_stored_exactly_and_shown_readably(
    runtime: LocalRuntime, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": r"printf 'caf\xe9 \xff\xfe ok'"})])
    fake_openai.reply_text("Binary-ish.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED
    stdout = _results(runtime, run.run_id)[0]["output"]["stdout"]
    assert stdout["not_utf8"] is True and stdout["text"] == "caf\ufffd \ufffd\ufffd ok"
    assert _s3(runtime, stdout["full_output"]) == b"caf\xe9 \xff\xfe ok"


def test_known_secrets_never_reach_the_transcript_s3_or_the_model(
    fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("REDACT_VALUES", json.dumps([SECRET]))
    monkeypatch.setenv("MODEL_MAX_RETRIES", "0")
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    fake_openai.reply_tool_calls(
        [
            (
                "run_command",
                {"command": f"for i in $(seq 3000); do echo token={SECRET} sk-abcdefghijklmnopqrstuvwx; done"},
            )
        ]
    )
    fake_openai.reply_text("done")

    with LocalRuntime(home=tmp_path / "home") as runtime:
        run = _run(runtime)
        stdout = _results(runtime, run.run_id)[0]["output"]["stdout"]
        events = json.dumps([e.data.model_dump(mode="json") for e in runtime.events(run.run_id)])
        whole = _s3(runtime, stdout["full_output"])

    assert SECRET not in events and "sk-abcdefghijklmnopqrstuvwx" not in events
    assert "token=[REDACTED] [REDACTED]" in stdout["text"]
    assert SECRET.encode() not in whole and whole.count(b"[REDACTED]") == 6000
    assert SECRET not in json.dumps(fake_openai.requests[1])


def test_output_files_become_artifacts_with_a_manifest(runtime: LocalRuntime, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls(
        [
            (
                "run_command",
                {
                    "command": "mkdir -p ~/output/plots && echo '# Summary' > ~/output/summary.md && "
                    "head -c 3000 /dev/urandom > ~/output/plots/data.bin && ln -s /etc/passwd ~/output/passwd"
                },
            )
        ]
    )
    fake_openai.reply_text("Report in ~/output.")

    run = _run(runtime)

    assert run.status is RunStatus.SUCCEEDED
    assert [(a.name, a.size, a.content_type) for a in run.artifacts] == [
        ("plots/data.bin", 3000, "application/octet-stream"),
        ("summary.md", 10, "text/markdown"),
    ]
    for artifact in run.artifacts:
        assert hashlib.sha256(runtime.deps.objects.get(artifact.s3_key)).hexdigest() == artifact.sha256
    manifest = json.loads(runtime.deps.objects.get(f"runs/{run.run_id}/manifest.json"))
    assert {a["name"] for a in manifest["artifacts"]} == {"plots/data.bin", "summary.md"}  # no symlink followed
