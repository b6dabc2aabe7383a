"""The local inbox: a folder that stands for the inbox bucket, and an outbox folder that mirrors results.

Drop a file at ``<home>/inbox/<tenant>/<task>/<file name>`` (or run ``sandcastle upload``): it is put
into the inbox bucket at ``inbox/<tenant>/<task>/<file name>``, which fires the template's
``Object Created`` rule → the upload function, exactly as in the cloud; the local file is then
removed and a receipt left at ``<home>/inbox/.receipts/<tenant>/<task>/<file name>.json`` naming
the object version and its run id. An upload to ``<tenant>/_/`` takes its instructions from a
hidden sidecar ``.<file name>.meta.json`` (``{"instructions": "..."}``) as ``x-amz-meta-instructions``.

Everything written under ``outbox/`` in the inbox bucket is copied to ``<home>/outbox/``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sandcastle.runs.uploads import INBOX_PREFIX, INSTRUCTIONS_METADATA, OUTBOX_PREFIX, upload_run_id

if TYPE_CHECKING:
    from sandcastle.local.stack import Stack
    from sandcastle.local.triggers import LocalEventBus

logger = logging.getLogger(__name__)

RECEIPTS = ".receipts"
INBOX_BUCKET = "InboxBucket"
"""The template's inbox bucket (logical id)."""
_METADATA_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
"""Printable ASCII that stays as it is in URL-encoded metadata (``%`` and non-ASCII are encoded)."""


@dataclass(frozen=True)
class InboxReceipt:
    """What putting one file into the inbox bucket made: the object version and the run it starts."""

    bucket: str
    key: str
    version_id: str | None
    run_id: str


def receipt_path(folder: Path, relative: str) -> Path:
    """Where the receipt of ``<folder>/<relative>`` is written."""
    return folder / RECEIPTS / f"{relative}.json"


def outbox_path(outbox: Path, tenant: str, task: str, run_id: str) -> Path:
    """The local mirror of ``outbox/<tenant>/<task>/<run id>/``."""
    return outbox / tenant / task / run_id


class LocalInbox:
    """Watches ``home/inbox`` (every ``poll_s``) and mirrors ``outbox/`` into ``home/outbox``."""

    def __init__(self, stack: Stack, bus: LocalEventBus, *, home: Path, poll_s: float = 0.5) -> None:
        self.stack = stack
        self.folder = home / "inbox"
        self.outbox = home / "outbox"
        resources = stack.template.resources
        self.bucket = stack.template.physical_name(INBOX_BUCKET) if INBOX_BUCKET in resources else ""
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        bus.subscribe(self._mirror)

    def start(self) -> None:
        if not self.bucket:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._watch, name="sandcastle-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def put(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None) -> InboxReceipt:
        """Put an object into the inbox bucket (as a user's upload would); its rule fires on its own."""
        encoded = {name: quote(value, safe=_METADATA_SAFE) for name, value in (metadata or {}).items()}
        response = self.stack.deps_client("s3").put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=encoded)
        version_id = response.get("VersionId")
        etag = (response.get("ETag") or "").strip('"') or None
        return InboxReceipt(self.bucket, key, version_id, upload_run_id(self.bucket, key, version_id, etag))

    def scan(self, *, settle_s: float = 1.0) -> list[InboxReceipt]:
        """Put every file under the folder untouched for ``settle_s`` into the bucket; remove it, keep a receipt."""
        receipts = []
        with self._lock:
            for path in sorted(self.folder.rglob("*")):
                relative = path.relative_to(self.folder).as_posix()
                if not path.is_file() or any(part.startswith(".") for part in path.relative_to(self.folder).parts):
                    continue
                try:
                    if time.time() - path.stat().st_mtime < settle_s:
                        continue  # maybe still being written
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                receipt = self.put(INBOX_PREFIX + relative, data, metadata=self._sidecar(path))
                target = receipt_path(self.folder, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(asdict(receipt)))
                path.unlink(missing_ok=True)
                path.with_name(f".{path.name}.meta.json").unlink(missing_ok=True)
                receipts.append(receipt)
        return receipts

    @staticmethod
    def _sidecar(path: Path) -> dict[str, str]:
        sidecar = path.with_name(f".{path.name}.meta.json")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return {}
        instructions = meta.get(INSTRUCTIONS_METADATA)
        return {INSTRUCTIONS_METADATA: str(instructions)} if instructions else {}

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.scan()
            except Exception:
                logger.exception("could not put the inbox folder's files into the inbox bucket")

    def _mirror(self, event: dict[str, Any]) -> None:
        """Copy an object written under ``outbox/`` in the inbox bucket to the outbox folder."""
        detail = event.get("detail") or {}
        key = (detail.get("object") or {}).get("key", "")
        if detail.get("bucket", {}).get("name") != self.bucket or not key.startswith(OUTBOX_PREFIX):
            return
        relative = key[len(OUTBOX_PREFIX) :]
        target = (self.outbox / relative).resolve()
        if not target.is_relative_to(self.outbox.resolve()):
            return
        body = self.stack.deps_client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(body)
        partial.replace(target)
