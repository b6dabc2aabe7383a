"""``sandcastle upload``: the local inbox file protocol — drop a file where ``serve`` watches, follow its run,
read the result it mirrors into the outbox."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError


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
        print(f"sandcastle: {args.file}: no such file", file=sys.stderr)
        return 2
    # The folder path is made of these: each must be what the inbox key convention allows (no '..').
    problem = tenant_problem(args.tenant) or file_name_problem(args.file.name)
    if problem is None and args.task != AD_HOC_TASK:
        try:
            TypeAdapter(TaskName).validate_python(args.task)
        except ValidationError:
            problem = f"task {args.task!r} is not a task name (letters, digits, '_', '.', '-')"
    if problem:
        print(f"sandcastle: {problem}", file=sys.stderr)
        return 2
    if read_serve_state(home) is None:
        print("sandcastle: no local server: start `sandcastle serve` first (same SANDCASTLE_HOME)", file=sys.stderr)
        return 2
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
    print(f"dropped {args.file} into {target}")

    deadline = time.monotonic() + args.wait_s
    while not receipt_file.exists():
        if time.monotonic() > deadline:
            print("sandcastle: the server did not pick the file up; is `sandcastle serve` running?", file=sys.stderr)
            return 1
        time.sleep(0.2)
    receipt = json.loads(receipt_file.read_text())
    run_id = receipt["run_id"]
    print(f"uploaded s3://{receipt['bucket']}/{receipt['key']} (version {receipt['version_id']}) → run {run_id}")
    _follow_upload(run_id)
    result_file = outbox_path(home / "outbox", args.tenant, args.task, run_id) / "result.json"
    while not result_file.exists():
        if time.monotonic() > deadline:
            print(f"sandcastle: no result yet at {result_file}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    time.sleep(0.2)  # the artifacts are written before result.json; give the mirror a moment
    result = json.loads(result_file.read_text())
    if result.get("error"):
        print(f"error: {result['error']['type']}: {result['error']['message']}")
    print(f"status: {result['status']}")
    print(f"result: {result_file}")
    for artifact in result.get("artifacts", []):
        print(f"  {result_file.parent / artifact['name']}")
    return 0 if result["status"] == "SUCCEEDED" else 1


def _follow_upload(run_id: str) -> None:
    """Print the run's transcript through the API while it runs (quietly nothing when it cannot be read)."""
    import time

    from sandcastle.cli.remote import api_client
    from sandcastle.cli.transport import HttpTransport, watch

    client = api_client()
    if client is None:
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
        watch(transport, run, spinner=False)
    except transport.errors as error:
        print(f"sandcastle: could not follow the run: {error}", file=sys.stderr)
