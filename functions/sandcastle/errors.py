"""Sandcastle's own errors.

Adapters turn vendor errors (botocore ``ClientError``, e2b and openai exceptions) into these.
A handler lets them propagate: the Lambda error type is the class name, and the state machine
matches on it — ``Retry`` for the retryable ones, ``Catch`` → FailRun for the rest. Do not rename
a class: ``infra/statemachine/agent_run.asl.json`` and ``result.json`` files name them.

Every exception class of the package lives here (``tests/unit/test_errors.py`` checks it), grouped
by who raises it; the bases are what callers catch, so they stay as they are.
"""

from __future__ import annotations

import errno
from typing import Any


class SandcastleError(Exception):
    """Base of every error Sandcastle raises on purpose."""


class RetryableError(SandcastleError):
    """A transient failure: the state machine retries the step with backoff."""


class ModelRateLimited(RetryableError):
    """The model endpoint answered 429 after the SDK's own retries."""


class ModelUnavailable(RetryableError):
    """The model endpoint failed with 5xx, a timeout or a connection error after the SDK's retries."""


class SandboxUnavailable(RetryableError):
    """The sandbox service is rate limiting or busy; try again later."""


class ExecutionsUnavailable(RetryableError):
    """Step Functions is throttling or failing (after botocore's own retries); try again later."""


class ExecutionError(SandcastleError):
    """Step Functions refused a call in a way retrying will not fix (no such state machine, access denied)."""


class ExecutionNotFound(SandcastleError):
    """The run has no execution (it never started, or its history expired)."""


class SettingMissing(SandcastleError):
    """A setting this function needs is not in its environment (a deployment error, not the caller's)."""


class InvalidRunRequest(SandcastleError):
    """A run request failed validation. ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class ValueTooLarge(InvalidRunRequest):
    """A request's field is too large to store (DynamoDB's 400 KB item): the API answers 413 naming it."""


class RepositoryUnavailable(SandcastleError):
    """A run's repository could not be cloned, read back or pushed: an unreachable URL, an unknown ref, a
    repository over the size limit, a refused credential. The message says which and what to change."""


class RunNotFound(SandcastleError):
    """No run with that id (or not visible to the caller's tenant)."""


class ModelRequestRejected(SandcastleError):
    """The model endpoint rejected the request (4xx other than 429); retrying will not help."""


class ModelReplyInvalid(SandcastleError):
    """The model's reply was empty or malformed."""


class ModelNotConfigured(SandcastleError):
    """The run needs a model but none is configured."""


class PlaybookStepFailed(SandcastleError):
    """A playbook step failed (tool error, non-zero exit, timeout) and does not say ``continue_on_error``."""


class SandboxGone(SandcastleError):
    """The run's sandbox no longer exists (killed, expired or never created)."""


class SandboxError(SandcastleError):
    """The sandbox failed in a way retrying will not fix (bad configuration, authentication)."""


class ToolInputError(SandcastleError):
    """A tool call's arguments were wrong: the model sees this as the tool's result."""


# --- runs: refusals the API maps to 4xx, and the lifecycle's guard ---


class TooManyActiveRuns(SandcastleError):
    """The tenant already has as many unfinished runs as it may."""


class PayloadTooLarge(SandcastleError):
    """A request body or an inline input file is over its configured cap. ``field`` names the file."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyConflict(SandcastleError):
    """The ``Idempotency-Key`` was used with another body, or its first request is still running."""


class RunEnded(SandcastleError):
    """The run already reached a terminal status; there is nothing left to do."""


class ApprovalNotFound(SandcastleError):
    """The run has no approval for that tool call id."""


class ApprovalConflict(SandcastleError):
    """A decision that cannot be taken: the call was decided otherwise already, it expired, or the run ended."""


class RunNotLive(SandcastleError):
    """The run has ended: it takes no more messages (follow-ups on a finished run are not supported yet)."""


class RunBusy(SandcastleError):
    """A message could not be placed: the run kept moving to new turns meanwhile (send it again)."""


class TaskNotFound(SandcastleError):
    """No task of that name for the tenant."""


class ScheduleNotFound(SandcastleError):
    """No schedule with that id for the tenant."""


class InvalidExpression(ValueError):
    """The expression is not one EventBridge Scheduler accepts (the message says why)."""


class UploadRejected(SandcastleError):
    """The upload cannot start a run; ``error_type`` names the reason for ``result.json``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# --- store adapters: conditions that did not hold ---


class ConditionFailed(Exception):
    """The run was not in the state an update required."""


class ActiveRunLimitReached(Exception):
    """The tenant already has as many unfinished runs as the limit allows; nothing was written."""


class ScheduleClaimLost(Exception):
    """Another fire of the schedule changed its latest run first."""


class TenantFileAccessDenied(Exception):
    """S3 refused a tenant-scoped request (the key is outside what the tenant's session may touch)."""


class FileTooLarge(Exception):
    """A tenant file is over the size the caller accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes; the limit is {limit}")
        self.size, self.limit = size, limit


# --- the API's authorizer ---


class Unauthorized(Exception):  # noqa: N818 - API Gateway turns exactly this message into a 401
    """No key, a malformed header, an unknown or a revoked key."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


# --- sandboxes ---


class DiskQuotaExceeded(OSError):
    """A write found the sandbox's workspace full (its disk quota spent): the model reads the message.

    Backends raise it from ``write_file`` (the local one on ``ENOSPC``/``EDQUOT``, the e2b one on
    envd's 507), so file tools turn it into a tool error rather than a failed run.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EDQUOT, message)

    def __str__(self) -> str:
        return str(self.strerror)


class UnsupportedArchitecture(RuntimeError):
    """This machine's architecture has no syscall table here (only x86_64 and aarch64 do)."""


class InitUnreachable(SandboxError):  # noqa: N818 - read as "the init is unreachable"
    """A local sandbox's init is not running (never started, killed, or its host process ended)."""


class ProcessNotFound(LookupError):
    """No background process of the sandbox has that id: the model reads the message."""


# --- the local E2B-compatible server (its API answers 404, 429 and 400 for these) ---


class SandboxNotFound(LookupError):
    """No live sandbox has this id (never created, killed, or timed out)."""


class SandboxLimitReached(RuntimeError):
    """The server already runs as many sandboxes as it may."""


class InvalidSandboxRequest(ValueError):
    """A create/connect/timeout request the server cannot honour (e.g. internet access)."""


class SandboxConflict(RuntimeError):
    """The sandbox is not in a state the request needs (e.g. pausing one already paused): a 409."""


# --- the local runtime ---


class LambdaInvocationError(Exception):
    """A function invoked through ``LocalRuntime.invoke`` raised ``error_type``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class UnmappedCall(Exception):
    """The permission check does not know which IAM action a call needs."""


# --- the CLI's HTTP client ---


class CommandFailed(Exception):
    """Raised by a CLI command to end with its message on stderr and ``code`` (``sandcastle.cli.output.Exit``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ApiError(Exception):
    """The API answered with an error (its ``{"error", "message", "field"}`` body).

    Not ``sandcastle.api.errors.ApiError``: that is the body's model, this is what the client raises.
    """

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("error", "error"))
        self.field = body.get("field")
        message = str(body.get("message", body))
        # The API's messages mostly name their field already (``instructions: ...``): name it once.
        named = not self.field or message.startswith(f"{self.field}:")
        super().__init__(message if named else f"{self.field}: {message}")
