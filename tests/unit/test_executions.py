"""The Step Functions adapter against moto: one execution per run, its ARN derived once, AWS's error codes
turned into ours (throttling, which moto cannot produce, through botocore's own Stubber)."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from sandcastle.errors import ExecutionError, ExecutionNotFound, ExecutionsUnavailable, RetryableError
from sandcastle.local.template import Template
from sandcastle.store.executions import StepFunctionsExecutions, execution_arn
from tests.unit.conftest import REGION


@pytest.fixture
def executions(aws: Template) -> StepFunctionsExecutions:
    return StepFunctionsExecutions(aws.arn("AgentRunStateMachine"), boto3.client("stepfunctions", region_name=REGION))


def test_a_run_starts_one_execution_named_by_its_id(executions: StepFunctionsExecutions) -> None:
    executions.start("run-1")
    executions.start("run-1")  # a repeated start (a retried submit) while it runs is a no-op

    described = executions.describe("run-1")
    assert described["executionArn"] == execution_arn(executions.state_machine_arn, "run-1")
    assert described["name"] == "run-1" and described["status"] == "RUNNING"
    assert described["input"] == '{"run_id": "run-1"}'
    listed = executions.client.list_executions(stateMachineArn=executions.state_machine_arn)["executions"]
    assert [execution["name"] for execution in listed] == ["run-1"]


def test_starting_a_run_whose_execution_ended_is_a_no_op(executions: StepFunctionsExecutions) -> None:
    executions.start("run-1")
    executions.stop("run-1", error="Cancelled", cause="test")

    executions.start("run-1")  # Step Functions answers ExecutionAlreadyExists

    assert executions.describe("run-1")["status"] == "ABORTED"


def test_the_execution_arn_is_the_state_machines_with_the_run_id() -> None:
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:sandcastle-runs"

    assert execution_arn(arn, "run-9") == "arn:aws:states:us-east-1:123456789012:execution:sandcastle-runs:run-9"


def test_stopping_an_execution_that_is_not_running_is_not_an_error(executions: StepFunctionsExecutions) -> None:
    assert executions.stop("run-never-started", error="Cancelled", cause="test") is False
    executions.start("run-2")

    assert executions.stop("run-2", error="Cancelled", cause="test") is True
    assert executions.describe("run-2")["status"] == "ABORTED"


def test_describing_a_run_without_an_execution_names_the_run(executions: StepFunctionsExecutions) -> None:
    with pytest.raises(ExecutionNotFound, match="run-none has no execution"):
        executions.describe("run-none")


def test_a_missing_state_machine_is_an_error_naming_aws_code(aws: Template) -> None:
    wrong = aws.arn("AgentRunStateMachine") + "-gone"
    executions = StepFunctionsExecutions(wrong, boto3.client("stepfunctions", region_name=REGION))

    with pytest.raises(ExecutionError, match="could not start the execution of run-3: StateMachineDoesNotExist"):
        executions.start("run-3")


@pytest.mark.parametrize("code", ["ThrottlingException", "ServiceUnavailable", "InternalServerError"])
def test_throttling_is_retryable(aws: Template, code: str) -> None:
    client = boto3.client("stepfunctions", region_name=REGION)
    executions = StepFunctionsExecutions(aws.arn("AgentRunStateMachine"), client)

    with Stubber(client) as stub:
        stub.add_client_error("start_execution", service_error_code=code, service_message="slow down")
        stub.add_client_error("stop_execution", service_error_code=code)
        with pytest.raises(ExecutionsUnavailable, match=f"{code} \\(slow down\\)") as started:
            executions.start("run-4")
        with pytest.raises(ExecutionsUnavailable):
            executions.stop("run-4", error="Cancelled", cause="test")

    assert isinstance(started.value, RetryableError)  # the state machine's Retry and the API's 503 see it so
