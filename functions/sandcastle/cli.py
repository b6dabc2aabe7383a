"""``sandcastle``: run agents on the embedded local runtime from a terminal.

sandcastle run "Count the rows of ~/input/data.csv" --file data.csv
sandcastle run "Analyse the sales" --file sales.csv --playbook playbook.json
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.models import Run, RunOutcome, RunRequest, RunStatus
from sandcastle.runs.transcript import (
    AssistantEvent,
    EndEvent,
    ErrorEvent,
    Event,
    EventKind,
    SystemEvent,
    ToolResultData,
    ToolResultEvent,
    UserEvent,
    parse_event,
)
from sandcastle.validation import describe_issues


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return args.command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandcastle", description="Run code-writing AI agents in sandboxes.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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
    run.add_argument("--json", action="store_true", help="print the run and its transcript as JSON at the end")
    run.add_argument(
        "--local", action="store_true", help="always start the runtime in this process, even when a server runs"
    )
    run.set_defaults(command=_run_command)
    _add_api_commands(commands)
    _add_trigger_commands(commands)
    _add_sandbox_server_command(commands)

    artifacts = commands.add_parser("artifacts", help="list (and download) a run's artifacts")
    artifacts.add_argument("run_id")
    artifacts.add_argument("--download", type=Path, metavar="DIR", help="copy the files into DIR")
    artifacts.set_defaults(command=_artifacts_command)
    return parser


def _run_command(args: argparse.Namespace) -> int:
    try:
        request = _build_request(args)
    except (InvalidRunRequest, ValidationError, OSError, ValueError) as error:
        print(f"sandcastle: {_describe(error)}", file=sys.stderr)
        return 2

    from sandcastle.local.run_archive import archive_run
    from sandcastle.local.runtime import LocalRuntime, default_home

    if not args.local:
        from sandcastle.client import find_server

        server = find_server(default_home())
        if server is not None:
            return _run_over_http(server[0], request, args)

    with LocalRuntime(log_file=default_home() / "logs" / "functions.log") as runtime:
        try:
            run = runtime.submit(request)
        except (InvalidRunRequest, ValidationError) as error:
            print(f"sandcastle: {_describe(error)}", file=sys.stderr)
            return 2
        printer = EventPrinter(sys.stdout)
        printer.header(run)
        with Spinner(sys.stderr) as spinner:
            for event in runtime.follow(run.run_id, timeout_s=run.budgets.timeout_s + 120):
                spinner.pause()
                printer.event(event)
                spinner.resume(thinking=event.kind in (EventKind.USER, EventKind.TOOL_RESULT))
        final = runtime.get_run(run.run_id)
        folder = archive_run(final, runtime.deps, runtime.home)
        _print_artifacts(final, f"{folder / 'artifacts'}/")
        if final.status is RunStatus.RUNNING:
            execution = runtime.execution(run.run_id)
            print(f"execution ended {execution['status']} without ending the run", file=sys.stderr)
        if args.json:
            print(
                json.dumps(
                    {
                        "run": final.model_dump(mode="json"),
                        "events": [e.model_dump(mode="json") for e in runtime.events(run.run_id)],
                    },
                    indent=2,
                )
            )
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
        }
    )


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return describe_issues(error.errors())
    return str(error)


class EventPrinter:
    """Renders transcript events for a terminal: one line per step, tool and result."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def header(self, run: Run) -> None:
        model = run.model or run.model_backend
        self._line(
            f"run {run.run_id} · model {model} · budgets {run.budgets.max_steps} steps, "
            f"{run.budgets.max_tool_calls} tool calls, {run.budgets.timeout_s} s"
        )

    def event(self, event: Event) -> None:
        if isinstance(event, SystemEvent):
            self._line(f"sandbox ready · tools: {', '.join(event.data.tools)}")
        elif isinstance(event, UserEvent):
            self._line(f"▶ {event.data.text}")
        elif isinstance(event, AssistantEvent):
            reply = event.data
            if reply.text and reply.tool_calls:  # a final answer is shown once, at the end
                self._line(f"[step {event.step}] 🤖 {reply.text}")
            for call in reply.tool_calls:
                self._line(f"[step {event.step}] → {call.name} {_brief_arguments(call.arguments)}")
        elif isinstance(event, ToolResultEvent):
            self._result(event.step, event.data)
        elif isinstance(event, ErrorEvent):
            self._line(f"✗ {event.data.type}: {event.data.message}")
        elif isinstance(event, EndEvent):
            self.summary(event.data)

    def _result(self, step: int, result: ToolResultData) -> None:
        name = result.tool or "?"
        if result.error:
            self._line(f"[step {step}]   ✗ {name}: {result.error}")
            return
        output = result.output or {}
        exit_code = result.exit_code()
        if "exit_code" in output:
            status = "timed out" if output.get("timed_out") else f"exit {exit_code}"
            mark = "✓" if exit_code == 0 else "✗"
            self._line(f"[step {step}]   {mark} {name}: {status} in {result.duration_ms} ms")
            for stream in ("stdout", "stderr"):
                for line in result.stream_text(stream).rstrip().splitlines()[:20]:
                    self._line(f"      {line}")
        else:
            self._line(
                f"[step {step}]   ✓ {name}: {output.get('bytes', '')} bytes {output.get('path', '')}"
                f" in {result.duration_ms} ms"
            )

    def summary(self, outcome: RunOutcome) -> None:
        """How the run ended: status, error, answer and usage."""
        usage = outcome.usage
        self._line("")
        self._line(
            f"status: {outcome.status.value}" + (f" ({outcome.stop_reason.value})" if outcome.stop_reason else "")
        )
        if outcome.error:
            self._line(f"error: {outcome.error.type}: {outcome.error.message}")
        if outcome.result:
            self._line("answer:")
            for line in outcome.result.splitlines():
                self._line(f"  {line}")
        self._line(
            f"usage: {usage.steps} steps, {usage.tool_calls} tool calls ({usage.tool_ms} ms in tools), "
            f"{usage.input_tokens} input + {usage.output_tokens} output tokens"
        )

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _brief_arguments(arguments: str, limit: int = 100) -> str:
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return f"(invalid JSON) {arguments[:limit]}"
    if isinstance(parsed, dict):
        if "command" in parsed:
            text = str(parsed["command"])
        elif "path" in parsed:
            text = str(parsed["path"])
        else:
            text = json.dumps(parsed)
    else:
        text = json.dumps(parsed)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Spinner:
    """A spinner on a terminal while the model thinks; silent when the output is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.enabled = out.isatty()
        self._thinking = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.pause()

    def pause(self) -> None:
        self._thinking.clear()
        if self.enabled:
            with self._lock:
                self.out.write("\r\033[K")
                self.out.flush()

    def resume(self, *, thinking: bool) -> None:
        if thinking:
            self._thinking.set()

    def _spin(self) -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            if self._stop.wait(0.1):
                return
            if self._thinking.is_set():
                with self._lock:
                    self.out.write(f"\r{frame} thinking…")
                    self.out.flush()


# ---------------------------------------------------------------- the HTTP API: serve, keys, cancel, run over HTTP


def _add_api_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API on localhost, on the local runtime")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0: any free port)")
    serve.add_argument("--tenant", default="default", help="tenant of the first API key serve creates and prints")
    serve.set_defaults(command=_serve_command)

    keys = commands.add_parser("keys", help="create or revoke API keys (of a running serve, or a deployed stack)")
    key_commands = keys.add_subparsers(required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create an API key for a tenant and print it (once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    revoke = key_commands.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("key_id", help="the key's id (key_...), as create printed it")
    for sub in (create, revoke):
        target = sub.add_mutually_exclusive_group()
        target.add_argument("--table", help="the runs table of a deployed stack (uses your AWS credentials)")
        target.add_argument("--stack", help="a deployed stack's name: its RunsTableName output is used")
    create.set_defaults(command=_keys_create_command)
    revoke.set_defaults(command=_keys_revoke_command)

    cancel = commands.add_parser("cancel", help="cancel a run (through a running serve or SANDCASTLE_URL)")
    cancel.add_argument("run_id")
    cancel.set_defaults(command=_cancel_command)


def _serve_command(args: argparse.Namespace) -> int:
    import secrets
    import signal

    from sandcastle.client import write_serve_state
    from sandcastle.local.runtime import LocalRuntime, default_home
    from sandcastle.names import tenant_problem
    from sandcastle.store.keys import ApiKeyStore

    problem = tenant_problem(args.tenant)
    if problem:
        print(f"sandcastle: --tenant: {problem}", file=sys.stderr)
        return 2
    home = default_home()
    with LocalRuntime(home=home, log_file=home / "logs" / "functions.log") as runtime:
        admin_token = secrets.token_urlsafe(32)
        gateway = runtime.start_gateway(host=args.host, port=args.port, admin_token=admin_token)
        key = ApiKeyStore(runtime.deps.settings.table_name).create(args.tenant)
        state_file = write_serve_state(
            home.resolve(), {"url": gateway.url, "admin_token": admin_token, "cli_key": key.key, "pid": os.getpid()}
        )
        print(f"Sandcastle API on {gateway.url}  (docs: {gateway.url}/docs)", flush=True)
        print(f"API key for tenant {key.tenant} ({key.key_id}): {key.key}", flush=True)
        print(f"state (URL, admin token, this key) in {state_file}; Ctrl-C stops", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            state_file.unlink(missing_ok=True)
    return 0


def _keys_create_command(args: argparse.Namespace) -> int:
    return _keys_command(args, create=True)


def _keys_revoke_command(args: argparse.Namespace) -> int:
    return _keys_command(args, create=False)


def _keys_command(args: argparse.Namespace, *, create: bool) -> int:
    """Against a deployed stack's table (``--table``/``--stack``), else the running ``serve``'s admin path."""
    if args.table or args.stack:
        from sandcastle.store.keys import ApiKeyStore, stack_table_name

        keys = ApiKeyStore(args.table or stack_table_name(args.stack))
        try:
            answer = keys.create(args.tenant).model_dump(mode="json") if create else keys.revoke(args.key_id)
        except ValueError as error:  # not a tenant name
            print(f"sandcastle: --tenant: {error}", file=sys.stderr)
            return 2
        if answer is None:
            print(f"sandcastle: no API key {args.key_id}", file=sys.stderr)
            return 1
        answer = answer if isinstance(answer, dict) else answer.model_dump(mode="json")
    else:
        from sandcastle.client import ApiError, SandcastleClient, read_serve_state
        from sandcastle.local.runtime import default_home

        state = read_serve_state(default_home().resolve())
        if state is None:
            print(
                "sandcastle: no local server: start `sandcastle serve` (same SANDCASTLE_HOME), "
                "or pass --table/--stack for a deployed stack",
                file=sys.stderr,
            )
            return 2
        client = SandcastleClient(state["url"])
        try:
            if create:
                answer = client.create_key(args.tenant, state["admin_token"])
            else:
                answer = client.revoke_key(args.key_id, state["admin_token"])
        except (ApiError, OSError) as error:
            print(f"sandcastle: {error}", file=sys.stderr)
            return 1
    if create:
        print(f"API key for tenant {answer['tenant']} ({answer['key_id']}), shown this once:")
        print(answer["key"])
    else:
        print(f"revoked {answer['key_id']} (tenant {answer['tenant']})")
    return 0


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


def _run_over_http(client: Any, request: RunRequest, args: argparse.Namespace) -> int:
    """Submit through the API and tail the transcript through the events endpoint."""
    from sandcastle.client import ApiError

    body = request.model_dump(mode="json", exclude={"tenant", "source"}, exclude_none=True)
    try:
        submitted = client.submit(client.stage_large_files(body))
        run = Run.model_validate(submitted)
        printer = EventPrinter(sys.stdout)
        printer.header(run)
        events = []
        with Spinner(sys.stderr) as spinner:
            for raw in client.follow(run.run_id):
                event = parse_event(raw)
                events.append(event)
                spinner.pause()
                printer.event(event)
                spinner.resume(thinking=event.kind in (EventKind.USER, EventKind.TOOL_RESULT))
        final = Run.model_validate(client.get_run(run.run_id))
    except (ApiError, OSError) as error:
        print(f"sandcastle: {client.base_url}: {error}", file=sys.stderr)
        return 2
    if args.json:
        payload = {"run": final.model_dump(mode="json"), "events": [e.model_dump(mode="json") for e in events]}
        print(json.dumps(payload, indent=2))
    return 0 if final.status is RunStatus.SUCCEEDED else 1


def _print_artifacts(run: Run, where: str) -> None:
    if not run.artifacts:
        return
    print(f"artifacts ({len(run.artifacts)}) in {where}", flush=True)
    for artifact in run.artifacts:
        print(f"  {artifact.name}  {artifact.size} bytes  sha256 {artifact.sha256[:12]}…", flush=True)


def _artifacts_command(args: argparse.Namespace) -> int:
    """List a run's artifacts: from a running server's API, else from this machine's run archive."""
    import shutil
    import urllib.request

    from sandcastle.client import ApiError, find_server
    from sandcastle.local.run_archive import archive_dir, archived_run
    from sandcastle.local.runtime import default_home

    home = default_home()
    server = find_server(home)
    if server is not None:
        client = server[0]
        try:
            listing = client.request("GET", f"/runs/{args.run_id}/artifacts")[1]
        except (ApiError, OSError) as error:
            print(f"sandcastle: {client.base_url}: {error}", file=sys.stderr)
            return 1
        for artifact in listing["artifacts"]:
            print(f"{artifact['name']}  {artifact['size']} bytes  sha256 {artifact['sha256']}  {artifact['url']}")
            if args.download:
                target = args.download / artifact["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with urllib.request.urlopen(artifact["url"], timeout=60) as response:  # noqa: S310 - our own URL
                    target.write_bytes(response.read())
        return 0
    run = archived_run(home, args.run_id)
    if run is None:
        print(
            f"sandcastle: no run {args.run_id} on this machine ({archive_dir(home, args.run_id)}) "
            "and no server running (sandcastle serve)",
            file=sys.stderr,
        )
        return 1
    source = archive_dir(home, run.run_id) / "artifacts"
    for artifact in run.artifacts:
        print(f"{artifact.name}  {artifact.size} bytes  sha256 {artifact.sha256}  {source / artifact.name}")
        if args.download:
            target = args.download / artifact.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / artifact.name, target)
    return 0


