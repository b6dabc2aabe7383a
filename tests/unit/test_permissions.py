"""The local runtime's permission check: IAM evaluation of the template's roles, and what each call needs."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from sandcastle.local.permissions import (
    AccessRequest,
    Account,
    PermissionGuard,
    Policy,
    UnmappedCall,
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
