"""The local runtime's permission check: IAM evaluation of the template's roles, and what each call needs.

Also the calls made with assumed-role credentials: the session's role intersected with its session
policy, ``${aws:PrincipalTag/…}`` filled from the session tags, the role's trust policy, the bucket
policy's Deny, and keys no checked ``AssumeRole`` issued (or expired ones) refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from sandcastle.errors import UnmappedCall
from sandcastle.local.permissions import (
    AccessRequest,
    Account,
    Identity,
    PermissionGuard,
    Policy,
    Role,
    bucket_policy,
    requests_for,
)
from sandcastle.local.runtime import DEFAULT_TEMPLATE
from sandcastle.local.template import ACCOUNT_ID, Template

REGION = "us-east-1"
TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/runs"
ACCOUNT = Account(REGION, ACCOUNT_ID, {"runs": "pk"}, {("runs", "by_tenant"): "gsi1pk"})


def _policy(*statements: dict) -> Policy:
    return Policy.from_documents([{"Version": "2012-10-17", "Statement": list(statements)}])


# ---------------------------------------------------------------- the evaluator


def test_an_allow_matches_actions_case_blind_and_resources_by_wildcard() -> None:
    policy = _policy({"Effect": "Allow", "Action": ["dynamodb:Get*"], "Resource": f"{TABLE}/index/*"})

    assert policy.allows(AccessRequest("DynamoDB:GetItem", f"{TABLE}/index/by_tenant"))
    assert not policy.allows(AccessRequest("dynamodb:GetItem", TABLE))  # the table is not its index
    assert not policy.allows(AccessRequest("dynamodb:PutItem", f"{TABLE}/index/by_tenant"))


def test_nothing_is_allowed_without_a_statement_and_an_explicit_deny_wins() -> None:
    policy = _policy(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::bucket/*"},
        {"Effect": "Deny", "Action": "s3:PutObjectAcl", "Resource": "*"},
    )

    assert policy.allows(AccessRequest("s3:PutObject", "arn:aws:s3:::bucket/runs/a"))
    assert not policy.allows(AccessRequest("s3:PutObjectAcl", "arn:aws:s3:::bucket/runs/a"))
    assert not _policy().allows(AccessRequest("s3:GetObject", "arn:aws:s3:::bucket/a"))


def test_leading_keys_confine_a_role_to_its_prefix() -> None:
    policy = _policy(
        {
            "Effect": "Allow",
            "Action": "dynamodb:GetItem",
            "Resource": TABLE,
            "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["APIKEY#*"]}},
        }
    )

    def get(pk: str) -> AccessRequest:
        [request] = requests_for("dynamodb", "GetItem", {"TableName": "runs", "Key": {"pk": {"S": pk}}}, ACCOUNT)
        return request

    assert policy.allows(get("APIKEY#abc"))
    assert not policy.allows(get("RUN#run-1"))


def test_a_query_carries_the_partition_key_it_names() -> None:
    [request] = requests_for(
        "dynamodb",
        "Query",
        {
            "TableName": "runs",
            "IndexName": "by_tenant",
            "KeyConditionExpression": "#p = :p AND begins_with(gsi1sk, :s)",
            "ExpressionAttributeNames": {"#p": "gsi1pk"},
            "ExpressionAttributeValues": {":p": {"S": "TENANT#acme"}, ":s": {"S": "2026"}},
        },
        ACCOUNT,
    )

    assert request.resource == f"{TABLE}/index/by_tenant"
    assert request.context["dynamodb:LeadingKeys"] == ("TENANT#acme",)


def test_a_transaction_needs_each_items_own_action() -> None:
    items = [
        {"Put": {"TableName": "runs", "Item": {"pk": {"S": "RUN#1"}, "sk": {"S": "EVT#1"}}}},
        {"ConditionCheck": {"TableName": "runs", "Key": {"pk": {"S": "RUN#1"}, "sk": {"S": "META"}}}},
    ]
    requests = requests_for("dynamodb", "TransactWriteItems", {"TransactItems": items}, ACCOUNT)
    write_only = _policy({"Effect": "Allow", "Action": ["dynamodb:PutItem", "dynamodb:UpdateItem"], "Resource": TABLE})

    assert [r.action for r in requests] == ["dynamodb:PutItem", "dynamodb:ConditionCheckItem"]
    assert not all(write_only.allows(r) for r in requests)


def test_creating_a_schedule_needs_to_pass_its_role_to_the_scheduler_only() -> None:
    role = f"arn:aws:iam::{ACCOUNT_ID}:role/scheduler"
    requests = requests_for(
        "scheduler",
        "CreateSchedule",
        {"Name": "s1", "GroupName": "g", "Target": {"Arn": "arn:x", "RoleArn": role}},
        ACCOUNT,
    )
    passes = {
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": role,
        "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
    }

    assert [r.action for r in requests] == ["scheduler:CreateSchedule", "iam:PassRole"]
    assert requests[0].resource == f"arn:aws:scheduler:{REGION}:{ACCOUNT_ID}:schedule/g/s1"
    assert _policy(passes).allows(requests[1])
    assert not _policy(passes).allows(AccessRequest("iam:PassRole", role, {"iam:PassedToService": ("lambda.x",)}))


def test_a_copy_reads_its_source_version_and_writes_its_target() -> None:
    requests = requests_for(
        "s3", "CopyObject", {"Bucket": "b", "Key": "runs/1/input/a", "CopySource": "inbox/x.csv?versionId=v1"}, ACCOUNT
    )

    assert [(r.action, r.resource) for r in requests] == [
        ("s3:PutObject", "arn:aws:s3:::b/runs/1/input/a"),
        ("s3:GetObjectVersion", "arn:aws:s3:::inbox/x.csv"),
    ]


def test_a_call_with_no_known_iam_action_is_unmapped() -> None:
    with pytest.raises(UnmappedCall, match="dynamodb.ListTables"):
        requests_for("dynamodb", "ListTables", {}, ACCOUNT)
    with pytest.raises(UnmappedCall, match="kinesis.PutRecord"):
        requests_for("kinesis", "PutRecord", {}, ACCOUNT)
    with pytest.raises(UnmappedCall, match="PolicyArns"):  # a managed session policy is not evaluated
        requests_for("sts", "AssumeRole", {"RoleArn": "arn:aws:iam::1:role/r", "PolicyArns": [{"arn": "x"}]}, ACCOUNT)


def test_policy_variables_are_filled_from_the_principals_tags_and_match_literally() -> None:
    policy = _policy(
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::b/uploads/${aws:PrincipalTag/tenant}/*",
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::b",
            "Condition": {"StringLike": {"s3:prefix": "uploads/${aws:PrincipalTag/tenant}/*"}},
        },
    )
    beta = {"aws:PrincipalTag/tenant": ("beta",)}

    def get(key: str, context: dict) -> bool:
        return policy.allows(AccessRequest("s3:GetObject", f"arn:aws:s3:::b/{key}", context))

    def list_(prefix: str, context: dict) -> bool:
        return policy.allows(AccessRequest("s3:ListBucket", "arn:aws:s3:::b", {**context, "s3:prefix": (prefix,)}))

    assert get("uploads/beta/up-1/a", beta) and list_("uploads/beta/", beta)
    assert not get("uploads/acme/up-1/a", beta) and not list_("uploads/acme/", beta)
    # No tag: the variable resolves to nothing, so the element matches nothing (not even its own text).
    assert not get("uploads/${aws:PrincipalTag/tenant}/a", {}) and not list_("uploads/${aws:PrincipalTag/tenant}/", {})
    # A condition naming a variable the request lacks is false, even a negated one.
    unlike = _policy(
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "*",
            "Condition": {"StringNotLike": {"s3:prefix": "uploads/${aws:PrincipalTag/tenant}/*"}},
        }
    )
    assert unlike.allows(AccessRequest("s3:ListBucket", "arn:aws:s3:::b", {**beta, "s3:prefix": ("runs/",)}))
    assert not unlike.allows(AccessRequest("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ("runs/",)}))
    # A tag's value is matched as text, never as a wildcard.
    assert not get("uploads/beta/a", {"aws:PrincipalTag/tenant": ("*",)})


def test_a_resource_policy_statement_applies_to_the_principals_it_names() -> None:
    role = f"arn:aws:iam::{ACCOUNT_ID}:role/files"
    deny = bucket_policy(
        {
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::b/uploads/*",
                    "Condition": {"ArnNotEquals": {"aws:PrincipalArn": role}},
                }
            ]
        }
    )
    trust = Policy.from_documents(
        [{"Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "*"}]}],
        resource_policy=True,
    )

    def caller(arn: str, account: str = ACCOUNT_ID) -> dict:
        return {"aws:PrincipalArn": (arn,), "aws:PrincipalAccount": (account,)}

    other = f"arn:aws:iam::{ACCOUNT_ID}:role/ApiFunctionRole"
    assert deny.decision(AccessRequest("s3:GetObject", "arn:aws:s3:::b/uploads/a", caller(other))) == "Deny"
    assert deny.decision(AccessRequest("s3:GetObject", "arn:aws:s3:::b/uploads/a", caller(role))) is None
    assert deny.decision(AccessRequest("s3:GetObject", "arn:aws:s3:::b/runs/a", caller(other))) is None
    assert trust.allows(AccessRequest("sts:AssumeRole", role, caller(other)))  # the account's root: any of its own
    assert not trust.allows(AccessRequest("sts:AssumeRole", role, caller("arn:aws:iam::999999999999:role/x", "9" * 12)))
    with pytest.raises(ValueError, match="only Deny statements"):  # an Allow there would grant: not modelled
        bucket_policy({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"}]})


# ---------------------------------------------------------------- the guard, on the template's roles


@pytest.fixture
def guard(aws: Template) -> Iterator[PermissionGuard]:
    checking = PermissionGuard.from_template(Template.load(DEFAULT_TEMPLATE, region=REGION), ACCOUNT_ID)
    checking.start()
    yield checking
    checking.stop()


def test_a_denied_call_fails_as_aws_answers_it_before_reaching_the_service(
    guard: PermissionGuard, aws: Template
) -> None:
    client = boto3.client("dynamodb", region_name=REGION)
    table = aws.physical_name("RunsTable")

    with guard.acting_as("ApiAuthorizerFunction"), pytest.raises(ClientError) as caught:
        client.get_item(TableName=table, Key={"pk": {"S": "RUN#run-1"}, "sk": {"S": "META"}})

    error = caught.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "ApiAuthorizerFunctionRole" in error["Message"] and "dynamodb:GetItem" in error["Message"]
    assert guard.denied[-1][1].action == "dynamodb:GetItem"
    with guard.acting_as("ApiAuthorizerFunction"):  # its own prefix: allowed, and it reaches moto
        assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "APIKEY#x"}, "sk": {"S": "META"}})
    client.get_item(TableName=table, Key={"pk": {"S": "RUN#run-1"}, "sk": {"S": "META"}})  # not in a handler


def test_an_unmapped_call_is_refused_not_silently_allowed(guard: PermissionGuard) -> None:
    client = boto3.client("dynamodb", region_name=REGION)

    with guard.acting_as("ApiFunction"), pytest.raises(ClientError) as caught:
        client.list_tables()

    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "does not know which IAM action dynamodb.ListTables needs" in caught.value.response["Error"]["Message"]


def test_the_tool_runner_may_write_run_files_but_not_acls_or_lifecycle(guard: PermissionGuard, aws: Template) -> None:
    client = boto3.client("s3", region_name=REGION)
    bucket = aws.physical_name("ArtifactsBucket")

    with guard.acting_as("RunToolFunction"):
        client.put_object(Bucket=bucket, Key="runs/run-1/outputs/x.txt", Body=b"x")
        with pytest.raises(ClientError) as acl:
            client.put_object_acl(Bucket=bucket, Key="runs/run-1/outputs/x.txt", ACL="public-read")
        with pytest.raises(ClientError) as lifecycle:
            client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": []})
        with pytest.raises(ClientError) as elsewhere:
            client.put_object(Bucket=bucket, Key="not-runs/x.txt", Body=b"x")

    assert {e.value.response["Error"]["Code"] for e in (acl, lifecycle, elsewhere)} == {"AccessDenied"}


def test_the_tool_runner_may_touch_run_items_only(guard: PermissionGuard, aws: Template) -> None:
    client = boto3.client("dynamodb", region_name=aws.region)
    table = aws.physical_name("RunsTable")

    with guard.acting_as("RunToolFunction"):
        client.get_item(TableName=table, Key={"pk": {"S": "RUN#run-1"}, "sk": {"S": "META"}})
        with pytest.raises(ClientError) as keys:
            client.get_item(TableName=table, Key={"pk": {"S": "APIKEY#abc"}, "sk": {"S": "META"}})
        with pytest.raises(ClientError) as scan:
            client.scan(TableName=table)

    assert {e.value.response["Error"]["Code"] for e in (keys, scan)} == {"AccessDeniedException"}


# ---------------------------------------------------------------- calls made with assumed-role credentials


def _tenant_files_role(aws: Template) -> str:
    return aws.arn("TenantFilesRole")


def _session_s3(credentials: dict) -> object:
    return boto3.client(
        "s3",
        region_name=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def _assume(role: str, *, tenant: str | None = "beta", policy: dict | None = None) -> dict:
    request: dict = {"RoleArn": role, "RoleSessionName": f"tenant-{tenant}", "DurationSeconds": 900}
    if tenant is not None:
        request["Tags"] = [{"Key": "tenant", "Value": tenant}]
    if policy is not None:
        request["Policy"] = json.dumps(policy)
    return boto3.client("sts", region_name=REGION).assume_role(**request)["Credentials"]


def _code(call: object) -> str:
    with pytest.raises(ClientError) as caught:
        call()  # type: ignore[operator]
    return str(caught.value.response["Error"]["Code"]) + ": " + str(caught.value.response["Error"]["Message"])


@pytest.fixture
def uploads(aws: Template) -> str:
    bucket = aws.physical_name("ArtifactsBucket")
    client = boto3.client("s3", region_name=REGION)
    for key in ("uploads/beta/up-1/a.txt", "uploads/beta/up-2/b.txt", "uploads/acme/up-1/a.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")  # not in a handler: the runtime's own call
    return bucket


def test_a_session_may_do_only_what_its_role_and_its_session_policy_both_allow(
    guard: PermissionGuard, aws: Template, uploads: str
) -> None:
    bucket = f"arn:aws:s3:::{uploads}"
    only_up_1 = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": f"{bucket}/uploads/beta/up-1/*"}]}
    everything = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}

    with guard.acting_as("ApiFunction"):
        narrow = _session_s3(_assume(_tenant_files_role(aws), policy=only_up_1))
        wide = _session_s3(_assume(_tenant_files_role(aws), policy=everything))
        narrow.head_object(Bucket=uploads, Key="uploads/beta/up-1/a.txt")  # both allow it
        outside_session = _code(lambda: narrow.head_object(Bucket=uploads, Key="uploads/beta/up-2/b.txt"))
        outside_role = _code(lambda: wide.head_object(Bucket=uploads, Key="uploads/acme/up-1/a.txt"))

    assert (
        outside_session.startswith("AccessDenied: ") and "no session policy allows the s3:GetObject" in outside_session
    )
    assert "assumed-role/sandcastle-local-TenantFilesRole/tenant-beta" in outside_session
    assert "no identity-based policy allows the s3:GetObject" in outside_role
    assert guard.checked[
        ("sandcastle-local-ApiFunction as sandcastle-local-TenantFilesRole/tenant-beta", "s3.HeadObject")
    ]


def test_the_session_tag_is_the_tenant_the_roles_policy_confines_to(
    guard: PermissionGuard, aws: Template, uploads: str
) -> None:
    with guard.acting_as("ApiFunction"):
        beta = _session_s3(_assume(_tenant_files_role(aws)))  # no session policy: the role's policy alone
        beta.head_object(Bucket=uploads, Key="uploads/beta/up-2/b.txt")
        beta.list_objects_v2(Bucket=uploads, Prefix="uploads/beta/")
        beta.copy_object(Bucket=uploads, Key="runs/r1/input/b.txt", CopySource=f"{uploads}/uploads/beta/up-2/b.txt")
        read = _code(lambda: beta.head_object(Bucket=uploads, Key="uploads/acme/up-1/a.txt"))
        listed = _code(lambda: beta.list_objects_v2(Bucket=uploads, Prefix="uploads/acme/"))
        copied = _code(
            lambda: beta.copy_object(
                Bucket=uploads, Key="runs/r1/input/a.txt", CopySource=f"{uploads}/uploads/acme/up-1/a.txt"
            )
        )

    assert all("no identity-based policy allows" in error for error in (read, listed, copied))
    assert guard.denied[-1][1].resource == f"arn:aws:s3:::{uploads}/uploads/acme/up-1/a.txt"


def test_the_bucket_policy_keeps_uploads_from_every_role_but_the_tenant_files_role(
    guard: PermissionGuard, aws: Template, uploads: str
) -> None:
    client = boto3.client("s3", region_name=REGION)

    with guard.acting_as("ApiFunction"):  # its S3ReadPolicy allows GetObject on the whole bucket
        direct = _code(lambda: client.get_object(Bucket=uploads, Key="uploads/beta/up-1/a.txt"))
        client.put_object(Bucket=uploads, Key="runs/r1/input/x.txt", Body=b"x")  # outside uploads/: allowed

    assert direct.startswith("AccessDenied: ") and "explicit deny in a resource-based policy" in direct
    assert "assumed-role/ApiFunctionRole/sandcastle-local-ApiFunction" in direct
    # The bucket policy's other Deny: a request not made over TLS.
    with pytest.raises(ClientError, match="explicit deny in a resource-based policy"):
        guard.check(
            guard.identities["ApiFunction"],
            "s3",
            "GetObject",
            {"Bucket": uploads, "Key": "runs/r1/input/x.txt"},
            secure_transport=False,
        )


def test_assuming_a_role_needs_its_trust_policy_to_admit_the_caller(guard: PermissionGuard, aws: Template) -> None:
    with guard.acting_as("ApiFunction"):
        untagged = _code(lambda: _assume(_tenant_files_role(aws), tenant=None))  # the trust policy wants a tenant
        _assume(_tenant_files_role(aws))

    assert untagged.startswith("AccessDeniedException: ") and "sts:AssumeRole" in untagged
    assert "trust policy does not allow it" in untagged

    # A role only Lambda may assume (a function's): refused even to a caller whose own policy allows it.
    anyone = Policy.from_documents([{"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}])
    guard.identities["ApiFunction"] = Identity("sandcastle-local-ApiFunction", "ApiFunctionRole", anyone)
    lambda_role = f"arn:aws:iam::{ACCOUNT_ID}:role/RunToolFunctionRole"
    assert isinstance(guard.roles[lambda_role], Role)
    with guard.acting_as("ApiFunction"):
        assert "trust policy does not allow it" in _code(lambda: _assume(lambda_role, tenant=None))
        assert "no such role" in _code(lambda: _assume(f"arn:aws:iam::{ACCOUNT_ID}:role/nowhere", tenant=None))


def test_a_key_no_checked_assume_role_issued_is_refused(guard: PermissionGuard, aws: Template, uploads: str) -> None:
    unrecorded = _session_s3(_assume(_tenant_files_role(aws)))  # assumed outside a handler: never checked
    forged = boto3.client("s3", region_name=REGION, aws_access_key_id="ASIAFORGED0000000000", aws_secret_access_key="x")

    with guard.acting_as("ApiFunction"):
        errors = [
            _code(lambda c=c: c.head_object(Bucket=uploads, Key="uploads/beta/up-1/a.txt"))
            for c in (unrecorded, forged)
        ]

    assert all(error.startswith("InvalidAccessKeyId: ") for error in errors), errors
    assert "ASIAFORGED0000000000" in errors[1]


def test_an_expired_session_is_refused(guard: PermissionGuard, aws: Template, uploads: str) -> None:
    with guard.acting_as("ApiFunction"):
        credentials = _assume(_tenant_files_role(aws))
        beta = _session_s3(credentials)
        beta.head_object(Bucket=uploads, Key="uploads/beta/up-1/a.txt")
        guard.clock = lambda: credentials["Expiration"] + timedelta(seconds=1)
        expired = _code(lambda: beta.head_object(Bucket=uploads, Key="uploads/beta/up-1/a.txt"))

    assert expired.startswith("ExpiredToken: ")


def test_a_sub_escape_renders_as_the_policy_variable_iam_fills() -> None:
    template = Template.load(DEFAULT_TEMPLATE, region=REGION)

    resolved = template.resolve({"Fn::Sub": "${ArtifactsBucket.Arn}/uploads/${!aws:PrincipalTag/tenant}/*"})

    assert (
        resolved == f"arn:aws:s3:::{template.physical_name('ArtifactsBucket')}/uploads/${{aws:PrincipalTag/tenant}}/*"
    )
