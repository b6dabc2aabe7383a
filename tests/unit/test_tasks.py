"""Saved tasks: stored per tenant, checked on save, turned into run requests."""

from __future__ import annotations

import pytest

from sandcastle.errors import InvalidRunRequest, TaskNotFound
from sandcastle.runs.requests import Budgets, PlaybookCall, TaskDefinition
from sandcastle.runs.tasks import delete_task, get_task, list_tasks, put_task, run_request
from sandcastle.wiring import Dependencies

PLAYBOOK = [PlaybookCall(tool="run_command", arguments={"command": "ls"})]


def test_a_task_is_saved_listed_replaced_and_deleted(deps: Dependencies) -> None:
    first = put_task("acme", "report", TaskDefinition(instructions="Report", playbook=PLAYBOOK), deps)
    second = put_task("acme", "report", TaskDefinition(instructions="Report v2", playbook=PLAYBOOK), deps)

    assert get_task("acme", "report", deps).instructions == "Report v2"
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert [task.name for task in list_tasks("acme", deps)] == ["report"]
    assert list_tasks("other", deps) == []
    with pytest.raises(TaskNotFound):
        get_task("other", "report", deps)  # another tenant's task is not there

    delete_task("acme", "report", deps)
    with pytest.raises(TaskNotFound, match="no task named 'report'"):
        delete_task("acme", "report", deps)


def test_budgets_over_the_ceiling_are_refused_when_saving(deps: Dependencies) -> None:
    definition = TaskDefinition(instructions="x", budgets=Budgets(max_steps=10_000))

    with pytest.raises(InvalidRunRequest, match="budgets.max_steps"):
        put_task("acme", "greedy", definition, deps)


def test_a_task_makes_the_run_request_of_its_tenant() -> None:
    definition = TaskDefinition(instructions="Go", playbook=PLAYBOOK, max_input_bytes=5, allow_empty_input=True)

    request = run_request(definition, tenant="acme", source="schedule")

    assert (request.tenant, request.source, request.instructions) == ("acme", "schedule", "Go")
    assert request.playbook == PLAYBOOK and request.files == []
