"""Keeping secrets out of transcripts: known secret values and well-known key formats are replaced.

Applied to everything a run records or shows the model — tool output (in the event and in S3),
file contents read back, the model's text and tool-call arguments, the instructions, error
messages — before it is stored.

A ``Redactor`` is built with the secrets configured for the function (``configured_secrets``:
the keys given in the environment, the link secret, ``REDACT_VALUES``). A secret read at run time
from Secrets Manager is added by the adapter that reads it, through ``read_secret`` — each
function's role may read only the secrets it uses, so none is read up front for the redactor.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandcastle.config import Settings

REDACTED = "[REDACTED]"
_MIN_SECRET_LENGTH = 8
"""Shorter values are not treated as secrets: replacing them would mangle ordinary output."""

#: Formats of keys that are secret wherever they appear, known to us or not.
KEY_PATTERNS = (
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic-style API keys
    r"e2b_[A-Za-z0-9]{20,}",  # E2B API keys
    r"sc_[A-Za-z0-9_-]{32,}",  # Sandcastle API keys
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)


class Redactor:
    """Replaces known secret values and key-shaped strings with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._text_pattern: re.Pattern[str] = re.compile("|".join(KEY_PATTERNS))
        self._bytes_pattern: re.Pattern[bytes] = re.compile("|".join(KEY_PATTERNS).encode())
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Treat ``secret`` as secret from now on (e.g. a key just read from Secrets Manager)."""
        if not secret or len(secret) < _MIN_SECRET_LENGTH or secret in self._secrets:
            return
        with self._lock:
            self._secrets.add(secret)
            # Longest first, so a secret that contains another is replaced whole.
            values = sorted(self._secrets, key=len, reverse=True)
            alternatives = [re.escape(v) for v in values] + list(KEY_PATTERNS)
            self._text_pattern = re.compile("|".join(alternatives))
            self._bytes_pattern = re.compile(b"|".join(a.encode() for a in alternatives))

    def text(self, value: str) -> str:
        return self._text_pattern.sub(REDACTED, value)

    def bytes(self, value: bytes) -> bytes:
        return self._bytes_pattern.sub(REDACTED.encode(), value)

    def data(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.data(item) for item in value]
        return value


def configured_secrets(settings: Settings) -> list[str]:
    """The secret values ``settings`` carries: the model and E2B keys, the link secret, ``REDACT_VALUES``."""
    values = [settings.openai_api_key, settings.e2b_api_key, settings.local_link_secret, *settings.redact_values]
    return [value.get_secret_value() for value in values if value is not None]


def read_secret(arn: str, *redactors: Redactor, max_age: int) -> str | None:
    """The text of the Secrets Manager secret ``arn`` (through Powertools' cache), known to ``redactors`` from now on.

    The one way an adapter reads a secret, so whatever it reads is redacted from what the run records.
    Raises what Powertools raises when the secret cannot be read; None when it holds no text.
    """
    from aws_lambda_powertools.utilities.parameters import get_secret

    value = get_secret(arn, max_age=max_age)
    text = value.decode() if isinstance(value, bytes) else value
    if not isinstance(text, str):
        return None
    for redactor in redactors:
        redactor.add(text.strip())
    return text
