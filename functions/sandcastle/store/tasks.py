"""DynamoDB access for saved tasks, in the runs table: item ``TASKS#<tenant>`` / ``<name>``.

The task's definition is stored as one JSON string (``data``), like transcript events: the item
keeps the exact shape of the model, with no float/Decimal round trips.
"""

from __future__ import annotations

import json
from typing import Any

from sandcastle.runs.records import Task
from sandcastle.store.item_size import check_request_fits


def _pk(tenant: str) -> str:
    return f"TASKS#{tenant}"


class TaskStore:
    """A tenant's saved run templates."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self._client = client
        self._table = table_name

    def put(self, task: Task) -> None:
        """Store ``task``, replacing the one of the same name."""
        check_request_fits(dict(task), what="the task")
        self._client.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": _pk(task.tenant)},
                "sk": {"S": task.name},
                "data": {"S": task.model_dump_json(exclude_none=True)},
            },
        )

    def get(self, tenant: str, name: str) -> Task | None:
        """The tenant's task ``name``, or None."""
        response = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": _pk(tenant)}, "sk": {"S": name}}, ConsistentRead=True
        )
        item = response.get("Item")
        return Task.model_validate(json.loads(item["data"]["S"])) if item else None

    def list(self, tenant: str) -> list[Task]:
        """The tenant's tasks, by name."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(tenant)}},
        }
        tasks: list[Task] = []
        while True:
            response = self._client.query(**request)
            tasks.extend(Task.model_validate(json.loads(item["data"]["S"])) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return tasks
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def delete(self, tenant: str, name: str) -> bool:
        """Delete the task; False when there was none."""
        response = self._client.delete_item(
            TableName=self._table, Key={"pk": {"S": _pk(tenant)}, "sk": {"S": name}}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in response
