"""The server's sandboxes: each one a hardened bubblewrap workspace of the ``local`` backend, with its E2B state.

The isolation is ``LocalSandboxProvider``'s (one private workspace per sandbox, one fresh ``bwrap``
per command, no network); this module adds what E2B's control plane keeps about a sandbox
(template, metadata, end time, access token, its running processes) and a reaper thread that
really ends a sandbox when its timeout passes.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sandcastle.errors import InvalidSandboxRequest, SandboxGone, SandboxLimitReached, SandboxNotFound
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider

if TYPE_CHECKING:
    from sandcastle.e2b_server.processes import RunningProcess

ENVD_VERSION = "0.6.7"
"""The envd version the server claims: new enough for every SDK feature it implements."""
MAX_TIMEOUT_S = 24 * 3600
"""The longest sandbox timeout accepted (E2B's Pro limit)."""
_FIRST_PID = 1000


@dataclass
class SandboxRecord:
    """One live sandbox: its workspace and what E2B's API reports about it."""

    sandbox: LocalSandbox
    template_id: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    access_token: str
    """Sent back as ``envdAccessToken``; envd requests must carry it (``X-Access-Token``)."""
    idempotency_key: str | None = None
    processes: dict[int, RunningProcess] = field(default_factory=dict)
    next_pid: int = _FIRST_PID
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards ``processes`` and ``next_pid``."""

    @property
    def sandbox_id(self) -> str:
        return self.sandbox.sandbox_id

    def allocate_pid(self) -> int:
        """A pid for a new process of this sandbox (unique within it, like envd's)."""
        with self.lock:
            pid = self.next_pid
            self.next_pid += 1
            return pid


class SandboxRegistry:
    """Creates, finds, times out and kills the server's sandboxes. Thread-safe.

    ``max_sandboxes`` caps how many live at once (one more create is answered 429).
    ``reap_interval_s`` is how often the reaper looks for sandboxes past their end time.
    """

    def __init__(
        self,
        provider: LocalSandboxProvider,
        *,
        max_sandboxes: int = 100,
        reap_interval_s: float = 0.25,
    ) -> None:
        self.provider = provider
        self.max_sandboxes = max_sandboxes
        self._reap_interval_s = reap_interval_s
        self._records: dict[str, SandboxRecord] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    @classmethod
    def at(cls, root: Path, **options: int | float) -> SandboxRegistry:
        """A registry whose workspaces live under ``root`` (default limits, uid 65534 when root)."""
        return cls(LocalSandboxProvider(root), **options)  # type: ignore[arg-type]

    # --- lifecycle ---

    def create(
        self,
        *,
        template_id: str,
        timeout_s: int,
        metadata: dict[str, str],
        envs: dict[str, str],
        allow_internet_access: bool = False,
        idempotency_key: str | None = None,
    ) -> SandboxRecord:
        """Create a sandbox that ends ``timeout_s`` seconds from now unless kept alive.

        A create repeated with the same ``idempotency_key`` returns the sandbox the first one made
        while it lives. Raises ``InvalidSandboxRequest`` (internet access, bad timeout) and
        ``SandboxLimitReached``.
        """
        if allow_internet_access:
            raise InvalidSandboxRequest(
                "allow_internet_access=true is not supported: sandboxes of this server have no network "
                "(only their own loopback); create the sandbox with allow_internet_access=False"
            )
        _check_timeout(timeout_s)
        with self._lock:
            if idempotency_key and idempotency_key in self._by_idempotency_key:
                existing = self._records.get(self._by_idempotency_key[idempotency_key])
                if existing is not None:
                    return existing
            if len(self._records) >= self.max_sandboxes:
                raise SandboxLimitReached(
                    f"this server already runs {len(self._records)} sandboxes (its limit); kill one or retry later"
                )
            spec = SandboxSpec(
                run_id=metadata.get("run_id", ""),
                tenant=metadata.get("tenant", ""),
                timeout_s=timeout_s,
                metadata=dict(metadata),
                template=template_id,
                envs=dict(envs),
            )
            sandbox = self.provider.create(spec)
            now = datetime.now(UTC)
            record = SandboxRecord(
                sandbox=sandbox,
                template_id=template_id,
                metadata=dict(metadata),
                started_at=now,
                end_at=now + timedelta(seconds=timeout_s),
                access_token=secrets.token_urlsafe(24),
                idempotency_key=idempotency_key,
            )
            self._records[record.sandbox_id] = record
            if idempotency_key:
                self._by_idempotency_key[idempotency_key] = record.sandbox_id
            return record

    def get(self, sandbox_id: str) -> SandboxRecord:
        """The live sandbox with this id; ``SandboxNotFound`` when there is none (an expired one is killed)."""
        with self._lock:
            record = self._records.get(sandbox_id)
        if record is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found")
        if datetime.now(UTC) >= record.end_at:
            self.kill(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found (it reached its timeout)")
        return record

    def connect(self, sandbox_id: str, timeout_s: int | None) -> SandboxRecord:
        """Reconnect to a live sandbox; ``timeout_s`` extends its life to that long from now (never shortens it)."""
        record = self.get(sandbox_id)
        if timeout_s is not None:
            _check_timeout(timeout_s)
            if datetime.now(UTC) + timedelta(seconds=timeout_s) > record.end_at:
                self.set_timeout(sandbox_id, timeout_s)
        return record

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> SandboxRecord:
        """The sandbox now ends ``timeout_s`` seconds from now (sooner or later than before)."""
        _check_timeout(timeout_s)
        record = self.get(sandbox_id)
        try:
            record.sandbox.keep_alive(timeout_s)
        except SandboxGone:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found") from None
        with self._lock:
            record.end_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
        return record

    def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox, its processes and its workspace. False when it did not exist."""
        with self._lock:
            record = self._records.pop(sandbox_id, None)
            if record is not None and record.idempotency_key:
                self._by_idempotency_key.pop(record.idempotency_key, None)
        if record is None:
            return False
        with record.lock:
            processes = list(record.processes.values())
        for process in processes:
            process.kill()
        self.provider.kill(sandbox_id)  # ends every other bwrap of the sandbox and deletes its workspace
        return True

    def list(self, metadata: dict[str, str] | None = None) -> list[SandboxRecord]:
        """Live sandboxes (oldest first) whose metadata contains every pair of ``metadata``."""
        now = datetime.now(UTC)
        with self._lock:
            records = [record for record in self._records.values() if record.end_at > now]
        wanted = (metadata or {}).items()
        return sorted(
            (record for record in records if all(record.metadata.get(key) == value for key, value in wanted)),
            key=lambda record: (record.started_at, record.sandbox_id),
        )

    def adopt_existing(self) -> list[str]:
        """Take over the live sandboxes already under the provider's root (left by an earlier server).

        Their workspaces and metadata persist on disk; their access tokens are new (clients get them
        again from ``connect``). Expired ones are killed. Returns the ids adopted.
        """
        adopted = []
        for info in self.provider.list_sandboxes():
            try:
                sandbox = self.provider.connect(info.sandbox_id)
            except SandboxGone:
                continue
            now = datetime.now(UTC)
            record = SandboxRecord(
                sandbox=sandbox,
                template_id=info.metadata.get("template", "base"),
                metadata=dict(info.metadata),
                started_at=info.created_at or now,
                end_at=info.expires_at or now,
                access_token=secrets.token_urlsafe(24),
            )
            with self._lock:
                self._records.setdefault(record.sandbox_id, record)
            adopted.append(record.sandbox_id)
        return adopted

    # --- the reaper ---

    def start_reaper(self) -> None:
        """Start the thread that kills sandboxes past their end time."""
        if self._reaper is None:
            self._stopping.clear()
            self._reaper = threading.Thread(target=self._reap_forever, name="e2b-server-reaper", daemon=True)
            self._reaper.start()

    def reap_expired(self) -> list[str]:
        """Kill every sandbox past its end time now; the ids killed."""
        now = datetime.now(UTC)
        with self._lock:
            expired = [sandbox_id for sandbox_id, record in self._records.items() if record.end_at <= now]
        return [sandbox_id for sandbox_id in expired if self.kill(sandbox_id)]

    def close(self, *, kill_sandboxes: bool = True) -> None:
        """Stop the reaper and (by default) kill every sandbox."""
        self._stopping.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
        if kill_sandboxes:
            with self._lock:
                sandbox_ids = list(self._records)
            for sandbox_id in sandbox_ids:
                self.kill(sandbox_id)

    def _reap_forever(self) -> None:
        while not self._stopping.wait(self._reap_interval_s):
            self.reap_expired()


def _check_timeout(timeout_s: int) -> None:
    if not 1 <= timeout_s <= MAX_TIMEOUT_S:
        raise InvalidSandboxRequest(f"timeout must be between 1 and {MAX_TIMEOUT_S} seconds, got {timeout_s}")
