"""What a benchmark run measured, and how: wall time, CPU time, peak memory, per-shard figures.

CPU time is the process's (``time.process_time``: user + system, every thread), so "CPU seconds per
million records" and "shards one core can keep up with" hold however many cores the machine has and
whatever else runs on it; servers the run talks to (kinesalite, moto) are other processes and are not
counted. Peak memory is the process's resident high-water mark during the run: Linux lets us reset it
(``/proc/self/clear_refs``), so it is this run's peak, not the data generation's before it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
READ_LIMIT_MIB_S = 2.0
"""Kinesis read throughput per shard (shared by every polling consumer of the stream)."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(name: str) -> int | None:
    try:
        found = re.search(rf"^{name}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def rss_mib() -> float | None:
    """Resident memory now."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory stays with the allocator and the next run's "added" figure is lower


def reset_peak_rss() -> bool:
    """Start a new high-water mark (Linux 4.0+), after giving memory freed by earlier runs back to the
    system (glibc keeps it otherwise, and the next run would reuse it without showing it). False where a
    reset is not possible."""
    gc.collect()
    _malloc_trim()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The resident high-water mark (since the last reset, where resets work)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        # ru_maxrss is KiB on Linux, bytes on macOS; it cannot be reset.
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = raw // 1024 if sys.platform == "darwin" else raw
    return kib / 1024


@dataclass
class Clock:
    """Wall and CPU time of one measured stretch, plus the memory around it."""

    wall_start: float = 0.0
    cpu_start: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_before_mib: float | None = None
    peak_rss_mib: float | None = None

    def start(self) -> None:
        reset_peak_rss()
        self.rss_before_mib = rss_mib()
        self.wall_start = time.perf_counter()
        self.cpu_start = time.process_time()

    def stop(self, wall_end: float | None = None, cpu_end: float | None = None) -> None:
        self.wall_s = (wall_end if wall_end is not None else time.perf_counter()) - self.wall_start
        self.cpu_s = (cpu_end if cpu_end is not None else time.process_time()) - self.cpu_start
        self.peak_rss_mib = peak_rss_mib()


@contextmanager
def clocked() -> Iterator[Clock]:
    clock = Clock()
    clock.start()
    try:
        yield clock
    finally:
        clock.stop()


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class ShardFigures:
    shard: str
    records: int
    bytes: int
    seconds: float
    records_per_s: float
    mib_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    millis_behind_latest: int | None


@dataclass
class Figures:
    """One side of a comparison: streamkit with a pipeline, or a baseline."""

    name: str
    description: str
    records: int
    """Records read from the source."""
    records_out: int
    """Records written after the filter (the same number on every side is the check they did the same work)."""
    bytes: int
    """Record payload bytes read (what the 2 MiB/s per-shard read limit counts)."""
    seconds: float
    cpu_s: float
    peak_rss_mib: float | None = None
    rss_before_mib: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    millis_behind_latest: int | None = None
    shards: list[ShardFigures] = field(default_factory=list)
    note: str = ""

    @classmethod
    def timed(cls, clock: Clock, **fields: Any) -> Figures:
        """Figures of a side measured with ``clock`` (its time and memory), plus the other fields."""
        return cls(
            seconds=clock.wall_s,
            cpu_s=clock.cpu_s,
            peak_rss_mib=clock.peak_rss_mib,
            rss_before_mib=clock.rss_before_mib,
            **fields,
        )

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_million(self) -> float | None:
        return self.cpu_s / self.records * 1e6 if self.records else None

    @property
    def mib_per_cpu_s(self) -> float | None:
        return self.bytes / MIB / self.cpu_s if self.cpu_s > 0 else None

    @property
    def peak_added_mib(self) -> float | None:
        """Resident memory the run added at its peak, over what the process held before it."""
        if self.peak_rss_mib is None or self.rss_before_mib is None:
            return None
        return max(0.0, self.peak_rss_mib - self.rss_before_mib)

    @property
    def shards_per_core(self) -> float | None:
        """Shards read at the 2 MiB/s limit that one core keeps up with: MiB per CPU-second / 2."""
        per_core = self.mib_per_cpu_s
        return per_core / READ_LIMIT_MIB_S if per_core is not None else None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shards"] = [
            {
                **asdict(s),
                "seconds": round(s.seconds, 3),
                "records_per_s": round(s.records_per_s),
                "mib_per_s": round(s.mib_per_s, 2),
                "latency_p50_ms": _round(s.latency_p50_ms, 2),
                "latency_p99_ms": _round(s.latency_p99_ms, 2),
            }
            for s in self.shards
        ]
        data.update(
            seconds=round(self.seconds, 3),
            cpu_s=round(self.cpu_s, 3),
            records_per_s=round(self.records_per_s),
            mib_per_s=round(self.mib_per_s, 2),
            cpu_s_per_million=_round(self.cpu_s_per_million, 2),
            mib_per_cpu_s=_round(self.mib_per_cpu_s, 2),
            shards_per_core=_round(self.shards_per_core, 1),
            peak_rss_mib=_round(self.peak_rss_mib),
            rss_before_mib=_round(self.rss_before_mib),
            peak_added_mib=_round(self.peak_added_mib),
            latency_p50_ms=_round(self.latency_p50_ms, 2),
            latency_p99_ms=_round(self.latency_p99_ms, 2),
        )
        return data
