"""The ``openai`` policy: one chat-completions request per turn, to any OpenAI-compatible endpoint.

The adapter owns three decisions, each explained where it is made:

- the time a request may take (the settings' bound, lowered by the caller's remaining time) and
  how many of the SDK's own retries still fit in it (``_request_budget``);
- which token-limit parameter to send (``_token_limit_parameter``);
- how the SDK's exceptions and odd replies become Sandcastle's errors (``_translate_error``,
  ``_to_turn``), never carrying the API key;
- the wire format: the typed transcript becomes chat-completions messages here and nowhere else
  (``to_messages``).
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import openai

from sandcastle.agent.base import ModelTurn
from sandcastle.config import Settings
from sandcastle.errors import (
    ModelNotConfigured,
    ModelRateLimited,
    ModelReplyInvalid,
    ModelRequestRejected,
    ModelUnavailable,
)
from sandcastle.runs.records import ToolCall, Usage
from sandcastle.runs.transcript import (
    AssistantEvent,
    SystemEvent,
    ToolResultEvent,
    Transcript,
    UserEvent,
    UserMessageEvent,
)

if TYPE_CHECKING:
    from sandcastle.redaction import Redactor

logger = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "unused"
"""Sent when only ``OPENAI_BASE_URL`` is set: local compatible servers usually ignore the key."""

SECRET_MAX_AGE_S = 300
"""How long a key read from Secrets Manager is cached before it is read again (rotation)."""

_MAX_ERROR_TEXT = 1000
"""An endpoint's error message is cut to this many characters in our error."""

_TRANSIENT_4XX = frozenset({408, 409})
"""Request timeout and lock timeout: the SDK retries them, and so should the state machine."""


class OpenAIModel:
    """``Model`` over the openai SDK's chat completions.

    Build it with ``from_settings`` in a Lambda; pass a ``client`` of your own in tests. The
    client is the container's: the adapter only derives per-request copies of it
    (``with_options``), so connections are pooled across invocations.
    """

    backend = "openai"

    def __init__(self, client: openai.OpenAI, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._token_limit = _token_limit_parameter(str(client.base_url))

    @classmethod
    def from_settings(cls, settings: Settings, redactor: Redactor | None = None) -> OpenAIModel:
        """The adapter for the configured endpoint, on this container's shared client.

        The key is ``settings.openai_api_key``, else the Secrets Manager secret
        ``settings.openai_api_key_secret_arn`` (read through Powertools, cached for
        ``SECRET_MAX_AGE_S`` and re-read by the client when that expires, so a rotated key is
        picked up), else ``PLACEHOLDER_API_KEY`` when only ``settings.openai_base_url`` is set.
        ``redactor`` is given every key read from the secret, the first and any rotated one.

        Raises ``ModelNotConfigured`` when none of them is set or the secret cannot be read.
        """
        if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
            api_key: str | Callable[[], str] = settings.openai_api_key.get_secret_value()
        elif settings.openai_api_key_secret_arn:
            reader = _secret_api_key(settings.openai_api_key_secret_arn)
            if redactor is not None:
                reader.tell(redactor)
            api_key = reader
            api_key()  # fail here, with a clear error, rather than inside the first request
        elif settings.openai_base_url:
            api_key = PLACEHOLDER_API_KEY
        else:
            raise ModelNotConfigured(
                "no model endpoint configured: set OPENAI_API_KEY, OPENAI_API_KEY_SECRET_ARN or "
                "OPENAI_BASE_URL, or submit the run with a playbook"
            )
        client = _shared_client(api_key, settings.openai_base_url, settings.model_max_retries)
        return cls(client, settings)

    def complete(
        self,
        transcript: Transcript,
        tools: list[dict[str, Any]],
        *,
        model: str | None,
        timeout_s: float,
    ) -> ModelTurn:
        """One chat-completions request; see ``Model.complete``.

        ``timeout_s`` is the time the caller can still wait (from the Lambda's remaining time).
        One attempt may take ``min(settings.model_timeout_s, timeout_s)``.

        Raises ``ModelRateLimited`` / ``ModelUnavailable`` (retryable), ``ModelRequestRejected``
        (4xx, including a rejected key) and ``ModelReplyInvalid`` (an empty or malformed reply).
        """
        attempt_timeout_s, max_retries = _request_budget(
            timeout_s, self._settings.model_timeout_s, self._settings.model_max_retries
        )
        request: dict[str, Any] = {
            "model": model or self._settings.default_model,
            "messages": to_messages(transcript),
            self._token_limit: self._settings.model_max_tokens,
        }
        if tools:
            request["tools"] = tools
            request["tool_choice"] = "auto"
        client = self._client.with_options(timeout=attempt_timeout_s, max_retries=max_retries)
        try:
            completion = client.chat.completions.create(**request)
        except openai.OpenAIError as error:
            raise _translate_error(error, client.api_key, attempt_timeout_s) from error
        except json.JSONDecodeError as error:
            # The SDK parses a 2xx body without checking it is JSON (an HTML page from a proxy, say).
            raise ModelReplyInvalid(f"model reply was not JSON: {error}") from error
        return _to_turn(completion)


def to_messages(transcript: Transcript) -> list[dict[str, Any]]:
    """The chat-completions messages of a run's transcript (errors and the end are not the model's)."""
    messages: list[dict[str, Any]] = []
    for event in transcript:
        if isinstance(event, SystemEvent | UserEvent):
            messages.append({"role": event.kind.value, "content": event.data.text})
        elif isinstance(event, AssistantEvent):
            message: dict[str, Any] = {"role": "assistant", "content": event.data.text}
            if event.data.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in event.data.tool_calls
                ]
            messages.append(message)
        elif isinstance(event, ToolResultEvent):
            messages.append(
                {"role": "tool", "tool_call_id": event.data.tool_call_id, "content": event.data.model_view()}
            )
        elif isinstance(event, UserMessageEvent):  # a steering message: after the results of the turn before
            messages.append({"role": "user", "content": event.data.text})
    return messages


