"""The routes of saved tasks and schedules: a Powertools ``Router`` the API's resolver includes.

The tenant comes from the authorizer's context through the API's own helper, and errors take the
API's one shape (``api/errors.py``): an unknown task or schedule — or another tenant's — is a 404.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path
from pydantic import BaseModel

from sandcastle.api import examples as ex
from sandcastle.api.errors import error_response
from sandcastle.api.responses import error_contents, json_content, ok, principal
from sandcastle.errors import ScheduleNotFound, TaskNotFound
from sandcastle.runs.records import Schedule, Task
from sandcastle.runs.requests import ScheduleRequest, TaskDefinition
from sandcastle.runs.schedules import create_schedule, delete_schedule, get_schedule, list_schedules
from sandcastle.runs.tasks import delete_task, get_task, list_tasks, put_task
from sandcastle.wiring import get_dependencies

router = Router()

TaskNamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="The task's name (letters, digits, _ . -).")
]
ScheduleIdPath = Annotated[str, Path(min_length=1, max_length=64, description="The schedule's id (`sch-...`).")]


class TaskList(BaseModel):
    tasks: list[Task]


class ScheduleList(BaseModel):
    schedules: list[Schedule]


def _tenant() -> str:
    return principal(router.current_event.raw_event)[0]


def _no_content() -> Response:
    return Response(status_code=HTTPStatus.NO_CONTENT.value, content_type=content_types.APPLICATION_JSON, body="")


# ---------------------------------------------------------------- tasks


@router.put(
    "/tasks/<name>",
    operation_id="putTask",
    tags=["tasks"],
    summary="Save a task",
    description="A named run template (instructions or playbook, model, budgets, sandbox options). An upload "
    "to `inbox/<tenant>/<name>/<file>` in the inbox bucket, or a schedule, starts a run of it.",
    responses={
        200: json_content(Task, "The saved task.", example=ex.TASK),
        **error_contents(HTTPStatus.UNPROCESSABLE_ENTITY),
    },
)
def put_task_route(
    name: TaskNamePath,
    definition: Annotated[TaskDefinition, Body(openapi_examples=ex.body_examples(task=ex.TASK_DEFINITION))],
) -> Response[Task]:
    return ok(put_task(_tenant(), name, definition, get_dependencies()))


@router.get(
    "/tasks",
    operation_id="listTasks",
    tags=["tasks"],
    summary="List tasks",
    description="The tenant's saved tasks.",
    responses={200: json_content(TaskList, "The tasks.", example=TaskList(tasks=[ex.TASK]))},
)
def list_tasks_route() -> Response[TaskList]:
    return ok(TaskList(tasks=list_tasks(_tenant(), get_dependencies())))


@router.get(
    "/tasks/<name>",
    operation_id="getTask",
    tags=["tasks"],
    summary="Get a task",
    responses={200: json_content(Task, "The task.", example=ex.TASK), **error_contents(HTTPStatus.NOT_FOUND)},
)
def get_task_route(name: TaskNamePath) -> Response[Task]:
    return ok(get_task(_tenant(), name, get_dependencies()))


@router.delete(
    "/tasks/<name>",
    operation_id="deleteTask",
    tags=["tasks"],
    summary="Delete a task",
    responses={204: {"description": "Deleted."}, **error_contents(HTTPStatus.NOT_FOUND)},
)
def delete_task_route(name: TaskNamePath):  # no return annotation: 204, no body
    delete_task(_tenant(), name, get_dependencies())
    return _no_content()


# ---------------------------------------------------------------- schedules


@router.post(
    "/schedules",
    operation_id="createSchedule",
    tags=["schedules"],
    summary="Create a schedule",
    description="Runs a saved task (`task`) or an inline run template (`run`) on a `cron(...)`, `rate(...)` or "
    "`at(...)` expression in a time zone. Each fire starts one run; with `overlap: skip` (the default) a fire "
    "while the previous run is still going is skipped and recorded on the schedule.",
    responses={
        201: json_content(Schedule, "The schedule.", example=ex.SCHEDULE),
        **error_contents(HTTPStatus.UNPROCESSABLE_ENTITY),
    },
)
def post_schedule_route(
    request: Annotated[ScheduleRequest, Body(openapi_examples=ex.body_examples(daily=ex.SCHEDULE_REQUEST))],
) -> Response[Schedule]:
    return ok(create_schedule(_tenant(), request, get_dependencies()), HTTPStatus.CREATED)


@router.get(
    "/schedules",
    operation_id="listSchedules",
    tags=["schedules"],
    summary="List schedules",
    description="The tenant's schedules, each with its latest run and recent skips.",
    responses={200: json_content(ScheduleList, "The schedules.", example=ScheduleList(schedules=[ex.SCHEDULE]))},
)
def list_schedules_route() -> Response[ScheduleList]:
    return ok(ScheduleList(schedules=list_schedules(_tenant(), get_dependencies())))


@router.get(
    "/schedules/<schedule_id>",
    operation_id="getSchedule",
    tags=["schedules"],
    summary="Get a schedule",
    responses={
        200: json_content(Schedule, "The schedule.", example=ex.SCHEDULE),
        **error_contents(HTTPStatus.NOT_FOUND),
    },
)
def get_schedule_route(schedule_id: ScheduleIdPath) -> Response[Schedule]:
    return ok(get_schedule(_tenant(), schedule_id, get_dependencies()))


@router.delete(
    "/schedules/<schedule_id>",
    operation_id="deleteSchedule",
    tags=["schedules"],
    summary="Delete a schedule",
    responses={204: {"description": "Deleted."}, **error_contents(HTTPStatus.NOT_FOUND)},
)
def delete_schedule_route(schedule_id: ScheduleIdPath):  # no return annotation: 204, no body
    delete_schedule(_tenant(), schedule_id, get_dependencies())
    return _no_content()


# ---------------------------------------------------------------- errors


@router.exception_handler(TaskNotFound)
def _task_not_found(error: TaskNotFound) -> Response:
    return error_response(HTTPStatus.NOT_FOUND, "not_found", str(error))


@router.exception_handler(ScheduleNotFound)
def _schedule_not_found(error: ScheduleNotFound) -> Response:
    return error_response(HTTPStatus.NOT_FOUND, "not_found", str(error))
