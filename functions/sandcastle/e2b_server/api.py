"""E2B's REST lifecycle API (the part the pinned SDK calls), answered from the ``SandboxRegistry``.

Request and response bodies are the SDK's own generated models (``e2b.api.client.models``), so
the JSON shapes are E2B's by construction. Errors are ``{"code": status, "message": ...}``: the SDK
turns 404 into ``SandboxNotFoundException`` (or ``False`` from ``kill``), 429 into
``RateLimitException``, 409 into ``False`` from ``pause``, 400 into a ``SandboxException``
carrying the message. A route of E2B's API this server does not implement (fork, network
updates, logs, template builds...) is answered 501 with a message naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote

from e2b.api.client.models import (
    ConnectSandboxV2,
    ListedSandbox,
    NewSandboxV2,
    Sandbox,
    SandboxDetail,
    SandboxMetric,
    SandboxSnapshotRequest,
    SandboxState,
    SandboxTimeoutRequest,
    SnapshotInfo,
)
from e2b.api.client.types import Unset

from sandcastle.e2b_server.filesystem import HttpAnswer
from sandcastle.e2b_server.registry import ENVD_VERSION, PAUSED, RUNNING, SandboxRecord, SandboxRegistry
from sandcastle.e2b_server.templates import TemplateInfo
from sandcastle.errors import InvalidSandboxRequest, SandboxConflict, SandboxLimitReached, SandboxNotFound

DEFAULT_TIMEOUT_S = 300
"""The sandbox timeout when a create names none (the SDK's default)."""
_CLIENT_ID = "sandcastle-local"
_CPU_COUNT = 2
_MEMORY_MB = 2048
_DISK_SIZE_MB = 1024
_DEFAULT_PAGE = 100
_SANDBOX_ROUTE = re.compile(r"^/(?:v2/)?sandboxes/(?P<id>[^/]+)(?P<action>/[a-z]+)?$")
_TEMPLATE_ROUTE = re.compile(r"^/templates/(?P<id>[^/]+)$")


class LifecycleApi:
    """Routes ``(method, path)`` of the lifecycle API to the registry. Thread-safe (the registry is)."""

    def __init__(self, registry: SandboxRegistry, *, api_key: str | None = None) -> None:
        self._registry = registry
        self._api_key = api_key

    def handle(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> HttpAnswer:
        """Answer one request; routes it does not implement get 501 with a message naming them."""
        if self._api_key is not None and headers.get("x-api-key") != self._api_key:
            return _error(401, "invalid API key: pass the key this sandbox server was started with (E2B_API_KEY)")
        try:
            if path in ("/v2/sandboxes", "/sandboxes"):
                if method == "POST":
                    return self._create(_json(body), headers.get("idempotency-key"))
                if method == "GET":
                    return self._list(query, paginated=path.startswith("/v2/"))
            if path == "/snapshots" and method == "GET":
                return self._list_snapshots(query)
            match = _SANDBOX_ROUTE.match(path)
            if match is not None:
                handler = self._sandbox_routes().get((method, match["action"] or ""))
                if handler is not None:
                    return handler(unquote(match["id"]), _json(body))
                if (method, match["action"]) == ("GET", "/metrics"):
                    return self._metrics(unquote(match["id"]), query)
            match = _TEMPLATE_ROUTE.match(path)
            if match is not None and method == "DELETE":
                return self._delete_template(unquote(match["id"]))
        except SandboxNotFound as error:
            return _error(404, str(error))
        except SandboxConflict as error:
            return _error(409, str(error))
        except (InvalidSandboxRequest, ValueError, KeyError, TypeError) as error:
            return _error(400, f"invalid request: {error}")
        except SandboxLimitReached as error:
            return _error(429, str(error), {"Should-Retry": "false"})
        return _error(
            501, f"{method} {path} is not implemented by this sandbox server (Sandcastle's local E2B); see its docs"
        )

    def _sandbox_routes(self) -> dict[tuple[str, str], Callable[[str, Any], HttpAnswer]]:
        return {
            ("GET", ""): self._info,
            ("DELETE", ""): self._kill,
            ("POST", "/connect"): self._connect,
            ("POST", "/resume"): self._connect,
            ("POST", "/pause"): self._pause,
            ("POST", "/timeout"): self._set_timeout,
            ("POST", "/refreshes"): self._refresh,
            ("POST", "/snapshots"): self._create_snapshot,
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
            auto_pause=bool(_given(request.auto_pause, False)),
        )
        return _json_answer(201, _sandbox_model(record).to_dict())

    def _connect(self, sandbox_id: str, body: Any) -> HttpAnswer:
        """Connect (or the deprecated resume): 201 when a paused sandbox was resumed, 200 when it ran."""
        request = ConnectSandboxV2.from_dict(body or {})
        record, resumed = self._registry.connect(sandbox_id, _given(request.timeout, None))
        return _json_answer(201 if resumed else 200, _sandbox_model(record).to_dict())

    def _pause(self, sandbox_id: str, body: Any) -> HttpAnswer:
        """Freeze the sandbox's processes (its files stay); 409 when it is already paused."""
        self._registry.pause(sandbox_id)
        return 204, {}, b""

    def _create_snapshot(self, sandbox_id: str, body: Any) -> HttpAnswer:
        request = SandboxSnapshotRequest.from_dict(body or {})
        name = _given(request.name, None)
        info = self._registry.snapshot(sandbox_id, str(name) if name is not None else None)
        return _json_answer(201, _snapshot_model(info).to_dict())

    def _list_snapshots(self, query: str) -> HttpAnswer:
        """``GET /snapshots``: filtered by ``sandboxID`` and ``name`` (name or id), paginated like sandboxes."""
        parameters = parse_qs(query)
        sandbox_id = parameters.get("sandboxID", [None])[0]
        name = parameters.get("name", [None])[0]
        snapshots = [
            info
            for info in self._registry.templates.list(kind="snapshot")
            if (sandbox_id is None or info.source_sandbox_id == sandbox_id)
            and (name is None or name == info.template_id or name in info.names)
        ]
        page, headers = _page(snapshots, parameters, key=lambda info: info.template_id)
        return _json_answer(200, [_snapshot_model(info).to_dict() for info in page], headers)

    def _delete_template(self, template_id: str) -> HttpAnswer:
        """``DELETE /templates/{id}`` (how the SDK deletes a snapshot): 204, or 404 when there is none."""
        if not self._registry.templates.delete(template_id):
            raise SandboxNotFound(f"template or snapshot {template_id} was not found")
        return 204, {}, b""

    def _metrics(self, sandbox_id: str, query: str) -> HttpAnswer:
        """``GET /sandboxes/{id}/metrics?start=&end=`` (Unix seconds): the samples in that range."""
        parameters = parse_qs(query)
        start, end = (_unix_time(parameters, bound) for bound in ("start", "end"))
        samples = self._registry.metrics(sandbox_id, start, end)
        metrics = [
            SandboxMetric(
                timestamp=sample.timestamp,
                timestamp_unix=int(sample.timestamp.timestamp()),
                cpu_count=sample.cpu_count,
                cpu_used_pct=sample.cpu_used_pct,
                mem_used=sample.mem_used,
                mem_total=sample.mem_total,
                mem_cache=sample.mem_cache,
                disk_used=sample.disk_used,
                disk_total=sample.disk_total,
            )
            for sample in samples
        ]
        return _json_answer(200, [metric.to_dict() for metric in metrics])

    def _kill(self, sandbox_id: str, body: Any) -> HttpAnswer:
        if not self._registry.kill(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found")
        return 204, {}, b""

    def _set_timeout(self, sandbox_id: str, body: Any) -> HttpAnswer:
        self._registry.set_timeout(sandbox_id, SandboxTimeoutRequest.from_dict(body).timeout)
        return 204, {}, b""

    def _refresh(self, sandbox_id: str, body: Any) -> HttpAnswer:
        duration = (body or {}).get("duration")
        self._registry.get_running(sandbox_id)
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
        """``GET /v2/sandboxes``: filtered by ``metadata`` (``k=v&...``, each side URL-quoted), ``state``
        (running, paused; both by default), ``startedAfter`` and ``template``; ordered by start time,
        newest first unless ``order=asc``.

        Paginated with ``limit`` and ``nextToken`` (the id of the next sandbox, sent back as ``x-next-token``).
        The unpaginated ``GET /sandboxes`` lists running sandboxes only, as E2B's does.
        """
        parameters = parse_qs(query)
        wanted = {
            unquote(key): unquote(value)
            for raw in parameters.get("metadata", [])
            for key, value in parse_qsl(raw, keep_blank_values=True)
        }
        states = {state for raw in parameters.get("state", []) for state in raw.split(",") if state}
        unknown = states - {RUNNING, PAUSED}
        if unknown:
            raise InvalidSandboxRequest(f"state must be running or paused, got {', '.join(sorted(unknown))}")
        order = parameters.get("order", ["desc"])[0]
        if order not in ("asc", "desc"):
            raise InvalidSandboxRequest(f"order must be asc or desc, got {order!r}")
        started_after = parameters.get("startedAfter", [None])[0]
        records = self._registry.list(
            wanted,
            states=states or ({RUNNING, PAUSED} if paginated else {RUNNING}),
            started_after=_timestamp(started_after, "startedAfter") if started_after else None,
            template_id=parameters.get("template", [None])[0],
            newest_first=order == "desc",
        )
        headers: dict[str, str] = {}
        if paginated:
            records, headers = _page(records, parameters, key=lambda record: record.sandbox_id)
        listed = [ListedSandbox(**_listing_fields(record), metadata=dict(record.metadata)) for record in records]
        return _json_answer(200, [item.to_dict() for item in listed], headers)


def _page(
    items: list[Any], parameters: dict[str, list[str]], *, key: Callable[[Any], str]
) -> tuple[list[Any], dict[str, str]]:
    """One page of ``items`` (``limit``, from the item whose key is ``nextToken``) and its ``x-next-token``."""
    start = 0
    token = parameters.get("nextToken", [None])[0]
    if token:
        keys = [key(item) for item in items]
        start = keys.index(token) if token in keys else len(keys)
    limit = int(parameters.get("limit", [_DEFAULT_PAGE])[0])
    if limit < 1:
        raise InvalidSandboxRequest(f"limit must be 1 or more, got {limit}")
    headers = {"x-next-token": key(items[start + limit])} if start + limit < len(items) else {}
    return items[start : start + limit], headers


def _snapshot_model(info: TemplateInfo) -> SnapshotInfo:
    return SnapshotInfo(snapshot_id=info.template_id, names=list(info.names))


def _timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSandboxRequest(f"{name} must be an ISO 8601 date-time, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _unix_time(parameters: dict[str, list[str]], name: str) -> datetime | None:
    raw = parameters.get(name, [None])[0]
    if raw is None:
        return None
    try:
        seconds = int(raw)
    except ValueError:
        raise InvalidSandboxRequest(f"{name} must be a Unix time in seconds, got {raw!r}") from None
    if seconds < 0:
        raise InvalidSandboxRequest(f"{name} must not be negative, got {seconds}")
    return datetime.fromtimestamp(seconds, UTC)


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
        "state": SandboxState.PAUSED if record.state == PAUSED else SandboxState.RUNNING,
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
