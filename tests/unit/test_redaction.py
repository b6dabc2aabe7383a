"""Secrets are replaced wherever they appear: known values, and well-known key formats; a function's redactor
knows the secrets configured for it and those its adapters read, and reads none itself."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from sandcastle.config import Settings
from sandcastle.local.template import Template
from sandcastle.redaction import REDACTED, Redactor
from sandcastle.runs.lifecycle import fail_run
from sandcastle.runs.payloads import FailInput
from sandcastle.runs.requests import PlaybookCall, RunRequest
from sandcastle.runs.submit import submit_run
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.unit.conftest import RecordingEventBus


def test_known_values_and_key_formats_are_replaced_in_text_bytes_and_data() -> None:
    redactor = Redactor(["hunter2-correct-horse", "short"])
    text = "key=hunter2-correct-horse openai=sk-proj-abcdefghijklmnopqrstuvwxyz e2b=e2b_0123456789abcdef0123 short"

    assert redactor.text(text) == f"key={REDACTED} openai={REDACTED} e2b={REDACTED} short"
    assert redactor.bytes(b"\xff hunter2-correct-horse \xfe") == b"\xff " + REDACTED.encode() + b" \xfe"
    assert redactor.data({"a": ["AKIAABCDEFGHIJKLMNOP", 3, None]}) == {"a": [REDACTED, 3, None]}


def test_a_secret_added_later_is_replaced_whole_even_when_it_contains_another() -> None:
    redactor = Redactor(["abcdefgh"])
    redactor.add("abcdefgh-and-more")
    assert redactor.text("x abcdefgh-and-more y abcdefgh") == f"x {REDACTED} y {REDACTED}"


def test_private_keys_are_replaced_whole() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
    assert Redactor().text(f"before\n{pem}\nafter") == f"before\n{REDACTED}\nafter"


E2B_KEY = "key-in-no-known-format-0123456789"  # noqa: S105 - a test value, shaped like no known key format
REDACT_VALUE = "the-configured-value-42"


def _settings(template: Template, **extra: Any) -> Settings:
    return Settings(
        table_name=template.physical_name("RunsTable"),
        artifacts_bucket=template.physical_name("ArtifactsBucket"),
        state_machine_arn=template.arn("AgentRunStateMachine"),
        openai_base_url="http://127.0.0.1:9/v1",
        redact_values=[REDACT_VALUE],
        **extra,
    )


def _fail_with(deps: Dependencies, cause: str) -> tuple[str, list[str]]:
    """Submit a run and fail it with ``cause``; what the run and its transcript recorded of it."""
    run = submit_run(RunRequest(instructions="x", playbook=[PlaybookCall(tool="run_command", arguments={})]), deps)
    fail_run(FailInput.model_validate({"run_id": run.run_id, "error": {"Error": "Boom", "Cause": cause}}), deps)
    recorded = deps.store.get_run(run.run_id)
    assert recorded.error is not None
    return recorded.error.message, [e.model_dump_json() for e in deps.store.list_events(run.run_id)]


def _counting_secret_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from aws_lambda_powertools.utilities import parameters

    reads: list[str] = []
    original = parameters.get_secret

    def get_secret(name: str, **kwargs: Any) -> Any:
        reads.append(name)
        return original(name, **kwargs)

    monkeypatch.setattr(parameters, "get_secret", get_secret)
    return reads


def test_a_secret_an_adapter_reads_is_redacted_in_what_the_run_records(
    aws: Template, model: FakeModel, events: RecordingEventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a function whose sandbox adapter reads the E2B key from Secrets Manager
    arn = boto3.client("secretsmanager").create_secret(Name="e2b-key-read", SecretString=E2B_KEY)["ARN"]
    reads = _counting_secret_reads(monkeypatch)
    settings = _settings(aws, sandbox_backend="e2b", e2b_api_key_secret_arn=arn, e2b_api_url="http://127.0.0.1:9")
    deps = Dependencies(settings, model=model, events=events)
    assert deps.redactor.text(E2B_KEY) == E2B_KEY  # not known before the adapter reads it
    deps.sandboxes  # noqa: B018 - building the adapter reads the secret

    # When a failure naming the key is recorded
    message, transcript = _fail_with(deps, f"e2b refused {E2B_KEY} and {REDACT_VALUE}")

    # Then neither the key it read nor the configured value is in the run or its transcript
    assert reads == [arn]
    assert E2B_KEY not in message and REDACT_VALUE not in message and REDACTED in message
    assert not any(E2B_KEY in text or REDACT_VALUE in text for text in transcript)


def test_a_function_that_never_built_the_adapter_reads_no_secret_and_still_redacts_the_configured_ones(
    aws: Template, model: FakeModel, events: RecordingEventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a function configured with the E2B secret and REDACT_VALUES that never builds a sandbox adapter
    reads = _counting_secret_reads(monkeypatch)
    settings = _settings(
        aws,
        sandbox_backend="e2b",
        e2b_api_key_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:not-its-own-AbCdEf",
        openai_api_key="sk-configured-in-the-environment-0123",
    )
    deps = Dependencies(settings, model=model, events=events)

    message, transcript = _fail_with(deps, f"saw {REDACT_VALUE} and sk-configured-in-the-environment-0123")

    # Then it read no secret (its role may not), and the configured values are redacted
    assert reads == []
    assert REDACT_VALUE not in message and "sk-configured-in-the-environment-0123" not in message
    assert message.count(REDACTED) == 2
    assert not any(REDACT_VALUE in text for text in transcript)
