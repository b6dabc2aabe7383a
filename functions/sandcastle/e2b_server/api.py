"""E2B's REST lifecycle API (the part the pinned SDK calls), answered from the ``SandboxRegistry``.

Request and response bodies are the SDK's own generated models (``e2b.api.client.models``), so
the JSON shapes are E2B's by construction. Errors are ``{"code": status, "message": ...}``: the SDK
turns 404 into ``SandboxNotFoundException`` (or ``False`` from ``kill``), 429 into
``RateLimitException``, 400 into a ``SandboxException`` carrying the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote

from e2b.api.client.models import (
    ConnectSandboxV2,
    ListedSandbox,
    NewSandboxV2,
    Sandbox,
    SandboxDetail,
    SandboxState,
    SandboxTimeoutRequest,
)
from e2b.api.client.types import Unset

from sandcastle.e2b_server.filesystem import HttpAnswer
from sandcastle.e2b_server.registry import ENVD_VERSION, SandboxRecord, SandboxRegistry
from sandcastle.errors import InvalidSandboxRequest, SandboxLimitReached, SandboxNotFound

DEFAULT_TIMEOUT_S = 300
"""The sandbox timeout when a create names none (the SDK's default)."""
_CLIENT_ID = "sandcastle-local"
_CPU_COUNT = 2
_MEMORY_MB = 2048
_DISK_SIZE_MB = 1024
_DEFAULT_PAGE = 100
_SANDBOX_ROUTE = re.compile(r"^/(?:v2/)?sandboxes/(?P<id>[^/]+)(?P<action>/[a-z]+)?$")


class LifecycleApi:
    """Routes ``(method, path)`` of the lifecycle API to the registry. Thread-safe (the registry is)."""

    def __init__(self, registry: SandboxRegistry, *, api_key: str | None = None) -> None:
        self._registry = registry
        self._api_key = api_key

    def handle(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> HttpAnswer:
        """Answer one request; unknown routes get 404 with a message naming them."""
        if self._api_key is not None and headers.get("x-api-key") != self._api_key:
            return _error(401, "invalid API key: pass the key this sandbox server was started with (E2B_API_KEY)")
        try:
            if path in ("/v2/sandboxes", "/sandboxes"):
                if method == "POST":
                    return self._create(_json(body), headers.get("idempotency-key"))
                if method == "GET":
                    return self._list(query, paginated=path.startswith("/v2/"))
            match = _SANDBOX_ROUTE.match(path)
            if match is not None:
                handler = self._sandbox_routes().get((method, match["action"] or ""))
                if handler is not None:
                    return handler(unquote(match["id"]), _json(body))
        except SandboxNotFound as error:
            return _error(404, str(error))
        except (InvalidSandboxRequest, ValueError, KeyError, TypeError) as error:
            return _error(400, f"invalid request: {error}")
        except SandboxLimitReached as error:
            return _error(429, str(error), {"Should-Retry": "false"})
        return _error(404, f"no route {method} {path} on this sandbox server")

    def _sandbox_routes(self) -> dict[tuple[str, str], Callable[[str, Any], HttpAnswer]]:
        return {
            ("GET", ""): self._info,
            ("DELETE", ""): self._kill,
            ("POST", "/connect"): self._connect,
            ("POST", "/resume"): self._connect,
            ("POST", "/timeout"): self._set_timeout,
            ("POST", "/refreshes"): self._refresh,
        }

    def _create(self, body: Any, idempotency_key: str | None) -> HttpAnswer:
        request = NewSandboxV2.from_dict(body)
        record = self._registry.create(
            template_id=request.template_id,
            timeout_s=int(_given(request.timeout, DEFAULT_TIMEOUT_S)),
            metadata=_string_map(_given(request.metadata, {}), "metadata"),
            envs=_string_map(_given(request.env_vars, {}), "envVars"),
            allow_internet_access=bool(_given(request.allow_internet_access, False)),
            idempotency_key=idempotency_key,
        )
        return _json_answer(201, _sandbox_model(record).to_dict())

    def _connect(self, sandbox_id: str, body: Any) -> HttpAnswer:
        request = ConnectSandboxV2.from_dict(body or {})
        record = self._registry.connect(sandbox_id, _given(request.timeout, None))
        return _json_answer(200, _sandbox_model(record).to_dict())

    def _kill(self, sandbox_id: str, body: Any) -> HttpAnswer:
        if not self._registry.kill(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found")
        return 204, {}, b""

    def _set_timeout(self, sandbox_id: str, body: Any) -> HttpAnswer:
        self._registry.set_timeout(sandbox_id, SandboxTimeoutRequest.from_dict(body).timeout)
        return 204, {}, b""

    def _refresh(self, sandbox_id: str, body: Any) -> HttpAnswer:
        duration = (body or {}).get("duration")
        self._registry.connect(sandbox_id, int(duration) if duration else None)
        return 204, {}, b""

    def _info(self, sandbox_id: str, body: Any) -> HttpAnswer:
        record = self._registry.get(sandbox_id)
        detail = SandboxDetail(
            **_listing_fields(record),
            envd_access_token=record.access_token,
            allow_internet_access=False,
            metadata=dict(record.metadata),
        )
        return _json_answer(200, detail.to_dict())

    def _list(self, query: str, *, paginated: bool) -> HttpAnswer:
        """``GET /v2/sandboxes``: filtered by ``metadata`` (``k=v&...``, each side URL-quoted) and ``state``.

        Paginated with ``limit`` and ``nextToken`` (the id of the next sandbox, sent back as ``x-next-token``).
        """
        parameters = parse_qs(query)
        wanted = {
            unquote(key): unquote(value)
            for raw in parameters.get("metadata", [])
            for key, value in parse_qsl(raw, keep_blank_values=True)
        }
        states = {state for raw in parameters.get("state", []) for state in raw.split(",") if state}
        records = [] if states and "running" not in states else self._registry.list(wanted)
        headers: dict[str, str] = {}
        if paginated:
            start = 0
            token = parameters.get("nextToken", [None])[0]
            if token:
                ids = [record.sandbox_id for record in records]
                start = ids.index(token) if token in ids else len(ids)
            limit = int(parameters.get("limit", [_DEFAULT_PAGE])[0])
            page = records[start : start + limit]
            if start + limit < len(records):
                headers["x-next-token"] = records[start + limit].sandbox_id
            records = page
        listed = [ListedSandbox(**_listing_fields(record), metadata=dict(record.metadata)) for record in records]
        return _json_answer(200, [item.to_dict() for item in listed], headers)


def _sandbox_model(record: SandboxRecord) -> Sandbox:
    return Sandbox(
        template_id=record.template_id,
        sandbox_id=record.sandbox_id,
        client_id=_CLIENT_ID,
        envd_version=ENVD_VERSION,
        envd_access_token=record.access_token,
    )


def _listing_fields(record: SandboxRecord) -> dict[str, Any]:
    return {
        "template_id": record.template_id,
        "sandbox_id": record.sandbox_id,
        "client_id": _CLIENT_ID,
        "started_at": record.started_at,
        "end_at": record.end_at,
        "cpu_count": _CPU_COUNT,
        "memory_mb": _MEMORY_MB,
        "disk_size_mb": _DISK_SIZE_MB,
        "state": SandboxState.RUNNING,
        "envd_version": ENVD_VERSION,
    }


def _given(value: Any, default: Any) -> Any:
    return default if isinstance(value, Unset) or value is None else value


def _string_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidSandboxRequest(f"{name} must be an object of strings")
    return dict(value)


def _json(body: bytes) -> Any:
    return json.loads(body) if body.strip() else None


def _json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> HttpAnswer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload, default=_iso).encode()


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HttpAnswer:
    return _json_answer(status, {"code": status, "message": message}, headers)
