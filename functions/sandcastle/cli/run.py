"""``sandcastle run`` (through a running server, else the local runtime in this process) and ``cancel``."""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from sandcastle.cli import output
from sandcastle.cli.output import CommandFailed, Exit
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
    run.add_argument(
        "--repo",
        metavar="URL[@REF]",
        help="a git repository to check out in ~/repo (at REF: a branch, tag or commit); the change comes back "
        "as the artifacts changes.patch and changes.json",
    )
    run.add_argument("--push", metavar="BRANCH", help="with --repo: push the change as one commit to BRANCH")
    run.add_argument("--model", help="model name for the OpenAI-compatible endpoint")
    run.add_argument("--max-steps", type=int, help="model turns at most")
    run.add_argument("--max-tool-calls", type=int, help="tool calls at most")
    run.add_argument("--timeout", type=int, dest="timeout_s", help="seconds the run may take")
    run.add_argument("--template", help="the sandbox template (see `sandcastle templates build`); default: base")
    run.add_argument(
        "--local", action="store_true", help="always start the runtime in this process, even when a server runs"
    )
    run.set_defaults(command=_run_command)


def add_cancel_command(commands: Any) -> None:
    from sandcastle.cli.runs import cancel_command

    cancel = commands.add_parser("cancel", help="cancel a run (the same as `sandcastle runs cancel`)")
    cancel.add_argument("run_id")
    cancel.set_defaults(command=cancel_command)


def _run_command(args: argparse.Namespace) -> int:
    try:
        request = _build_request(args)
    except (InvalidRunRequest, ValidationError, OSError, ValueError) as error:
        return output.fail(describe(error), Exit.USAGE)

    from sandcastle.cli.transport import HttpTransport, LocalTransport
    from sandcastle.local.run_archive import archive_run
    from sandcastle.local.runtime import LocalRuntime, default_home

    if not args.local:
        from sandcastle.client import find_server

        server = find_server(default_home())
        if server is not None:
            problem = _configuration_differs(request, server[1])
            if problem:
                return output.fail(problem, Exit.USAGE)
            return _submit_and_follow(HttpTransport(server[0]), request)

    with LocalRuntime(log_file=default_home() / "logs" / "functions.log") as runtime:

        def archive(final: Run) -> None:
            from sandcastle.cli.printer import print_artifacts

            folder = archive_run(final, runtime.deps, runtime.home)
            print_artifacts(final, f"{folder / 'artifacts'}/", output.human())
            if final.status is RunStatus.RUNNING:
                execution = runtime.execution(final.run_id)
                print(f"execution ended {execution['status']} without ending the run", file=sys.stderr)
                raise CommandFailed(f"run {final.run_id} did not end", Exit.NOT_SUCCEEDED)

        return _submit_and_follow(LocalTransport(runtime), request, finished=archive)


def _submit_and_follow(
    transport: Transport, request: RunRequest, *, finished: Callable[[Run], None] | None = None
) -> int:
    """Submit and follow the run to its end (``runs.follow_run``); exit 0 on success."""
    from sandcastle.cli.runs import follow_run

    try:
        run = transport.submit(request)
    except transport.errors as error:
        from sandcastle.errors import ApiError

        caller = _callers_model_settings()
        if isinstance(error, ApiError) and error.field == "model" and caller:
            # a server we hold no state of (--url) refused for want of a model the caller has set up
            return output.fail(f"{transport.where}{error}; you set {' and '.join(caller)}: {_FIX}", Exit.USAGE)
        return output.failure(error, where=transport.where)
    return follow_run(
        transport,
        run,
        spinner=True,
        in_process=finished is not None,
        timeout_s=run.budgets.timeout_s + 120,
        finished=finished,
    )


_FIX = "pass --local to run in this process with your environment, or restart `sandcastle serve` with it set"


def _callers_model_settings() -> list[str]:
    import os

    return [name for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY") if os.environ.get(name)]


def _configuration_differs(request: RunRequest, state: dict[str, Any] | None) -> str | None:
    """Why a run through the running ``serve`` would not use the model this caller set up, if it would not.

    ``serve`` records whether it has a model (never its key) in its state file; a caller who set
    ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` expects that model to answer.
    """
    import os

    caller = _callers_model_settings()
    if request.playbook is not None or state is None or "model_configured" not in state or not caller:
        return None
    if not state["model_configured"]:
        problem = f"the running `sandcastle serve` ({state['url']}) has no model, but you set {' and '.join(caller)}"
    elif os.environ.get("OPENAI_BASE_URL", state.get("model_base_url")) != state.get("model_base_url"):
        problem = (
            f"the running `sandcastle serve` ({state['url']}) uses the model at {state.get('model_base_url')}, "
            "not your OPENAI_BASE_URL"
        )
    else:
        return None
    return f"{problem}: {_FIX}"


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
    if args.push and not args.repo:
        raise InvalidRunRequest("needs --repo: the repository to push from", field="--push")
    return RunRequest.model_validate(
        {
            "instructions": args.instructions,
            "files": files,
            "playbook": playbook,
            "model": args.model,
            "budgets": budgets,
            "source": "cli",
            **({"sandbox": {"template": args.template}} if args.template else {}),
            **({"repository": repository_option(args.repo)} if args.repo else {}),
            **({"push": {"branch": args.push}} if args.push else {}),
        }
    )


def repository_option(text: str) -> dict[str, str]:
    """``--repo URL[@REF]`` as a request's ``repository``: a trailing ``@REF`` is split off when what is left is
    still a whole URL (``git@host:path`` and ``https://user@host/…`` keep their ``@``); a directory becomes its
    absolute path."""
    url, ref = text, None
    head, at, tail = text.rpartition("@")
    if at and tail and ":" not in tail and _whole_url(head):
        url, ref = head, tail
    if "://" not in url and not _SCP_LIKE.match(url) and Path(url).is_dir():
        url = str(Path(url).resolve())
    return {"url": url, **({"ref": ref} if ref else {})}


_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")


def _whole_url(text: str) -> bool:
    if "://" in text:
        return bool(urlsplit(text).path.strip("/"))
    return bool(_SCP_LIKE.match(text)) or "/" in text or Path(text).is_dir()


def describe(error: Exception) -> str:
    """What went wrong, in a line: a pydantic validation reads as the API's issues do."""
    if isinstance(error, ValidationError):
        return describe_issues(error.errors())
    return str(error)
