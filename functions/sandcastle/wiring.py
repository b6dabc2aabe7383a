"""The real adapters, built once per container from the settings.

Domain functions take a ``Dependencies`` bundle; tests pass one made of fakes. Handlers are made by
``make_handler(deps)`` in each handler module (``deps``: a ``DependenciesFactory``, this container's
``get_dependencies`` by default), so a test builds a handler on its own bundle instead of patching
this module; the API's routes read the bundle their request was resolved with (``using``). Each adapter is
built on first use, so a handler only imports what it touches: the submit path never imports
openai or e2b, ``run_tool`` never imports openai, ``agent_step`` imports e2b only to run a tool call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from pydantic import SecretStr

from sandcastle.config import Settings, get_settings
from sandcastle.redaction import Redactor, configured_secrets
from sandcastle.store.dynamo import RunStore
from sandcastle.store.objects import ObjectStore

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from sandcastle.agent.base import Model
    from sandcastle.runs.records import Run
    from sandcastle.sandbox.base import SandboxProvider
    from sandcastle.store.downloads import DownloadLinks
    from sandcastle.store.event_bus import EventBus
    from sandcastle.store.executions import Executions
    from sandcastle.store.schedules import EventBridgeSchedules, ScheduleStore
    from sandcastle.store.tasks import TaskStore
    from sandcastle.store.tenant_files import TenantFiles


class Dependencies:
    """Everything the domain talks to, each a constructor parameter; what is not given is built from the
    settings on first use (the real adapter), so tests pass fakes and a handler builds only what it uses."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RunStore | None = None,
        objects: ObjectStore | None = None,
        sandboxes: SandboxProvider | None = None,
        model: Model | None = None,
        executions: Executions | None = None,
        redactor: Redactor | None = None,
        events: EventBus | None = None,
        tenant_files: TenantFiles | None = None,
    ) -> None:
        self.settings = settings
        # A cached_property is not a data descriptor: an instance attribute set here takes its place.
        if store is not None:
            self.store = store
        if objects is not None:
            self.objects = objects
        if sandboxes is not None:
            self.sandboxes = sandboxes
        if model is not None:
            self._model = model
        if executions is not None:
            self.executions = executions
        if redactor is not None:
            self.redactor = redactor
        if events is not None:
            self.events = events
        if tenant_files is not None:
            self.tenant_files = tenant_files

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.table_name, ttl_days=self.settings.run_ttl_days)

    @cached_property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.settings.artifacts_bucket)

    @cached_property
    def redactor(self) -> Redactor:
        """Built with the secrets configured here; the adapters add those they read from Secrets Manager."""
        return Redactor(configured_secrets(self.settings))

    @cached_property
    def sandboxes(self) -> SandboxProvider:
        from sandcastle.sandbox import build_sandbox_provider

        return build_sandbox_provider(self.settings, self.redactor)

    @cached_property
    def events(self) -> EventBus:
        """The EventBridge client ``Run Finished`` events are put with."""
        import boto3

        client: EventBus = boto3.client("events")
        return client

    @cached_property
    def executions(self) -> Executions:
        """The agent-run state machine's executions, one per run."""
        from sandcastle.store.executions import StepFunctionsExecutions

        return StepFunctionsExecutions(self.settings.required("state_machine_arn"))

    @cached_property
    def idempotency_layer(self) -> DynamoDBPersistenceLayer:
        """Powertools' persistence of ``Idempotency-Key`` records (built once: it keeps its boto3 client)."""
        from sandcastle.store.idempotency import idempotency_layer

        return idempotency_layer(self.settings.table_name)

    @cached_property
    def _model(self) -> Model:
        from sandcastle.agent.openai_model import OpenAIModel

        return OpenAIModel.from_settings(self.settings, self.redactor)

    def model_for(self, run: Run) -> Model:
        """The policy a run was submitted with: its playbook, or the configured model endpoint."""
        if run.model_backend == "playbook":
            from sandcastle.agent.playbook import PlaybookModel

            return PlaybookModel(run.playbook or [])
        return self._model

    # --- a tenant's own files: uploads and links ---

    @cached_property
    def tenant_files(self) -> TenantFiles:
        """``uploads/<tenant>/`` through tenant-scoped STS sessions (IAM confines each tenant)."""
        from sandcastle.store.tenant_files import TenantFiles

        settings = self.settings
        return TenantFiles(
            settings.artifacts_bucket, settings.required("tenant_files_role_arn"), region=settings.aws_region
        )

    @cached_property
    def upload_links(self) -> UploadLinks:
        """Upload URLs: presigned with a tenant-scoped session, or the local gateway's signed links."""
        settings = self.settings
        if settings.local_artifacts_base_url:
            from sandcastle.store.downloads import LocalUploadLinks

            return LocalUploadLinks(settings.local_artifacts_base_url, _secret(settings.local_link_secret))
        return CloudUploadLinks(self.tenant_files)

    def download_links(self) -> DownloadLinks:
        from sandcastle.store.downloads import DownloadLinks

        settings = self.settings
        return DownloadLinks(
            self.objects.bucket,
            local_base_url=settings.local_artifacts_base_url,
            local_secret=_secret(settings.local_link_secret),
        )

    # --- triggers: the inbox bucket, saved tasks, schedules ---

    @cached_property
    def inbox(self) -> ObjectStore:
        """The inbox bucket: uploads under ``inbox/`` start runs, results go under ``outbox/``."""
        return ObjectStore(self.settings.inbox_bucket)

    @cached_property
    def tasks(self) -> TaskStore:
        from sandcastle.store.tasks import TaskStore

        return TaskStore(self.settings.table_name)

    @cached_property
    def schedules(self) -> ScheduleStore:
        from sandcastle.store.schedules import ScheduleStore

        return ScheduleStore(self.settings.table_name)

    @cached_property
    def schedule_triggers(self) -> EventBridgeSchedules:
        """EventBridge Scheduler: the schedules that fire ``OnScheduleFunction``."""
        from sandcastle.store.schedules import EventBridgeSchedules

        settings = self.settings
        return EventBridgeSchedules(
            group=settings.schedule_group_name,
            target_arn=settings.required("schedule_target_arn"),
            role_arn=settings.required("scheduler_role_arn"),
            dead_letter_arn=settings.required("schedule_dead_letter_arn"),
        )


