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

A call signed with other credentials than the environment's (the function's own, as in Lambda) is
evaluated as AWS evaluates an assumed-role session: when a checked ``sts:AssumeRole`` returns, the
access key id it issued is recorded with the role, the session policy, the session tags and the
expiry. A call with that key is allowed only if the role's policies in the template *and* the session
policy allow it, with ``${aws:PrincipalTag/<key>}`` (and any other context key) filled in; a key no
checked ``AssumeRole`` issued, or an expired one, is refused as AWS refuses it. ``AssumeRole`` itself
needs ``sts:AssumeRole`` (and ``sts:TagSession`` with tags) from the caller's policies and the role's
trust policy to admit the caller (its principal, its conditions on ``aws:RequestTag/…``). For every S3
call, the Deny statements of the target bucket's policy apply (``Principal``, ``aws:PrincipalArn`` —
a session's is its role's — and ``aws:SecureTransport`` from the client's endpoint), to a function's
own calls and to a session's alike. So ``uploads/<tenant>/`` is confined by IAM alone, locally too.

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
(logging and X-Ray, which the functions do not use through boto3). Of resource policies, only the
Deny statements of bucket policies are evaluated (an Allow in one is refused when the template is
read, not silently ignored); queue policies, role tags, managed session policies (``PolicyArns``:
such an ``AssumeRole`` is refused), permission boundaries and SCPs are not.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlparse

from botocore.exceptions import ClientError

from sandcastle.errors import UnmappedCall

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


# ---------------------------------------------------------------- evaluating policies


