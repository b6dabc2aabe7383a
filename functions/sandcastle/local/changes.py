"""A local notification that the emulated store changed, so in-process readers wait instead of polling.

The local runtime bumps it after every emulated DynamoDB write (``LocalRuntime`` serializes those
requests in one place); a follower reads ``version`` *before* it reads the store, and when it found
nothing new waits for the version to move past what it saw — a write landing between its reads and
its wait wakes it at once, so nothing is missed and nothing is polled.
"""

from __future__ import annotations

import threading


class ChangeSignal:
    """A version counter of the local store, with a wait for it to move."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = 0

    @property
    def version(self) -> int:
        with self._condition:
            return self._version

    def bump(self) -> None:
        """Something was written: wake every waiter."""
        with self._condition:
            self._version += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout_s: float) -> int:
        """Block until the version differs from ``seen`` (or ``timeout_s`` passed); the version then."""
        with self._condition:
            self._condition.wait_for(lambda: self._version != seen, timeout=timeout_s)
            return self._version
