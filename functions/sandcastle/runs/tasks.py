"""Saved tasks: named run templates a tenant keeps, that uploads and schedules start runs from."""

from __future__ import annotations

from sandcastle.errors import InvalidRunRequest, TaskNotFound
from sandcastle.runs.budget import resolve_budgets
from sandcastle.runs.records import Task, utcnow
from sandcastle.runs.repository import check_repository
from sandcastle.runs.requests import InputFile, RunRequest, TaskDefinition
from sandcastle.wiring import Dependencies

_RUN_FIELDS = set(TaskDefinition.model_fields) - {"max_input_bytes", "allow_empty_input"}
"""What of a task goes into its runs' requests (the rest governs uploads)."""


def put_task(tenant: str, name: str, definition: TaskDefinition, deps: Dependencies) -> Task:
    """Save (or replace) the tenant's task ``name``; its budgets are checked against the ceilings now."""
    resolve_budgets(definition.budgets, deps.settings)  # InvalidRunRequest naming the budget
    _check_sandbox_env(definition, deps)
    check_repository(definition.repository, definition.push, tenant, deps)
    now = utcnow()
    existing = deps.tasks.get(tenant, name)
    task = Task(
        **definition.model_dump(),
        name=name,
        tenant=tenant,
        created_at=existing.created_at if existing else now,
        updated_at=now,
    )
    deps.tasks.put(task)
    return task


def save_task_hint(name: str) -> str:
    """How to save a task, for a message that found none: the CLI command, and the API call behind it."""
    return f"`sandcastle tasks put {name} --instructions ...` (PUT /tasks/{name})"


def get_task(tenant: str, name: str, deps: Dependencies) -> Task:
    """The tenant's task, or ``TaskNotFound``."""
    task = deps.tasks.get(tenant, name)
    if task is None:
        raise TaskNotFound(f"no task named {name!r}; save it first: {save_task_hint(name)}")
    return task


def list_tasks(tenant: str, deps: Dependencies) -> list[Task]:
    return deps.tasks.list(tenant)


def delete_task(tenant: str, name: str, deps: Dependencies) -> None:
    """Delete the tenant's task, or ``TaskNotFound``. Schedules naming it then record their fires as failed."""
    if not deps.tasks.delete(tenant, name):
        raise TaskNotFound(f"no task named {name!r}")


def run_request(
    definition: TaskDefinition, *, tenant: str, source: str, files: list[InputFile] | None = None
) -> RunRequest:
    """The run request a task (or an inline run template) makes for ``tenant``."""
    return RunRequest.model_validate(
        {
            **definition.model_dump(include=_RUN_FIELDS, exclude_none=True),
            "tenant": tenant,
            "source": source,
            "files": [file.model_dump(exclude_none=True) for file in files or []],
        }
    )


def _check_sandbox_env(definition: TaskDefinition, deps: Dependencies) -> None:
    allowed = set(deps.settings.sandbox_env_allowlist)
    for name in definition.sandbox.env:
        if name not in allowed:
            raise InvalidRunRequest(
                f"{name} is not an allowed sandbox variable; allowed: {', '.join(sorted(allowed)) or 'none'}",
                field=f"sandbox.env.{name}",
            )
