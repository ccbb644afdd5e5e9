"""In-process counters per partition and per sink, read by the progress line, logs and exporters."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from streamkit.batch import Partition


@dataclass
class PartitionStats:
    records_in: int = 0
    bytes_in: int = 0
    dead_lettered: int = 0
    checkpoints: int = 0
    millis_behind: int | None = None


@dataclass
class Metrics:
    started: float = field(default_factory=time.monotonic)
    partitions: defaultdict[Partition, PartitionStats] = field(default_factory=lambda: defaultdict(PartitionStats))
    sink_out: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    leases: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Lease events of a leased source: taken, lost."""

    def records_in(self, partition: Partition, records: int, nbytes: int) -> None:
        stats = self.partitions[partition]
        stats.records_in += records
        stats.bytes_in += nbytes

    def sink_records(self, sink: str, records: int) -> None:
        self.sink_out[sink] += records

    def dead_lettered(self, partition: Partition, records: int) -> None:
        self.partitions[partition].dead_lettered += records

    def checkpointed(self, partition: Partition) -> None:
        self.partitions[partition].checkpoints += 1

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
        return (
            f"{total:,} records in ({total / elapsed:,.0f}/s, {self.total_bytes_in / elapsed / 2**20:.1f} MiB/s) "
            f"| out: {out or '-'} | dead-lettered {self.total_dead_lettered:,} | {len(self.partitions)} partition(s)"
        )
