"""Unit-test fixtures: the template's table and bucket in moto (no state-machine execution), fake sandbox and model."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from sandcastle.config import Settings
from sandcastle.local.runtime import (
    DEFAULT_TEMPLATE,
    _serialize_emulated_dynamodb,
    create_buckets,
    create_state_machines,
    create_tables,
)
from sandcastle.local.template import Template
from sandcastle.wiring import Dependencies
from tests.fakes.model import FakeModel
from tests.fakes.sandbox import FakeSandboxProvider

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Template]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        template = Template.load(DEFAULT_TEMPLATE, region=REGION)
        create_tables(template, boto3.client("dynamodb", region_name=REGION))
        create_buckets(template, boto3.client("s3", region_name=REGION))
        create_state_machines(template, boto3.client("stepfunctions", region_name=REGION))
        yield template


@pytest.fixture
def sandboxes() -> FakeSandboxProvider:
    return FakeSandboxProvider()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


class RecordingEventBus:
    """Stands in for the EventBridge client: keeps what was put."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def put_events(self, Entries: list[dict]) -> dict:  # noqa: N803 - boto3's parameter name
        self.entries.extend(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(len(self.entries))}]}


@pytest.fixture
def events() -> RecordingEventBus:
    return RecordingEventBus()


@pytest.fixture
def deps(aws: Template, sandboxes: FakeSandboxProvider, model: FakeModel, events: RecordingEventBus) -> Dependencies:
    settings = Settings(
        table_name=aws.physical_name("RunsTable"),
        artifacts_bucket=aws.physical_name("ArtifactsBucket"),
        state_machine_arn=aws.arn("AgentRunStateMachine"),
        tenant_files_role_arn=aws.arn("TenantFilesRole"),
        openai_base_url="http://127.0.0.1:9/v1",
        default_max_steps=10,
        max_steps_ceiling=50,
    )
    return Dependencies(settings, sandboxes=sandboxes, model=model, events=events)


@pytest.fixture
def linearizable_dynamodb() -> Iterator[None]:
    """moto's DynamoDB checks a condition and writes without a lock; DynamoDB's are atomic per item.

    The local runtime serializes emulated requests for the same reason; tests whose threads race
    on one item need it too (else two conditional writes can both succeed, which DynamoDB never allows).
    """
    with _serialize_emulated_dynamodb():
        yield
