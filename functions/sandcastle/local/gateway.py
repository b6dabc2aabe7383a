"""The local HTTP gateway: real HTTP on 127.0.0.1 → API Gateway REST proxy events (v1) for the API function.

It does what API Gateway does, read from ``template.yaml``: the routes are the API function's
``Api`` events, each either behind the API's default REQUEST authorizer (called first, its
answer cached by Authorization header for the authorizer's ``ReauthorizeEvery`` seconds, its
context put into ``requestContext.authorizer``) or public (``Authorizer: NONE``). A request
no route matches is a 404 in the API's error shape, as the template's gateway responses make it.

Two paths exist only here, never in the cloud:

* ``GET /local-artifacts/<key>?run=&expires=&signature=`` serves an object of one run from the
  emulated artifacts bucket — only with a valid, unexpired signature for that run (the URLs
  ``GET /runs/{id}/artifacts`` returns locally; ``store/downloads.py`` signs them);
* ``PUT /local-uploads/<key>?tenant=&size=&expires=&signature=`` writes a tenant's upload (the URLs
  ``POST /uploads`` returns locally), exactly the signed byte count, under ``uploads/<tenant>/``;
* ``POST /local-admin/keys`` (``{"tenant": ...}``) and ``POST /local-admin/keys/<key id>/revoke``
  manage API keys of the running runtime, for ``sandcastle keys``; they need the admin token
  (``X-Sandcastle-Admin``) that ``sandcastle serve`` writes to its state file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from sandcastle.local.template import ACCOUNT_ID, Template
from sandcastle.store.downloads import LOCAL_DOWNLOAD_PATH, LOCAL_UPLOAD_PATH, LinkSigner, content_disposition
from sandcastle.store.tenant_files import tenant_prefix

if TYPE_CHECKING:
    from sandcastle.local.stack import ServedStack

STAGE = "local"
API_ID = "localapi"
ADMIN_HEADER = "X-Sandcastle-Admin"
#: API Gateway's request body limit (REST APIs: 10 MB); over it the template's REQUEST_TOO_LARGE answers.
MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ApiRoute:
    """One ``Api`` event of the API function: method, path template, whether the authorizer guards it."""

    method: str
    path: str
    authorized: bool
    pattern: re.Pattern[str] = field(compare=False)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        found = self.pattern.fullmatch(path)
        return {k: unquote(v) for k, v in found.groupdict().items()} if found else None


@dataclass(frozen=True)
class ApiSpec:
    """The API as the template declares it: its function, routes and authorizer."""

    function: str
    routes: list[ApiRoute]
    authorizer_function: str | None
    authorizer_ttl_s: int


def api_spec(template: Template) -> ApiSpec | None:
    """Read the API (its function's ``Api`` events and the API's default authorizer) from the template."""
    apis = template.of_type("AWS::Serverless::Api")
    for logical_id, resource in template.of_type("AWS::Serverless::Function").items():
        events = [e for e in resource.get("Properties", {}).get("Events", {}).values() if e.get("Type") == "Api"]
        if not events:
            continue
        authorizer_function, ttl, default = None, 0, None
        api_id = events[0]["Properties"].get("RestApiId", {}).get("Ref")
        auth = apis.get(api_id, {}).get("Properties", {}).get("Auth", {})
        default = auth.get("DefaultAuthorizer")
        if default:
            config = auth["Authorizers"][default]
            authorizer_function = config["FunctionArn"]["Fn::GetAtt"][0]
            ttl = int(template.resolve(config.get("Identity", {}).get("ReauthorizeEvery", 300)))
        routes = []
        for event in events:
            properties = event["Properties"]
            path = properties["Path"]
            guarded = default is not None and properties.get("Auth", {}).get("Authorizer", default) != "NONE"
            regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
            routes.append(ApiRoute(properties["Method"].upper(), path, guarded, re.compile(regex)))
        return ApiSpec(logical_id, routes, authorizer_function, ttl)
    return None


def proxy_event(
    method: str,
    path: str,
    *,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    authorizer: dict[str, Any] | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0), as the Lambda proxy integration sends it."""
    headers = dict(headers or {})
    is_base64 = False
    text: str | None
    if isinstance(body, bytes):
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    else:
        text = body
    query = query or {}
    now = datetime.now(UTC)
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource or path,
            "httpMethod": method,
            # The path the client asked for. API Gateway's own URL carries the stage (``/v1/runs``); the
            # local URL has none, like a custom domain's, and Powertools derives the OpenAPI document's
            # server from this: with the stage here, Swagger UI's "Try it out" called ``/local/runs``.
            "path": path,
            "stage": STAGE,
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent")},
            "authorizer": authorizer,
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


