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

from pydantic import ValidationError

from sandcastle.errors import InvalidRunRequest
from sandcastle.runs.models import Event, EventKind, Run, RunRequest, RunStatus


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
        return "; ".join(
            f"{'.'.join(str(p) for p in issue['loc']) or 'request'}: {issue['msg']}" for issue in error.errors()
        )
    return str(error)


class EventPrinter:
    """Renders transcript events for a terminal: one line per step, tool and result."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._calls: dict[str, dict[str, Any]] = {}

    def header(self, run: Run) -> None:
        model = run.model or run.model_backend
        self._line(
            f"run {run.run_id} · model {model} · budgets {run.budgets.max_steps} steps, "
            f"{run.budgets.max_tool_calls} tool calls, {run.budgets.timeout_s} s"
        )

    def event(self, event: Event) -> None:
        data = event.data
        if event.kind is EventKind.SYSTEM:
            self._line(f"sandbox ready · tools: {', '.join(data.get('tools', []))}")
        elif event.kind is EventKind.USER:
            self._line(f"▶ {data['text']}")
        elif event.kind is EventKind.ASSISTANT:
            if data.get("text") and data.get("tool_calls"):  # a final answer is shown once, at the end
                self._line(f"[step {event.step}] 🤖 {data['text']}")
            for call in data.get("tool_calls", []):
                self._calls[call["id"]] = call
                self._line(f"[step {event.step}] → {call['name']} {_brief_arguments(call['arguments'])}")
        elif event.kind is EventKind.TOOL_RESULT:
            self._result(event)
        elif event.kind is EventKind.ERROR:
            self._line(f"✗ {data.get('type')}: {data.get('message')}")
        elif event.kind is EventKind.END:
            self._end(data)

    def _result(self, event: Event) -> None:
        data = event.data
        name = data.get("tool", "?")
        if data.get("error"):
            self._line(f"[step {event.step}]   ✗ {name}: {data['error']}")
            return
        output = data.get("output", {})
        duration = data.get("duration_ms", 0)
        if "exit_code" in output:
            status = "timed out" if output.get("timed_out") else f"exit {output['exit_code']}"
            mark = "✓" if output.get("exit_code") == 0 else "✗"
            self._line(f"[step {event.step}]   {mark} {name}: {status} in {duration} ms")
            for stream in ("stdout", "stderr"):
                text = (output.get(stream) or {}).get("text", "").rstrip()
                for line in text.splitlines()[:20]:
                    self._line(f"      {line}")
        else:
            self._line(
                f"[step {event.step}]   ✓ {name}: {output.get('bytes', '')} bytes {output.get('path', '')}"
                f" in {duration} ms"
            )

    def _end(self, data: dict[str, Any]) -> None:
        usage = data.get("usage") or {}
        self._line("")
        self._line(f"status: {data['status']}" + (f" ({data['stop_reason']})" if data.get("stop_reason") else ""))
        if data.get("error"):
            self._line(f"error: {data['error']['type']}: {data['error']['message']}")
        if data.get("result"):
            self._line("answer:")
            for line in data["result"].splitlines():
                self._line(f"  {line}")
        self._line(
            f"usage: {usage.get('steps', 0)} steps, {usage.get('tool_calls', 0)} tool calls "
            f"({usage.get('tool_ms', 0)} ms in tools), {usage.get('input_tokens', 0)} input + "
            f"{usage.get('output_tokens', 0)} output tokens"
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
    from sandcastle.store.keys import ApiKeyStore

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
        answer = keys.create(args.tenant).model_dump(mode="json") if create else keys.revoke(args.key_id)
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
        submitted = client.submit(body)
        run = Run.model_validate(submitted)
        printer = EventPrinter(sys.stdout)
        printer.header(run)
        events = []
        with Spinner(sys.stderr) as spinner:
            for raw in client.follow(run.run_id):
                event = Event.model_validate(raw)
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


if __name__ == "__main__":
    sys.exit(main())