# ---------------------------------------------------------------- triggers: tasks, schedules, upload, reap


def _add_trigger_commands(commands: Any) -> None:
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

    upload = commands.add_parser("upload", help="drop a file into the local inbox and follow the run it starts")
    upload.add_argument("file", type=Path)
    upload.add_argument("--task", required=True, help="the saved task to run ('_' with --instructions)")
    upload.add_argument("--tenant", default="default", help="the tenant the task belongs to (default: default)")
    upload.add_argument("--instructions", help="with --task _: the instructions, carried as object metadata")
    upload.add_argument("--timeout", type=float, default=900, dest="wait_s", help="seconds to wait for the result")
    upload.set_defaults(command=_upload_command)

    reap = commands.add_parser("reap", help="kill sandboxes whose run is over (locally, or a deployed stack's)")
    reap.add_argument("--stack", help="a deployed stack: invoke its reaper function (uses your AWS credentials)")
    reap.set_defaults(command=_reap_command)


def _api_client() -> Any:
    """The running server's client, or None after saying how to start one."""
    from sandcastle.client import find_server
    from sandcastle.local.runtime import default_home

    server = find_server(default_home())
    if server is None:
        print("sandcastle: no server: start `sandcastle serve` or set SANDCASTLE_URL", file=sys.stderr)
        return None
    return server[0]