def authorizer_event(event: dict[str, Any], region: str) -> dict[str, Any]:
    """The REQUEST authorizer's event for a proxy event."""
    context = event["requestContext"]
    method_arn = f"arn:aws:execute-api:{region}:{ACCOUNT_ID}:{API_ID}/{STAGE}/{event['httpMethod']}{event['resource']}"
    return {
        "type": "REQUEST",
        "methodArn": method_arn,
        "resource": event["resource"],
        "path": event["path"],
        "httpMethod": event["httpMethod"],
        "headers": event["headers"] or {},
        "queryStringParameters": event["queryStringParameters"] or {},
        "pathParameters": event["pathParameters"] or {},
        "stageVariables": {},
        "requestContext": {k: v for k, v in context.items() if k != "authorizer"},
    }


class LocalGateway:
    """API Gateway in front of the local runtime's API function, on a ``ThreadingHTTPServer``."""

    def __init__(
        self,
        stack: ServedStack,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        admin_token: str | None = None,
        authorizer_ttl_s: int | None = None,
        link_secret: str | None = None,
    ) -> None:
        spec = api_spec(stack.template)
        if spec is None:
            raise ValueError("template.yaml declares no function with Api events")
        self.stack = stack
        self.spec = spec
        self.admin_token = admin_token
        self._signer = LinkSigner(link_secret) if link_secret else None
        self.authorizer_ttl_s = spec.authorizer_ttl_s if authorizer_ttl_s is None else authorizer_ttl_s
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        gateway = self

        class Handler(_RequestHandler):
            pass

        Handler.gateway = gateway
        self.server = _GatewayServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalGateway:
        self._thread = threading.Thread(target=self.server.serve_forever, name="sandcastle-gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- one request ---

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client_ip: str) -> _Reply:
        split = urlsplit(target)
        path = split.path or "/"
        if path.startswith(LOCAL_DOWNLOAD_PATH) and method in ("GET", "HEAD"):
            return self._artifact(unquote(path.removeprefix(LOCAL_DOWNLOAD_PATH)), _query(split.query))
        if path.startswith(LOCAL_UPLOAD_PATH) and method == "PUT":
            return self._upload(unquote(path.removeprefix(LOCAL_UPLOAD_PATH)), _query(split.query), body)
        if path.startswith("/local-admin/"):
            return self._admin(method, path, headers, body)
        for route in self.spec.routes:
            parameters = route.match(method, path)
            if parameters is not None:
                break
        else:
            return _error(HTTPStatus.NOT_FOUND, "not_found", f"no route {method} {path}")
        event = proxy_event(
            method,
            path,
            resource=route.path,
            path_parameters=parameters,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body or None,
            source_ip=client_ip,
        )
        if route.authorized:
            decision = self._authorize(event)
            if isinstance(decision, _Reply):
                return decision
            event["requestContext"]["authorizer"] = decision
        result = self.stack.invoke(self.spec.function, event)
        return _Reply.of_proxy_result(result)

    def _authorize(self, event: dict[str, Any]) -> dict[str, Any] | _Reply:
        from sandcastle.api.auth import header
        from sandcastle.errors import LambdaInvocationError

        identity = header(event["headers"], "Authorization")
        if not identity or self.spec.authorizer_function is None:
            return _error(HTTPStatus.UNAUTHORIZED, "unauthorized", "send an API key: Authorization: Bearer <key>")
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache.get(identity)
        if cached and cached[0] > now:
            answer = cached[1]
        else:
            try:
                answer = self.stack.invoke(self.spec.authorizer_function, authorizer_event(event, self.stack.region))
            except LambdaInvocationError as error:
                if error.message == "Unauthorized":
                    return _error(HTTPStatus.UNAUTHORIZED, "unauthorized", "the API key is not valid")
                return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "the authorizer failed")
            if self.authorizer_ttl_s > 0:
                with self._cache_lock:
                    self._cache[identity] = (now + self.authorizer_ttl_s, answer)
        statements = answer.get("policyDocument", {}).get("Statement", [])
        if not any(s.get("Effect") == "Allow" for s in statements):
            return _error(HTTPStatus.FORBIDDEN, "forbidden", "the API key may not call this API")
        return {"principalId": answer.get("principalId"), **answer.get("context", {})}

    def _artifact(self, key: str, query: dict[str, str]) -> _Reply:
        """A signed, unexpired link of one run's object (as a presigned GET would be): else 403, never the object."""
        run_id = query.get("run", "")
        signed = self._signer is not None and self._signer.verify(
            "get", key, run_id, query.get("expires", ""), query.get("signature", "")
        )
        if not signed or not run_id or not key.startswith(f"runs/{run_id}/"):
            return _error(HTTPStatus.FORBIDDEN, "forbidden", "this link is not signed for this object, or has expired")
        try:
            data = self.stack.deps.objects.get(key)
        except FileNotFoundError:
            return _error(HTTPStatus.NOT_FOUND, "not_found", f"no artifact {key}")
        headers = {"Content-Type": "application/octet-stream"}
        if query.get("filename"):
            headers["Content-Disposition"] = content_disposition(query["filename"])
        return _Reply(HTTPStatus.OK.value, headers, data)

    def _upload(self, key: str, query: dict[str, str], body: bytes) -> _Reply:
        """``PUT`` of a signed upload link: exactly the signed byte count, to a key under the tenant's prefix."""
        tenant, size = query.get("tenant", ""), query.get("size", "")
        signed = self._signer is not None and self._signer.verify(
            "put", key, f"{tenant}\n{size}", query.get("expires", ""), query.get("signature", "")
        )
        if not signed or not tenant or not key.startswith(tenant_prefix(tenant)):
            return _error(
                HTTPStatus.FORBIDDEN, "forbidden", "this upload link is not signed for this key, or has expired"
            )
        if str(len(body)) != size:
            return _error(
                HTTPStatus.BAD_REQUEST, "size_mismatch", f"the link is for {size} bytes; {len(body)} were sent"
            )
        self.stack.deps.objects.put(key, body)
        return _Reply(HTTPStatus.OK.value, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b"")  # noqa: S324 - S3's ETag

    def _admin(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply:
        from sandcastle.api.auth import header
        from sandcastle.store.keys import ApiKeyStore

        given = header(headers, ADMIN_HEADER) or ""
        if not self.admin_token or not hmac.compare_digest(given, self.admin_token):
            return _error(HTTPStatus.UNAUTHORIZED, "unauthorized", f"send the serve state file's {ADMIN_HEADER}")
        keys = ApiKeyStore(self.stack.deps.settings.table_name)
        if method == "POST" and path == "/local-admin/keys":
            try:
                tenant = json.loads(body or b"{}").get("tenant") or "default"
            except (ValueError, AttributeError):
                return _error(HTTPStatus.BAD_REQUEST, "malformed_json", 'send {"tenant": "..."}')
            try:
                created = keys.create(str(tenant))
            except ValueError as error:
                return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_failed", str(error), "tenant")
            return _Reply.json(HTTPStatus.CREATED, created.model_dump(mode="json"))
        found = re.fullmatch(r"/local-admin/keys/([^/]+)/revoke", path)
        if method == "POST" and found:
            revoked = keys.revoke(unquote(found.group(1)))
            if revoked is None:
                return _error(HTTPStatus.NOT_FOUND, "not_found", f"no API key {found.group(1)}")
            with self._cache_lock:
                self._cache.clear()  # a local convenience: revocation takes effect at once
            return _Reply.json(HTTPStatus.OK, revoked.model_dump(mode="json"))
        return _error(HTTPStatus.NOT_FOUND, "not_found", f"no route {method} {path}")


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def json(cls, status: HTTPStatus, payload: Any) -> _Reply:
        return cls(status.value, {"Content-Type": "application/json"}, json.dumps(payload).encode())

    @classmethod
    def of_proxy_result(cls, result: dict[str, Any]) -> _Reply:
        headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(str(v) for v in values)
        body = result.get("body") or ""
        data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        return cls(int(result.get("statusCode", 502)), headers, data)


def _query(query: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}


def _drain(stream: Any, length: int) -> None:
    """Read and drop ``length`` bytes, so the client can finish sending and read the answer."""
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            return
        length -= len(chunk)


def _error(status: HTTPStatus, code: str, message: str, field: str | None = None) -> _Reply:
    payload = {"error": code, "message": message, **({"field": field} if field else {})}
    return _Reply.json(status, payload)


class _GatewayServer(ThreadingHTTPServer):
    """A thread per connection; a listen backlog for many clients at once (the stdlib's 5 resets the
    sixth simultaneous connection)."""

    daemon_threads = True
    request_queue_size = 128


class _RequestHandler(BaseHTTPRequestHandler):
    gateway: LocalGateway
    protocol_version = "HTTP/1.1"
    server_version = "sandcastle-local-gateway"
    disable_nagle_algorithm = True  # TCP_NODELAY: no Nagle/delayed-ACK stall on a kept-alive connection
    wbufsize = 64 * 1024  # buffered: a reply's headers and body leave together, flushed after each request

    def _serve(self) -> None:
        try:
            length = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            length = -1
        if length < 0:
            reply = _error(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a number")
            self.close_connection = True
        elif length > MAX_BODY_BYTES:  # API Gateway's own limit: the API function never sees the request
            _drain(self.rfile, length)
            reply = _error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "payload_too_large",
                "the request body is too large; upload large input files to S3",
            )
        else:
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name, value in self.headers.items()}
            try:
                reply = self.gateway.handle(self.command, self.path, headers, body, self.client_address[0])
            except Exception as error:  # the gateway itself failed: a 502, as API Gateway would say
                name = type(error).__name__
                reply = _error(HTTPStatus.BAD_GATEWAY, "bad_gateway", f"the API function failed: {name}")
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass
