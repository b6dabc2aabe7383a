"""A small HTTP client of the Sandcastle API, for the CLI (standard library only)."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sandcastle.errors import ApiError

DEFAULT_LOCAL_URL = "http://127.0.0.1:8787"
INLINE_FILE_LIMIT = 1024 * 1024
"""Files larger than this go through ``POST /uploads`` (the API's default cap on an inline file)."""
STATE_FILE = "serve.json"


class SandcastleClient:
    """The HTTP API at ``base_url`` with the API key ``api_key``."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one request; return (status, JSON body); ``ApiError`` for a 4xx/5xx."""
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                payload = {"error": "http_error", "message": raw.decode(errors="replace") or str(error)}
            raise ApiError(error.code, payload if isinstance(payload, dict) else {"message": str(payload)}) from None

    def health(self, *, timeout_s: float = 0.5) -> bool:
        """True when a Sandcastle API answers at ``base_url``."""
        try:
            _, body = self.request("GET", "/health", timeout_s=timeout_s)
        except (OSError, ApiError, ValueError):
            return False
        return body.get("service") == "sandcastle"

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/runs", body, headers=headers)[1]

    def upload(self, name: str, data: bytes, *, content_type: str = "application/octet-stream") -> str:
        """Stage a file with ``POST /uploads`` and PUT its bytes to the URL given; return its ``s3_key``."""
        ticket = self.request("POST", "/uploads", {"name": name, "size": len(data), "content_type": content_type})[1]
        put = urllib.request.Request(ticket["url"], data=data, method=ticket.get("method", "PUT"))
        for header, value in ticket.get("headers", {}).items():
            put.add_header(header, value)
        try:
            with urllib.request.urlopen(put, timeout=self.timeout_s) as response:  # noqa: S310 - the API's own URL
                response.read()
        except urllib.error.HTTPError as error:
            raise ApiError(
                error.code, {"error": "upload_failed", "message": error.read().decode(errors="replace")}
            ) from None
        return str(ticket["key"])

    def stage_large_files(self, body: dict[str, Any], *, inline_limit: int = INLINE_FILE_LIMIT) -> dict[str, Any]:
        """``body`` with every inline file over ``inline_limit`` bytes uploaded and given by ``s3_key`` instead."""
        files = []
        for file in body.get("files") or []:
            content = file.get("content_base64")
            if content is not None and len(content) * 3 // 4 > inline_limit:
                data = base64.b64decode(content)
                if len(data) > inline_limit:
                    file = {"name": file["name"], "s3_key": self.upload(file["name"], data)}
            files.append(file)
        return {**body, "files": files} if files else body

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runs/{run_id}")[1]

    def list_runs(self, *, limit: int = 20, status: str | None = None) -> dict[str, Any]:
        query = {"limit": limit, **({"status": status} if status else {})}
        return self.request("GET", f"/runs?{urlencode(query)}")[1]

    def events(self, run_id: str, *, after: str | None = None, wait_s: float = 0) -> dict[str, Any]:
        """One page of the transcript after the cursor ``after`` (long-polled up to ``wait_s``); the CLI's
        ``sandcastle.cli.transport.follow`` is the loop over these pages."""
        query = {"wait": wait_s, **({"after": after} if after else {})}
        return self.request("GET", f"/runs/{run_id}/events?{urlencode(query)}", timeout_s=wait_s + 30)[1]

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runs/{run_id}/cancel")[1]

    # --- the local gateway's admin paths ---

    def create_key(self, tenant: str, admin_token: str) -> dict[str, Any]:
        return self.request("POST", "/local-admin/keys", {"tenant": tenant}, headers=_admin(admin_token))[1]

    def revoke_key(self, key_id: str, admin_token: str) -> dict[str, Any]:
        return self.request("POST", f"/local-admin/keys/{key_id}/revoke", headers=_admin(admin_token))[1]


def _admin(token: str) -> dict[str, str]:
    return {"X-Sandcastle-Admin": token}


def read_serve_state(home: Path) -> dict[str, Any] | None:
    """What a running ``sandcastle serve`` wrote: its URL, admin token and the CLI's key."""
    try:
        return json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_serve_state(home: Path, state: dict[str, Any]) -> Path:
    """Write the serve state file, readable by its owner only (it holds a key and the admin token)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATE_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(state, file)
    return path


_STATED_SERVER_HEALTH_TIMEOUT_S = 10.0


def find_server(home: Path) -> tuple[SandcastleClient, dict[str, Any] | None] | None:
    """A running API to talk to: ``SANDCASTLE_URL``, else a local ``serve`` (state file, or a probe of :8787).

    The key is ``SANDCASTLE_API_KEY``, else the one ``serve`` created for the CLI (in the state file of
    the same ``SANDCASTLE_HOME``); a probed server is used only when there is a key for it.
    """
    state = read_serve_state(home)
    url = os.environ.get("SANDCASTLE_URL")
    candidates = [url] if url else [u for u in ((state or {}).get("url"), DEFAULT_LOCAL_URL) if u]
    for candidate in dict.fromkeys(candidates):
        same_server = state is not None and state.get("url") == candidate
        key = os.environ.get("SANDCASTLE_API_KEY") or ((state or {}).get("cli_key") if same_server else None)
        if not url and not key:
            continue  # a server we hold no key for (another user's serve) is not ours to use
        client = SandcastleClient(candidate, key)
        # The serve that wrote the state file gets time to answer (its first request may still be
        # loading the API); a bare probe of the default port stays quick.
        if url or client.health(timeout_s=_STATED_SERVER_HEALTH_TIMEOUT_S if same_server else 0.5):
            return client, (state if same_server else None)
    return None
