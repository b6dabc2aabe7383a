"""Sandbox metrics (``GET /sandboxes/{id}/metrics``): CPU, memory and disk of one sandbox, sampled.

A sample is taken when metrics are asked for (at most one per ``SAMPLE_INTERVAL_S``) and kept
with the sandbox, so a time range returns the samples that fall in it, as E2B's do. CPU and
memory are those of the host processes under the sandbox's commands (``/proc``: utime + stime
since the previous sample, resident set size); the memory total is the sandbox's limit; disk is
the workspace's own filesystem when it has a quota (``statvfs``), else the bytes of its files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sandcastle.e2b_server.pausing import process_tree

SAMPLE_INTERVAL_S = 1.0
_MAX_SAMPLES = 3600
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class MetricSample:
    """One sample, in E2B's ``SandboxMetric`` units (bytes, percent)."""

    timestamp: datetime
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


class MetricsHistory:
    """The samples of one sandbox, and the CPU counter the next sample's percentage is relative to."""

    def __init__(self) -> None:
        self.samples: list[MetricSample] = []
        self._last_cpu: tuple[float, float] | None = None
        """``(monotonic time, CPU seconds)`` at the previous sample."""

    def sample(self, roots: Iterable[int], *, workspace: Path, memory_mb: int, disk_quota_mb: int | None) -> None:
        """Take a sample now, unless the last one is younger than ``SAMPLE_INTERVAL_S``."""
        now = time.monotonic()
        if self._last_cpu is not None and now - self._last_cpu[0] < SAMPLE_INTERVAL_S and self.samples:
            return
        pids = process_tree(roots)
        cpu_seconds, rss = _cpu_and_memory(pids)
        cpu_count = os.cpu_count() or 1
        if self._last_cpu is None:
            used_pct = 0.0
        else:
            elapsed = max(now - self._last_cpu[0], 1e-6)
            used_pct = max(0.0, (cpu_seconds - self._last_cpu[1]) / elapsed / cpu_count * 100)
        self._last_cpu = (now, cpu_seconds)
        disk_used, disk_total = _disk(workspace, disk_quota_mb)
        self.samples.append(
            MetricSample(
                timestamp=datetime.now(UTC),
                cpu_count=cpu_count,
                cpu_used_pct=round(used_pct, 2),
                mem_used=rss,
                mem_total=memory_mb * _MIB,
                mem_cache=0,
                disk_used=disk_used,
                disk_total=disk_total,
            )
        )
        del self.samples[:-_MAX_SAMPLES]

    def between(self, start: datetime | None, end: datetime | None) -> list[MetricSample]:
        """The samples with ``start <= timestamp <= end`` (whole seconds, as the API's bounds are)."""
        return [
            sample
            for sample in self.samples
            if (start is None or sample.timestamp.replace(microsecond=0) >= start)
            and (end is None or sample.timestamp.replace(microsecond=0) <= end)
        ]


def _cpu_and_memory(pids: set[int]) -> tuple[float, int]:
    cpu_ticks = 0
    rss_pages = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "(comm)": state=0 ppid=1 ... utime=11 stime=12 ... rss=21.
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_pages += int(fields[21])
    return cpu_ticks / _CLOCK_TICKS, rss_pages * _PAGE_BYTES


def _disk(workspace: Path, disk_quota_mb: int | None) -> tuple[int, int]:
    try:
        if disk_quota_mb:
            stats = os.statvfs(workspace)
            return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_blocks * stats.f_frsize
        used = 0
        for directory, _, files in os.walk(workspace):
            for name in files:
                try:
                    used += os.lstat(os.path.join(directory, name)).st_size
                except OSError:
                    continue
        stats = os.statvfs(workspace)
        return used, stats.f_blocks * stats.f_frsize
    except OSError:
        return 0, 0