def _call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    from sandcastle.client import ApiError

    client = _api_client()
    if client is None:
        return 2, None
    try:
        return 0, client.request(method, path, body)[1]
    except (ApiError, OSError, ValueError) as error:
        print(f"sandcastle: {error}", file=sys.stderr)
        return 1, None


def _tasks_put_command(args: argparse.Namespace) -> int:
    definition: dict[str, Any] = {"instructions": args.instructions, "allow_empty_input": args.allow_empty}
    if args.playbook:
        try:
            definition["playbook"] = json.loads(args.playbook.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"sandcastle: --playbook: {error}", file=sys.stderr)
            return 2
    if args.model:
        definition["model"] = args.model
    if args.max_input_bytes:
        definition["max_input_bytes"] = args.max_input_bytes
    budgets = {"max_steps": args.max_steps, "max_tool_calls": args.max_tool_calls, "timeout_s": args.timeout_s}
    definition["budgets"] = {name: value for name, value in budgets.items() if value is not None}
    code, task = _call("PUT", f"/tasks/{quote(args.name, safe='')}", definition)
    if task is not None:
        print(f"saved task {task['name']} (tenant {task['tenant']})")
    return code


def _tasks_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        code, answer = _call("GET", "/tasks")
        for task in (answer or {}).get("tasks", []):
            kind = "playbook" if task.get("playbook") else task.get("model") or "model"
            print(f"{task['name']}\t{kind}\t{task['instructions'][:60]}")
        return code
    path = f"/tasks/{quote(args.name, safe='')}"
    if args.action == "delete":
        code, _ = _call("DELETE", path)
        if code == 0:
            print(f"deleted task {args.name}")
        return code
    code, task = _call("GET", path)
    if task is not None:
        print(json.dumps(task, indent=2))
    return code


