"""``sandcastle run`` (through a running server, else the local runtime in this process) and ``cancel``."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.records import Run, RunStatus
from sandcastle.runs.requests import RunRequest
from sandcastle.validation import describe_issues

if TYPE_CHECKING:
    from sandcastle.cli.transport import Transport


def add_run_command(commands: Any) -> None:
    run = commands.add_parser("run", help="run an agent on the local runtime and follow it")
    run.add_argument("instructions", help="what the agent should do")
    run.add_argument(
        "--file",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="an input file, placed at ~/input/<name> in the sandbox (repeatable)",
    )
    run.add_argument(
        "--playbook",
        type=Path,
        metavar="FILE",
        help="a JSON list of tool calls ({tool, arguments}) to execute instead of asking a model",
    )
    run.add_argument("--model", help="model name for the OpenAI-compatible endpoint")
    run.add_argument("--max-steps", type=int, help="model turns at most")
    run.add_argument("--max-tool-calls", type=int, help="tool calls at most")
    run.add_argument("--timeout", type=int, dest="timeout_s", help="seconds the run may take")
    run.add_argument("--template", help="the sandbox template (see `sandcastle templates build`); default: base")
    run.add_argument("--json", action="store_true", help="print the run and its transcript as JSON at the end")
    run.add_argument(
        "--local", action="store_true", help="always start the runtime in this process, even when a server runs"
    )
    run.set_defaults(command=_run_command)


def add_cancel_command(commands: Any) -> None:
    cancel = commands.add_parser("cancel", help="cancel a run (through a running serve or SANDCASTLE_URL)")
    cancel.add_argument("run_id")
    cancel.set_defaults(command=_cancel_command)


def _run_command(args: argparse.Namespace) -> int:
    try:
        request = _build_request(args)
    except (InvalidRunRequest, ValidationError, OSError, ValueError) as error:
        print(f"sandcastle: {describe(error)}", file=sys.stderr)
        return 2

    from sandcastle.cli.transport import HttpTransport, LocalTransport
    from sandcastle.local.run_archive import archive_run
    from sandcastle.local.runtime import LocalRuntime, default_home

    if not args.local:
        from sandcastle.client import find_server

        server = find_server(default_home())
        if server is not None:
            return _submit_and_follow(HttpTransport(server[0]), request, args)

    with LocalRuntime(log_file=default_home() / "logs" / "functions.log") as runtime:

        def archive(final: Run) -> None:
            from sandcastle.cli.printer import print_artifacts

            folder = archive_run(final, runtime.deps, runtime.home)
            print_artifacts(final, f"{folder / 'artifacts'}/")
            if final.status is RunStatus.RUNNING:
                execution = runtime.execution(final.run_id)
                print(f"execution ended {execution['status']} without ending the run", file=sys.stderr)

        return _submit_and_follow(LocalTransport(runtime), request, args, finished=archive)


def _submit_and_follow(
    transport: Transport,
    request: RunRequest,
    args: argparse.Namespace,
    *,
    finished: Callable[[Run], None] | None = None,
) -> int:
    """Submit, show the transcript to its end, then ``finished`` and the JSON if asked; exit 0 on success."""
    from sandcastle.cli.transport import watch

    try:
        run = transport.submit(request)
        events = watch(transport, run, spinner=True, timeout_s=run.budgets.timeout_s + 120)
        final = transport.get_run(run.run_id)
    except transport.errors as error:
        print(f"sandcastle: {transport.where}{describe(error)}", file=sys.stderr)
        return 2
    if finished is not None:
        finished(final)
    if args.json:
        payload = {"run": final.model_dump(mode="json"), "events": [e.model_dump(mode="json") for e in events]}
        print(json.dumps(payload, indent=2))
    return 0 if final.status is RunStatus.SUCCEEDED else 1


def _build_request(args: argparse.Namespace) -> RunRequest:
    files = []
    for path in args.file:
        if not path.is_file():
            raise InvalidRunRequest(f"{path}: no such file", field="--file")
        files.append({"name": path.name, "content_base64": base64.b64encode(path.read_bytes()).decode()})
    playbook = None
    if args.playbook:
        if not args.playbook.is_file():
            raise InvalidRunRequest(f"{args.playbook}: no such file", field="--playbook")
        try:
            playbook = json.loads(args.playbook.read_text())
        except json.JSONDecodeError as error:
            raise InvalidRunRequest(f"{args.playbook} is not valid JSON: {error}", field="--playbook") from error
    budgets = {
        name: value
        for name, value in (
            ("max_steps", args.max_steps),
            ("max_tool_calls", args.max_tool_calls),
            ("timeout_s", args.timeout_s),
        )
        if value is not None
    }
    return RunRequest.model_validate(
        {
            "instructions": args.instructions,
            "files": files,
            "playbook": playbook,
            "model": args.model,
            "budgets": budgets,
            "source": "cli",
            **({"sandbox": {"template": args.template}} if args.template else {}),
        }
    )


def describe(error: Exception) -> str:
    """What went wrong, in a line: a pydantic validation reads as the API's issues do."""
    if isinstance(error, ValidationError):
        return describe_issues(error.errors())
    return str(error)


def _cancel_command(args: argparse.Namespace) -> int:
    from sandcastle.client import ApiError, find_server
    from sandcastle.local.runtime import default_home

    server = find_server(default_home())
    if server is None:
        print("sandcastle: no server: start `sandcastle serve` or set SANDCASTLE_URL", file=sys.stderr)
        return 2
    try:
        run = server[0].cancel(args.run_id)
    except (ApiError, OSError) as error:
        print(f"sandcastle: {error}", file=sys.stderr)
        return 1
    print(f"run {run['run_id']}: {run['status']}")
    return 0
