"""DynamoDB access for runs and their transcripts: nothing else touches the table.

One table, keys ``pk``/``sk``:

* run: ``RUN#<id>`` / ``META`` (GSI ``by_tenant``: ``TENANT#<t>`` / ``<created_at>#<id>``)
* event: ``RUN#<id>`` / ``EVT#<step>#<position>#<kind>`` — derived from where the event stands,
  written with ``attribute_not_exists`` so a retried handler rewrites nothing.
* a tenant's unfinished runs: ``TENANT#<t>`` / ``ACTIVE_RUNS`` (``running``) — incremented in the
  transaction that creates a run (with the condition ``running < limit`` when a limit applies), and
  decremented in the transaction that brings a run to its terminal status, whose condition (the
  run has not ended yet) makes the release exactly-once.

Event payloads are stored as a JSON string (``data``): no float/Decimal round trips, no
empty-string surprises, and the item stays the exact shape the transcript had.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic_core import to_jsonable_python

from sandcastle.errors import ActiveRunLimitReached, ConditionFailed, RunNotFound
from sandcastle.runs.records import TERMINAL_STATUSES, Run, RunStatus, Usage
from sandcastle.runs.transcript import Event, dump_data, parse_event, step_bounds
from sandcastle.store.item_size import check_request_fits
from sandcastle.store.transcript_cache import ReadEvent, TranscriptCache

_META = "META"
_ACTIVE_RUNS = "ACTIVE_RUNS"
_EVENT_PREFIX = "EVT#"
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

#: The run item's fields that come from its request (what ``check_fits`` measures).
_REQUEST_FIELDS = ("instructions", "playbook", "model", "budgets", "files", "sandbox", "origin", "policy")
_JSON_ATTRIBUTES = ("budgets", "playbook", "files", "error", "artifacts", "sandbox", "policy")


def run_pk(run_id: str) -> str:
    return f"RUN#{run_id}"


@dataclass
class RunUpdate:
    """A change to the run item, applied atomically with an event (or alone)."""

    set: dict[str, Any] = field(default_factory=dict)
    """Attributes to set (model field names; JSON-typed ones are encoded)."""
    remove: list[str] = field(default_factory=list)
    """Attributes to remove (e.g. a waiting run's task token once it goes on)."""
    add: Usage = field(default_factory=Usage)
    """Usage to add to the run's counters (``Usage.to_item`` names their attributes)."""
    require_status: Iterable[RunStatus] | None = None
    """Apply only while the run is in one of these statuses."""
    require_not_terminal: bool = False
    """Apply only while the run has not ended."""
    require_step: int | None = None
    """Apply only while the run's ``step`` is still this one: an event placed by the run's step (a steering
    message) is never written into a step a reader may already hold as complete (``transcript_cache``)."""
    release_slot_of: str | None = None
    """The run's tenant, when this update sets a terminal status: its active-run slot is freed in the
    same transaction. Required then, together with a condition that the run has not ended."""


class RunStore:
    """Runs and transcript events in one DynamoDB table."""

    def __init__(
        self,
        table_name: str,
        client: Any | None = None,
        *,
        ttl_days: int = 30,
        transcripts: TranscriptCache | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self._client = client
        self._table = table_name
        self._ttl = timedelta(days=ttl_days)
        self.transcripts = transcripts if transcripts is not None else TranscriptCache()
        """The transcripts read so far (``read_transcript``): one cache per store, so per container."""

    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client every request of this store goes through."""
        return self._client

    # --- runs ---

    def check_fits(self, run: Run) -> None:
        """``ValueTooLarge`` naming the field when the run's request is too large for its item."""
        check_request_fits({name: getattr(run, name) for name in _REQUEST_FIELDS}, what="the run's request")

    def create_run(self, run: Run, *, active_limit: int | None = None) -> bool:
        """Store a new run and take one of its tenant's active-run slots, atomically.

        False (and nothing written) when a run with that id already exists. With ``active_limit``,
        ``ActiveRunLimitReached`` (nothing written) when the tenant already has that many unfinished runs.
        """
        counter: dict[str, Any] = {
            "TableName": self._table,
            "Key": _key(_tenant_pk(run.tenant), _ACTIVE_RUNS),
            "UpdateExpression": "ADD running :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
        if active_limit is not None:
            counter["ConditionExpression"] = "attribute_not_exists(running) OR running < :limit"
            counter["ExpressionAttributeValues"][":limit"] = {"N": str(active_limit)}
        self.check_fits(run)
        put = {
            "TableName": self._table,
            "Item": self._run_to_item(run),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        try:
            self._client.transact_write_items(TransactItems=[{"Put": put}, {"Update": counter}])
        except ClientError as error:
            reasons = _cancellation_reasons(error)
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise ActiveRunLimitReached(
                    f"tenant {run.tenant} has {active_limit} unfinished runs, the most it may have at once"
                ) from error
            raise
        return True

    def active_runs(self, tenant: str) -> int:
        """How many of the tenant's runs have not ended (the counter ``create_run`` and the end keep)."""
        response = self._client.get_item(
            TableName=self._table, Key=_key(_tenant_pk(tenant), _ACTIVE_RUNS), ConsistentRead=True
        )
        return int(response.get("Item", {}).get("running", {}).get("N", 0))

    def get_run(self, run_id: str, *, consistent: bool = True) -> Run:
        """The run, or ``RunNotFound``."""
        response = self._client.get_item(
            TableName=self._table, Key=_key(run_pk(run_id), _META), ConsistentRead=consistent
        )
        if "Item" not in response:
            raise RunNotFound(f"run {run_id} not found")
        return self._item_to_run(_deserialize(response["Item"]))

    def update_run(self, run_id: str, update: RunUpdate) -> None:
        """Apply ``update`` to the run; ``ConditionFailed`` when its status requirement does not hold."""
        request = {"TableName": self._table, **self._update_request(run_id, update)}
        if update.release_slot_of is None:
            try:
                self._client.update_item(**request)
            except ClientError as error:
                if _is_condition_failure(error):
                    raise ConditionFailed(f"run {run_id} is not in a state that allows this update") from error
                raise
            return
        try:
            self._client.transact_write_items(
                TransactItems=[{"Update": request}, {"Update": self._release_request(update.release_slot_of)}]
            )
        except ClientError as error:
            reasons = _cancellation_reasons(error)
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise ConditionFailed(f"run {run_id} is not in a state that allows this update") from error
            raise

    def claim_sandbox(self, run_id: str, sandbox_id: str) -> str:
        """Record ``sandbox_id`` unless the run already has one; return the run's sandbox id."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_key(run_pk(run_id), _META),
                UpdateExpression="SET sandbox_id = :s",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(sandbox_id)",
                ExpressionAttributeValues={":s": {"S": sandbox_id}},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                existing = self.get_run(run_id).sandbox_id
                if existing:
                    return existing
            raise
        return sandbox_id

    # --- events ---

    def append_event(self, event: Event, update: RunUpdate | None = None) -> bool:
        """Write ``event`` once, together with ``update`` in one transaction.

        Returns False when the event already exists (a retry): then nothing is written, so
        counters are never incremented twice. Raises ``ConditionFailed`` when the update's
        status requirement does not hold.
        """
        put = {
            "TableName": self._table,
            "Item": self._event_to_item(event),
            "ConditionExpression": "attribute_not_exists(sk)",
        }
        if update is None:
            try:
                self._client.put_item(**put)
            except ClientError as error:
                if _is_condition_failure(error):
                    return False
                raise
            return True
        items: list[dict[str, Any]] = [
            {"Put": put},
            {"Update": {"TableName": self._table, **self._update_request(event.run_id, update)}},
        ]
        if update.release_slot_of is not None:
            items.append({"Update": self._release_request(update.release_slot_of)})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as error:
            reasons = _cancellation_reasons(error)
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise ConditionFailed(f"run {event.run_id} is not in a state that allows this update") from error
            raise
        return True

    def get_event(self, run_id: str, key: str) -> Event | None:
        response = self._client.get_item(TableName=self._table, Key=_key(run_pk(run_id), key), ConsistentRead=True)
        item = response.get("Item")
        return self._item_to_event(_deserialize(item)) if item else None

    def list_events(self, run_id: str, *, after: str | None = None, limit: int | None = None) -> list[Event]:
        """The transcript in order, optionally from after the event key ``after`` (read from the table)."""
        return [read.event for read in self._query_events(run_id, after=after, limit=limit)]

    def read_transcript(self, run_id: str) -> list[Event]:
        """The whole transcript in order, querying only the events this container has not kept yet.

        What was read before comes from ``transcripts`` (its sealed steps: ``store/transcript_cache.py``
        says why they cannot have changed); the Query starts after the last of them, so a turn's read
        costs the same at step 50 as at step 2.
        """
        kept, after = self.transcripts.sealed(run_id)
        fresh = self._query_events(run_id, after=after)
        self.transcripts.add(run_id, after, fresh)
        return kept + [read.event for read in fresh]

    def step_events(self, run_id: str, step: int) -> list[Event]:
        """The events of one step (its assistant turn and the tool results so far), in order: one Query."""
        low, high = step_bounds(step)
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": {"S": run_pk(run_id)}, ":low": {"S": low}, ":high": {"S": high}},
            "ConsistentRead": True,
        }
        return [read.event for read in self._paged(request)]

    def _query_events(self, run_id: str, *, after: str | None = None, limit: int | None = None) -> list[ReadEvent]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": run_pk(run_id)}, ":prefix": {"S": _EVENT_PREFIX}},
            "ConsistentRead": True,
        }
        if after:
            request["ExclusiveStartKey"] = _key(run_pk(run_id), after)
        return self._paged(request, limit=limit)

    def _paged(self, request: dict[str, Any], *, limit: int | None = None) -> list[ReadEvent]:
        events: list[ReadEvent] = []
        while True:
            if limit is not None:
                request["Limit"] = limit - len(events)
            response = self._client.query(**request)
            for item in response.get("Items", []):
                events.append(ReadEvent(self._item_to_event(_deserialize(item)), _stored_size(item)))
            last = response.get("LastEvaluatedKey")
            if not last or (limit is not None and len(events) >= limit):
                return events
            request["ExclusiveStartKey"] = last

    # --- item mapping ---

    def _expires_at(self, created_at: datetime) -> int:
        return int((created_at + self._ttl).timestamp())

    def _run_to_item(self, run: Run) -> dict[str, Any]:
        plain = run.model_dump(mode="json", exclude_none=True)
        plain.pop("usage", None)
        item: dict[str, Any] = {
            "pk": run_pk(run.run_id),
            "sk": _META,
            "gsi1pk": f"TENANT#{run.tenant}",
            "gsi1sk": f"{plain['created_at']}#{run.run_id}",
            "expires_at": self._expires_at(run.created_at),
        }
        for name, value in plain.items():
            item[name] = json.dumps(value) if name in _JSON_ATTRIBUTES else value
        item.update(run.usage.to_item())
        return _serialize(item)

    @staticmethod
    def _item_to_run(item: Mapping[str, Any]) -> Run:
        plain = {k: v for k, v in item.items() if k not in ("pk", "sk", "gsi1pk", "gsi1sk", "expires_at")}
        for name in _JSON_ATTRIBUTES:
            if name in plain:
                plain[name] = json.loads(plain[name])
        plain["usage"] = Usage.from_item(item)
        for attribute in Usage().to_item():
            plain.pop(attribute, None)
        for number in ("step", "approval_timeout_s"):
            if number in plain:
                plain[number] = int(plain[number])
        plain.pop("approval_token", None)  # the waiting execution's task token: never part of the run's view
        return Run.model_validate(plain)

    def _event_to_item(self, event: Event) -> dict[str, Any]:
        return _serialize(
            {
                "pk": run_pk(event.run_id),
                "sk": event.key,
                "kind": event.kind.value,
                "step": event.step,
                "at": event.at.isoformat(),
                "data": dump_data(event),
                "expires_at": self._expires_at(event.at),
            }
        )

    @staticmethod
    def _item_to_event(item: Mapping[str, Any]) -> Event:
        return parse_event(
            {
                "run_id": item["pk"].removeprefix("RUN#"),
                "key": item["sk"],
                "kind": item["kind"],
                "step": int(item["step"]),
                "at": item["at"],
                "data": json.loads(item["data"]),
            }
        )

    def _release_request(self, tenant: str) -> dict[str, Any]:
        """The counter update that frees one of the tenant's active-run slots."""
        return {
            "TableName": self._table,
            "Key": _key(_tenant_pk(tenant), _ACTIVE_RUNS),
            "UpdateExpression": "ADD running :minus_one",
            "ExpressionAttributeValues": {":minus_one": {"N": "-1"}},
        }

    def _update_request(self, run_id: str, update: RunUpdate) -> dict[str, Any]:
        ends = update.set.get("status") in TERMINAL_STATUSES
        if ends != (update.release_slot_of is not None):
            raise ValueError("an update that sets a terminal status frees the run's slot (release_slot_of); no other")
        open_only = update.require_not_terminal or (
            update.require_status is not None and not set(update.require_status) & TERMINAL_STATUSES
        )
        if ends and not open_only:
            raise ValueError("an update that ends a run must require the run not to have ended (exactly-once)")
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        adds: list[str] = []
        for index, (name, value) in enumerate(update.set.items()):
            names[f"#s{index}"] = name
            value = to_jsonable_python(value)  # models, datetimes, enums → JSON-shaped values
            if name in _JSON_ATTRIBUTES:
                value = json.dumps(value)
            values[f":s{index}"] = value
            sets.append(f"#s{index} = :s{index}")
        for index, (attribute, amount) in enumerate(update.add.increments().items()):
            names[f"#a{index}"] = attribute
            values[f":a{index}"] = amount
            adds.append(f"#a{index} :a{index}")
        removes: list[str] = []
        for index, name in enumerate(update.remove):
            names[f"#r{index}"] = name
            removes.append(f"#r{index}")
        expression = " ".join(
            part
            for part in (
                ("SET " + ", ".join(sets)) if sets else "",
                ("REMOVE " + ", ".join(removes)) if removes else "",
                ("ADD " + ", ".join(adds)) if adds else "",
            )
            if part
        )
        conditions = ["attribute_exists(pk)"]
        if update.require_status is not None:
            names["#status"] = "status"
            placeholders = []
            for index, status in enumerate(update.require_status):
                values[f":rs{index}"] = status.value
                placeholders.append(f":rs{index}")
            conditions.append(f"#status IN ({', '.join(placeholders)})")
        if update.require_not_terminal:
            names["#status"] = "status"
            placeholders = []
            for index, status in enumerate(sorted(TERMINAL_STATUSES)):
                values[f":ts{index}"] = status.value
                placeholders.append(f":ts{index}")
            conditions.append(f"NOT (#status IN ({', '.join(placeholders)}))")
        if update.require_step is not None:
            names["#step"] = "step"
            values[":rstep"] = update.require_step
            conditions.append("#step = :rstep")
        request: dict[str, Any] = {
            "Key": _key(run_pk(run_id), _META),
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
        }
        if values:
            request["ExpressionAttributeValues"] = _serialize(values)
        return request

    # --- the HTTP API: listing, cancel marks ---

    def list_runs_by_tenant(
        self,
        tenant: str,
        *,
        limit: int,
        start: Mapping[str, str] | None = None,
        status: RunStatus | None = None,
    ) -> tuple[list[Run], dict[str, str] | None]:
        """A page of the tenant's runs, newest first (GSI ``by_tenant``), optionally of one status.

        ``start`` is the position a previous page returned; the returned position is None on the
        last page. With a status filter a page is filled across index pages, and the position is
        the last run returned, so nothing is skipped.
        """
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": _BY_TENANT,
            "KeyConditionExpression": "gsi1pk = :t",
            "ExpressionAttributeValues": {":t": {"S": _tenant_pk(tenant)}},
            "ScanIndexForward": False,
        }
        if status is not None:
            request["FilterExpression"] = "#status = :status"
            request["ExpressionAttributeNames"] = {"#status": "status"}
            request["ExpressionAttributeValues"][":status"] = {"S": status.value}
        if start:
            request["ExclusiveStartKey"] = {name: {"S": value} for name, value in start.items()}
        runs: list[Run] = []
        while True:
            request["Limit"] = limit - len(runs) if status is None else max(limit, 25)
            response = self._client.query(**request)
            items = response.get("Items", [])
            for index, item in enumerate(items):
                runs.append(self._item_to_run(_deserialize(item)))
                if len(runs) == limit:
                    more = index < len(items) - 1 or "LastEvaluatedKey" in response
                    return runs, (_position(item) if more else None)
            last = response.get("LastEvaluatedKey")
            if not last:
                return runs, None
            request["ExclusiveStartKey"] = last

    def mark_cancel_requested(self, run_id: str, *, by: str, at: datetime) -> bool:
        """Record who asked to cancel the run and when. False (nothing written) when the run already ended."""
        try:
            self.update_run(
                run_id,
                RunUpdate(set={"cancel_requested_at": at, "cancelled_by": by}, require_not_terminal=True),
            )
        except ConditionFailed:
            return False
        return True


_BY_TENANT = "by_tenant"
_POSITION_ATTRIBUTES = ("pk", "sk", "gsi1pk", "gsi1sk")


def _tenant_pk(tenant: str) -> str:
    return f"TENANT#{tenant}"


def _position(item: Mapping[str, Any]) -> dict[str, str]:
    """The index position of an item (what ``ExclusiveStartKey`` takes), as plain strings."""
    return {name: item[name]["S"] for name in _POSITION_ATTRIBUTES}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(value) for name, value in item.items()}


def _deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def _stored_size(item: Mapping[str, Any]) -> int:
    """About what an item weighs (its ``data`` text dominates), for the transcript cache's byte budget."""
    return 128 + len(item.get("data", {}).get("S", ""))


def _is_condition_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _cancellation_reasons(error: ClientError) -> list[str]:
    if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return []
    reasons = error.response.get("CancellationReasons")
    if reasons:
        return [reason.get("Code", "None") for reason in reasons]
    # Some emulators only put the reasons in the message: "... [ConditionalCheckFailed, None]"
    message = error.response.get("Error", {}).get("Message", "")
    if "[" in message:
        return [part.strip() for part in message[message.rindex("[") + 1 : message.rindex("]")].split(",")]
    return []