def _schedules_create_command(args: argparse.Namespace) -> int:
    expression = args.expression or (f"cron({args.cron})" if args.cron else f"rate({args.rate})")
    body = {"expression": expression, "timezone": args.timezone, "task": args.task, "overlap": args.overlap}
    code, schedule = _call("POST", "/schedules", body)
    if schedule is not None:
        print(f"schedule {schedule['schedule_id']}: {schedule['expression']} ({schedule['timezone']}) → {args.task}")
    return code


def _schedules_command(args: argparse.Namespace) -> int:
    if getattr(args, "schedule_id", None):
        code, _ = _call("DELETE", f"/schedules/{quote(args.schedule_id, safe='')}")
        if code == 0:
            print(f"deleted schedule {args.schedule_id}")
        return code
    code, answer = _call("GET", "/schedules")
    for schedule in (answer or {}).get("schedules", []):
        last = schedule.get("last_run_id") or "-"
        skips = len(schedule.get("skips") or [])
        print(
            f"{schedule['schedule_id']}\t{schedule['expression']}\t{schedule['timezone']}\t"
            f"{schedule.get('task') or 'inline'}\tlast run {last}\t{skips} skips"
        )
    return code


def _upload_command(args: argparse.Namespace) -> int:
    """Drop the file into the running ``serve``'s inbox folder, follow its run, print where the result landed."""
    import time

    from pydantic import TypeAdapter

    from sandcastle.client import read_serve_state
    from sandcastle.local.inbox import outbox_path, receipt_path
    from sandcastle.local.runtime import default_home
    from sandcastle.names import file_name_problem, tenant_problem
    from sandcastle.runs.models import TaskName
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

    from sandcastle.client import ApiError

    client = _api_client()
    if client is None:
        return
    for _ in range(25):  # a rejected upload starts no run: give up after a few seconds
        try:
            run = Run.model_validate(client.get_run(run_id))
            break
        except (ApiError, OSError):
            time.sleep(0.2)
    else:
        return
    printer = EventPrinter(sys.stdout)
    printer.header(run)
    try:
        for raw in client.follow(run_id):
            printer.event(parse_event(raw))
    except (ApiError, OSError) as error:
        print(f"sandcastle: could not follow the run: {error}", file=sys.stderr)


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
            print("sandcastle: `sandcastle serve` is running and reaps every 5 minutes itself", file=sys.stderr)
            return 2
        from sandcastle.runs.reaper import reap

        # With no server, no run is live: every local sandbox left under this home is an orphan.
        with LocalRuntime(home=home, log_file=home / "logs" / "functions.log") as runtime:
            report = reap(runtime.deps).__dict__
    print(f"reaper: {report['seen']} sandboxes seen, {report['killed']} killed, {report['timed_out']} runs timed out")
    for action in report.get("actions", []):
        where = action.get("sandbox_id") or ""
        print(f"  {action['action']} {where} (run {action.get('run_id')}) {action.get('reason', '')}")
    return 0 if not report.get("errors") else 1


