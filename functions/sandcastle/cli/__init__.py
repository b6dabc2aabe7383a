"""``sandcastle``: run agents on the embedded local runtime from a terminal.

sandcastle run "Count the rows of ~/input/data.csv" --file data.csv
sandcastle run "Analyse the sales" --file sales.csv --playbook playbook.json

One module per concept: ``run`` (run, cancel), ``serve`` (serve, sandbox-server), ``keys``, ``tasks``
(tasks, schedules), ``inbox`` (upload), ``reap``, ``artifacts``, ``templates``; ``transport`` holds the two ways to
submit and follow a run (in process, over HTTP) and the one loop that follows it; ``printer`` and
``spinner`` are what the terminal shows. Each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse

from sandcastle.cli import artifacts, inbox, keys, reap, run, serve, tasks, templates


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return args.command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandcastle", description="Run code-writing AI agents in sandboxes.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    run.add_run_command(commands)
    serve.add_serve_command(commands)
    keys.add_keys_command(commands)
    run.add_cancel_command(commands)
    tasks.add_tasks_commands(commands)
    inbox.add_upload_command(commands)
    reap.add_reap_command(commands)
    serve.add_sandbox_server_command(commands)
    artifacts.add_artifacts_command(commands)
    templates.add_templates_command(commands)
    return parser
