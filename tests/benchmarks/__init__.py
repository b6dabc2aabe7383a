"""Benchmarks: figures, never pass/fail timings. ``make bench`` (``python -m tests.benchmarks``) runs them all.

Each ``bench_*`` module has ``report(quick: bool) -> str``: it measures, then renders its sections
with ``section`` and ``table`` below, so every report reads the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Cell = str | int | float | None


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with their min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(statistics.median(values), min(values), max(values))

    def scaled(self, factor: float) -> Spread:
        return Spread(self.median * factor, self.low * factor, self.high * factor)


def timings_ms(action: Callable[[], object], repeat: int) -> list[float]:
    """Wall time of ``repeat`` calls of ``action``, in ms each."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def p95(values: list[float]) -> float:
    """The 95th percentile (the value itself for a single sample)."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def section(title: str, body: str, note: str | None = None) -> str:
    """A titled block: the title underlined, the body, an optional note after it."""
    parts = [title, "-" * len(title), body]
    if note:
        parts.append(note)
    return "\n".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, digits: int = 1) -> str:
    """Aligned columns: the first column left-aligned (labels), numbers right-aligned."""
    rendered = [[_cell(value, digits) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in rendered)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rendered)])


def _cell(value: Cell, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value