def _wildcards(text: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


@functools.lru_cache(maxsize=4096)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    """An IAM wildcard (``*`` any run, ``?`` one character) as a regular expression."""
    return re.compile(f"^{_wildcards(text)}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return bool(_pattern(pattern, ignore_case).match(value))


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_LITERALS = {"*": "*", "?": "?", "$": "$"}


def _substitute(text: str, context: Mapping[str, tuple[str, ...]], *, wildcards: bool) -> str | None:
    """``text`` with its policy variables (``${aws:PrincipalTag/tenant}``) filled from the request's context.

    With ``wildcards``, a regular expression: the text around the variables keeps ``*``/``?`` as
    wildcards, a variable's value and ``${*}``/``${?}``/``${$}`` match literally. None when a variable
    has no single value in the context: then, as in IAM, the element it is in matches nothing.
    """
    parts: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(text):
        parts.append(_wildcards(text[position : match.start()]) if wildcards else text[position : match.start()])
        position = match.end()
        name = match.group(1)
        values = (_LITERALS[name],) if name in _LITERALS else context.get(name, ())
        if len(values) != 1:
            return None
        parts.append(re.escape(values[0]) if wildcards else values[0])
    parts.append(_wildcards(text[position:]) if wildcards else text[position:])
    return "".join(parts)


def _matches(pattern: str, value: str, context: Mapping[str, tuple[str, ...]], *, ignore_case: bool = False) -> bool:
    """IAM wildcard matching, with policy variables resolved from ``context`` (an unresolved one: no match)."""
    if "${" not in pattern:
        return wildcard_match(pattern, value, ignore_case=ignore_case)
    regex = _substitute(pattern, context, wildcards=True)
    if regex is None:
        return False
    return bool(re.match(f"^{regex}$", value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, tuple[str, ...]]) -> bool:
    """One condition operator on one key, with IAM's semantics for ``ForAllValues``/``ForAnyValue``/``IfExists``.

    Policy variables in the expected values are filled from ``context``; a condition naming one the
    request does not carry is false, as in IAM.
    """
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    present = key in context
    values = list(context.get(key, ()))

    if name == "Null":  # true: the key must be absent
        return (not present) == (str(expected).lower() == "true")
    kind = _OPERATORS.get(name)
    if kind is None:
        raise ValueError(f"the local permission check does not evaluate the condition operator {operator}")
    negated = name.startswith(("StringNot", "ArnNot"))
    patterns = []
    for item in _as_list(expected):
        text = str(item)
        if "${" in text:
            substituted = _substitute(text, context, wildcards=kind == "like")
            if substituted is None:
                return False
            if kind != "like":
                text = substituted  # a "like" pattern is matched with its variables by _matches
        patterns.append(text)

    def compare(pattern: str, value: str) -> bool:
        if kind == "like":
            return _matches(pattern, value, context)
        if kind == "equals":
            return pattern == value
        return pattern.lower() == value.lower()  # ignore case, Bool

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


#: Condition operator → how it compares (``like``: IAM wildcards).
_OPERATORS: dict[str, str] = {
    "StringEquals": "equals",
    "StringNotEquals": "equals",
    "StringEqualsIgnoreCase": "ignore_case",
    "StringLike": "like",
    "StringNotLike": "like",
    "ArnEquals": "equals",
    "ArnNotEquals": "equals",
    "ArnLike": "like",
    "ArnNotLike": "like",
    "Bool": "ignore_case",
}


def _principal_matches(principal: Any, context: Mapping[str, tuple[str, ...]]) -> bool:
    """Whether a resource or trust policy's ``Principal`` names the caller (``aws:PrincipalArn``/``…Account``).

    ``"*"`` is everyone; ``{"AWS": "arn:aws:iam::<account>:root"}`` (or the bare account id) every
    principal of that account; ``{"AWS": <role ARN>}`` that role's sessions. A ``Service`` or
    ``Federated`` principal is never a caller of the local runtime.
    """
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    caller_arns = context.get("aws:PrincipalArn", ())
    caller_accounts = context.get("aws:PrincipalAccount", ())
    for named in _as_list(principal.get("AWS")):
        named = str(named)
        if named == "*" or named in caller_arns:
            return True
        account = named if named.isdigit() else named.split(":")[4] if named.endswith(":root") else None
        if account is not None and account in caller_accounts:
            return True
    return False


@dataclass(frozen=True)
class Statement:
    """One statement of a policy document (of a resource or trust policy: with its ``Principal``)."""

    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sid: str = ""
    principal: Any = None
    """A resource or trust policy's ``Principal``; None in an identity or session policy."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, resource_policy: bool = False) -> Statement:
        unsupported = ("NotAction", "NotResource", "NotPrincipal") + (() if resource_policy else ("Principal",))
        if any(key in raw for key in unsupported) or (resource_policy and "Principal" not in raw):
            raise ValueError(f"the local permission check does not evaluate statement {raw.get('Sid', raw)!r}")
        return cls(
            effect=str(raw["Effect"]),
            actions=tuple(str(a) for a in _as_list(raw.get("Action"))),
            # A trust policy names no resource: it is the role it is attached to.
            resources=tuple(str(r) for r in _as_list(raw.get("Resource", "*" if resource_policy else None))),
            condition=dict(raw.get("Condition") or {}),
            sid=str(raw.get("Sid", "")),
            principal=raw.get("Principal") if resource_policy else None,
        )

    def applies_to(self, request: AccessRequest) -> bool:
        context = request.context
        return (
            (self.principal is None or _principal_matches(self.principal, context))
            and any(wildcard_match(action, request.action, ignore_case=True) for action in self.actions)
            and any(_matches(resource, request.resource, context) for resource in self.resources)
            and all(
                _condition_holds(operator, key, expected, context)
                for operator, keys in self.condition.items()
                for key, expected in keys.items()
            )
        )


@dataclass(frozen=True)
class Policy:
    """The statements of one role's (or session's, or resource's) policies, evaluated as IAM does."""

    statements: tuple[Statement, ...]

    @classmethod
    def from_documents(cls, documents: list[Mapping[str, Any]], *, resource_policy: bool = False) -> Policy:
        return cls(
            tuple(
                Statement.parse(s, resource_policy=resource_policy)
                for doc in documents
                for s in _as_list(doc.get("Statement"))
            )
        )

    def decision(self, request: AccessRequest) -> str | None:
        """``"Deny"`` (an explicit Deny applies), ``"Allow"`` (an Allow applies, no Deny), or None."""
        applying = [s.effect for s in self.statements if s.applies_to(request)]
        return "Deny" if "Deny" in applying else "Allow" if "Allow" in applying else None

    def allows(self, request: AccessRequest) -> bool:
        return self.decision(request) == "Allow"


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
        if params.get("PolicyArns"):  # managed session policies: what the session may do is not known here
            raise UnmappedCall("sts.AssumeRole with PolicyArns")
        role = str(params.get("RoleArn", ""))
        tags = {str(tag["Key"]): str(tag["Value"]) for tag in params.get("Tags") or []}
        context = {f"aws:RequestTag/{key}": (value,) for key, value in tags.items()}
        if tags:
            context["aws:TagKeys"] = tuple(tags)
        requests = [AccessRequest("sts:AssumeRole", role, context)]
        if params.get("Tags") or params.get("TransitiveTagKeys"):
            requests.append(AccessRequest("sts:TagSession", role, context))
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


@dataclass(frozen=True)
class Role:
    """A role of the template a caller may assume: who may (its trust policy) and what it may then do."""

    name: str
    arn: str
    trust: Policy
    policy: Policy


@dataclass(frozen=True)
class Session:
    """Credentials the emulated STS issued to a checked ``AssumeRole``: calls signed with them act as this."""

    access_key_id: str
    role: Role
    name: str
    """The ``RoleSessionName``."""
    policy: Policy | None
    """The session policy passed to ``AssumeRole``; None when none was (the role's policies alone)."""
    tags: Mapping[str, str]
    """The session tags: ``${aws:PrincipalTag/<key>}`` in the policies, ``aws:PrincipalTag/<key>`` in conditions."""
    expires_at: datetime
    issued_to: str
    """The function that assumed it."""


@dataclass(frozen=True)
class _Caller:
    """Who signs a call, as IAM evaluates it."""

    name: str
    """How ``checked`` and ``denied`` record it: the function, or ``<function> as <role>/<session>``."""
    arn: str
    identity: Policy
    session: Policy | None
    context: Mapping[str, tuple[str, ...]]


def access_denied(service: str, operation: str, who: str, request: AccessRequest, reason: str) -> ClientError:
    """The error AWS answers a call IAM refuses with: ``who`` is not authorized, and why."""
    message = f"User: {who} is not authorized to perform: {request.action} on resource: {request.resource} {reason}"
    return _client_error(_DENIED_CODE.get(service, "AccessDeniedException"), message, 403, operation)


def _client_error(code: str, message: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


#: The error codes AWS answers a call signed with an access key it never issued, or one that expired.
_INVALID_KEY_CODE = {"s3": "InvalidAccessKeyId", "dynamodb": "UnrecognizedClientException"}
_EXPIRED_KEY_CODE = {"s3": "ExpiredToken"}


class PermissionGuard:
    """Checks every boto3 call a handler makes against the IAM policies AWS would apply (see the module's docstring)."""

    def __init__(
        self,
        identities: Mapping[str, Identity],
        account: Account,
        *,
        roles: Mapping[str, Role] | None = None,
        bucket_policies: Mapping[str, Policy] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.identities = dict(identities)
        self.account = account
        self.roles = dict(roles or {})
        """Role ARN → the role, for ``AssumeRole`` (its trust policy) and the sessions of it."""
        self.bucket_policies = dict(bucket_policies or {})
        """Bucket name → its bucket policy (Deny statements), evaluated on every S3 call to that bucket."""
        self.sessions: dict[str, Session] = {}
        """Access key id → the session a checked ``AssumeRole`` was issued."""
        self.clock = clock or (lambda: datetime.now(UTC))
        self.checked: Counter[tuple[str, str]] = Counter()
        """(caller, ``service.Operation``) → calls checked and allowed."""
        self.denied: list[tuple[str, AccessRequest]] = []
        """(caller, the request refused), in order."""
        self._lock = threading.Lock()
        self._current = threading.local()
        self._patch: Any = None

    @classmethod
    def from_template(cls, template: Any, account_id: str) -> PermissionGuard:
        """Each function's role, every other role and the bucket policies of the SAM-transformed ``template``."""
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
        roles: dict[str, Role] = {}
        bucket_policies: dict[str, Policy] = {}
        for logical_id, resource in template.transformed()["Resources"].items():
            if resource["Type"] == "AWS::IAM::Role":
                properties = template.resolve(resource["Properties"])
                # A role the SAM transform made (a function's) is named as Identity names it.
                name = template.physical_name(logical_id) if logical_id in template.resources else logical_id
                role = Role(
                    name=name,
                    arn=f"arn:aws:iam::{account_id}:role/{name}",
                    trust=Policy.from_documents([properties["AssumeRolePolicyDocument"]], resource_policy=True),
                    policy=Policy.from_documents([entry["PolicyDocument"] for entry in properties.get("Policies", [])]),
                )
                roles[role.arn] = role
            elif resource["Type"] == "AWS::S3::BucketPolicy":
                properties = template.resolve(resource["Properties"])
                try:
                    bucket_policies[str(properties["Bucket"])] = bucket_policy(properties["PolicyDocument"])
                except ValueError as error:
                    raise ValueError(f"{logical_id}: {error}") from None
        account = Account(template.region, account_id, partition_keys, index_keys)
        return cls(identities, account, roles=roles, bucket_policies=bucket_policies)

    # --- lifecycle ---

    def start(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        guard = self

        def make_api_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            identity = guard.current
            if identity is None:
                return original(client, operation_name, api_params)
            service = client.meta.service_model.service_name
            caller = guard.signer(identity, _access_key(client), service, operation_name)
            secure = str(client.meta.endpoint_url).startswith("https:")
            guard.check(caller, service, operation_name, api_params, secure_transport=secure)
            response = original(client, operation_name, api_params)
            if service == "sts" and operation_name == "AssumeRole":
                guard.record_session(caller, api_params, response)
            return response

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

    # --- who signed a call ---

    def signer(self, identity: Identity, access_key: str | None, service: str, operation: str) -> Identity | Session:
        """What a call signed with ``access_key`` acts as, on a thread acting as ``identity``'s function.

        The environment's credentials are the function's own (in Lambda they are its role's); any
        other key must be a session this guard saw a checked ``AssumeRole`` issue, and not expired —
        else the call is refused as AWS refuses a key it never issued, or an expired one.
        """
        if access_key is not None and access_key == os.environ.get("AWS_ACCESS_KEY_ID"):
            return identity
        with self._lock:
            session = self.sessions.get(access_key or "")
        request = AccessRequest(f"{_IAM_PREFIX.get(service, service)}:{operation}", "*")
        if session is None:
            with self._lock:
                self.denied.append((identity.function, request))
            raise _client_error(
                _INVALID_KEY_CODE.get(service, "InvalidClientTokenId"),
                f"The security token included in the request is invalid: access key {access_key} was not issued "
                f"by a checked sts:AssumeRole ({identity.function})",
                403,
                operation,
            )
        if self.clock() >= session.expires_at:
            with self._lock:
                self.denied.append((self._caller(session).name, request))
            raise _client_error(
                _EXPIRED_KEY_CODE.get(service, "ExpiredTokenException"),
                f"The security token included in the request is expired ({session.name} of {session.role.name})",
                400,
                operation,
            )
        return session

    def record_session(
        self, caller: Identity | Session, params: Mapping[str, Any], response: Mapping[str, Any]
    ) -> None:
        """Remember the credentials an allowed ``AssumeRole`` returned, and what they act as."""
        credentials = response["Credentials"]
        policy_text = params.get("Policy")
        session = Session(
            access_key_id=str(credentials["AccessKeyId"]),
            role=self.roles[str(params["RoleArn"])],  # the check found it, or refused the call
            name=str(params.get("RoleSessionName", "")),
            policy=Policy.from_documents([json.loads(policy_text)]) if policy_text else None,
            tags={str(tag["Key"]): str(tag["Value"]) for tag in params.get("Tags") or []},
            expires_at=credentials["Expiration"],
            issued_to=caller.function if isinstance(caller, Identity) else caller.issued_to,
        )
        with self._lock:
            self.sessions[session.access_key_id] = session

    def _caller(self, who: Identity | Session) -> _Caller:
        account = self.account.account_id
        base = {"aws:PrincipalAccount": (account,)}
        if isinstance(who, Identity):
            return _Caller(
                name=who.function,
                arn=f"arn:aws:sts::{account}:assumed-role/{who.role_name}/{who.function}",
                identity=who.policy,
                session=None,
                context={**base, "aws:PrincipalArn": (f"arn:aws:iam::{account}:role/{who.role_name}",)},
            )
        return _Caller(
            name=f"{who.issued_to} as {who.role.name}/{who.name}",
            arn=f"arn:aws:sts::{account}:assumed-role/{who.role.name}/{who.name}",
            identity=who.role.policy,
            session=who.policy,
            context={
                **base,
                "aws:PrincipalArn": (who.role.arn,),  # a session's principal ARN is its role's, as in IAM
                **{f"aws:PrincipalTag/{key}": (value,) for key, value in who.tags.items()},
            },
        )

    # --- the check ---

    def check(
        self,
        who: Identity | Session,
        service: str,
        operation: str,
        params: Mapping[str, Any],
        *,
        secure_transport: bool = True,
    ) -> None:
        """Raise the ``ClientError`` AWS would when IAM does not allow ``who`` the call."""
        caller = self._caller(who)
        try:
            requests = requests_for(service, operation, params, self.account)
        except UnmappedCall as unmapped:
            request = AccessRequest(f"{_IAM_PREFIX.get(service, service)}:{operation}", "*")
            with self._lock:
                self.denied.append((caller.name, request))
            message = (
                f"the local runtime does not know which IAM action {unmapped} needs, so it refuses the "
                f"call; map it in sandcastle/local/permissions.py ({caller.name})"
            )
            raise _client_error(_DENIED_CODE.get(service, "AccessDeniedException"), message, 403, operation) from None
        context = {**caller.context, "aws:SecureTransport": ("true" if secure_transport else "false",)}
        for request in requests:
            request = AccessRequest(request.action, request.resource, {**context, **request.context})
            reason = self._refusal(caller, request)
            if reason is not None:
                with self._lock:
                    self.denied.append((caller.name, request))
                raise access_denied(service, operation, caller.arn, request, reason)
        with self._lock:
            self.checked[(caller.name, f"{service}.{operation}")] += 1

    def _refusal(self, caller: _Caller, request: AccessRequest) -> str | None:
        """Why IAM refuses ``request`` (AWS's wording), or None when it allows it.

        An explicit Deny anywhere wins; else the identity policies must allow it and, for a session
        with a session policy, that policy too (the intersection); an ``AssumeRole`` also needs the
        role's trust policy to admit the caller.
        """
        resource_policy = self._resource_policy(request)
        if resource_policy is not None and resource_policy.decision(request) == "Deny":
            return "with an explicit deny in a resource-based policy"
        identity = caller.identity.decision(request)
        session = caller.session.decision(request) if caller.session is not None else "Allow"
        if identity == "Deny":
            return "with an explicit deny in an identity-based policy"
        if session == "Deny":
            return "with an explicit deny in a session policy"
        if identity is None:
            return f"because no identity-based policy allows the {request.action} action"
        if session is None:
            return f"because no session policy allows the {request.action} action"
        if request.action.lower() in ("sts:assumerole", "sts:tagsession"):
            role = self.roles.get(request.resource)
            if role is None:
                return "because no such role is in template.yaml"
            if role.trust.decision(request) != "Allow":
                return "because the role's trust policy does not allow it"
        return None

    def _resource_policy(self, request: AccessRequest) -> Policy | None:
        if not request.action.lower().startswith("s3:") or not request.resource.startswith("arn:aws:s3:::"):
            return None
        return self.bucket_policies.get(request.resource.removeprefix("arn:aws:s3:::").split("/", 1)[0])


def bucket_policy(document: Mapping[str, Any]) -> Policy:
    """A bucket policy's statements; only Deny ones, since an Allow there would grant what this does not model."""
    policy = Policy.from_documents([document], resource_policy=True)
    if any(statement.effect != "Deny" for statement in policy.statements):
        raise ValueError("the local permission check evaluates only Deny statements of bucket policies")
    return policy


def _access_key(client: Any) -> str | None:
    """The access key id ``client`` signs its requests with (None: it has no credentials)."""
    credentials = getattr(client._request_signer, "_credentials", None)
    return None if credentials is None else str(credentials.get_frozen_credentials().access_key)


def _hash_key(key_schema: list[Mapping[str, str]]) -> str:
    return next(key["AttributeName"] for key in key_schema if key["KeyType"] == "HASH")