def _request_budget(timeout_s: float, settings_timeout_s: float, settings_max_retries: int) -> tuple[float, int]:
    """The per-attempt timeout and the number of SDK retries that fit in the caller's time.

    The SDK applies its timeout to each attempt and retries up to ``max_retries`` times, so a
    request that keeps timing out lasts ``(retries + 1) × timeout`` plus backoff. We keep the
    retries whose full attempt still fits in ``timeout_s``: with plenty of time the SDK retries
    as configured; near the Lambda's end it does not, and the error reaches the state machine
    (whose ``Retry`` starts a fresh Lambda) instead of the Lambda timing out mid-retry.
    """
    if timeout_s <= 0:
        raise ModelUnavailable("no time left for a model request in this step; it will be retried")
    attempt_timeout_s = min(settings_timeout_s, timeout_s)
    attempts_that_fit = math.floor(timeout_s / attempt_timeout_s + 1e-9)
    return attempt_timeout_s, max(0, min(settings_max_retries, attempts_that_fit - 1))


def _token_limit_parameter(base_url: str) -> str:
    """``max_completion_tokens`` for api.openai.com, ``max_tokens`` for every other endpoint.

    OpenAI deprecated ``max_tokens`` and its reasoning models (o-series, gpt-5) reject it with a
    400, while ``max_completion_tokens`` works for all its chat models. Compatible servers (vLLM,
    llama.cpp, Ollama, LM Studio, most hosted gateways) all read ``max_tokens``; only recent
    versions of some know ``max_completion_tokens``, and older ones ignore it silently.
    """
    host = (urlsplit(base_url).hostname or "").lower()
    return "max_completion_tokens" if host == "api.openai.com" else "max_tokens"


def _to_turn(completion: Any) -> ModelTurn:
    """The ``ModelTurn`` of a chat completion, or ``ModelReplyInvalid``.

    Tool calls must carry a non-empty id (that they are distinct is checked for every model by
    ``runs/turns.py``, which records the turn). The chat-completions format
    requires ``id`` and the id is what ties a tool's result (``tool_call_id``) to its call, in
    the conversation and in the state machine's RunTools items; we do not invent one. Some
    compatible endpoints are known to send empty ids (Gemini's compatibility layer at times, LM
    Studio, older llama.cpp); runs against them fail with a message naming the call, and the fix
    is on the endpoint side (or here: replace the ``raise`` with a generated ``call_<index>``).
    """
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise ModelReplyInvalid("model reply had no content and no tool calls (no choices in the reply)")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    text = content if isinstance(content, str) and content.strip() else None
    tool_calls = [_to_tool_call(call, index) for index, call in enumerate(getattr(message, "tool_calls", None) or [])]
    if text is None and not tool_calls:
        finish_reason = getattr(choice, "finish_reason", None)
        detail = f" (finish_reason: {finish_reason})" if finish_reason else ""
        raise ModelReplyInvalid(f"model reply had no content and no tool calls{detail}")
    usage = getattr(completion, "usage", None)
    return ModelTurn(
        text=text,
        tool_calls=tool_calls,
        usage=Usage(
            input_tokens=getattr(usage, "prompt_tokens", None) or 0,
            output_tokens=getattr(usage, "completion_tokens", None) or 0,
        ),
        model=getattr(completion, "model", None) or None,
    )


