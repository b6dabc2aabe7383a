"""A spinner on the terminal while the model thinks."""

from __future__ import annotations

import itertools
import threading
from typing import TextIO


class Spinner:
    """A spinner on a terminal while the model thinks; silent when the output is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.enabled = out.isatty()
        self._thinking = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.pause()

    def pause(self) -> None:
        self._thinking.clear()
        if self.enabled:
            with self._lock:
                self.out.write("\r\033[K")
                self.out.flush()

    def resume(self, *, thinking: bool) -> None:
        if thinking:
            self._thinking.set()

    def _spin(self) -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            if self._stop.wait(0.1):
                return
            if self._thinking.is_set():
                with self._lock:
                    self.out.write(f"\r{frame} thinking…")
                    self.out.flush()
