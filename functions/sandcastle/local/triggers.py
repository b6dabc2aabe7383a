"""The template's triggers, emulated for the local runtime: EventBridge rules, the inbox folder, the scheduler.

moto delivers no EventBridge events to Lambda targets and fires no schedules, so the runtime stands
in for them, reading everything from ``template.yaml``:

* **Rules.** Every ``EventBridgeRule`` event of a function is matched, on one bus, against what
  EventBridge would see: the events handlers put (``PutEvents``, e.g. ``Run Finished``),
  ``Object Created`` events of the buckets whose ``NotificationConfiguration`` enables EventBridge
  (after ``PutObject``/``CopyObject``), and the Step Functions execution status changes moto does
  not emit (``local/rules.py`` observes them and publishes them here). A match invokes the function
  asynchronously with the event EventBridge would deliver. The domain code is unaware: it calls the
  same AWS APIs as in the cloud, and the runtime observes the calls.
* **The inbox folder** (``local/inbox.py``): files dropped into ``<home>/inbox/`` are put into the
  inbox bucket; results written under ``outbox/`` are mirrored into ``<home>/outbox/``.
* **The scheduler** (``local/scheduler.py``): the template's and the API's EventBridge Scheduler
  schedules fire on time, with an injectable clock.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandcastle.local.template import ACCOUNT_ID, Template

if TYPE_CHECKING:
    from sandcastle.local.inbox import LocalInbox
    from sandcastle.local.scheduler import LocalScheduler
    from sandcastle.local.stack import Stack

logger = logging.getLogger(__name__)

_S3_WRITES = ("PutObject", "CopyObject", "CompleteMultipartUpload")


@dataclass(frozen=True)
class EventRule:
    """A function of the template triggered by an EventBridge rule, and the rule's pattern."""

    function: str
    pattern: dict[str, Any]


def event_rules(template: Template) -> list[EventRule]:
    """The template's EventBridge rules on the default bus."""
    rules = []
    for logical_id, resource in template.of_type("AWS::Serverless::Function").items():
        for event in resource.get("Properties", {}).get("Events", {}).values():
            if event.get("Type") == "EventBridgeRule":
                pattern = template.resolve(event.get("Properties", {}).get("Pattern", {}))
                rules.append(EventRule(function=logical_id, pattern=pattern))
    return rules


def eventbridge_buckets(template: Template) -> set[str]:
    """The buckets that send their events to EventBridge."""
    names = set()
    for logical_id, resource in template.of_type("AWS::S3::Bucket").items():
        notifications = resource.get("Properties", {}).get("NotificationConfiguration", {})
        if notifications.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
            names.add(template.physical_name(logical_id))
    return names


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge pattern matching, for what templates use: literals, ``prefix``, ``exists``, nesting."""
    for name, expected in pattern.items():
        value = event.get(name) if isinstance(event, dict) else None
        if isinstance(expected, dict):
            if not isinstance(value, dict) or not matches(expected, value):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(_matches_one(condition, item) for condition in expected for item in values):
            return False
    return True


def _matches_one(condition: Any, value: Any) -> bool:
    if isinstance(condition, dict):
        if "prefix" in condition:
            return isinstance(value, str) and value.startswith(condition["prefix"])
        if "exists" in condition:
            return (value is not None) == bool(condition["exists"])
        if "anything-but" in condition:
            excluded = condition["anything-but"]
            return value not in (excluded if isinstance(excluded, list) else [excluded])
        return False
    return value is not None and condition == value


def envelope(
    *, source: str | None, detail_type: str | None, resources: list[str], detail: Any, region: str
) -> dict[str, Any]:
    """The event EventBridge delivers to a rule's target: ``detail`` in the envelope every event shares."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def object_created_event(
    *, bucket: str, key: str, version_id: str | None, size: int | None, etag: str | None, region: str
) -> dict[str, Any]:
    """The EventBridge ``Object Created`` event S3 sends (its key is not URL-encoded)."""
    return envelope(
        source="aws.s3",
        detail_type="Object Created",
        resources=[f"arn:aws:s3:::{bucket}"],
        detail={
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "etag": etag, "version-id": version_id, "sequencer": uuid.uuid4().hex},
            "request-id": uuid.uuid4().hex,
            "requester": ACCOUNT_ID,
            "reason": "PutObject",
        },
        region=region,
    )


def put_event(entry: dict[str, Any], region: str) -> dict[str, Any]:
    """The event EventBridge delivers for one ``PutEvents`` entry."""
    return envelope(
        source=entry.get("Source"),
        detail_type=entry.get("DetailType"),
        resources=entry.get("Resources", []),
        detail=json.loads(entry.get("Detail") or "{}"),
        region=region,
    )


