"""Step Functions access: each run's one execution of the agent-run state machine.

An execution is named by its run id, so its ARN is derived from the state machine's ARN in one
place (``execution_arn``) and a repeated start is a no-op. ``ClientError`` codes become our errors
here; nothing under ``runs/`` imports botocore.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from botocore.exceptions import ClientError

from sandcastle.errors import ExecutionError, ExecutionNotFound, ExecutionsUnavailable

#: Codes a retry may cure (botocore has already retried them with backoff).
_TRANSIENT = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ServiceUnavailable", "InternalServerError", "InternalFailure"}
)
#: What stopping an execution that is already over (or never began) answers.
_NOT_RUNNING = frozenset({"ExecutionDoesNotExist", "ExecutionNotRunning"})


class Executions(Protocol):
    """The run loop's executions, one per run, named by the run id."""

    def start(self, run_id: str) -> None:
        """Start the run's execution; a repeated start (the execution exists, running or ended) is a no-op."""
        ...

    def stop(self, run_id: str, *, error: str, cause: str) -> bool:
        """Stop the run's execution; False when it is not running (ended, or never started)."""
        ...

    def describe(self, run_id: str) -> dict[str, Any]:
        """The execution as Step Functions describes it (``status``, ``startDate``, ...);
        ``ExecutionNotFound`` when there is none."""
        ...


def execution_arn(state_machine_arn: str, run_id: str) -> str:
    """The ARN of the run's execution (executions are named by run id)."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{run_id}"


class StepFunctionsExecutions:
    """``Executions`` on the agent-run state machine, through a boto3 ``stepfunctions`` client."""

    def __init__(self, state_machine_arn: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("stepfunctions")
        self.client = client
        """The boto3 client (tests and the local runtime read execution histories through it)."""
        self.state_machine_arn = state_machine_arn

    def arn(self, run_id: str) -> str:
        return execution_arn(self.state_machine_arn, run_id)

    def start(self, run_id: str) -> None:
        try:
            self.client.start_execution(
                stateMachineArn=self.state_machine_arn, name=run_id, input=json.dumps({"run_id": run_id})
            )
        except ClientError as error:
            if _code(error) == "ExecutionAlreadyExists":  # it ended already (a running one answers as it started)
                return
            raise _translate(error, f"could not start the execution of {run_id}") from error

    def stop(self, run_id: str, *, error: str, cause: str) -> bool:
        try:
            self.client.stop_execution(executionArn=self.arn(run_id), error=error, cause=cause)
        except ClientError as failure:
            if _code(failure) in _NOT_RUNNING:
                return False
            raise _translate(failure, f"could not stop the execution of {run_id}") from failure
        return True

    def describe(self, run_id: str) -> dict[str, Any]:
        try:
            return dict(self.client.describe_execution(executionArn=self.arn(run_id)))
        except ClientError as error:
            if _code(error) == "ExecutionDoesNotExist":
                raise ExecutionNotFound(f"run {run_id} has no execution") from error
            raise _translate(error, f"could not describe the execution of {run_id}") from error


class TaskTokens(Protocol):
    """Tasks of the run loop waiting on a task token (``AwaitApproval``)."""

    def resume(self, task_token: str) -> bool:
        """Let the task waiting on ``task_token`` go on (``SendTaskSuccess``); False when nothing waits on it
        any more (it went on already, timed out, or its execution ended)."""
        ...


class StepFunctionsTaskTokens:
    """``TaskTokens`` through a boto3 ``stepfunctions`` client. It needs no state machine ARN (a token names
    its task), so AwaitApproval — which the state machine's definition names — can hold one without a cycle."""

    def __init__(self, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("stepfunctions")
        self.client = client

    def resume(self, task_token: str) -> bool:
        try:
            self.client.send_task_success(taskToken=task_token, output="{}")
        except ClientError as error:
            if _code(error) in _TOKEN_GONE:
                return False
            raise _translate(error, "could not resume a waiting run") from error
        return True


#: What ``SendTaskSuccess`` answers for a token nothing waits on any more.
_TOKEN_GONE = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _translate(error: ClientError, doing: str) -> ExecutionError | ExecutionsUnavailable:
    code = _code(error)
    message = error.response.get("Error", {}).get("Message", "")
    text = f"{doing}: {code}{f' ({message})' if message else ''}"
    return ExecutionsUnavailable(text) if code in _TRANSIENT else ExecutionError(text)
