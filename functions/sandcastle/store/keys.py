"""API keys: stored hashed (sha256) in the runs table, each bound to one tenant.

* key: ``APIKEY#<sha256 of the key>`` / ``META`` — tenant, key id, created_at, revoked
* by id: ``APIKEYID#<key id>`` / ``META`` — the hash, so a key can be revoked by its id

The key itself (``sc_`` + 32 random bytes, urlsafe base64) is returned once, at creation, and
never stored.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from sandcastle.names import check_tenant
from sandcastle.runs.records import utcnow

KEY_PREFIX = "sc_"
_META = "META"


class ApiKey(BaseModel):
    """A stored API key (never the key itself)."""

    key_id: str
    tenant: str
    created_at: datetime
    revoked: bool = False


class CreatedApiKey(ApiKey):
    """A key just created: the only time the secret ``key`` is known."""

    key: str


def hash_key(key: str) -> str:
    """The sha256 (hex) a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """API keys in the runs table."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self._client = client
        self._table = table_name

    def create(self, tenant: str) -> CreatedApiKey:
        """A new key for ``tenant``: stored hashed, returned in clear once.

        ``ValueError`` naming the rule when ``tenant`` is not a tenant name (``sandcastle.names``).
        """
        check_tenant(tenant)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = CreatedApiKey(key=key, key_id=f"key_{secrets.token_hex(8)}", tenant=tenant, created_at=utcnow())
        digest = hash_key(key)
        at = created.created_at.isoformat()
        self._client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": {"S": f"APIKEY#{digest}"},
                            "sk": {"S": _META},
                            "tenant": {"S": tenant},
                            "key_id": {"S": created.key_id},
                            "created_at": {"S": at},
                            "revoked": {"BOOL": False},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": {"S": f"APIKEYID#{created.key_id}"},
                            "sk": {"S": _META},
                            "key_hash": {"S": digest},
                            "tenant": {"S": tenant},
                            "created_at": {"S": at},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
        return created

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key ``key`` hashes to, or None (revoked keys are returned, marked revoked)."""
        if not key.startswith(KEY_PREFIX):
            return None
        response = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": f"APIKEY#{hash_key(key)}"}, "sk": {"S": _META}}
        )
        item = response.get("Item")
        if item is None:
            return None
        return ApiKey(
            key_id=item["key_id"]["S"],
            tenant=item["tenant"]["S"],
            created_at=item["created_at"]["S"],
            revoked=item.get("revoked", {}).get("BOOL", False),
        )

    def revoke(self, key_id: str) -> ApiKey | None:
        """Mark the key ``key_id`` revoked; return it, or None when there is no such key."""
        response = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": f"APIKEYID#{key_id}"}, "sk": {"S": _META}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None:
            return None
        try:
            updated = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"APIKEY#{item['key_hash']['S']}"}, "sk": {"S": _META}},
                UpdateExpression="SET revoked = :true",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":true": {"BOOL": True}},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
        return ApiKey(key_id=key_id, tenant=updated["tenant"]["S"], created_at=updated["created_at"]["S"], revoked=True)


def stack_table_name(stack_name: str, client: Any | None = None) -> str:
    """The runs table of a deployed stack (its ``RunsTableName`` output)."""
    if client is None:
        import boto3

        client = boto3.client("cloudformation")
    [stack] = client.describe_stacks(StackName=stack_name)["Stacks"]
    for output in stack.get("Outputs", []):
        if output["OutputKey"] == "RunsTableName":
            return str(output["OutputValue"])
    raise LookupError(f"stack {stack_name} has no RunsTableName output")
