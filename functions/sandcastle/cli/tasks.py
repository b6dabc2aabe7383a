"""``sandcastle tasks`` and ``schedules``: saved run templates and the schedules that run them, over the API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sandcastle.cli import output
from sandcastle.cli.remote import call


def add_tasks_commands(commands: Any) -> None:
    tasks = commands.add_parser(
        "tasks", help="save, show, list or delete tasks (run templates uploads and schedules use)"
    )
    task_commands = tasks.add_subparsers(required=True, metavar="ACTION")
    put = task_commands.add_parser("put", help="save a task (replacing one of the same name)")
    put.add_argument("name", help="the task's name (letters, digits, _ . -)")
    put.add_argument("--instructions", required=True, help="what the agent should do")
    put.add_argument("--playbook", type=Path, metavar="FILE", help="a JSON list of tool calls instead of a model")
    put.add_argument("--model", help="model name for the OpenAI-compatible endpoint")
    put.add_argument("--max-steps", type=int, help="model turns at most")
    put.add_argument("--max-tool-calls", type=int, help="tool calls at most")
    put.add_argument("--timeout", type=int, dest="timeout_s", help="seconds a run may take")
    put.add_argument("--max-input-bytes", type=int, help="refuse uploads larger than this")
    put.add_argument("--allow-empty", action="store_true", help="let an empty uploaded file start a run")
    put.set_defaults(command=_tasks_put_command)
    for action, helptext in (("get", "show a task"), ("delete", "delete a task")):
        sub = task_commands.add_parser(action, help=helptext)
        sub.add_argument("name")
        sub.set_defaults(command=_tasks_command, action=action)
    task_commands.add_parser("list", help="list the tasks").set_defaults(command=_tasks_command, action="list")

    schedules = commands.add_parser("schedules", help="create, list or delete schedules that run a task")
    schedule_commands = schedules.add_subparsers(required=True, metavar="ACTION")
    create = schedule_commands.add_parser("create", help="run a saved task on a cron or rate expression")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='AWS cron fields, e.g. "0 9 ? * MON-FRI *" (min hour day month weekday year)')
    when.add_argument("--rate", help='e.g. "5 minutes", "1 hour", "2 days"')
    when.add_argument("--expression", help="a full expression: cron(...), rate(...) or at(yyyy-mm-ddThh:mm:ss)")
    create.add_argument("--task", required=True, help="the saved task to run")
    create.add_argument("--timezone", default="UTC", help="IANA time zone of the expression (default UTC)")
    create.add_argument("--overlap", choices=["skip", "allow"], default="skip", help="while the last run goes on")
    create.set_defaults(command=_schedules_create_command)
    schedule_commands.add_parser("list", help="list the schedules").set_defaults(command=_schedules_command)
    delete = schedule_commands.add_parser("delete", help="delete a schedule")
    delete.add_argument("schedule_id")
    delete.set_defaults(command=_schedules_command)


def _tasks_put_command(args: argparse.Namespace) -> int:
    definition: dict[str, Any] = {"instructions": args.instructions, "allow_empty_input": args.allow_empty}
    if args.playbook:
        try:
            definition["playbook"] = json.loads(args.playbook.read_text())
        except (OSError, json.JSONDecodeError) as error:
            return output.fail(f"--playbook: {error}", output.Exit.USAGE)
    if args.model:
        definition["model"] = args.model
    if args.max_input_bytes:
        definition["max_input_bytes"] = args.max_input_bytes
    budgets = {"max_steps": args.max_steps, "max_tool_calls": args.max_tool_calls, "timeout_s": args.timeout_s}
    definition["budgets"] = {name: value for name, value in budgets.items() if value is not None}
    code, task = call("PUT", f"/tasks/{quote(args.name, safe='')}", definition)
    if task is not None:
        output.data(task, [f"saved task {task['name']} (tenant {task['tenant']})"])
    return code


def _tasks_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        code, answer = call("GET", "/tasks")
        if answer is not None:
            rows = [
                (
                    task["name"],
                    "playbook" if task.get("playbook") else task.get("model") or "model",
                    task["instructions"][:60],
                )
                for task in answer.get("tasks", [])
            ]
            output.table(answer, ("TASK", "RUNS WITH", "INSTRUCTIONS"), rows)
        return code
    path = f"/tasks/{quote(args.name, safe='')}"
    if args.action == "delete":
        code, _ = call("DELETE", path)
        if code == 0:
            output.data({"deleted": args.name}, [f"deleted task {args.name}"])
        return code
    code, task = call("GET", path)
    if task is not None:
        output.data(task, json.dumps(task, indent=2).splitlines())
    return code


def _schedules_create_command(args: argparse.Namespace) -> int:
    expression = args.expression or (f"cron({args.cron})" if args.cron else f"rate({args.rate})")
    body = {"expression": expression, "timezone": args.timezone, "task": args.task, "overlap": args.overlap}
    code, schedule = call("POST", "/schedules", body)
    if schedule is not None:
        line = f"schedule {schedule['schedule_id']}: {schedule['expression']} ({schedule['timezone']}) → {args.task}"
        output.data(schedule, [line])
    return code


def _schedules_command(args: argparse.Namespace) -> int:
    if getattr(args, "schedule_id", None):
        code, _ = call("DELETE", f"/schedules/{quote(args.schedule_id, safe='')}")
        if code == 0:
            output.data({"deleted": args.schedule_id}, [f"deleted schedule {args.schedule_id}"])
        return code
    code, answer = call("GET", "/schedules")
    if answer is not None:
        rows = [
            (
                schedule["schedule_id"],
                schedule["expression"],
                schedule["timezone"],
                schedule.get("task") or "inline",
                schedule.get("last_run_id"),
                len(schedule.get("skips") or []),
            )
            for schedule in answer.get("schedules", [])
        ]
        output.table(answer, ("SCHEDULE", "EXPRESSION", "TIME ZONE", "TASK", "LAST RUN", "SKIPS"), rows)
    return code
