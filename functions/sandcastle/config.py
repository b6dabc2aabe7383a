"""Configuration, in one place.

Every setting comes from an environment variable (the function's ``Environment`` in
``template.yaml``, or the local runtime's derived environment). Domain code receives a
``Settings`` object; it never reads ``os.environ`` itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Sandcastle's settings, read from the environment (names are the upper-cased field names)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, env_ignore_empty=True)

    # --- AWS resources (names/ARNs, injected by template.yaml) ---
    table_name: str = "sandcastle-runs"
    """The DynamoDB table holding runs and transcripts."""
    artifacts_bucket: str = "sandcastle-artifacts"
    """The S3 bucket for input files, large outputs and artifacts."""
    state_machine_arn: str = ""
    """The agent-run state machine; needed only where runs are submitted."""
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")

    # --- sandbox ---
    sandbox_backend: Literal["local", "e2b"] = "e2b"
    """Where tool calls execute: ``e2b`` (the e2b SDK) or ``local`` (bubblewrap)."""
    sandbox_root: Path = Path(".sandcastle/sandboxes")
    """Local backend: where each sandbox's private workspace lives."""
    e2b_api_key: SecretStr | None = None
    e2b_api_key_secret_arn: str | None = None
    """Cloud: the Secrets Manager secret holding the E2B API key."""
    e2b_template: str = "base"
    sandbox_timeout_margin_s: int = 120
    """Seconds a sandbox outlives its run's deadline, so cleanup can still reach it."""

    # --- model ---
    openai_api_key: SecretStr | None = None
    openai_api_key_secret_arn: str | None = None
    """Cloud: the Secrets Manager secret holding the model API key."""
    openai_base_url: str | None = None
    """Any OpenAI-compatible endpoint; unset means api.openai.com when a key is set."""
    default_model: str = "gpt-4.1-mini"
    model_timeout_s: float = 120.0
    """Upper bound for one model request; the Lambda's remaining time lowers it further."""
    model_max_retries: int = 2
    """The openai SDK's own retries (429, 5xx, connection errors) before the state machine's."""
    model_max_tokens: int = 4096

    tool_concurrency: int = Field(default=4, ge=1, le=40)
    """How many of one turn's tool calls run at once (the RunTools map's MaxConcurrency)."""

    # --- budgets: defaults and hard ceilings ---
    default_max_steps: int = 20
    max_steps_ceiling: int = 200
    default_max_tool_calls: int = 100
    max_tool_calls_ceiling: int = 1000
    default_timeout_s: int = 900
    timeout_s_ceiling: int = 3600
    default_command_timeout_s: int = 60
    command_timeout_ceiling_s: int = 600

    # --- transcript ---
    output_limit_bytes: int = 16_384
    """stdout/stderr kept per event (head and tail); the rest is marked truncated."""
    max_input_file_bytes: int = 10 * 1024 * 1024
    run_ttl_days: int = 30

    @property
    def openai_configured(self) -> bool:
        """True when a real model endpoint is configured (key, secret or base URL)."""
        return bool(self.openai_api_key or self.openai_api_key_secret_arn or self.openai_base_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this container, read once."""
    return Settings()
