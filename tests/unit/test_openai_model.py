"""The openai adapter, through the real SDK over real HTTP against a scripted fake endpoint."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from sandcastle.agent.base import ModelTurn
from sandcastle.agent.openai_model import (
    PLACEHOLDER_API_KEY,
    OpenAIModel,
    _request_budget,
    _token_limit_parameter,
    to_messages,
)
from sandcastle.config import Settings
from sandcastle.errors import (
    ModelNotConfigured,
    ModelRateLimited,
    ModelReplyInvalid,
    ModelRequestRejected,
    ModelUnavailable,
)
from sandcastle.redaction import REDACTED, Redactor
from sandcastle.runs.records import RunError, RunOutcome, RunStatus, ToolCall
from sandcastle.runs.tool_outputs import CommandOutput, KeptStream
from sandcastle.runs.transcript import (
    AssistantData,
    SystemData,
    ToolResultData,
    Transcript,
    UserData,
    assistant_event,
    end_event,
    error_event,
    system_event,
    tool_result_event,
    user_event,
)
from tests.fakes import openai_server
from tests.fakes.openai_server import FAST_RETRY, NO_REPLY_LEFT, FakeOpenAIServer

fake_openai = openai_server.fake_openai

API_KEY = "sk-test-0123456789abcdef"
_AT = datetime(2026, 12, 1, tzinfo=UTC)
TRANSCRIPT = Transcript(
    [
        system_event("r1", SystemData(text="You are a careful engineer.")).model_copy(update={"at": _AT}),
        user_event("r1", UserData(text="List the files.")).model_copy(update={"at": _AT}),
    ]
)
MESSAGES = [
    {"role": "system", "content": "You are a careful engineer."},
    {"role": "user", "content": "List the files."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_command",
            "description": "Run a shell command in the sandbox.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]


def settings_for(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "openai_api_key_secret_arn": None,
        "openai_base_url": base_url,
        "default_model": "default-model",
        "model_timeout_s": 10.0,
        "model_max_retries": 0,
        "model_max_tokens": 512,
    }
    return Settings(**{**values, **overrides})


def model_for(fake: FakeOpenAIServer, **overrides: Any) -> OpenAIModel:
    return OpenAIModel.from_settings(settings_for(fake.base_url, **overrides))


def complete(adapter: OpenAIModel, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any) -> ModelTurn:
    """One turn on the standard conversation, with 30 s left (room for the SDK's retries)."""
    kwargs.setdefault("model", None)
    kwargs.setdefault("timeout_s", 30.0)
    return adapter.complete(TRANSCRIPT, tools or [], **kwargs)


def test_the_transcript_becomes_chat_completions_messages_and_only_the_model_s_events_are_sent() -> None:
    call = ToolCall(id="c1", name="run_command", arguments='{"command": "ls"}')
    transcript = Transcript(
        [
            *TRANSCRIPT,
            assistant_event("r1", 1, AssistantData(text="Looking.", tool_calls=[call])),
            tool_result_event(
                "r1",
                1,
                0,
                ToolResultData(
                    tool_call_id="c1",
                    tool="run_command",
                    output=CommandOutput(
                        exit_code=0,
                        stdout=KeptStream(text="a\n", bytes=2),
                        stderr=KeptStream(text="", bytes=0),
                        duration_ms=5,
                    ),
                ),
            ),
            assistant_event("r1", 2, AssistantData(tool_calls=[call.model_copy(update={"id": "c2"})])),
            tool_result_event("r1", 2, 0, ToolResultData(tool_call_id="c2", tool="run_command", error="bad JSON")),
            error_event("r1", 2, RunError(type="Boom", message="it broke")),
            end_event("r1", 2, RunOutcome(status=RunStatus.FAILED)),
        ]
    )

    messages = to_messages(transcript)

    function = {"name": "run_command", "arguments": '{"command": "ls"}'}
    assert messages == [
        *MESSAGES,
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [{"id": "c1", "type": "function", "function": function}],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": '{"exit_code": 0, "stdout": {"text": "a\\n", "bytes": 2}, "stderr": {"text": "", "bytes": 0}, '
            '"duration_ms": 5}',
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c2", "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": "c2", "content": '{"error": "bad JSON"}'},
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- replies ---


def test_text_reply_becomes_the_turns_text_with_usage_and_model(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_text("Two files: a.txt and b.txt.", usage=(120, 14), model="served-model-2025")

    turn = complete(model_for(fake_openai))

    assert turn.text == "Two files: a.txt and b.txt."
    assert turn.tool_calls == []
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (120, 14)
    assert turn.model == "served-model-2025"


def test_request_carries_default_model_messages_and_token_limit_but_no_tools_when_none(
    fake_openai: FakeOpenAIServer,
) -> None:
    fake_openai.reply_text("ok")

    complete(model_for(fake_openai))

    [sent] = fake_openai.requests
    assert sent["model"] == "default-model"
    assert sent["messages"] == MESSAGES
    assert sent["max_tokens"] == 512
    assert "tools" not in sent and "tool_choice" not in sent
    assert "parallel_tool_calls" not in sent
    assert fake_openai.request_headers[0]["authorization"] == f"Bearer {API_KEY}"


def test_request_carries_the_runs_model_and_the_tools(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_text("ok")

    complete(model_for(fake_openai), tools=TOOLS, model="qwen3-coder")

    [sent] = fake_openai.requests
    assert sent["model"] == "qwen3-coder"
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"


def test_parallel_tool_calls_keep_ids_names_and_raw_arguments_even_invalid_json(
    fake_openai: FakeOpenAIServer,
) -> None:
    ids = fake_openai.reply_tool_calls(
        [
            ("run_command", {"command": "ls -la"}),
            ("run_command", '{"command": "cat a.txt"'),
            ("noop", {}, "own-id"),
        ]
    )

    turn = complete(model_for(fake_openai), tools=TOOLS)

    assert turn.text is None
    assert [(call.id, call.name) for call in turn.tool_calls] == [
        (ids[0], "run_command"),
        (ids[1], "run_command"),
        ("own-id", "noop"),
    ]
    assert json.loads(turn.tool_calls[0].arguments) == {"command": "ls -la"}
    assert turn.tool_calls[1].arguments == '{"command": "cat a.txt"'
    assert turn.tool_calls[2].arguments == "{}"


def test_tool_calls_with_text_keep_both(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "pytest"})], text="Running the tests first.")

    turn = complete(model_for(fake_openai), tools=TOOLS)

    assert turn.text == "Running the tests first."
    assert [call.name for call in turn.tool_calls] == ["run_command"]


def test_missing_usage_counts_as_zero(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_text("ok", usage=None)

    turn = complete(model_for(fake_openai))

    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []},
            id="no-choices",
        ),
        pytest.param(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
            },
            id="empty-content",
        ),
        pytest.param(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, "tool_calls": []},
                        "finish_reason": "stop",
                    }
                ],
            },
            id="null-content-no-tool-calls",
        ),
    ],
)
def test_empty_reply_is_invalid(fake_openai: FakeOpenAIServer, body: dict[str, Any]) -> None:
    fake_openai.reply_raw(body)

    with pytest.raises(ModelReplyInvalid, match="model reply had no content and no tool calls"):
        complete(model_for(fake_openai))


