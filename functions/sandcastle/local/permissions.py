"""Each function's IAM role, enforced in the local runtime: a call its role does not allow fails as in AWS.

While the local runtime dispatches a Lambda invocation to a handler, every boto3 call that handler
makes (on its thread) is mapped to the IAM action(s) and resource ARN(s) AWS would authorize —
``dynamodb:PutItem`` on ``table/<name>``, ``s3:PutObject`` on ``<bucket>/<key>``,
``states:StartExecution`` on the state machine, ``events:PutEvents`` on the bus,
``iam:PassRole`` on the role a schedule is created with — and evaluated against the policy
documents of that function's role in the SAM-transformed ``template.yaml``. A call the role does
not allow raises botocore's ``ClientError`` (``AccessDeniedException``, ``AccessDenied`` for S3)
before it reaches the emulated service, as AWS would answer it; so a missing grant fails a run or
a test locally rather than on the first deploy.

A call this module cannot map to an IAM action is refused too (say which action it needs in
``_MAPPERS``): an unknown call is not silently allowed.

Why not moto's own IAM enforcement (``INITIAL_NO_AUTH_ACTION_COUNT``): in moto 5.2 it authorizes
the signing access key of a moto IAM user or assumed role, so every function would need credentials
of its own on its thread, and by its own notes (``moto/iam/access_control.py``) it does not support
the Resource and Condition parts of policies — most services' actions are checked against ``*``
(``core/authorization.py``) — so no ``dynamodb:LeadingKeys``, no ``runs/*`` prefix, no
``iam:PassedToService``, and no per-item actions of a DynamoDB transaction. Evaluating the
template's statements here is a page of code that knows exactly what each call needs. (The
libraries around IAM — policy linters, action catalogues such as policy_sentry — list actions and
their resource types; none turns a boto3 call's parameters into the ARNs and condition keys AWS
evaluates, which is the part that matters here.)

Not checked, on purpose: calls made outside a handler (the runtime creating tables and state
machines, the emulated triggers and schedulers polling), presigned URLs (they make no call; the
GET they sign is authorized when it is made), and the managed policies SAM attaches to every role
(logging and X-Ray, which the functions do not use through boto3). Bucket policies and resource
policies are not evaluated: this checks what the function's own role grants.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlparse

from botocore.exceptions import ClientError

#: boto3 service name → IAM action prefix, where they differ.
_IAM_PREFIX = {"stepfunctions": "states"}

#: Error codes AWS answers a denied call with.
_DENIED_CODE = {"s3": "AccessDenied"}


@dataclass(frozen=True)
class AccessRequest:
    """One IAM authorization a call needs: an action on a resource, with the condition keys it carries."""

    action: str
    resource: str
    context: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class UnmappedCall(Exception):
    """The permission check does not know which IAM action a call needs."""


# ---------------------------------------------------------------- evaluating policies


@functools.lru_cache(maxsize=4096)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    """An IAM wildcard (``*`` any run, ``?`` one character) as a regular expression."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return bool(_pattern(pattern, ignore_case).match(value))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, tuple[str, ...]]) -> bool:
    """One condition operator on one key, with IAM's semantics for ``ForAllValues``/``ForAnyValue``/``IfExists``."""
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    present = key in context
    values = list(context.get(key, ()))
    patterns = [str(item) for item in _as_list(expected)]

    if name == "Null":  # true: the key must be absent
        return (not present) == (str(expected).lower() == "true")
    compare = _OPERATORS.get(name)
    if compare is None:
        raise ValueError(f"the local permission check does not evaluate the condition operator {operator}")
    negated = name.startswith(("StringNot", "ArnNot"))

    def one(value: str) -> bool:
        matched = any(compare(pattern, value) for pattern in patterns)
        return not matched if negated else matched

    if qualifier == "ForAllValues":
        return all(one(value) for value in values)  # true when the key is absent, as in IAM
    if qualifier == "ForAnyValue":
        return any(one(value) for value in values)
    if not present:
        return if_exists or negated  # a negated operator holds for an absent key, as in IAM
    return all(one(value) for value in values) if negated else any(one(value) for value in values)


