"""Finding the running API (``--url``/``SANDCASTLE_URL``, else a local ``sandcastle serve``) and calling it."""

from __future__ import annotations

from typing import Any

from sandcastle.cli.output import CommandFailed, Exit, failure

NO_SERVER = "no server: start `sandcastle serve`, or pass --url (SANDCASTLE_URL) and --api-key"


def api_client() -> Any:
    """The running server's client; ``CommandFailed`` (exit 3) saying how to start one when there is none."""
    from sandcastle.client import find_server
    from sandcastle.local.runtime import default_home

    server = find_server(default_home())
    if server is None:
        raise CommandFailed(NO_SERVER, Exit.UNREACHABLE)
    return server[0]


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call: (0, its answer), or (the exit code, None) after saying what went wrong."""
    from sandcastle.client import ApiError

    try:
        client = api_client()
        return 0, client.request(method, path, body)[1]
    except (ApiError, OSError, ValueError, CommandFailed) as error:
        return failure(error), None
