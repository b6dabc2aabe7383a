"""The transcripts this container has read, so that reading one again queries only what is new.

A run's events are immutable (written once, with ``attribute_not_exists``) and keyed by where they
stand (``EVT#<step>#<position>#<kind>``), so an event read once is never wrong later. What a copy
can miss is an event written *after* it was read whose key sorts *before* the last key read — a
Query "after the last key" would skip it for ever. Two rules close that:

* **Only sealed steps are kept.** The events of step ``s`` are kept once an event of a later turn
  (step > ``s``) has been read: the state machine starts turn ``s + 1`` only after every call of
  turn ``s`` has returned with its result written (a tool call that found the run ended writes
  nothing, and no later turn follows it). The newest step's events — a turn whose tool results may
  still be arriving, in any order — are read again every time; they are a turn's worth, not a run's.
* **The run's end is never kept.** The error (``EVT#999998``) and END (``EVT#999999``) events sort
  after every turn but can be written while late tool results are still being written, so they
  seal nothing and are read fresh every time.

The cache is keyed by run id (a run's id names its partition: one run's entry is never another's),
holds the runs read most recently (``max_runs``) within a byte budget (``max_bytes``, the events'
stored size), and lives on the ``RunStore`` — one per container (``wiring``), one per process
locally. A run whose sealed events alone exceed the budget is not kept: it is read whole each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandcastle.runs.transcript import Event, is_run_end_key, key_step

DEFAULT_MAX_RUNS = 16
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass
class _Entry:
    events: list[Event] = field(default_factory=list)
    """The run's sealed events, in key order."""
    last_key: str | None = None
    """The key of the last of them: the next Query starts after it."""
    size: int = 0
    """Their stored size in bytes."""


@dataclass(frozen=True)
class ReadEvent:
    """One event a Query returned, with the size of its item (what the byte budget counts)."""

    event: Event
    size: int


class TranscriptCache:
    """Sealed transcript prefixes by run id, least recently read evicted first; safe across threads."""

    def __init__(self, *, max_runs: int = DEFAULT_MAX_RUNS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def sealed(self, run_id: str) -> tuple[list[Event], str | None]:
        """The run's kept events (a new list) and the key to read after (None: read from the start)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                return [], None
            self._entries.move_to_end(run_id)
            return list(entry.events), entry.last_key

    def add(self, run_id: str, after: str | None, read: Sequence[ReadEvent]) -> None:
        """Keep what ``read`` (the events a Query returned after ``after``, in key order) seals.

        Nothing is kept when the run's entry moved on since ``after`` was handed out (another
        thread's read extended it first): the next read starts from wherever the entry is.
        """
        newest_turn = max((key_step(r.event.key) for r in read if not is_run_end_key(r.event.key)), default=None)
        if newest_turn is None:
            return
        sealed = [r for r in read if key_step(r.event.key) < newest_turn]
        if not sealed:
            return
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                if after is not None:  # evicted since: its prefix is gone, so this tail alone is no transcript
                    return
                entry = self._entries[run_id] = _Entry()
            elif entry.last_key != after:
                return
            entry.events.extend(r.event for r in sealed)
            entry.last_key = sealed[-1].event.key
            added = sum(r.size for r in sealed)
            entry.size += added
            self._size += added
            self._entries.move_to_end(run_id)
            self._evict()

    def forget(self, run_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(run_id, None)
            if entry is not None:
                self._size -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The stored size of every kept event, in bytes."""
        return self._size

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_runs or self._size > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            self._size -= entry.size