_OPERATORS: dict[str, Any] = {
    "StringEquals": lambda pattern, value: pattern == value,
    "StringNotEquals": lambda pattern, value: pattern == value,
    "StringEqualsIgnoreCase": lambda pattern, value: pattern.lower() == value.lower(),
    "StringLike": lambda pattern, value: wildcard_match(pattern, value),
    "StringNotLike": lambda pattern, value: wildcard_match(pattern, value),
    "ArnEquals": lambda pattern, value: pattern == value,
    "ArnNotEquals": lambda pattern, value: pattern == value,
    "ArnLike": lambda pattern, value: wildcard_match(pattern, value),
    "ArnNotLike": lambda pattern, value: wildcard_match(pattern, value),
    "Bool": lambda pattern, value: pattern.lower() == value.lower(),
}


@dataclass(frozen=True)
class Statement:
    """One statement of a policy document."""

    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sid: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Statement:
        if "NotAction" in raw or "NotResource" in raw or "Principal" in raw:
            raise ValueError(f"the local permission check does not evaluate statement {raw.get('Sid', raw)!r}")
        return cls(
            effect=str(raw["Effect"]),
            actions=tuple(str(a) for a in _as_list(raw.get("Action"))),
            resources=tuple(str(r) for r in _as_list(raw.get("Resource"))),
            condition=dict(raw.get("Condition") or {}),
            sid=str(raw.get("Sid", "")),
        )

    def applies_to(self, request: AccessRequest) -> bool:
        return (
            any(wildcard_match(action, request.action, ignore_case=True) for action in self.actions)
            and any(wildcard_match(resource, request.resource) for resource in self.resources)
            and all(
                _condition_holds(operator, key, expected, request.context)
                for operator, keys in self.condition.items()
                for key, expected in keys.items()
            )
        )


@dataclass(frozen=True)
class Policy:
    """The statements of one role's policies, evaluated as IAM does: an explicit Deny wins, else any Allow."""

    statements: tuple[Statement, ...]

    @classmethod
    def from_documents(cls, documents: list[Mapping[str, Any]]) -> Policy:
        return cls(tuple(Statement.parse(s) for doc in documents for s in _as_list(doc.get("Statement"))))

    def allows(self, request: AccessRequest) -> bool:
        applying = [s for s in self.statements if s.applies_to(request)]
        return any(s.effect == "Allow" for s in applying) and not any(s.effect == "Deny" for s in applying)


# ---------------------------------------------------------------- what a call needs


@dataclass(frozen=True)
class Account:
    """Where ARNs point: the region, the account and each table's partition key attribute."""

    region: str
    account_id: str
    partition_keys: Mapping[str, str] = field(default_factory=dict)
    """Table name → its partition (HASH) key attribute, for ``dynamodb:LeadingKeys``."""
    index_partition_keys: Mapping[tuple[str, str], str] = field(default_factory=dict)


def requests_for(service: str, operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest]:
    """The IAM authorizations AWS checks for one API call; ``UnmappedCall`` when this module does not know."""
    mapper = _MAPPERS.get(service)
    if mapper is None:
        raise UnmappedCall(f"{service}.{operation}")
    requests = mapper(operation, params, account)
    if requests is None:
        raise UnmappedCall(f"{service}.{operation}")
    return requests


def _attribute_string(value: Any) -> str:
    """A key attribute's value, typed (``{"S": "x"}``, a low-level client) or plain (a resource)."""
    if isinstance(value, Mapping) and len(value) == 1:
        ((_, inner),) = value.items()
        return str(inner)
    return str(value)


