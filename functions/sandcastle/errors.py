"""Sandcastle's own errors.

Adapters turn vendor errors (botocore ``ClientError``, e2b and openai exceptions) into these.
A handler lets them propagate: the Lambda error type is the class name, and the state machine
matches on it — ``Retry`` for the retryable ones, ``Catch`` → FailRun for the rest.
"""

from __future__ import annotations


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


class RunNotFound(SandcastleError):
    """No run with that id (or not visible to the caller's tenant)."""


class ModelRequestRejected(SandcastleError):
    """The model endpoint rejected the request (4xx other than 429); retrying will not help."""


class ModelReplyInvalid(SandcastleError):
    """The model's reply was empty or malformed."""


class ModelNotConfigured(SandcastleError):
    """The run needs a model but none is configured."""


class SandboxGone(SandcastleError):
    """The run's sandbox no longer exists (killed, expired or never created)."""


class SandboxError(SandcastleError):
    """The sandbox failed in a way retrying will not fix (bad configuration, authentication)."""


class ToolInputError(SandcastleError):
    """A tool call's arguments were wrong: the model sees this as the tool's result."""