def test_empty_reply_names_the_finish_reason(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_text(None, finish_reason="length")

    with pytest.raises(ModelReplyInvalid, match=r"no content and no tool calls \(finish_reason: length\)"):
        complete(model_for(fake_openai))


def test_tool_call_without_id_is_invalid_and_named(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_tool_calls([("run_command", {"command": "ls"}), ("read_file", {"path": "a"}, "")])

    with pytest.raises(ModelReplyInvalid, match=r"tool call #1 \(read_file\) has no id"):
        complete(model_for(fake_openai), tools=TOOLS)


def test_tool_call_ids_are_passed_on_as_the_endpoint_sent_them(fake_openai: FakeOpenAIServer) -> None:
    # Repeated ids are refused for every model where the turn is recorded (runs/turns.py), not here.
    fake_openai.reply_tool_calls([("run_command", {"command": "ls"}, "c1"), ("run_command", {"command": "pwd"}, "c1")])

    assert [call.id for call in complete(model_for(fake_openai), tools=TOOLS).tool_calls] == ["c1", "c1"]


def test_reply_that_is_not_json_is_invalid(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_raw("<html>502 Bad Gateway</html>")

    with pytest.raises(ModelReplyInvalid, match="not JSON"):
        complete(model_for(fake_openai))


# --- errors ---


def test_rate_limit_then_success_is_retried_by_the_sdk(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_error(429, "Rate limit reached for requests", FAST_RETRY)
    fake_openai.reply_text("made it")

    turn = complete(model_for(fake_openai, model_max_retries=2))

    assert turn.text == "made it"
    assert len(fake_openai.requests) == 2


def test_rate_limit_without_retries_left_is_model_rate_limited(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_error(429, "Rate limit reached for requests", FAST_RETRY)

    with pytest.raises(ModelRateLimited, match="Rate limit reached for requests"):
        complete(model_for(fake_openai, model_max_retries=0))

    assert len(fake_openai.requests) == 1


def test_server_error_after_the_sdks_retries_is_model_unavailable(fake_openai: FakeOpenAIServer) -> None:
    for _ in range(3):
        fake_openai.reply_error(500, "The server had an error while processing your request.", FAST_RETRY)

    with pytest.raises(ModelUnavailable, match=r"\(500\): The server had an error"):
        complete(model_for(fake_openai, model_max_retries=2))

    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            400,
            "Invalid schema for function 'run_command': 'object' is not valid under any given schema.",
        ),
        (404, "The model `gpt-9` does not exist or you do not have access to it."),
        (422, "messages[1].content: field required"),
    ],
)
def test_client_errors_are_rejected_with_the_endpoints_message(
    fake_openai: FakeOpenAIServer, status: int, message: str
) -> None:
    fake_openai.reply_error(status, message, FAST_RETRY)

    with pytest.raises(ModelRequestRejected) as raised:
        complete(model_for(fake_openai, model_max_retries=2))

    assert str(raised.value) == f"model endpoint rejected the request ({status}): {message}"
    assert len(fake_openai.requests) == 1, "a 4xx is not worth retrying"


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_never_shows_the_key(fake_openai: FakeOpenAIServer, status: int) -> None:
    # OpenAI's own 401 message quotes (part of) the key it got; this fake quotes all of it.
    fake_openai.reply_error(status, f"Incorrect API key provided: {API_KEY}.", code="invalid_api_key")

    with pytest.raises(ModelRequestRejected, match=f"API key.*{status}") as raised:
        complete(model_for(fake_openai, model_max_retries=2))

    assert API_KEY not in str(raised.value)
    assert API_KEY[-4:] not in str(raised.value)
    assert len(fake_openai.requests) == 1


def test_connection_refused_is_model_unavailable() -> None:
    model = OpenAIModel.from_settings(settings_for(f"http://127.0.0.1:{closed_port()}/v1"))

    with pytest.raises(ModelUnavailable, match="could not connect to the model endpoint"):
        complete(model)


def test_a_model_asked_once_too_often_fails_loudly(fake_openai: FakeOpenAIServer) -> None:
    with pytest.raises(ModelUnavailable, match=NO_REPLY_LEFT):
        complete(model_for(fake_openai, model_max_retries=2))

    assert len(fake_openai.requests) == 1, "the fake tells the SDK not to retry"


def test_the_fake_serves_concurrent_callers_one_scripted_reply_each(fake_openai: FakeOpenAIServer) -> None:
    for n in range(8):
        fake_openai.reply_text(f"reply {n}")
    adapter = model_for(fake_openai)

    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = sorted(turn.text or "" for turn in pool.map(lambda _: complete(adapter), range(8)))

    assert texts == sorted(f"reply {n}" for n in range(8))
    assert len(fake_openai.requests) == 8 and fake_openai.pending == 0


# --- time ---


@pytest.mark.parametrize(
    ("settings_timeout_s", "caller_timeout_s"),
    [
        pytest.param(60.0, 0.4, id="caller-has-less-time"),
        pytest.param(0.4, 60.0, id="settings-bound-is-lower"),
    ],
)
def test_a_slow_endpoint_times_out_at_the_lower_of_the_two_bounds(
    fake_openai: FakeOpenAIServer, settings_timeout_s: float, caller_timeout_s: float
) -> None:
    fake_openai.reply_text("too late", delay_s=10)
    model = model_for(fake_openai, model_timeout_s=settings_timeout_s, model_max_retries=0)

    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"did not answer within 0\.4 s"):
        complete(model, timeout_s=caller_timeout_s)

    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("caller_timeout_s", "expected"),
    [
        pytest.param(900.0, (120.0, 2), id="plenty-of-time-all-retries"),
        pytest.param(250.0, (120.0, 1), id="room-for-one-more-attempt"),
        pytest.param(200.0, (120.0, 0), id="no-room-for-a-second-attempt"),
        pytest.param(45.0, (45.0, 0), id="less-than-one-full-attempt"),
    ],
)
def test_sdk_retries_only_as_many_attempts_as_fit_in_the_callers_time(
    caller_timeout_s: float, expected: tuple[float, int]
) -> None:
    assert _request_budget(caller_timeout_s, settings_timeout_s=120.0, settings_max_retries=2) == expected


