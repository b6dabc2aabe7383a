"""Finding the running API (``sandcastle serve`` or ``SANDCASTLE_URL``) and calling it."""

from __future__ import annotations

import sys
from typing import Any


def api_client() -> Any:
    """The running server's client, or None after saying how to start one."""
    from sandcastle.client import find_server
    from sandcastle.local.runtime import default_home

    server = find_server(default_home())
    if server is None:
        print("sandcastle: no server: start `sandcastle serve` or set SANDCASTLE_URL", file=sys.stderr)
        return None
    return server[0]


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    from sandcastle.client import ApiError

    client = api_client()
    if client is None:
        return 2, None
    try:
        return 0, client.request(method, path, body)[1]
    except (ApiError, OSError, ValueError) as error:
        print(f"sandcastle: {error}", file=sys.stderr)
        return 1, None
