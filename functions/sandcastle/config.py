"""Configuration, in one place.

Every setting comes from an environment variable (the function's ``Environment`` in
``template.yaml``, or the local runtime's derived environment). Domain code receives a
``Settings`` object; it never reads ``os.environ`` itself.

In the cloud (inside a Lambda function: ``AWS_LAMBDA_FUNCTION_NAME`` is set) the resource names every
function gets from the template's ``Globals`` are required: a function deployed without one fails on
its first invocation, naming the variable, instead of talking to a default table or bucket. Names
only some functions get (``STATE_MACHINE_ARN``, the scheduler's ARNs, ``TENANT_FILES_ROLE_ARN``) are
required where the adapter that uses them is built (``Settings.required``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandcastle.errors import SettingMissing

#: Resource names every function gets (template.yaml ``Globals``), required in the cloud.
CLOUD_REQUIRED = ("table_name", "artifacts_bucket", "inbox_bucket")


class Settings(BaseSettings):
    """Sandcastle's settings, read from the environment (names are the upper-cased field names)."""

    # Each field's docstring documents it (tests/unit/test_settings.py checks there is one). Not
    # ``use_attribute_docstrings``: reading them back parses this file's source at every cold start.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, env_ignore_empty=True, hide_input_in_errors=True)

    # --- AWS resources (names/ARNs, injected by template.yaml) ---
    table_name: str = "sandcastle-runs"
    """The DynamoDB table holding runs and transcripts."""
    artifacts_bucket: str = "sandcastle-artifacts"
    """The S3 bucket for input files, large outputs and artifacts."""
    state_machine_arn: str = ""
    """The agent-run state machine; needed only where runs are submitted."""
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    """The AWS region (set by Lambda; the local runtime's is ``us-east-1``)."""
    aws_lambda_function_name: str | None = Field(default=None, validation_alias="AWS_LAMBDA_FUNCTION_NAME")
    """Set by Lambda itself: running in the cloud, where the resource names are required (``CLOUD_REQUIRED``)."""

    # --- sandbox ---
    sandbox_backend: Literal["local", "e2b"] = "e2b"
    """Where tool calls execute: ``e2b`` (the e2b SDK) or ``local`` (bubblewrap)."""
    sandbox_root: Path = Path(".sandcastle/sandboxes")
    """Local backend: where each sandbox's private workspace lives."""
    sandbox_uid: int = Field(default=65534, ge=1)
    """Local backend, when run as root: the unprivileged host uid (and gid) commands run as."""
    sandbox_cpu_seconds: int = Field(default=300, ge=1)
    """Local backend: CPU seconds per process (SIGXCPU, then SIGKILL)."""
    sandbox_memory_mb: int = Field(default=2048, ge=1)
    """Local backend: memory per process, and for the whole sandbox where cgroups are available."""
    sandbox_file_size_mb: int = Field(default=512, ge=1)
    """Local backend: the largest file a process may write, and the size of the sandbox's /tmp."""
    sandbox_max_processes: int = Field(default=256, ge=1)
    """Local backend: processes per sandbox (pids cgroup), or per sandbox uid without cgroups."""
    sandbox_disk_quota_mb: int = Field(default=4096, ge=0)
    """Local backend, when run as root: the size of each sandbox's workspace filesystem (0: no cap)."""
    sandbox_mount_root: Path = Path("/run/sandcastle")
    """Local backend, when run as root: where each sandbox's workspace filesystem is mounted."""
    e2b_api_key: SecretStr | None = None
    """The E2B API key itself (local use); in the cloud it comes from ``e2b_api_key_secret_arn``."""
    e2b_api_key_secret_arn: str | None = None
    """Cloud: the Secrets Manager secret holding the E2B API key."""
    e2b_template: str = "base"
    """The E2B sandbox template each run's sandbox is created from (a run may ask for another)."""
    sandbox_timeout_margin_s: int = 120
    """Seconds a sandbox outlives its run's deadline, so cleanup can still reach it."""
    sandbox_internet: bool = True
    """Whether the ``e2b`` backend can give a sandbox internet access: E2B's cloud can; the local E2B
    server cannot (the local runtime sets this false when it starts one). The ``local`` backend never can."""

    # --- model ---
    openai_api_key: SecretStr | None = None
    """The model API key itself (local use); in the cloud it comes from ``openai_api_key_secret_arn``."""
    openai_api_key_secret_arn: str | None = None
    """Cloud: the Secrets Manager secret holding the model API key."""
    openai_base_url: str | None = None
    """Any OpenAI-compatible endpoint; unset means api.openai.com when a key is set."""
    default_model: str = "gpt-4.1-mini"
    """The model a run uses when its request names none."""
    model_timeout_s: float = 120.0
    """Upper bound for one model request; the Lambda's remaining time lowers it further."""
    model_max_retries: int = 2
    """The openai SDK's own retries (429, 5xx, connection errors) before the state machine's."""
    model_max_tokens: int = 4096
    """The most tokens one model reply may have."""

    tool_concurrency: int = Field(default=4, ge=1, le=40)
    """How many of one turn's tool calls run at once (the RunTools map's MaxConcurrency)."""

    # --- budgets: defaults and hard ceilings ---
    default_max_steps: int = 20
    """Model turns a run may take when its request sets no ``budgets.max_steps``."""
    max_steps_ceiling: int = 200
    """The most ``budgets.max_steps`` a run may ask for (more is refused)."""
    default_max_tool_calls: int = 100
    """Tool calls a run may make when its request sets no ``budgets.max_tool_calls``."""
    max_tool_calls_ceiling: int = 1000
    """The most ``budgets.max_tool_calls`` a run may ask for (more is refused)."""
    default_timeout_s: int = 900
    """Seconds a run may last when its request sets no ``budgets.timeout_s``."""
    timeout_s_ceiling: int = 3600
    """The most ``budgets.timeout_s`` a run may ask for (more is refused)."""
    default_approval_timeout_s: int = Field(default=3600, ge=1)
    """Seconds a tool call waits for a person's approval when the run sets no ``approval_timeout_s``."""
    approval_timeout_s_ceiling: int = Field(default=86_400, ge=1)
    """The most ``approval_timeout_s`` a run may ask for (more is refused)."""
    default_command_timeout_s: int = 60
    """Seconds a ``run_command`` call may last when the model gives no ``timeout_s``."""
    command_timeout_ceiling_s: int = 600
    """The most seconds one ``run_command`` call may last, whatever the model asks for."""

    # --- transcript ---
    output_limit_bytes: int = 16_384
    """stdout/stderr kept per event (head and tail); the rest is marked truncated."""
    max_input_file_bytes: int = 10 * 1024 * 1024
    """The largest input file a run may be given."""
    redact_values: list[SecretStr] = Field(default_factory=list)
    """Further secret values (JSON list) replaced in everything a run records, besides the model and E2B keys."""

    # --- sandbox options a run may ask for ---
    sandbox_env_allowlist: list[str] = Field(
        default_factory=lambda: ["TZ", "LANG", "LC_ALL", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "CI", "DEBUG"]
    )
    """Environment variable names a run may set in its sandbox (JSON list); any other is refused."""

    # --- repositories (``repository`` of a run) ---
    repository_default_depth: int = Field(default=50, ge=1)
    """Commits of history cloned when a run's ``repository.depth`` is unset."""
    repository_max_depth: int = Field(default=1000, ge=1)
    """The most ``repository.depth`` a run may ask for (more is refused)."""
    repository_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    """The largest repository a run may clone (its fetched objects, and again its checked-out tree)."""
    repository_max_changes_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """The largest ``changes.patch`` exported (and working tree read back from the sandbox) per run."""
    repository_secret_prefix: str = "sandcastle/git/"
    """Secrets a run may name in ``credentials_secret`` are ``<prefix><tenant>/…`` (the functions' grant is
    ``secret:<prefix>*``)."""
    repository_allow_local: bool = False
    """Local runtime only: also accept a path, or ``git://``/``http://`` on loopback, as a repository URL."""
    git_timeout_s: int = Field(default=120, ge=1)
    """Seconds one ``git`` command (clone, push) may take."""

    # --- artifacts and events ---
    max_artifacts: int = 200
    """Files copied from ``~/output/`` at most; the rest are listed as skipped."""
    max_artifact_bytes: int = 50 * 1024 * 1024
    """The largest ``~/output/`` file kept; larger ones are listed as skipped."""
    max_artifacts_total_bytes: int = 200 * 1024 * 1024
    """The most bytes of ``~/output/`` files kept per run; the rest are listed as skipped."""
    event_bus_name: str = "default"
    """Where the ``Run Finished`` event goes."""
    run_ttl_days: int = 30
    """Days a run and its transcript are kept (the table's TTL attribute ``expires_at``)."""

    # --- HTTP API ---
    max_active_runs_per_tenant: int = Field(default=10, ge=1)
    """Runs a tenant may have QUEUED or RUNNING at once; one more is refused with 429."""
    api_max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    """The largest request body the API accepts (413 beyond); larger input files go by S3 reference."""
    api_max_inline_file_bytes: int = Field(default=1024 * 1024, ge=1)
    """The largest input file given inline (base64) to the API (413 beyond); upload larger ones to S3."""
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    """How long an ``Idempotency-Key`` is remembered."""
    events_poll_interval_s: float = Field(default=0.2, gt=0, le=5)
    """How often a long-polling ``GET /runs/{id}/events?wait=`` looks for new events."""
    local_artifacts_base_url: str | None = None
    """Local runtime only: artifact links point at this gateway's ``/local-artifacts/`` instead of presigned S3."""
    local_link_secret: SecretStr | None = None
    """Local runtime only: the key local download and upload links are signed with (the runtime makes one)."""
    tenant_files_role_arn: str = ""
    """The role assumed, tagged with the tenant, to read a tenant's ``uploads/<tenant>/`` keys and sign upload URLs."""

    # --- triggers: the inbox, schedules, the reaper ---
    inbox_bucket: str = "sandcastle-inbox"
    """The bucket whose ``inbox/<tenant>/<task>/<file>`` objects start runs; results go under ``outbox/``."""
    inbox_max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """The largest uploaded file that may start a run (a task may set a lower cap)."""
    schedule_group_name: str = "default"
    """The EventBridge Scheduler group the API creates schedules in."""
    schedule_target_arn: str = ""
    """The function each schedule invokes (``OnScheduleFunction``)."""
    scheduler_role_arn: str = ""
    """The role EventBridge Scheduler assumes to invoke the target."""
    schedule_dead_letter_arn: str = ""
    """The SQS queue fires that fail after their retries go to."""
    reaper_grace_s: int = Field(default=60, ge=0)
    """The reaper leaves sandboxes younger than this alone: their run may not record them yet."""

    # --- a local E2B (sandcastle.e2b_server) ---
    e2b_api_url: str | None = None
    """Where the ``e2b`` backend sends E2B API calls instead of E2B's cloud (the local sandbox server)."""
    e2b_sandbox_url: str | None = None
    """Where the ``e2b`` backend sends envd (command and file) calls; the local sandbox server's URL too."""

    @model_validator(mode="after")
    def _resource_names_given_in_the_cloud(self) -> Settings:
        if self.aws_lambda_function_name:
            missing = [name.upper() for name in CLOUD_REQUIRED if name not in self.model_fields_set]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} must be set in function {self.aws_lambda_function_name}'s environment "
                    "(template.yaml Globals); a deployed function never falls back to a default resource name"
                )
        return self

    def required(self, name: str) -> str:
        """The value of the setting ``name``, or ``SettingMissing`` naming its variable when it is empty."""
        value = getattr(self, name)
        if not value:
            raise SettingMissing(f"{name.upper()} is not set: this function's environment needs it for what it does")
        return str(value)

    @property
    def sandbox_internet_available(self) -> bool:
        """True when the chosen sandbox backend can give a sandbox internet access."""
        return self.sandbox_backend == "e2b" and self.sandbox_internet

    @property
    def openai_configured(self) -> bool:
        """True when a real model endpoint is configured (key, secret or base URL)."""
        return bool(self.openai_api_key or self.openai_api_key_secret_arn or self.openai_base_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this container, read once."""
    return Settings()
