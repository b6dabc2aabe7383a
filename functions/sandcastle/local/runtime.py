"""The local runtime: AWS emulated in-process by moto, the real ASL executing, handlers dispatched in-process.

    with LocalRuntime() as runtime:
        run = runtime.submit(RunRequest(instructions="...", playbook=[...]))
        for event in runtime.follow(run.run_id):
            print(event.kind, event.data)

Everything is derived from ``template.yaml``: tables (keys, indexes, TTL), buckets, each
function's handler string and environment, the state machine definition and its
substitutions. A Lambda invocation — from the state machine or from ``invoke`` — is routed by
the function's ``Handler`` string to the in-process Python function, with a Lambda-like
context. The emulated AWS lives as long as the runtime object: state is in memory.

Sandboxes: the runtime uses the ``e2b`` backend — the real e2b SDK over HTTP — as the cloud
does. Without ``E2B_API_KEY`` it starts the local E2B-compatible sandbox server
(``sandcastle.e2b_server``: bubblewrap workspaces under ``<home>/sandboxes``) on a free loopback
port and points the SDK at it; with ``E2B_API_KEY`` (and no ``E2B_API_URL``) the same code goes to
E2B's cloud. ``SANDBOX_BACKEND=local`` selects the in-process bubblewrap backend instead.

Permissions: while a handler runs, every boto3 call it makes is checked against the policies of
its function's role in the SAM-transformed template (``local/permissions.py``); a call the role
does not allow fails with ``AccessDenied`` as in AWS. ``enforce_permissions=False`` turns it off.

Differences from the cloud, on purpose: Powertools tracing and metrics are off; a function's
``Timeout`` is reported through ``get_remaining_time_in_millis`` but not enforced.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from sandcastle.errors import LambdaInvocationError
from sandcastle.local.changes import ChangeSignal
from sandcastle.local.moto_patches import MotoPatches
from sandcastle.local.permissions import PermissionGuard
from sandcastle.local.template import ACCOUNT_ID, FunctionSpec, Template
from sandcastle.runs.records import Run
from sandcastle.runs.requests import RunRequest
from sandcastle.runs.transcript import Event
from sandcastle.wiring import Dependencies, get_dependencies, reset_dependencies

if TYPE_CHECKING:
    from sandcastle.e2b_server import SandboxServer
    from sandcastle.local.gateway import LocalGateway
    from sandcastle.local.triggers import LocalTriggers

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
STATE_MACHINE = "AgentRunStateMachine"

#: Resource names the runtime always sets; any other variable already in the environment wins
#: over the template's value (so OPENAI_BASE_URL, DEFAULT_MODEL, ... can be set by the user).
_RESOURCE_VARIABLES = frozenset({"TABLE_NAME", "ARTIFACTS_BUCKET", "STATE_MACHINE_ARN"})


def default_home() -> Path:
    """Where the local runtime keeps sandboxes and logs: ``$SANDCASTLE_HOME`` or ``./.sandcastle``."""
    return Path(os.environ.get("SANDCASTLE_HOME", ".sandcastle"))


@dataclass
class LocalLambdaContext:
    """What a handler sees of the Lambda context."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


@dataclass
class Stats:
    """What the runtime counted: Lambda invocations per function, AWS API calls per operation."""

    invocations: Counter[str] = field(default_factory=Counter)
    api_calls: Counter[str] = field(default_factory=Counter)
    largest_payload_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_handler: threading.local = field(default_factory=threading.local)

    def reset(self) -> None:
        with self._lock:
            self.invocations.clear()
            self.api_calls.clear()
            self.largest_payload_bytes = 0


