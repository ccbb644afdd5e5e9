"""In-process metrics per partition and per sink, read by the progress line and the exporters.

Counters only ever grow; exporters (CloudWatch EMF, Prometheus) read them and, for EMF, send the change
since their previous report. Latencies are kept as a bounded window of recent samples per partition and
per sink, summarised as p50/p99 when reported.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from streamkit.batch import Partition

LATENCY_WINDOW = 2048


def percentiles(samples: deque[float]) -> tuple[float, float] | None:
    """(p50, p99) of the samples, or None without samples."""
    if not samples:
        return None
    p50, p99 = np.percentile(np.fromiter(samples, dtype=np.float64, count=len(samples)), [50, 99])
    return float(p50), float(p99)


@dataclass
class PartitionStats:
    records_in: int = 0
    bytes_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    checkpoints: int = 0
    millis_behind: int | None = None
    """How far behind the source's newest record this partition is, in milliseconds: Kinesis
    MillisBehindLatest, or for Kafka the age of the last fetched record (see docs/kafka.md)."""
    processing_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    """Time from a batch leaving the source to the end of the processor chain, per batch."""


@dataclass
class SinkStats:
    records: int = 0
    requests: int = 0
    failures: int = 0
    """Requests or records the service refused for good (dead-lettered or fatal)."""
    throttles: int = 0
    retries: int = 0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    """Duration of each write, retries included."""


@dataclass
class Metrics:
    started: float = field(default_factory=time.monotonic)
    partitions: defaultdict[Partition, PartitionStats] = field(default_factory=lambda: defaultdict(PartitionStats))
    sinks: defaultdict[str, SinkStats] = field(default_factory=lambda: defaultdict(SinkStats))
    leases: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Lease events of a leased source: taken, lost."""
    leases_held: int = 0

    def records_in(self, partition: Partition, records: int, nbytes: int) -> None:
        stats = self.partitions[partition]
        stats.records_in += records
        stats.bytes_in += nbytes

    def processed(self, partition: Partition, records_out: int, seconds: float) -> None:
        stats = self.partitions[partition]
        stats.records_out += records_out
        stats.processing_ms.append(seconds * 1000.0)

    def sink_records(self, sink: str, records: int) -> None:
        self.sinks[sink].records += records

    def sink_write(self, sink: str, seconds: float, *, failed: bool = False) -> None:
        stats = self.sinks[sink]
        stats.requests += 1
        stats.latency_ms.append(seconds * 1000.0)
        if failed:
            stats.failures += 1

    def sink_retry(self, sink: str, *, throttled: bool) -> None:
        stats = self.sinks[sink]
        stats.retries += 1
        if throttled:
            stats.throttles += 1

    def dead_lettered(self, partition: Partition, records: int) -> None:
        self.partitions[partition].dead_lettered += records

    def checkpointed(self, partition: Partition) -> None:
        self.partitions[partition].checkpoints += 1

    @property
    def sink_out(self) -> dict[str, int]:
        return {name: stats.records for name, stats in self.sinks.items()}

    @property
    def total_in(self) -> int:
        return sum(s.records_in for s in self.partitions.values())

    @property
    def total_bytes_in(self) -> int:
        return sum(s.bytes_in for s in self.partitions.values())

    @property
    def total_dead_lettered(self) -> int:
        return sum(s.dead_lettered for s in self.partitions.values())

    def progress_line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        total = self.total_in
        out = ", ".join(f"{name} {count:,}" for name, count in sorted(self.sink_out.items()))
        lag = [s.millis_behind for s in self.partitions.values() if s.millis_behind is not None]
        behind = f" | behind {max(lag):,} ms" if lag else ""
        return (
            f"{total:,} records in ({total / elapsed:,.0f}/s, {self.total_bytes_in / elapsed / 2**20:.1f} MiB/s) "
            f"| out: {out or '-'} | dead-lettered {self.total_dead_lettered:,} "
            f"| {len(self.partitions)} partition(s){behind}"
        )
