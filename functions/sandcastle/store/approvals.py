"""DynamoDB access for approvals, in the runs table.

- a call awaiting (or given) approval: ``RUN#<id>`` / ``APPROVAL#<step>#<call id>``, ``data`` the
  ``Approval`` as JSON and ``decision`` beside it (the condition of a decision);
- the waiting execution's task token: ``approval_token``, ``approval_step`` on ``RUN#<id>`` / ``META``, set
  by AwaitApproval and removed when the run goes on; never part of the run's view;
- a tenant's policy: ``POLICY#<tenant>`` / ``POLICY``, ``data`` the rules as JSON.

A decision is written once, on the condition that none was (``attribute_not_exists(decision)``):
two people deciding at once, or a decision racing the expiry, leave exactly one decision.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from sandcastle.runs.policy import PolicyRule
from sandcastle.runs.records import Approval
from sandcastle.store.dynamo import run_pk

_APPROVAL_PREFIX = "APPROVAL#"
_META = "META"


def approval_sk(step: int, call_id: str) -> str:
    return f"{_APPROVAL_PREFIX}{step:06d}#{call_id}"


class ApprovalStore:
    """Approvals of runs' tool calls, the task token of a waiting run, and tenants' policies."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self._client = client
        self._table = table_name

    # --- approvals ---

    def ask(self, approval: Approval) -> bool:
        """Store a new pending approval; False (nothing written) when it exists already (a retry)."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": run_pk(approval.run_id)},
                    "sk": {"S": approval_sk(approval.step, approval.tool_call_id)},
                    "data": {"S": approval.model_dump_json(exclude_none=True)},
                },
                ConditionExpression="attribute_not_exists(sk)",
            )
        except ClientError as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def decide(self, approval: Approval) -> Approval:
        """Record ``approval``'s decision unless one is recorded; the approval as stored afterwards."""
        assert approval.decision is not None
        key = {"pk": {"S": run_pk(approval.run_id)}, "sk": {"S": approval_sk(approval.step, approval.tool_call_id)}}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="SET #data = :data, #decision = :decision",
                ConditionExpression="attribute_exists(sk) AND attribute_not_exists(#decision)",
                ExpressionAttributeNames={"#data": "data", "#decision": "decision"},
                ExpressionAttributeValues={
                    ":data": {"S": approval.model_dump_json(exclude_none=True)},
                    ":decision": {"S": approval.decision},
                },
            )
        except ClientError as error:
            if not _condition_failed(error):
                raise
            stored = self.get(approval.run_id, approval.step, approval.tool_call_id)
            assert stored is not None
            return stored
        return approval

    def get(self, run_id: str, step: int, call_id: str) -> Approval | None:
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": run_pk(run_id)}, "sk": {"S": approval_sk(step, call_id)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return Approval.model_validate_json(item["data"]["S"]) if item else None

    def list(self, run_id: str, *, step: int | None = None) -> list[Approval]:
        """The run's approvals (of turn ``step`` only, when given), in turn and call order."""
        prefix = _APPROVAL_PREFIX if step is None else f"{_APPROVAL_PREFIX}{step:06d}#"
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": run_pk(run_id)}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
        }
        approvals: list[Approval] = []
        while True:
            response = self._client.query(**request)
            approvals.extend(Approval.model_validate_json(item["data"]["S"]) for item in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last:
                return sorted(approvals, key=lambda a: (a.step, a.call_index))
            request["ExclusiveStartKey"] = last

    # --- the waiting execution's task token (on the run item) ---

    def task_token(self, run_id: str) -> tuple[str, int] | None:
        """The task token of the run's waiting AwaitApproval state and the turn it waits on, if one waits."""
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": run_pk(run_id)}, "sk": {"S": _META}},
            ProjectionExpression="approval_token, approval_step",
            ConsistentRead=True,
        )
        item = response.get("Item", {})
        if "approval_token" not in item:
            return None
        return item["approval_token"]["S"], int(item["approval_step"]["N"])

    # --- tenants' policies ---

    def get_policy(self, tenant: str) -> list[PolicyRule]:
        """The tenant's rules (none: every call is allowed, unless a run's own rules say otherwise)."""
        response = self._client.get_item(TableName=self._table, Key=_policy_key(tenant), ConsistentRead=True)
        item = response.get("Item")
        if not item:
            return []
        return [PolicyRule.model_validate(rule) for rule in json.loads(item["data"]["S"])]

    def put_policy(self, tenant: str, rules: list[PolicyRule], *, at: datetime) -> None:
        self._client.put_item(
            TableName=self._table,
            Item={
                **_policy_key(tenant),
                "data": {"S": json.dumps([rule.model_dump(mode="json", exclude_none=True) for rule in rules])},
                "updated_at": {"S": at.isoformat()},
            },
        )


def _policy_key(tenant: str) -> dict[str, Any]:
    return {"pk": {"S": f"POLICY#{tenant}"}, "sk": {"S": "POLICY"}}


def _condition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