class LocalRuntime:
    """The stack of ``template.yaml``, emulated in this process."""

    def __init__(
        self,
        *,
        template_path: Path = DEFAULT_TEMPLATE,
        home: Path | None = None,
        region: str = "us-east-1",
        environment: dict[str, str] | None = None,
        log_level: str = "WARNING",
        log_file: Path | None = None,
        enforce_permissions: bool = True,
    ) -> None:
        self.home = (home or default_home()).resolve()
        self.region = region
        self.template = Template.load(template_path, region=region)
        self.functions: dict[str, FunctionSpec] = self.template.functions()
        self._by_name = {spec.name: spec for spec in self.functions.values()}
        self._extra_environment = dict(environment or {})
        self._log_level = log_level
        self._log_file = log_file
        self._handlers: dict[str, Callable[[dict, Any], Any]] = {}
        self._handlers_lock = threading.Lock()
        self._saved_environ: dict[str, str] | None = None
        self._mock: Any = None
        self._patch: Any = None
        self._serial_dynamodb: Any = None
        self.changes = ChangeSignal()
        """Bumped after every emulated DynamoDB write: in-process followers wait on it instead of polling."""
        self.executions_ended = ChangeSignal()
        """Bumped whenever an execution ends (``local/moto_patches.py``)."""
        self._moto_patches = MotoPatches(self.executions_ended)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self.permissions: PermissionGuard | None = (
            PermissionGuard.from_template(self.template, ACCOUNT_ID) if enforce_permissions else None
        )
        """Each function's template role, enforced on the calls its handler makes (``local/permissions.py``)."""
        self.stats = Stats()
        self.gateway: LocalGateway | None = None
        self.triggers: LocalTriggers | None = None
        """The one event bus (rules on events, uploads and execution status changes), the inbox folder and the
        scheduler (``local/triggers.py``)."""
        self.sandbox_server: SandboxServer | None = None
        """The local E2B-compatible sandbox server the ``e2b`` backend talks to (None: E2B's cloud, or ``local``)."""
        self._sandbox_environment: dict[str, str] = {}

    # --- lifecycle ---

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        import boto3
        from moto import mock_aws
        from moto.awslambda_simple.models import LambdaSimpleBackend

        self._saved_environ = dict(os.environ)
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
            }
        )
        self._mock = mock_aws(
            config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        )
        self._mock.start()
        try:
            self._moto_patches.start()  # before the state machine is created: it is parsed once, here
            boto3.setup_default_session(region_name=self.region)
            boto3.DEFAULT_SESSION.events.register("before-call", self._count_api_call)
            create_tables(self.template, self.deps_client("dynamodb"))
            create_buckets(self.template, self.deps_client("s3"))
            create_state_machines(self.template, self.deps_client("stepfunctions"))
            self._start_sandbox_server()
            os.environ.update(self._function_environment())
            runtime = self

            def invoke(
                backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any
            ) -> bytes:
                return runtime._dispatch(function_name, body, response_headers)

            self._patch = mock.patch.object(LambdaSimpleBackend, "invoke", invoke)
            self._patch.start()
            self._serial_dynamodb = _serialize_emulated_dynamodb(self.changes)
            self._serial_dynamodb.start()
            if self.permissions is not None:
                self.permissions.start()
            reset_dependencies()
            # The handlers' shared Powertools logger is made here (its logs routed below); each handler
            # module is imported at its first invocation, so a run imports only what it runs.
            importlib.import_module("sandcastle.handlers._observability")
            self._route_logs()
            self._start_triggers()
            # A client copies the session's event hooks when it is made: the ones made before the
            # triggers hooked PutObject, StopExecution, ... must not be reused.
            self._clients.clear()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.triggers is not None:
            self.triggers.stop()
            self.triggers = None
        if self.sandbox_server is not None:
            # Sandboxes outlive the runtime, as they would in the cloud: the next runtime on this
            # home adopts them, and the reaper ends the orphans.
            self.sandbox_server.stop(kill_sandboxes=False)
            self.sandbox_server = None
            self._sandbox_environment = {}
        if self._patch is not None:
            self._patch.stop()
            self._patch = None
        if self._serial_dynamodb is not None:
            self._serial_dynamodb.stop()
            self._serial_dynamodb = None
        if self.permissions is not None:
            self.permissions.stop()
        self._moto_patches.stop()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        if self._saved_environ is not None:
            os.environ.clear()
            os.environ.update(self._saved_environ)
            self._saved_environ = None
        import boto3

        boto3.DEFAULT_SESSION = None
        self._clients.clear()
        reset_dependencies()

    # --- what callers use ---

    @property
    def deps(self) -> Dependencies:
        """The same dependencies the handlers use in this process."""
        return get_dependencies()

    @property
    def state_machine_arn(self) -> str:
        return self.template.arn(STATE_MACHINE)

    def invoke(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Invoke a function (logical id or name) through the emulated Lambda API, as AWS would."""
        spec = self.functions.get(function) or self._by_name[function]
        response = self.deps_client("lambda").invoke(FunctionName=spec.arn, Payload=json.dumps(payload).encode())
        body = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            raise LambdaInvocationError(body.get("errorType", "Error"), body.get("errorMessage", ""))
        return body

    def deps_client(self, service: str) -> Any:
        """The runtime's own client of ``service``, made once (boto3 clients are thread-safe; making one costs ms)."""
        import boto3

        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = boto3.client(service, region_name=self.region)
            return self._clients[service]

    def submit(self, request: RunRequest) -> Run:
        """Submit a run (validated, stored QUEUED, its execution started)."""
        from sandcastle.runs.submit import submit_run

        return submit_run(request, self.deps)

    def get_run(self, run_id: str) -> Run:
        return self.deps.store.get_run(run_id)

    def events(self, run_id: str, after: str | None = None) -> list[Event]:
        return self.deps.store.list_events(run_id, after=after)

    def execution(self, run_id: str) -> dict[str, Any]:
        """The Step Functions execution of a run (named by its run id); ``ExecutionNotFound`` when it has none."""
        return self.deps.executions.describe(run_id)

    def follow(self, run_id: str, *, timeout_s: float = 600, poll_s: float = 0.05) -> Iterator[Event]:
        """Yield the run's events as they land, until it ends (or its execution stops without ending it)."""
        after: str | None = None
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.changes.version  # before the reads: a write landing after them ends the wait below
            for event in self.events(run_id, after=after):
                after = event.key
                yield event
            if self.get_run(run_id).status.terminal:
                for event in self.events(run_id, after=after):
                    yield event
                return
            if self.execution(run_id)["status"] != "RUNNING" and not self.get_run(run_id).status.terminal:
                time.sleep(poll_s * 4)  # FailRun may be writing its last events
                if not self.get_run(run_id).status.terminal:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not end within {timeout_s} s")
            self.changes.wait(
                seen, timeout_s=poll_s * 20
            )  # woken by the next write; the timeout for a stopped execution

    def wait(self, run_id: str, *, timeout_s: float = 600) -> Run:
        """Block until the run ends and its execution has stopped; return the run."""
        deadline = time.monotonic() + timeout_s
        for _ in self.follow(run_id, timeout_s=timeout_s):
            pass
        # The run's status is written inside the last state; the execution ends just after.
        while True:
            seen = self.executions_ended.version
            if self.execution(run_id)["status"] != "RUNNING" or time.monotonic() >= deadline:
                break
            self.executions_ended.wait(seen, timeout_s=1.0)
        return self.get_run(run_id)

    # --- the HTTP API and the triggers ---

    def start_gateway(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        admin_token: str | None = None,
        authorizer_ttl_s: int | None = None,
    ) -> LocalGateway:
        """Serve the API on ``host:port`` (0: any free port) until the runtime stops; artifact links point at it."""
        from sandcastle.local.gateway import LocalGateway

        link_secret = secrets.token_urlsafe(32)  # signs local download/upload links; lives in this process only
        self.gateway = LocalGateway(
            self,
            host=host,
            port=port,
            admin_token=admin_token,
            authorizer_ttl_s=authorizer_ttl_s,
            link_secret=link_secret,
        )
        os.environ["LOCAL_ARTIFACTS_BASE_URL"] = self.gateway.url
        os.environ["LOCAL_LINK_SECRET"] = link_secret
        reset_dependencies()  # the settings now carry the gateway's URL
        return self.gateway.start()

    def _start_triggers(self) -> None:
        """Emulate the template's triggers: rules on events, uploads and execution ends; the inbox; the scheduler."""
        import boto3

        from sandcastle.local.triggers import LocalTriggers

        self.triggers = LocalTriggers(self, home=self.home)
        self.triggers.start(boto3.DEFAULT_SESSION.events)

    # --- building the stack ---

    def _function_environment(self) -> dict[str, str]:
        """One environment for all functions (they share this process): the template's, merged."""
        merged: dict[str, str] = {}
        for spec in self.functions.values():
            for name, value in spec.environment.items():
                if value == "":
                    continue
                if name in merged and merged[name] != value:
                    raise ValueError(
                        f"functions set {name} differently ({merged[name]!r} vs {value!r}); "
                        "the local runtime runs them in one process and needs one value"
                    )
                merged[name] = value
        environment = {
            name: value
            for name, value in merged.items()
            if name in _RESOURCE_VARIABLES or name not in self._saved_environ_or_empty
        }
        environment.update(
            {
                "SANDBOX_ROOT": str(self.home / "sandboxes"),
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": self._log_level,
                "REPOSITORY_ALLOW_LOCAL": "true",  # a path, or git:// and http:// on loopback
            }
        )
        if "SANDBOX_BACKEND" not in self._saved_environ_or_empty:
            environment["SANDBOX_BACKEND"] = "e2b"
        environment.update(self._sandbox_environment)
        environment.update(self._extra_environment)
        return environment

    def _start_sandbox_server(self) -> None:
        """Start the local E2B-compatible sandbox server, unless E2B's cloud, another server or ``local`` is chosen.

        The server's sandboxes live under ``<home>/sandboxes`` with the ``SANDBOX_*`` limits; the
        functions get ``E2B_API_URL``/``E2B_SANDBOX_URL`` pointing at it and a key made for it.
        """
        chosen = {**self._saved_environ_or_empty, **self._extra_environment}
        if chosen.get("SANDBOX_BACKEND", "e2b") != "e2b" or chosen.get("E2B_API_URL"):
            return
        if chosen.get("E2B_API_KEY") or chosen.get("E2B_API_KEY_SECRET_ARN"):
            return
        import secrets

        from sandcastle.config import Settings
        from sandcastle.e2b_server import SandboxServer
        from sandcastle.sandbox import build_sandbox_provider
        from sandcastle.sandbox.local_sandbox import LocalSandboxProvider

        root = self.home / "sandboxes"
        settings = Settings(sandbox_backend="local", sandbox_root=root)
        provider = build_sandbox_provider(settings)
        assert isinstance(provider, LocalSandboxProvider)
        api_key = f"local-{secrets.token_hex(16)}"
        self.sandbox_server = SandboxServer(root, api_key=api_key, provider=provider).start()
        self._sandbox_environment = {
            "SANDBOX_BACKEND": "e2b",
            "E2B_API_KEY": api_key,
            "E2B_API_URL": self.sandbox_server.url,
            "E2B_SANDBOX_URL": self.sandbox_server.url,
            "SANDBOX_INTERNET": "false",  # its sandboxes have no network: runs asking for it are refused
        }

    @property
    def _saved_environ_or_empty(self) -> dict[str, str]:
        return self._saved_environ or {}

    # --- Lambda dispatch ---

    def _dispatch(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        spec = self._by_name.get(name)
        if spec is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {
                    "errorType": "ResourceNotFoundException",
                    "errorMessage": f"no function {function_name} in template.yaml",
                }
            ).encode()
        raw = body.decode() if isinstance(body, bytes) else (body or "null")
        with self.stats._lock:
            self.stats.invocations[spec.logical_id] += 1
            self.stats.largest_payload_bytes = max(self.stats.largest_payload_bytes, len(raw))
        context = LocalLambdaContext(
            function_name=spec.name,
            invoked_function_arn=spec.arn,
            memory_limit_in_mb=spec.memory_mb,
            timeout_s=spec.timeout_s,
            log_group_name=f"/aws/lambda/{spec.name}",
        )
        self.stats._in_handler.active = True
        try:
            with self._acting_as(spec):
                result = self._handler(spec)(json.loads(raw), context)
        except Exception as error:  # a Lambda function error: the state machine sees its type
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)}).encode()
        finally:
            self.stats._in_handler.active = False
            # Metrics are disabled locally, so log_metrics never clears them; Powertools would print
            # the whole set once any metric reaches 100 values. (Imported here, not at the top: the
            # handlers' Powertools objects must be created after start() set the environment.)
            from sandcastle.handlers._observability import metrics

            metrics.clear_metrics()
        payload = json.dumps(result)
        with self.stats._lock:
            self.stats.largest_payload_bytes = max(self.stats.largest_payload_bytes, len(payload))
        return payload.encode()

    def _acting_as(self, spec: FunctionSpec) -> Any:
        """While the handler runs, its AWS calls are checked against its role (when enforcing)."""
        if self.permissions is None:
            return contextlib.nullcontext()
        return self.permissions.acting_as(spec.logical_id)

    def _handler(self, spec: FunctionSpec) -> Callable[[dict, Any], Any]:
        handler = self._handlers.get(spec.handler)
        if handler is None:
            with self._handlers_lock:  # a Map's first tool calls arrive together
                if spec.handler not in self._handlers:
                    module_name, _, attribute = spec.handler.rpartition(".")
                    self._handlers[spec.handler] = getattr(importlib.import_module(module_name), attribute)
                handler = self._handlers[spec.handler]
        return handler

    def _route_logs(self) -> None:
        """Send the functions' logs to ``log_file`` (when given) instead of stdout.

        The expected ``RunFailed`` Fail state is logged by moto's interpreter as an error; the
        run's own transcript records every failure, so that logger is quietened.
        """
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        if self._log_file is None:
            return
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        service_logger = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME", "service_undefined"))
        for handler in list(service_logger.handlers):
            file_handler = logging.FileHandler(self._log_file)
            file_handler.setFormatter(handler.formatter)
            service_logger.removeHandler(handler)
            service_logger.addHandler(file_handler)

    def _count_api_call(self, model: Any, **_: Any) -> None:
        """Count the AWS calls handlers make (not the runtime's own polling)."""
        if not getattr(self.stats._in_handler, "active", False):
            return
        with self.stats._lock:
            self.stats.api_calls[f"{model.service_model.service_name}.{model.name}"] += 1


