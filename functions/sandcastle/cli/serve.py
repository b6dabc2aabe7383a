"""``sandcastle serve`` (the HTTP API on the local runtime) and ``sandcastle sandbox-server`` (E2B-compatible)."""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path
from typing import Any

from sandcastle.cli import output


def add_serve_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the HTTP API on localhost, on the local runtime")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0: any free port)")
    serve.add_argument("--tenant", default="default", help="tenant of the first API key serve creates and prints")
    serve.set_defaults(command=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    import secrets
    import signal

    from sandcastle.client import write_serve_state
    from sandcastle.local.runtime import LocalRuntime, default_home
    from sandcastle.names import tenant_problem
    from sandcastle.store.keys import ApiKeyStore

    problem = tenant_problem(args.tenant)
    if problem:
        return output.fail(f"--tenant: {problem}", output.Exit.USAGE)
    home = default_home()
    with LocalRuntime(home=home, log_file=home / "logs" / "functions.log") as runtime:
        admin_token = secrets.token_urlsafe(32)
        try:
            gateway = runtime.start_gateway(host=args.host, port=args.port, admin_token=admin_token)
        except OSError as error:
            return output.fail(
                f"cannot serve on {args.host}:{args.port}: {error.strerror or error}; is another "
                "`sandcastle serve` running? Stop it, or pass another --port",
                output.Exit.USAGE,
            )
        key = ApiKeyStore(runtime.deps.settings.table_name).create(args.tenant)
        state_file = write_serve_state(
            home.resolve(),
            {
                "url": gateway.url,
                "admin_token": admin_token,
                "cli_key": key.key,
                "pid": os.getpid(),
                # what `run` compares with its caller's environment (the model key is never written)
                "model_configured": runtime.deps.settings.openai_configured,
                "model_base_url": runtime.deps.settings.openai_base_url,
            },
        )
        output.data(
            {"url": gateway.url, "tenant": key.tenant, "key_id": key.key_id, "key": key.key, "state": str(state_file)},
            [
                f"Sandcastle API on {gateway.url}  (docs: {gateway.url}/docs)",
                f"API key for tenant {key.tenant} ({key.key_id}): {key.key}",
            ],
        )
        output.say(f"state (URL, admin token, this key) in {state_file}; Ctrl-C stops")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            state_file.unlink(missing_ok=True)
    return 0


def add_sandbox_server_command(commands: Any) -> None:
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
        return output.fail(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}", output.Exit.USAGE)
    print(f"E2B-compatible sandbox server on {server.url} (sandboxes under {root})")
    print("point the e2b SDK or Sandcastle's e2b backend at it:")
    for name, value in server.client_environment(args.api_key or "local").items():
        print(f"  export {name}={value}")
    from contextlib import suppress

    with suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