class LocalEventBus:
    """Observes ``PutEvents`` and S3 writes, takes what other sources publish; delivers matching events in order.

    Every event goes through one queue and one delivery thread. An event whose content must be
    read from the emulated AWS (an object's size, an execution's description) is queued as a
    function that builds it, called on the delivery thread, so the caller's AWS call is not slowed.
    """

    def __init__(self, stack: Stack, rules: list[EventRule], buckets: set[str]) -> None:
        self.stack = stack
        self.rules = rules
        self.buckets = buckets
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        """(function, event) for every delivery, for tests."""
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._queue: queue.Queue[Callable[[], dict[str, Any] | None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Also hand every S3 ``Object Created`` event to ``listener`` (on the delivery thread)."""
        self._listeners.append(listener)

    def start(self, events: Any) -> None:
        """Hook the session's event system ``events``; start delivering."""
        events.register("provide-client-params.events.PutEvents", self._remember_params)
        events.register("after-call.events.PutEvents", self._put_events)
        for operation in _S3_WRITES:
            events.register(f"provide-client-params.s3.{operation}", self._remember_params)
            events.register(f"after-call.s3.{operation}", self._object_written)
        self._thread = threading.Thread(target=self._deliver, name="sandcastle-event-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def drain(self, timeout_s: float = 30) -> None:
        """Wait until every event observed so far has been delivered (and whatever those deliveries caused).

        A delivery may cause further events (a run end → an outbox write → a mirror); they are queued
        before the delivery that caused them is marked done, so no unfinished item means all settled.
        """
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to every rule it matches (and to listeners, when it is an S3 event)."""
        self._queue.put(lambda: event)

    def publish_built(self, build: Callable[[], dict[str, Any] | None]) -> None:
        """Deliver the event ``build()`` makes on the delivery thread (None: nothing to deliver)."""
        self._queue.put(build)

    # --- observing the AWS calls ---

    def _remember_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["sandcastle_params"] = dict(params)

    def _put_events(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if getattr(http_response, "status_code", 500) >= 300:
            return
        params = context.get("sandcastle_params") or {}
        results = parsed.get("Entries") or []
        for index, entry in enumerate(params.get("Entries", [])):
            if index < len(results) and results[index].get("ErrorCode"):
                continue
            if entry.get("EventBusName", "default") in ("default", None, ""):
                self.publish(put_event(entry, self.stack.region))

    def _object_written(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        params = context.get("sandcastle_params") or {}
        bucket = params.get("Bucket")
        if getattr(http_response, "status_code", 500) >= 300 or bucket not in self.buckets:
            return
        etag = parsed.get("ETag") or (parsed.get("CopyObjectResult") or {}).get("ETag")
        key, version_id = params.get("Key"), parsed.get("VersionId")
        self.publish_built(lambda: self._s3_event(bucket, key, version_id, etag))

    # --- delivery ---

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                event = item()
                if event is None:
                    continue
                for listener in self._listeners if event.get("source") == "aws.s3" else []:
                    listener(event)
                for rule in self.rules:
                    if matches(rule.pattern, event):
                        self.delivered.append((rule.function, event))
                        self.stack.invoke(rule.function, event)
            except Exception:
                logger.exception("an EventBridge event could not be built or its rule's function failed")
            finally:
                self._queue.task_done()

    def _s3_event(self, bucket: str, key: str, version_id: str | None, etag: str | None) -> dict[str, Any]:
        size = None
        try:
            request = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
            size = int(self.stack.deps_client("s3").head_object(**request)["ContentLength"])
        except Exception:  # deleted meanwhile: the function finds out itself
            logger.debug("could not head %s/%s", bucket, key, exc_info=True)
        return object_created_event(
            bucket=bucket,
            key=key,
            version_id=version_id,
            size=size,
            etag=(etag or "").strip('"') or None,
            region=self.stack.region,
        )


class LocalTriggers:
    """The event bus (and its execution-status source), the inbox folder and the scheduler, started together."""

    def __init__(self, stack: Stack, *, home: Path) -> None:
        from sandcastle.local.inbox import LocalInbox
        from sandcastle.local.rules import ExecutionStatusSource
        from sandcastle.local.scheduler import LocalScheduler

        template = stack.template
        self.stack = stack
        self.bus = LocalEventBus(stack, event_rules(template), eventbridge_buckets(template))
        self.executions: ExecutionStatusSource | None = ExecutionStatusSource.for_rules(stack, self.bus)
        """Publishes the execution status changes the rules match (None: no rule matches any)."""
        self.inbox: LocalInbox = LocalInbox(stack, self.bus, home=home)
        self.scheduler: LocalScheduler = LocalScheduler(stack)

    def start(self, events: Any) -> None:
        enable_versioning(self.stack.template, self.stack.deps_client("s3"))
        self.bus.start(events)
        if self.executions is not None:
            self.executions.start(events)
        self.scheduler.start(events)
        self.inbox.start()

    def stop(self) -> None:
        self.inbox.stop()
        self.scheduler.stop()
        if self.executions is not None:
            self.executions.stop()
        self.bus.stop()


def enable_versioning(template: Template, client: Any) -> None:
    """Turn versioning on for the template's buckets that have it (``create_buckets`` makes plain ones)."""
    for logical_id, resource in template.of_type("AWS::S3::Bucket").items():
        if resource.get("Properties", {}).get("VersioningConfiguration", {}).get("Status") == "Enabled":
            client.put_bucket_versioning(
                Bucket=template.physical_name(logical_id), VersioningConfiguration={"Status": "Enabled"}
            )