def create_tables(template: Template, client: Any) -> None:
    """Create the template's DynamoDB tables (keys, indexes, TTL) with ``client``."""
    for logical_id, resource in template.of_type("AWS::DynamoDB::Table").items():
        properties = template.resolve(resource["Properties"])
        name = template.physical_name(logical_id)
        request: dict[str, Any] = {
            "TableName": name,
            "KeySchema": properties["KeySchema"],
            "AttributeDefinitions": properties["AttributeDefinitions"],
            "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if properties.get("GlobalSecondaryIndexes"):
            request["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
        client.create_table(**request)
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
            )


def create_buckets(template: Template, client: Any) -> None:
    """Create the template's S3 buckets with ``client``."""
    for logical_id in template.of_type("AWS::S3::Bucket"):
        client.create_bucket(Bucket=template.physical_name(logical_id))


def create_state_machines(template: Template, client: Any) -> None:
    """Create the template's state machines, definitions substituted, with ``client``."""
    for logical_id, resource in template.of_type("AWS::Serverless::StateMachine").items():
        client.create_state_machine(
            name=template.physical_name(logical_id),
            definition=template.state_machine_definition(logical_id),
            roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{logical_id}Role",
            type=resource["Properties"].get("Type", "STANDARD"),
        )


_DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")


def _serialize_emulated_dynamodb(changes: ChangeSignal | None = None) -> Any:
    """A patch that lets one emulated DynamoDB request run at a time.

    DynamoDB is linearizable per item and its transactions are isolated; moto's emulation is
    neither when called from several threads (the Map's tool calls run on threads): a query can
    fail with "dictionary changed size during iteration", and a cancelled transaction restores a
    snapshot of the table that undoes another thread's commit. Serializing the emulated calls
    restores the guarantees the code relies on in the cloud. Only DynamoDB requests take the lock:
    they never call out to another service, so it cannot deadlock with a Lambda invocation.
    Every write bumps ``changes`` once it is done.
    """
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.process_request
    lock = threading.Lock()

    def process_request(stubber: Any, request: Any) -> Any:
        if "//dynamodb." not in str(request.url):
            return original(stubber, request)
        with lock:
            response = original(stubber, request)
        target = request.headers.get("X-Amz-Target") or b""
        if changes is not None and (target.decode() if isinstance(target, bytes) else target).endswith(
            _DYNAMODB_WRITES
        ):
            changes.bump()
        return response

    return mock.patch.object(BotocoreStubber, "process_request", process_request)
