"""The real adapters, built once per container from the settings.

Domain functions take a ``Dependencies`` bundle; tests pass one made of fakes. Each adapter is
built on first use, so a handler only imports what it touches: the submit path never imports
openai or e2b, ``run_tool`` never imports openai, ``agent_step`` never imports e2b.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from sandcastle.config import Settings, get_settings
from sandcastle.store.dynamo import RunStore
from sandcastle.store.objects import ObjectStore

if TYPE_CHECKING:
    from sandcastle.agent.base import Model
    from sandcastle.runs.models import Run
    from sandcastle.sandbox.base import SandboxProvider


class Dependencies:
    """Store, object store, sandbox provider, model and Step Functions client for the domain."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RunStore | None = None,
        objects: ObjectStore | None = None,
        sandboxes: SandboxProvider | None = None,
        model: Model | None = None,
        stepfunctions: Any | None = None,
    ) -> None:
        self.settings = settings
        for name, value in (
            ("store", store),
            ("objects", objects),
            ("sandboxes", sandboxes),
            ("_model", model),
            ("stepfunctions", stepfunctions),
        ):
            if value is not None:
                self.__dict__[name] = value

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.table_name, ttl_days=self.settings.run_ttl_days)

    @cached_property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.settings.artifacts_bucket)

    @cached_property
    def sandboxes(self) -> SandboxProvider:
        from sandcastle.sandbox import build_sandbox_provider

        return build_sandbox_provider(self.settings)

    @cached_property
    def stepfunctions(self) -> Any:
        import boto3

        return boto3.client("stepfunctions")

    @cached_property
    def _model(self) -> Model:
        from sandcastle.agent.openai_model import OpenAIModel

        return OpenAIModel.from_settings(self.settings)

    def model_for(self, run: Run) -> Model:
        """The policy a run was submitted with: its playbook, or the configured model endpoint."""
        if run.model_backend == "playbook":
            from sandcastle.agent.playbook import PlaybookModel

            return PlaybookModel(run.playbook or [])
        return self._model


_container: Dependencies | None = None


def get_dependencies() -> Dependencies:
    """This container's dependencies (built on first use, then reused across invocations)."""
    global _container
    if _container is None:
        _container = Dependencies(get_settings())
    return _container


def reset_dependencies() -> None:
    """Forget the container's settings and adapters (the local runtime calls this when it starts)."""
    global _container
    _container = None
    get_settings.cache_clear()
