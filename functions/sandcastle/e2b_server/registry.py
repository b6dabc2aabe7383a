"""The server's sandboxes: each one a hardened bubblewrap workspace of the ``local`` backend, with its E2B state.

The isolation is ``LocalSandboxProvider``'s (one private workspace per sandbox, one fresh ``bwrap``
per command, no network); this module adds what E2B's control plane keeps about a sandbox
(template, metadata, end time, access token, its running processes, its state: running or
paused), templates and snapshots (``templates``), pausing (``pausing``), metrics (``metrics``) and
a reaper thread that really ends a sandbox when its timeout passes (or pauses it, when it was
created with ``lifecycle.on_timeout="pause"``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sandcastle.e2b_server.metrics import MetricSample, MetricsHistory
from sandcastle.e2b_server.pausing import Freezer, ProcessTreeFreezer
from sandcastle.e2b_server.templates import BASE_TEMPLATE, TemplateInfo, TemplateStore
from sandcastle.errors import (
    InvalidSandboxRequest,
    SandboxConflict,
    SandboxGone,
    SandboxLimitReached,
    SandboxNotFound,
)
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider

if TYPE_CHECKING:
    from sandcastle.e2b_server.processes import RunningProcess
    from sandcastle.e2b_server.watching import DirectoryWatcher

ENVD_VERSION = "0.6.7"
"""The envd version the server claims: new enough for every SDK feature it implements."""
MAX_TIMEOUT_S = 24 * 3600
"""The longest sandbox timeout accepted (E2B's Pro limit)."""
_FIRST_PID = 1000
RUNNING = "running"
PAUSED = "paused"


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
    state: str = RUNNING
    """``running`` or ``paused`` (processes frozen, envd unreachable until ``connect`` resumes it)."""
    timeout_s: int = 300
    """The timeout it was created or last given: a resumed sandbox lives that long again."""
    auto_pause: bool = False
    """Pause instead of kill when the timeout passes (``lifecycle.on_timeout="pause"``)."""
    metrics: MetricsHistory = field(default_factory=MetricsHistory)
    killed: bool = False
    """Set when the sandbox is killed: open watch streams end."""
    watchers: dict[str, DirectoryWatcher] = field(default_factory=dict)
    processes: dict[int, RunningProcess] = field(default_factory=dict)
    next_pid: int = _FIRST_PID
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards ``processes`` and ``next_pid``."""

    @property
    def sandbox_id(self) -> str:
        return self.sandbox.sandbox_id

    @property
    def process_roots(self) -> list[int]:
        """The host pids at the top of its running commands."""
        with self.lock:
            return self.process_roots_unlocked()

    def process_roots_unlocked(self) -> list[int]:
        """``process_roots`` for a caller already holding ``lock``."""
        return [process.host_pid for process in self.processes.values()]

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
    ``templates`` holds the templates and snapshots sandboxes start from (default: a
    ``templates`` directory next to the provider's root); ``freezer`` stops and restarts a paused
    sandbox's processes. ``start_command`` (set by the server) runs a template's start command in
    the background of a new sandbox.
    """

    def __init__(
        self,
        provider: LocalSandboxProvider,
        *,
        max_sandboxes: int = 100,
        reap_interval_s: float = 0.25,
        templates: TemplateStore | None = None,
        freezer: Freezer | None = None,
    ) -> None:
        self.provider = provider
        self.templates = templates or TemplateStore(Path(provider.root).parent / "templates")
        self.freezer: Freezer = freezer or ProcessTreeFreezer()
        self.start_command: Callable[[SandboxRecord, str], None] | None = None
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
        auto_pause: bool = False,
    ) -> SandboxRecord:
        """Create a sandbox from a template or snapshot that ends ``timeout_s`` seconds from now unless kept alive.

        A create repeated with the same ``idempotency_key`` returns the sandbox the first one made
        while it lives. Raises ``InvalidSandboxRequest`` (internet access, bad timeout),
        ``SandboxNotFound`` (no such template) and ``SandboxLimitReached``.
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
            template = self.templates.get(template_id or BASE_TEMPLATE)
            if len(self._records) >= self.max_sandboxes:
                raise SandboxLimitReached(
                    f"this server already runs {len(self._records)} sandboxes (its limit); kill one or retry later"
                )
            spec = SandboxSpec(
                run_id=metadata.get("run_id", ""),
                tenant=metadata.get("tenant", ""),
                timeout_s=timeout_s,
                metadata=dict(metadata),
                template=None,  # the server fills the workspace from its own templates (below)
                envs=dict(envs),
            )
            sandbox = self.provider.create(spec)
            try:
                self.templates.copy_into(template.template_id, sandbox.workspace, owner=self.provider.sandbox_uid)
            except BaseException:
                self.provider.kill(sandbox.sandbox_id)
                raise
            now = datetime.now(UTC)
            record = SandboxRecord(
                sandbox=sandbox,
                template_id=template.template_id,
                metadata=dict(metadata),
                started_at=now,
                end_at=now + timedelta(seconds=timeout_s),
                access_token=secrets.token_urlsafe(24),
                idempotency_key=idempotency_key,
                timeout_s=timeout_s,
                auto_pause=auto_pause,
            )
            self._records[record.sandbox_id] = record
            if idempotency_key:
                self._by_idempotency_key[idempotency_key] = record.sandbox_id
        if template.start_cmd and self.start_command is not None:
            self.start_command(record, template.start_cmd)
        return record

    def get(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox with this id, running or paused; ``SandboxNotFound`` when there is none.

        One past its end time is ended first (killed, or paused when it asked for that).
        """
        with self._lock:
            record = self._records.get(sandbox_id)
        if record is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found")
        if record.state == RUNNING and datetime.now(UTC) >= record.end_at:
            self._end_of_life(record)
            return self.get(sandbox_id)
        return record

    def get_running(self, sandbox_id: str) -> SandboxRecord:
        """The running sandbox with this id (what envd requests reach); a paused one is not found."""
        record = self.get(sandbox_id)
        if record.state != RUNNING:
            raise SandboxNotFound(
                f"sandbox {sandbox_id} was not found running: it is paused; connect to it to resume it"
            )
        return record

    def connect(self, sandbox_id: str, timeout_s: int | None) -> tuple[SandboxRecord, bool]:
        """Reconnect to a sandbox, resuming it when paused; ``(record, resumed)``.

        ``timeout_s`` extends a running sandbox's life to that long from now (never shortens it);
        a resumed one lives ``timeout_s`` (or its last timeout) from now.
        """
        if timeout_s is not None:
            _check_timeout(timeout_s)
        record = self.get(sandbox_id)
        with record.lock:
            resumed = record.state == PAUSED
            if resumed:
                record.timeout_s = timeout_s or record.timeout_s
                record.end_at = datetime.now(UTC) + timedelta(seconds=record.timeout_s)  # before it runs again
                self.freezer.thaw(record.process_roots_unlocked())
                record.state = RUNNING
        if resumed:
            self.set_timeout(sandbox_id, record.timeout_s)
        elif timeout_s is not None and datetime.now(UTC) + timedelta(seconds=timeout_s) > record.end_at:
            self.set_timeout(sandbox_id, timeout_s)
        return record, resumed

    def pause(self, sandbox_id: str) -> SandboxRecord:
        """Freeze every process of a running sandbox; its files stay. ``SandboxConflict`` when already paused.

        A paused sandbox does not time out; ``connect`` resumes it.
        """
        with self._lock:
            record = self._records.get(sandbox_id)
        if record is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found")
        with record.lock:
            if record.state == PAUSED:
                raise SandboxConflict(f"sandbox {sandbox_id} is already paused")
            self.freezer.freeze(record.process_roots_unlocked())
            record.state = PAUSED
        try:
            record.sandbox.keep_alive(MAX_TIMEOUT_S)  # the local backend must not expire it meanwhile
        except SandboxGone:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found") from None
        return record

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> SandboxRecord:
        """The sandbox now ends ``timeout_s`` seconds from now (sooner or later than before; 0: now)."""
        if timeout_s != 0:
            _check_timeout(timeout_s)
        record = self.get(sandbox_id)
        if timeout_s == 0:
            self._end_of_life(record)
            return record
        try:
            record.sandbox.keep_alive(timeout_s)
        except SandboxGone:
            raise SandboxNotFound(f"sandbox {sandbox_id} was not found") from None
        with self._lock:
            record.end_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
            record.timeout_s = timeout_s
        return record

    def snapshot(self, sandbox_id: str, name: str | None) -> TemplateInfo:
        """A snapshot of the sandbox's workspace files that new sandboxes can be created from."""
        record = self.get(sandbox_id)
        return self.templates.snapshot(sandbox_id, record.sandbox.workspace, name)

    def metrics(self, sandbox_id: str, start: datetime | None, end: datetime | None) -> list[MetricSample]:
        """The sandbox's metric samples in ``[start, end]`` (a new one taken now when it runs)."""
        record = self.get(sandbox_id)
        if record.state == RUNNING:
            record.metrics.sample(
                record.process_roots,
                workspace=record.sandbox.workspace,
                memory_mb=self.provider.limits.memory_mb,
                disk_quota_mb=record.sandbox.disk_quota_mb,
            )
        return record.metrics.between(start, end)

    def _end_of_life(self, record: SandboxRecord) -> None:
        """The sandbox reached its timeout: pause it when it asked for that, else kill it."""
        if record.auto_pause:
            with suppress(SandboxConflict, SandboxNotFound):
                self.pause(record.sandbox_id)
        else:
            self.kill(record.sandbox_id)

    def kill(self, sandbox_id: str) -> bool:
        """Kill a sandbox, its processes and its workspace. False when it did not exist."""
        with self._lock:
            record = self._records.pop(sandbox_id, None)
            if record is not None and record.idempotency_key:
                self._by_idempotency_key.pop(record.idempotency_key, None)
        if record is None:
            return False
        with record.lock:
            record.killed = True
            processes = list(record.processes.values())
            watchers, record.watchers = list(record.watchers.values()), {}
        for watcher in watchers:
            watcher.close()
        for process in processes:
            process.kill(sandbox_gone=True)
        if record.state == PAUSED:
            self.freezer.thaw(process.host_pid for process in processes)  # a stopped process dies once continued
        self.provider.kill(sandbox_id)  # ends every other bwrap of the sandbox and deletes its workspace
        return True

    def list(
        self,
        metadata: dict[str, str] | None = None,
        *,
        states: set[str] | None = None,
        started_after: datetime | None = None,
        template_id: str | None = None,
        newest_first: bool = True,
    ) -> list[SandboxRecord]:
        """Sandboxes whose metadata contains every pair of ``metadata``, in one of ``states`` (default: all),
        started at or after ``started_after``, of template ``template_id``; newest first unless asked otherwise.
        """
        now = datetime.now(UTC)
        with self._lock:
            records = [record for record in self._records.values() if record.state == PAUSED or record.end_at > now]
        wanted = (metadata or {}).items()
        chosen = [
            record
            for record in records
            if all(record.metadata.get(key) == value for key, value in wanted)
            and (states is None or record.state in states)
            and (started_after is None or record.started_at >= started_after)
            and (template_id is None or record.template_id == template_id)
        ]
        return sorted(chosen, key=lambda record: (record.started_at, record.sandbox_id), reverse=newest_first)

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
        """End every running sandbox past its end time now (kill, or pause when asked); their ids."""
        now = datetime.now(UTC)
        with self._lock:
            expired = [record for record in self._records.values() if record.state == RUNNING and record.end_at <= now]
        for record in expired:
            self._end_of_life(record)
        return [record.sandbox_id for record in expired]

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
