"""Schedules: their DynamoDB item (in the runs table) and the EventBridge Scheduler schedule that fires them.

Item ``SCHEDULES`` / ``<tenant>#<schedule id>``: the schedule as JSON (``data``), plus the attributes
a fire changes on its own — ``last_run_id``, ``last_scheduled_time`` (claimed with a condition, so two
fires never both count as "the latest"), and ``skips`` (JSON strings, appended). One partition holds
every schedule: there are few, and the local scheduler lists them all with one query.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from sandcastle.errors import ScheduleClaimLost
from sandcastle.runs.records import Schedule, ScheduleSkip
from sandcastle.store.item_size import check_request_fits

_PK = "SCHEDULES"
_KEEP_SKIPS = 20
"""Skips shown on a schedule; the list is trimmed once it holds twice as many."""
FIRE_RETRY_WINDOW_S = 3600
"""How long after its scheduled time a fire may still be delivered (EventBridge Scheduler's retries)."""


def _sk(tenant: str, schedule_id: str) -> str:
    return f"{tenant}#{schedule_id}"


class ScheduleStore:
    """Schedules of every tenant, in the runs table."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self._client = client
        self._table = table_name

    def create(self, schedule: Schedule) -> None:
        """Store a new schedule (its id is new: an existing item is never overwritten)."""
        check_request_fits(dict(schedule), what="the schedule")
        data = schedule.model_dump_json(exclude_none=True, exclude={"last_run_id", "last_scheduled_time", "skips"})
        self._client.put_item(
            TableName=self._table,
            Item={"pk": {"S": _PK}, "sk": {"S": _sk(schedule.tenant, schedule.schedule_id)}, "data": {"S": data}},
            ConditionExpression="attribute_not_exists(pk)",
        )

    def get(self, tenant: str, schedule_id: str) -> Schedule | None:
        """The tenant's schedule, or None."""
        response = self._client.get_item(TableName=self._table, Key=self._key(tenant, schedule_id), ConsistentRead=True)
        item = response.get("Item")
        return _item_to_schedule(item) if item else None

    def list(self, tenant: str | None = None) -> list[Schedule]:
        """One tenant's schedules, or every tenant's (``tenant=None``)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk" + (" AND begins_with(sk, :prefix)" if tenant else ""),
            "ExpressionAttributeValues": {":pk": {"S": _PK}, **({":prefix": {"S": f"{tenant}#"}} if tenant else {})},
            "ConsistentRead": True,
        }
        schedules: list[Schedule] = []
        while True:
            response = self._client.query(**request)
            schedules.extend(_item_to_schedule(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return schedules
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def delete(self, tenant: str, schedule_id: str) -> bool:
        """Delete the schedule's item; False when there was none."""
        response = self._client.delete_item(
            TableName=self._table, Key=self._key(tenant, schedule_id), ReturnValues="ALL_OLD"
        )
        return "Attributes" in response

    def claim_fire(
        self, tenant: str, schedule_id: str, *, expected_run_id: str | None, run_id: str, scheduled_time: str
    ) -> None:
        """Make ``run_id`` the schedule's latest run, if its latest is still ``expected_run_id``.

        Raises ``ScheduleClaimLost`` when another fire got there first (or the schedule is gone).
        """
        values: dict[str, Any] = {":run": {"S": run_id}, ":time": {"S": scheduled_time}}
        if expected_run_id is None:
            condition = "attribute_exists(pk) AND attribute_not_exists(last_run_id)"
        else:
            condition = "attribute_exists(pk) AND last_run_id = :expected"
            values[":expected"] = {"S": expected_run_id}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(tenant, schedule_id),
                UpdateExpression="SET last_run_id = :run, last_scheduled_time = :time",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ScheduleClaimLost(f"schedule {schedule_id} changed while firing") from error
            raise

    def release_fire(
        self,
        tenant: str,
        schedule_id: str,
        *,
        run_id: str,
        previous_run_id: str | None,
        previous_scheduled_time: str | None,
    ) -> None:
        """Undo ``claim_fire`` of ``run_id`` (its run could not be started), if nothing claimed since."""
        names = {"#run": "last_run_id", "#time": "last_scheduled_time"}
        values: dict[str, Any] = {":claimed": {"S": run_id}}
        sets, removes = [], []
        for attribute, value in (("#run", previous_run_id), ("#time", previous_scheduled_time)):
            if value is None:
                removes.append(attribute)
            else:
                sets.append(f"{attribute} = :{attribute[1:]}")
                values[f":{attribute[1:]}"] = {"S": value}
        clauses = [f"SET {', '.join(sets)}"] if sets else []
        clauses += [f"REMOVE {', '.join(removes)}"] if removes else []
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(tenant, schedule_id),
                UpdateExpression=" ".join(clauses),
                ConditionExpression="last_run_id = :claimed",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    def record_skip(self, tenant: str, schedule_id: str, skip: ScheduleSkip) -> None:
        """Append a skipped fire to the schedule (kept short: the oldest are dropped)."""
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key(tenant, schedule_id),
                UpdateExpression="SET skips = list_append(if_not_exists(skips, :empty), :skip)",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":empty": {"L": []}, ":skip": {"L": [{"S": skip.model_dump_json()}]}},
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return  # the schedule was deleted meanwhile: nothing to record on
            raise
        skips = response["Attributes"]["skips"]["L"]
        if len(skips) >= 2 * _KEEP_SKIPS:
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key=self._key(tenant, schedule_id),
                    UpdateExpression="SET skips = :kept",
                    ConditionExpression="size(skips) = :count",
                    ExpressionAttributeValues={
                        ":kept": {"L": skips[-_KEEP_SKIPS:]},
                        ":count": {"N": str(len(skips))},
                    },
                )
            except ClientError as error:  # another skip landed meanwhile: the next one trims
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise

    @staticmethod
    def _key(tenant: str, schedule_id: str) -> dict[str, Any]:
        return {"pk": {"S": _PK}, "sk": {"S": _sk(tenant, schedule_id)}}