def _to_tool_call(call: Any, index: int) -> ToolCall:
    """Our ``ToolCall`` of one of the reply's tool calls; ``arguments`` stays the raw text."""
    function = getattr(call, "function", None)
    name = getattr(function, "name", None)
    if getattr(call, "type", "function") != "function" or function is None:
        raise ModelReplyInvalid(
            f"model reply's tool call #{index} is of type {getattr(call, 'type', None)!r}; "
            "only function tools are offered"
        )
    if not isinstance(name, str) or not name:
        raise ModelReplyInvalid(f"model reply's tool call #{index} names no function")
    call_id = getattr(call, "id", None)
    if not isinstance(call_id, str) or not call_id:
        raise ModelReplyInvalid(
            f"model reply's tool call #{index} ({name}) has no id; the endpoint must give every tool "
            "call an id to match its result to"
        )
    arguments = getattr(function, "arguments", None)
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        # A few servers send the arguments as a JSON object instead of its text.
        arguments = json.dumps(arguments)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _translate_error(error: openai.OpenAIError, api_key: str, timeout_s: float) -> Exception:
    """Sandcastle's error for an SDK exception raised after the SDK's own retries."""
    if isinstance(error, openai.APITimeoutError):
        return ModelUnavailable(f"model endpoint did not answer within {timeout_s:g} s")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        detail = f": {cause}" if cause else ""
        return ModelUnavailable(f"could not connect to the model endpoint {error.request.url}{detail}")
    if isinstance(error, openai.RateLimitError):
        return ModelRateLimited(f"model endpoint is rate limiting (429): {_api_message(error, api_key)}")
    if isinstance(error, openai.AuthenticationError):
        # OpenAI's 401 message quotes the start and end of the key: we leave it out entirely.
        return ModelRequestRejected(
            f"model endpoint rejected the API key ({error.status_code}); check OPENAI_API_KEY or the secret "
            "at OPENAI_API_KEY_SECRET_ARN"
        )
    if isinstance(error, openai.PermissionDeniedError):
        return ModelRequestRejected(
            f"model endpoint denied this API key access ({error.status_code}): {_api_message(error, api_key)}"
        )
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        message = _api_message(error, api_key)
        if status >= 500 or status in _TRANSIENT_4XX:
            return ModelUnavailable(f"model endpoint failed ({status}): {message}")
        return ModelRequestRejected(f"model endpoint rejected the request ({status}): {message}")
    if isinstance(error, openai.APIResponseValidationError):
        return ModelReplyInvalid(f"model reply did not match the chat-completions format: {error.message}")
    return ModelUnavailable(f"model request failed: {_redact(str(error), api_key)}")


def _api_message(error: openai.APIStatusError, api_key: str) -> str:
    """The endpoint's own error message (``{"error": {"message": ...}}``, or the body's text)."""
    body = error.body
    message: Any = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
        if message is None:
            message = json.dumps(body)
    elif body is not None:
        message = body
    if not isinstance(message, str):
        message = json.dumps(message) if message is not None else ""
    message = _redact(message.strip(), api_key) or "(no error message in the response)"
    if len(message) > _MAX_ERROR_TEXT:
        message = message[:_MAX_ERROR_TEXT] + "…"
    return message


def _redact(text: str, api_key: str) -> str:
    if api_key and api_key != PLACEHOLDER_API_KEY and len(api_key) >= 8:
        text = text.replace(api_key, "[redacted]")
    return text


class _SecretApiKey:
    """The API key held in a Secrets Manager secret, for the SDK to call before each request.

    Powertools caches the value for ``SECRET_MAX_AGE_S``; if re-reading it fails later, the last
    good key is used (and the failure logged) rather than failing a model request over it.
    """

    def __init__(self, secret_arn: str) -> None:
        self._secret_arn = secret_arn
        self._last_key: str | None = None
        self._redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def tell(self, redactor: Redactor) -> None:
        """Give ``redactor`` every key this reader reads from now on (and the last one read)."""
        self._redactors.add(redactor)
        if self._last_key is not None:
            redactor.add(self._last_key)

    def __call__(self) -> str:
        from sandcastle.redaction import read_secret

        try:
            key = read_secret(self._secret_arn, *self._redactors, max_age=SECRET_MAX_AGE_S)
        except Exception as error:
            if self._last_key is not None:
                logger.warning("could not re-read the model API key secret; using the last one: %s", error)
                return self._last_key
            raise ModelNotConfigured(
                f"could not read the model API key from secret {self._secret_arn}: {error}; check "
                "OPENAI_API_KEY_SECRET_ARN and the function's secretsmanager:GetSecretValue permission"
            ) from error
        if key is None or not key.strip():
            raise ModelNotConfigured(f"secret {self._secret_arn} holds no model API key (expected the key as text)")
        self._last_key = key.strip()
        return self._last_key


@lru_cache(maxsize=8)
def _secret_api_key(secret_arn: str) -> _SecretApiKey:
    """One key reader per secret, so ``_shared_client`` sees the same key provider every time."""
    return _SecretApiKey(secret_arn)


@lru_cache(maxsize=8)
def _shared_client(api_key: str | Callable[[], str], base_url: str | None, max_retries: int) -> openai.OpenAI:
    """One client per container and configuration, so connections are reused across invocations."""
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries)
