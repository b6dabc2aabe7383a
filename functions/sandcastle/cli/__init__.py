"""``sandcastle``: run agents on the embedded local runtime from a terminal.

sandcastle run "Count the rows of ~/input/data.csv" --file data.csv
sandcastle run "Analyse the sales" --file sales.csv --playbook playbook.json

One module per concept: ``run`` (run, cancel), ``runs`` (list, get, logs, cancel), ``serve`` (serve,
sandbox-server), ``keys``, ``tasks`` (tasks, schedules), ``inbox`` (upload), ``reap``, ``artifacts``,
``completion``, ``templates``, ``approvals`` (approvals, approve, reject,
message); ``transport`` holds the two ways to submit and follow a run (in process, over HTTP) and
the one loop that follows it; ``printer`` and ``spinner`` are what the terminal shows; ``output`` is
what every command prints and exits with (the exit-code table, ``--json``). The global options
(``--json``, ``--url``, ``--api-key``, ``--profile``, ``--region``) are on every command's parser
(``CommandParser``): a new command gets them by being added to ``commands``. Each command imports
what it runs when it runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from sandcastle.cli import (
    approvals,
    artifacts,
    completion,
    inbox,
    keys,
    output,
    reap,
    run,
    runs,
    serve,
    tasks,
    templates,
)


def main(argv: list[str] | None = None) -> int:
    """Parse, then run the command; its exit code is ``cli.output.Exit``'s table, whatever it raised."""
    return output.run_command(lambda: _dispatch(argv))


def _dispatch(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    output.configure(json_output=getattr(args, "json", False))
    _apply_global_options(args)
    code: int = args.command(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandcastle",
        description="Run code-writing AI agents in sandboxes.",
        epilog="exit codes: 0 succeeded, 1 the run did not succeed, 2 usage error, "
        "3 cannot reach the server or not authorised, 130 interrupted",
        parents=[_global_options()],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=CommandParser)
    run.add_run_command(commands)
    runs.add_runs_command(commands)
    serve.add_serve_command(commands)
    keys.add_keys_command(commands)
    run.add_cancel_command(commands)
    tasks.add_tasks_commands(commands)
    inbox.add_upload_command(commands)
    reap.add_reap_command(commands)
    serve.add_sandbox_server_command(commands)
    artifacts.add_artifacts_command(commands)
    templates.add_templates_command(commands)
    approvals.add_approval_commands(commands)
    completion.add_completion_command(commands)
    return parser


class CommandParser(argparse.ArgumentParser):
    """Every (sub)command's parser: takes the global options too (before or after the command's name),
    and a command's own option of the same name wins over the global one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parents", [_global_options()])
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option not given after the command keeps what was given before it.
    options = argparse.ArgumentParser(add_help=False)
    flag = options.add_argument
    flag("--json", action="store_true", default=argparse.SUPPRESS, help="print only JSON on stdout (words to stderr)")
    flag("--url", default=argparse.SUPPRESS, help="the API to talk to (default: $SANDCASTLE_URL, else a local serve)")
    flag("--api-key", default=argparse.SUPPRESS, help="the API key (default: $SANDCASTLE_API_KEY, else serve's)")
    flag("--profile", default=argparse.SUPPRESS, help="AWS profile, for commands that talk to AWS (--stack, --table)")
    flag("--region", default=argparse.SUPPRESS, help="AWS region, for commands that talk to AWS (--stack, --table)")
    return options


def _apply_global_options(args: argparse.Namespace) -> None:
    """The flags win over the environment they stand for; everything downstream reads the environment."""
    for flag, variable in (
        ("url", "SANDCASTLE_URL"),
        ("api_key", "SANDCASTLE_API_KEY"),
        ("profile", "AWS_PROFILE"),
        ("region", "AWS_DEFAULT_REGION"),
    ):
        value = getattr(args, flag, None)
        if value:
            os.environ[variable] = value
    if getattr(args, "region", None):
        os.environ["AWS_REGION"] = args.region


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandcastle")
    except PackageNotFoundError:
        return "unknown"
