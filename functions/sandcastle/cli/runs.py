"""``sandcastle runs list | get | logs [-f] | cancel``: runs of a running API, and following one to its end."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandcastle.cli import output
from sandcastle.cli.output import Exit

if TYPE_CHECKING:
    from sandcastle.cli.transport import Transport
    from sandcastle.runs.records import Run


def add_runs_command(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list, show, follow or cancel runs (of a running serve or --url)")
    actions = runs.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the newest runs first")
    listing.add_argument("--status", help="only runs in this status (RUNNING, SUCCEEDED, FAILED, ...)")
    listing.add_argument("--limit", type=int, default=20, help="runs at most (default 20, at most 100)")
    listing.set_defaults(command=_list_command)
    get = actions.add_parser("get", help="a run's status, usage, answer and artifacts")
    get.add_argument("run_id")
    get.set_defaults(command=_get_command)
    logs = actions.add_parser("logs", help="a run's transcript (-f: follow it until the run ends)")
    logs.add_argument("run_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    logs.set_defaults(command=_logs_command)
    cancel = actions.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    cancel.set_defaults(command=cancel_command)


def _transport(*, wait_s: float = 20) -> Transport:
    from sandcastle.cli.remote import api_client
    from sandcastle.cli.transport import HttpTransport

    return HttpTransport(api_client(), wait_s=wait_s)


def _list_command(args: argparse.Namespace) -> int:
    from sandcastle.cli.remote import api_client

    page = api_client().list_runs(limit=args.limit, status=args.status and args.status.upper())
    rows = [
        (
            run["run_id"],
            run["status"],
            run["source"],
            run.get("model") or run["model_backend"],
            run["created_at"][:19].replace("T", " "),
            _duration(run),
            run["usage"]["steps"],
            run["usage"]["tool_calls"],
        )
        for run in page["runs"]
    ]
    output.table(page, ("RUN", "STATUS", "SOURCE", "MODEL", "CREATED", "DURATION", "STEPS", "TOOLS"), rows)
    return 0


def _duration(run: dict[str, Any]) -> str | None:
    from datetime import datetime

    if not run.get("started_at") or not run.get("ended_at"):
        return None
    seconds = (datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    return f"{seconds:.1f} s"


def _get_command(args: argparse.Namespace) -> int:
    from sandcastle.cli.printer import EventPrinter

    run = _transport().get_run(args.run_id)

    def lines() -> list[str]:
        import io

        text = io.StringIO()
        printer = EventPrinter(text)
        printer.header(run)
        printer.summary(run.outcome())
        for artifact in run.artifacts:
            text.write(f"artifact {artifact.name}  {artifact.size} bytes  sha256 {artifact.sha256[:12]}…\n")
        return text.getvalue().splitlines()

    output.data(run.model_dump(mode="json"), lines)
    return 0 if not run.status.terminal or run.status.value == "SUCCEEDED" else int(Exit.NOT_SUCCEEDED)


def _logs_command(args: argparse.Namespace) -> int:
    transport = _transport(wait_s=20 if args.follow else 0)
    run = transport.get_run(args.run_id)
    return follow_run(transport, run, until_end=args.follow, spinner=False)


def follow_run(
    transport: Transport,
    run: Run,
    *,
    until_end: bool = True,
    spinner: bool,
    in_process: bool = False,
    timeout_s: float | None = None,
    finished: Callable[[Run], None] | None = None,
) -> int:
    """Print the run's transcript (to stderr with ``--json``, then one JSON document of the run and its
    events); ``finished`` sees the run first. Exit 0 when it succeeded (or goes on), 1 when it did not.
    Ctrl-C stops following, not the run (130), unless the run is ``in_process``."""
    from sandcastle.cli.transport import EventSource, Snapshot, watch

    source: EventSource = transport if until_end else Snapshot(transport)
    try:
        events = watch(source, run, spinner=spinner, out=output.human(), timeout_s=timeout_s)
    except TimeoutError as error:
        return output.fail(str(error), Exit.NOT_SUCCEEDED)
    except KeyboardInterrupt:
        if in_process:
            output.fail(
                f"interrupted: run {run.run_id} ran in this process and stops with it "
                "(start `sandcastle serve` first to keep a run going past Ctrl-C)",
                Exit.INTERRUPTED,
            )
        else:
            output.fail(
                f"run {run.run_id} continues; follow with `sandcastle runs logs -f {run.run_id}`, "
                f"cancel with `sandcastle runs cancel {run.run_id}`",
                Exit.INTERRUPTED,
            )
        return int(Exit.INTERRUPTED)
    final = transport.get_run(run.run_id)
    if finished is not None:
        finished(final)
    output.data({"run": final.model_dump(mode="json"), "events": [e.model_dump(mode="json") for e in events]})
    if not final.status.terminal:
        return 0
    return 0 if final.status.value == "SUCCEEDED" else int(Exit.NOT_SUCCEEDED)


def cancel_command(args: argparse.Namespace) -> int:
    from sandcastle.cli.remote import api_client

    run = api_client().cancel(args.run_id)
    output.data(run, [f"run {run['run_id']}: {run['status']}"])
    return 0