def _add_sandbox_server_command(commands: Any) -> None:
    server = commands.add_parser(
        "sandbox-server", help="serve an E2B-compatible sandbox API (bubblewrap sandboxes) for the e2b SDK"
    )
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=3000, help="port for the API and every sandbox's envd")
    server.add_argument("--root", type=Path, help="where sandbox workspaces live (default: $SANDCASTLE_HOME/sandboxes)")
    server.add_argument("--api-key", help="the key clients must send (default: any key is accepted)")
    server.set_defaults(command=_sandbox_server_command)


def _sandbox_server_command(args: argparse.Namespace) -> int:
    """Serve until interrupted; print how to point the e2b SDK (or ``SANDBOX_BACKEND=e2b``) here."""
    from sandcastle.config import Settings
    from sandcastle.e2b_server import SandboxServer
    from sandcastle.local.runtime import default_home
    from sandcastle.sandbox import build_sandbox_provider

    root = (args.root or default_home() / "sandboxes").resolve()
    provider = build_sandbox_provider(Settings(sandbox_backend="local", sandbox_root=root))
    server = SandboxServer(root, host=args.host, port=args.port, api_key=args.api_key, provider=provider)
    try:
        server.start()
    except OSError as error:
        print(f"sandcastle: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    print(f"E2B-compatible sandbox server on {server.url} (sandboxes under {root})")
    print("point the e2b SDK or Sandcastle's e2b backend at it:")
    for name, value in server.client_environment(args.api_key or "local").items():
        print(f"  export {name}={value}")
    from contextlib import suppress

    with suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