def test_no_time_left_is_model_unavailable(fake_openai: FakeOpenAIServer) -> None:
    with pytest.raises(ModelUnavailable, match="no time left"):
        complete(model_for(fake_openai), timeout_s=0)

    assert fake_openai.requests == []


# --- configuration ---


def test_base_url_alone_sends_a_placeholder_key(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply_text("ok")

    complete(model_for(fake_openai, openai_api_key=None))

    assert fake_openai.request_headers[0]["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


def test_nothing_configured_is_model_not_configured() -> None:
    settings = Settings(openai_api_key=None, openai_api_key_secret_arn=None, openai_base_url=None)

    with pytest.raises(ModelNotConfigured, match="OPENAI_API_KEY"):
        OpenAIModel.from_settings(settings)


def test_key_from_secrets_manager(fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    fake_openai.reply_text("ok")

    redactor = Redactor()
    with moto.mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="model-key", SecretString="sk-from-secret-42")["ARN"]
        settings = settings_for(fake_openai.base_url, openai_api_key=None, openai_api_key_secret_arn=arn)
        model = OpenAIModel.from_settings(settings, redactor)
        complete(model)

    assert fake_openai.request_headers[0]["authorization"] == "Bearer sk-from-secret-42"
    # the adapter gave the key it read to the function's redactor (it is shaped like no known key format)
    assert redactor.text("key sk-from-secret-42") == f"key {REDACTED}"


def test_the_container_shares_one_client(fake_openai: FakeOpenAIServer) -> None:
    settings = settings_for(fake_openai.base_url)

    assert OpenAIModel.from_settings(settings)._client is OpenAIModel.from_settings(settings)._client


@pytest.mark.parametrize(
    ("base_url", "parameter"),
    [
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("http://localhost:11434/v1", "max_tokens"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "max_tokens"),
    ],
)
def test_token_limit_parameter_suits_the_endpoint(base_url: str, parameter: str) -> None:
    assert _token_limit_parameter(base_url) == parameter
