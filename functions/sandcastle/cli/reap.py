"""``sandcastle reap``: kill sandboxes whose run is over, locally or a deployed stack's."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sandcastle.cli import output


def add_reap_command(commands: Any) -> None:
    reap = commands.add_parser("reap", help="kill sandboxes whose run is over (locally, or a deployed stack's)")
    reap.add_argument("--stack", help="a deployed stack: invoke its reaper function (uses your AWS credentials)")
    reap.set_defaults(command=_reap_command)


def _reap_command(args: argparse.Namespace) -> int:
    if args.stack:
        import boto3

        [stack] = boto3.client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
        outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
        response = boto3.client("lambda").invoke(FunctionName=outputs["ReaperFunctionName"], Payload=b"{}")
        report = json.loads(response["Payload"].read() or b"{}")
    else:
        from sandcastle.client import read_serve_state
        from sandcastle.local.runtime import LocalRuntime, default_home

        home = default_home()
        if read_serve_state(home.resolve()) is not None:
            return output.fail("`sandcastle serve` is running and reaps every 5 minutes itself", output.Exit.USAGE)
        from sandcastle.runs.reaper import reap

        # With no server, no run is live: every local sandbox left under this home is an orphan.
        with LocalRuntime(home=home, log_file=home / "logs" / "functions.log") as runtime:
            report = reap(runtime.deps).__dict__
    counts = f"{report['seen']} sandboxes seen, {report['killed']} killed, {report['timed_out']} runs timed out"
    lines = [f"reaper: {counts}"]
    for action in report.get("actions", []):
        where = action.get("sandbox_id") or ""
        lines.append(f"  {action['action']} {where} (run {action.get('run_id')}) {action.get('reason', '')}")
    output.data(report, lines)
    return 0 if not report.get("errors") else 1
