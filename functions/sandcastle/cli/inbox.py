"""``sandcastle upload``: the local inbox file protocol — drop a file where ``serve`` watches, follow its run,
read the result it mirrors into the outbox."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sandcastle.cli import output


def add_upload_command(commands: Any) -> None:
    upload = commands.add_parser("upload", help="drop a file into the local inbox and follow the run it starts")
    upload.add_argument("file", type=Path)
    upload.add_argument("--task", required=True, help="the saved task to run ('_' with --instructions)")
    upload.add_argument("--tenant", default="default", help="the tenant the task belongs to (default: default)")
    upload.add_argument("--instructions", help="with --task _: the instructions, carried as object metadata")
    upload.add_argument("--timeout", type=float, default=900, dest="wait_s", help="seconds to wait for the result")
    upload.set_defaults(command=_upload_command)


def _upload_command(args: argparse.Namespace) -> int:
    """Drop the file into the running ``serve``'s inbox folder, follow its run, print where the result landed."""
    import time

    from pydantic import TypeAdapter

    from sandcastle.client import read_serve_state
    from sandcastle.local.inbox import outbox_path, receipt_path
    from sandcastle.local.runtime import default_home
    from sandcastle.names import file_name_problem, tenant_problem
    from sandcastle.runs.requests import TaskName
    from sandcastle.runs.uploads import AD_HOC_TASK

    home = default_home().resolve()
    if not args.file.is_file():
        return output.fail(f"{args.file}: no such file", output.Exit.USAGE)
    # The folder path is made of these: each must be what the inbox key convention allows (no '..').
    problem = tenant_problem(args.tenant) or file_name_problem(args.file.name)
    if problem is None and args.task != AD_HOC_TASK:
        try:
            TypeAdapter(TaskName).validate_python(args.task)
        except ValidationError:
            problem = f"task {args.task!r} is not a task name (letters, digits, '_', '.', '-')"
    if problem:
        return output.fail(problem, output.Exit.USAGE)
    if read_serve_state(home) is None:
        return output.fail(
            "no local server: start `sandcastle serve` first (same SANDCASTLE_HOME)", output.Exit.UNREACHABLE
        )
    relative = f"{args.tenant}/{args.task}/{args.file.name}"
    target = home / "inbox" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    receipt_file = receipt_path(home / "inbox", relative)
    receipt_file.unlink(missing_ok=True)
    if args.instructions:
        (target.parent / f".{args.file.name}.meta.json").write_text(json.dumps({"instructions": args.instructions}))
    partial = target.parent / f".{args.file.name}.partial"
    partial.write_bytes(args.file.read_bytes())
    partial.replace(target)
    output.say(f"dropped {args.file} into {target}")

    deadline = time.monotonic() + args.wait_s
    while not receipt_file.exists():
        if time.monotonic() > deadline:
            return output.fail(
                "the server did not pick the file up; is `sandcastle serve` running?", output.Exit.UNREACHABLE
            )
        time.sleep(0.2)
    receipt = json.loads(receipt_file.read_text())
    run_id = receipt["run_id"]
    output.say(f"uploaded s3://{receipt['bucket']}/{receipt['key']} (version {receipt['version_id']}) → run {run_id}")
    _follow_upload(run_id)
    result_file = outbox_path(home / "outbox", args.tenant, args.task, run_id) / "result.json"
    while not result_file.exists():
        if time.monotonic() > deadline:
            return output.fail(f"no result yet at {result_file}", output.Exit.NOT_SUCCEEDED)
        time.sleep(0.2)
    time.sleep(0.2)  # the artifacts are written before result.json; give the mirror a moment
    result = json.loads(result_file.read_text())
    lines = [f"error: {result['error']['type']}: {result['error']['message']}"] if result.get("error") else []
    lines += [f"status: {result['status']}", f"result: {result_file}"]
    lines += [f"  {result_file.parent / artifact['name']}" for artifact in result.get("artifacts", [])]
    output.data({**result, "result_file": str(result_file)}, lines)
    return 0 if result["status"] == "SUCCEEDED" else int(output.Exit.NOT_SUCCEEDED)


def _follow_upload(run_id: str) -> None:
    """Print the run's transcript through the API while it runs (quietly nothing when it cannot be read)."""
    import time

    from sandcastle.cli.remote import api_client
    from sandcastle.cli.transport import HttpTransport, watch

    try:
        client = api_client()
    except output.CommandFailed:
        return
    transport = HttpTransport(client)
    for _ in range(25):  # a rejected upload starts no run: give up after a few seconds
        try:
            run = transport.get_run(run_id)
            break
        except transport.errors:
            time.sleep(0.2)
    else:
        return
    try:
        watch(transport, run, spinner=False, out=output.human())
    except transport.errors as error:
        print(f"sandcastle: could not follow the run: {error}", file=sys.stderr)