def _item_to_schedule(item: dict[str, Any]) -> Schedule:
    plain = json.loads(item["data"]["S"])
    if "last_run_id" in item:
        plain["last_run_id"] = item["last_run_id"]["S"]
    if "last_scheduled_time" in item:
        plain["last_scheduled_time"] = item["last_scheduled_time"]["S"]
    plain["skips"] = [json.loads(entry["S"]) for entry in item.get("skips", {}).get("L", [])][-_KEEP_SKIPS:]
    return Schedule.model_validate(plain)


class EventBridgeSchedules:
    """The cloud side of schedules: one EventBridge Scheduler schedule per stored schedule, named by its id.

    Each invokes ``target_arn`` (``OnScheduleFunction``) with ``{schedule_id, tenant, scheduled_time}``,
    the time filled in by the scheduler (``<aws.scheduler.scheduled-time>``), so a retried delivery of
    one fire carries the same time; fires that fail after their retries go to the dead-letter queue.
    """

    def __init__(
        self,
        *,
        group: str,
        target_arn: str,
        role_arn: str,
        dead_letter_arn: str = "",
        client: Any | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("scheduler")
        self._client = client
        self.group = group
        self.target_arn = target_arn
        self.role_arn = role_arn
        self.dead_letter_arn = dead_letter_arn

    def create(self, schedule: Schedule) -> None:
        """Create the schedule; one that already exists (a retried request) is left as it is."""
        target: dict[str, Any] = {
            "Arn": self.target_arn,
            "RoleArn": self.role_arn,
            "Input": json.dumps(
                {
                    "schedule_id": schedule.schedule_id,
                    "tenant": schedule.tenant,
                    "scheduled_time": "<aws.scheduler.scheduled-time>",
                }
            ),
            "RetryPolicy": {"MaximumRetryAttempts": 5, "MaximumEventAgeInSeconds": FIRE_RETRY_WINDOW_S},
        }
        if self.dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self.dead_letter_arn}
        try:
            self._client.create_schedule(
                Name=schedule.schedule_id,
                GroupName=self.group,
                ScheduleExpression=schedule.expression,
                ScheduleExpressionTimezone=schedule.timezone,
                FlexibleTimeWindow={"Mode": "OFF"},
                Target=target,
                State="ENABLED",
                Description=(schedule.description or f"sandcastle schedule of {schedule.tenant}")[:512],
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConflictException":
                raise

    def delete(self, schedule_id: str) -> None:
        """Delete the schedule; one already gone is fine."""
        try:
            self._client.delete_schedule(Name=schedule_id, GroupName=self.group)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