class UploadLinks(Protocol):
    def put_url(self, tenant: str, key: str, *, size: int, content_type: str, expires_s: int) -> str: ...


class CloudUploadLinks:
    """Presigned ``PutObject`` URLs signed by the tenant's scoped session."""

    def __init__(self, tenant_files: TenantFiles) -> None:
        self._files = tenant_files

    def put_url(self, tenant: str, key: str, *, size: int, content_type: str, expires_s: int) -> str:
        return self._files.presign_put(tenant, key, size=size, content_type=content_type, expires_s=expires_s)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


DependenciesFactory = Callable[[], Dependencies]
"""What a handler is made with: called once per invocation for the dependencies it runs on."""

_container: Dependencies | None = None
_in_use: ContextVar[Dependencies | None] = ContextVar("sandcastle_dependencies", default=None)


@contextmanager
def using(deps: Dependencies) -> Iterator[Dependencies]:
    """While the block runs (on this thread or task), ``get_dependencies()`` answers ``deps``."""
    token = _in_use.set(deps)
    try:
        yield deps
    finally:
        _in_use.reset(token)


def get_dependencies() -> Dependencies:
    """The dependencies in ``using``, else this container's (built on first use, then reused across invocations)."""
    global _container
    in_use = _in_use.get()
    if in_use is not None:
        return in_use
    if _container is None:
        _container = Dependencies(get_settings())
    return _container


def reset_dependencies() -> None:
    """Forget the container's settings and adapters (the local runtime calls this when it starts)."""
    global _container
    _container = None
    get_settings.cache_clear()