def _dynamodb(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    def table_arn(table: str, index: str | None = None) -> str:
        if table.startswith("arn:"):
            table = table.rsplit("/", 1)[-1]
        arn = f"arn:aws:dynamodb:{account.region}:{account.account_id}:table/{table}"
        return f"{arn}/index/{index}" if index else arn

    def leading(table: str, items: list[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
        attribute = account.partition_keys.get(table)
        if attribute is None:
            return {}
        return {
            "dynamodb:LeadingKeys": tuple(_attribute_string(item[attribute]) for item in items if attribute in item)
        }

    action = f"dynamodb:{operation}"
    table = str(params.get("TableName", ""))
    if operation in ("GetItem", "UpdateItem", "DeleteItem"):
        return [AccessRequest(action, table_arn(table), leading(table, [params.get("Key", {})]))]
    if operation == "PutItem":
        return [AccessRequest(action, table_arn(table), leading(table, [params.get("Item", {})]))]
    if operation in ("Query", "Scan"):
        index = params.get("IndexName")
        context: dict[str, tuple[str, ...]] = {}
        if operation == "Query":
            attribute = account.index_partition_keys.get((table, index)) if index else account.partition_keys.get(table)
            value = _query_partition_value(params, attribute) if attribute else None
            if value is not None:
                context["dynamodb:LeadingKeys"] = (value,)
        return [AccessRequest(action, table_arn(table, index), context)]
    if operation in ("DescribeTable", "DescribeTimeToLive", "DescribeContinuousBackups"):
        return [AccessRequest(action, table_arn(table))]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        # No "Transact" action exists: each item needs the action of its own kind on its table.
        kinds = {
            "Put": "PutItem",
            "Update": "UpdateItem",
            "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheckItem",
        }
        kinds["Get"] = "GetItem"
        requests = []
        for item in params.get("TransactItems", []):
            ((kind, body),) = item.items()
            name = str(body["TableName"])
            key = body.get("Item") if kind == "Put" else body.get("Key")
            requests.append(AccessRequest(f"dynamodb:{kinds[kind]}", table_arn(name), leading(name, [key or {}])))
        return requests
    if operation == "BatchGetItem":
        return [
            AccessRequest(action, table_arn(name), leading(name, list(body.get("Keys", []))))
            for name, body in params.get("RequestItems", {}).items()
        ]
    if operation == "BatchWriteItem":
        requests = []
        for name, writes in params.get("RequestItems", {}).items():
            keys = [w.get("PutRequest", {}).get("Item") or w.get("DeleteRequest", {}).get("Key") or {} for w in writes]
            requests.append(AccessRequest(action, table_arn(name), leading(name, keys)))
        return requests
    return None


def _query_partition_value(params: Mapping[str, Any], attribute: str) -> str | None:
    """The partition key value a ``KeyConditionExpression`` names (``pk = :pk`` or ``#n = :v``)."""
    expression = params.get("KeyConditionExpression")
    if not isinstance(expression, str):
        return None
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    for name, placeholder in re.findall(r"(#?[\w.-]+)\s*=\s*(:[\w]+)", expression):
        if names.get(name, name) == attribute and placeholder in values:
            return _attribute_string(values[placeholder])
    return None


def _s3(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    bucket = str(params.get("Bucket", ""))
    bucket_arn = f"arn:aws:s3:::{bucket}"
    object_arn = f"{bucket_arn}/{params.get('Key', '')}"
    versioned = "VersionId" in params
    if operation in ("GetObject", "HeadObject"):
        return [AccessRequest("s3:GetObjectVersion" if versioned else "s3:GetObject", object_arn)]
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        requests = [AccessRequest("s3:PutObject", object_arn)]
        if params.get("ACL"):
            requests.append(AccessRequest("s3:PutObjectAcl", object_arn))
        return requests
    if operation in ("CopyObject", "UploadPartCopy"):
        source = params.get("CopySource")
        if isinstance(source, str):
            path, _, query = unquote(source).lstrip("/").partition("?versionId=")
            source_arn, source_versioned = f"arn:aws:s3:::{path}", bool(query)
        else:
            source = source or {}
            source_arn = f"arn:aws:s3:::{source.get('Bucket')}/{source.get('Key')}"
            source_versioned = "VersionId" in source
        return [
            AccessRequest("s3:PutObject", object_arn),
            AccessRequest("s3:GetObjectVersion" if source_versioned else "s3:GetObject", source_arn),
        ]
    if operation in ("ListObjectsV2", "ListObjects", "HeadBucket"):
        context = {"s3:prefix": (str(params["Prefix"]),)} if "Prefix" in params else {}
        return [AccessRequest("s3:ListBucket", bucket_arn, context)]
    if operation == "ListObjectVersions":
        return [AccessRequest("s3:ListBucketVersions", bucket_arn)]
    if operation == "GetBucketLocation":
        return [AccessRequest("s3:GetBucketLocation", bucket_arn)]
    if operation == "DeleteObject":
        return [AccessRequest("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", object_arn)]
    if operation == "DeleteObjects":
        return [
            AccessRequest(
                "s3:DeleteObjectVersion" if "VersionId" in entry else "s3:DeleteObject", f"{bucket_arn}/{entry['Key']}"
            )
            for entry in params.get("Delete", {}).get("Objects", [])
        ]
    if operation == "AbortMultipartUpload":
        return [AccessRequest("s3:AbortMultipartUpload", object_arn)]
    if operation == "ListParts":
        return [AccessRequest("s3:ListMultipartUploadParts", object_arn)]
    if operation in ("GetObjectTagging", "PutObjectTagging", "PutObjectAcl", "GetObjectAcl"):
        return [AccessRequest(f"s3:{operation}", object_arn)]
    if operation in ("PutBucketLifecycleConfiguration", "GetBucketLifecycleConfiguration"):
        verb = operation.removesuffix("BucketLifecycleConfiguration")
        return [AccessRequest(f"s3:{verb}LifecycleConfiguration", bucket_arn)]
    return None


def _states(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    action = f"states:{operation}"
    if operation in ("StartExecution", "StartSyncExecution", "ListExecutions", "DescribeStateMachine"):
        return [AccessRequest(action, str(params.get("stateMachineArn", "")))]
    if operation in ("StopExecution", "DescribeExecution", "GetExecutionHistory"):
        return [AccessRequest(action, str(params.get("executionArn", "")))]
    if operation in ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"):
        return [AccessRequest(action, "*")]  # these actions take no resource
    return None


def _events(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation != "PutEvents":
        return None
    buses = {str(entry.get("EventBusName") or "default") for entry in params.get("Entries", [])}
    return [
        AccessRequest(
            "events:PutEvents",
            bus if bus.startswith("arn:") else f"arn:aws:events:{account.region}:{account.account_id}:event-bus/{bus}",
        )
        for bus in sorted(buses)
    ]


def _scheduler(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    prefix = f"arn:aws:scheduler:{account.region}:{account.account_id}"
    if operation in ("CreateSchedule", "UpdateSchedule", "GetSchedule", "DeleteSchedule"):
        schedule = f"{prefix}:schedule/{params.get('GroupName') or 'default'}/{params.get('Name', '')}"
        requests = [AccessRequest(f"scheduler:{operation}", schedule)]
        role = (params.get("Target") or {}).get("RoleArn")
        if operation in ("CreateSchedule", "UpdateSchedule") and role:
            requests.append(
                AccessRequest("iam:PassRole", str(role), {"iam:PassedToService": ("scheduler.amazonaws.com",)})
            )
        return requests
    if operation == "ListSchedules":
        return [AccessRequest("scheduler:ListSchedules", "*")]
    if operation == "GetScheduleGroup":
        return [AccessRequest(f"scheduler:{operation}", f"{prefix}:schedule-group/{params.get('Name', '')}")]
    return None


def _secretsmanager(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation not in ("GetSecretValue", "DescribeSecret"):
        return None
    secret = str(params.get("SecretId", ""))
    if not secret.startswith("arn:"):
        secret = f"arn:aws:secretsmanager:{account.region}:{account.account_id}:secret:{secret}"
    return [AccessRequest(f"secretsmanager:{operation}", secret)]


def _ssm(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation == "GetParameter":
        names = [str(params.get("Name", ""))]
    elif operation == "GetParameters":
        names = [str(name) for name in params.get("Names", [])]
    else:
        return None
    prefix = f"arn:aws:ssm:{account.region}:{account.account_id}:parameter/"
    return [
        AccessRequest(f"ssm:{operation}", name if name.startswith("arn:") else prefix + name.lstrip("/"))
        for name in names
    ]


def _sts(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation == "GetCallerIdentity":
        return []  # needs no permission in AWS either
    if operation == "AssumeRole":
        role = str(params.get("RoleArn", ""))
        requests = [AccessRequest("sts:AssumeRole", role)]
        if params.get("Tags") or params.get("TransitiveTagKeys"):
            requests.append(AccessRequest("sts:TagSession", role))
        return requests
    return None


def _lambda(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation != "Invoke":
        return None
    name = str(params.get("FunctionName", ""))
    if not name.startswith("arn:"):
        name = f"arn:aws:lambda:{account.region}:{account.account_id}:function:{name}"
    return [AccessRequest("lambda:InvokeFunction", name)]


def _sqs(operation: str, params: Mapping[str, Any], account: Account) -> list[AccessRequest] | None:
    if operation not in ("SendMessage", "SendMessageBatch", "ReceiveMessage", "DeleteMessage"):
        return None
    path = urlparse(str(params.get("QueueUrl", ""))).path.strip("/").split("/")
    owner, name = (path[0], path[-1]) if len(path) >= 2 else (account.account_id, path[-1])
    action = "sqs:SendMessage" if operation == "SendMessageBatch" else f"sqs:{operation}"
    return [AccessRequest(action, f"arn:aws:sqs:{account.region}:{owner}:{name}")]


_MAPPERS = {
    "dynamodb": _dynamodb,
    "s3": _s3,
    "stepfunctions": _states,
    "events": _events,
    "scheduler": _scheduler,
    "secretsmanager": _secretsmanager,
    "ssm": _ssm,
    "sts": _sts,
    "lambda": _lambda,
    "sqs": _sqs,
}


# ---------------------------------------------------------------- enforcing it in the local runtime


@dataclass(frozen=True)
class Identity:
    """The function a handler thread is acting as, and what its role allows."""

    function: str
    role_name: str
    policy: Policy


def access_denied(
    service: str, operation: str, identity: Identity, request: AccessRequest, account_id: str, message: str = ""
) -> ClientError:
    """The error AWS answers a call the caller's role does not allow with."""
    message = message or (
        f"User: arn:aws:sts::{account_id}:assumed-role/{identity.role_name}/{identity.function} is not authorized "
        f"to perform: {request.action} on resource: {request.resource} because no identity-based policy allows "
        f"the {request.action} action"
    )
    code = _DENIED_CODE.get(service, "AccessDeniedException")
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 403}}, operation
    )


class PermissionGuard:
    """Checks every boto3 call a handler makes against its function's role (see the module's docstring)."""

    def __init__(self, identities: Mapping[str, Identity], account: Account) -> None:
        self.identities = dict(identities)
        self.account = account
        self.checked: Counter[tuple[str, str]] = Counter()
        """(function, ``service.Operation``) → calls checked and allowed."""
        self.denied: list[tuple[str, AccessRequest]] = []
        """(function, the request refused), in order."""
        self._lock = threading.Lock()
        self._current = threading.local()
        self._patch: Any = None

    @classmethod
    def from_template(cls, template: Any, account_id: str) -> PermissionGuard:
        """Each function's role from the SAM-transformed ``template`` (a ``local.template.Template``)."""
        identities = {}
        for logical_id in template.of_type("AWS::Serverless::Function"):
            identities[logical_id] = Identity(
                function=template.physical_name(logical_id),
                role_name=f"{logical_id}Role",
                policy=Policy.from_documents(template.function_role_policies(logical_id)),
            )
        partition_keys: dict[str, str] = {}
        index_keys: dict[tuple[str, str], str] = {}
        for logical_id, resource in template.of_type("AWS::DynamoDB::Table").items():
            properties = template.resolve(resource["Properties"])
            name = template.physical_name(logical_id)
            partition_keys[name] = _hash_key(properties["KeySchema"])
            for index in properties.get("GlobalSecondaryIndexes", []):
                index_keys[(name, index["IndexName"])] = _hash_key(index["KeySchema"])
        account = Account(template.region, account_id, partition_keys, index_keys)
        return cls(identities, account)

    # --- lifecycle ---

    def start(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        guard = self

        def make_api_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            identity = guard.current
            if identity is not None:
                guard.check(identity, client.meta.service_model.service_name, operation_name, api_params)
            return original(client, operation_name, api_params)

        self._patch = mock.patch.object(BaseClient, "_make_api_call", make_api_call)
        self._patch.start()

    def stop(self) -> None:
        if self._patch is not None:
            self._patch.stop()
            self._patch = None

    # --- acting as a function ---

    @property
    def current(self) -> Identity | None:
        stack = getattr(self._current, "stack", None)
        return stack[-1] if stack else None

    @contextmanager
    def acting_as(self, logical_id: str) -> Iterator[Identity]:
        """Check this thread's calls against ``logical_id``'s role until the block ends."""
        identity = self.identities[logical_id]
        stack = self._current.__dict__.setdefault("stack", [])
        stack.append(identity)
        try:
            yield identity
        finally:
            stack.pop()

    def check(self, identity: Identity, service: str, operation: str, params: Mapping[str, Any]) -> None:
        """Raise the ``ClientError`` AWS would when ``identity``'s role does not allow the call."""
        try:
            requests = requests_for(service, operation, params, self.account)
        except UnmappedCall:
            request = AccessRequest(f"{_IAM_PREFIX.get(service, service)}:{operation}", "*")
            with self._lock:
                self.denied.append((identity.function, request))
            message = (
                f"the local runtime does not know which IAM action {service}.{operation} needs, so it refuses the "
                f"call; map it in sandcastle/local/permissions.py ({identity.function})"
            )
            raise access_denied(service, operation, identity, request, self.account.account_id, message) from None
        for request in requests:
            if not identity.policy.allows(request):
                with self._lock:
                    self.denied.append((identity.function, request))
                raise access_denied(service, operation, identity, request, self.account.account_id)
        with self._lock:
            self.checked[(identity.function, f"{service}.{operation}")] += 1


def _hash_key(key_schema: list[Mapping[str, str]]) -> str:
    return next(key["AttributeName"] for key in key_schema if key["KeyType"] == "HASH")
