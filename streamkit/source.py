"""Sources: where records come from, one ordered reader per partition.

A source decides which partitions this worker reads (all of them for a file, the leases it holds for
Kinesis, the broker's assignment for Kafka) and tells the runtime through a :class:`PartitionHost`. Each
partition is read by a :class:`PartitionReader`, an async iterator of batches in source order, each batch
carrying the positions of its records. The source also turns positions into checkpoint strings and back.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from streamkit.batch import Partition, RecordBatch
from streamkit.checkpoint import CheckpointStore
from streamkit.metrics import Metrics


class SourceBatch:
    """A batch fresh from a source, with the source positions of its records (one per record).

    ``failed`` maps record indexes to reasons for records the source itself could not read (a malformed
    KPL aggregate): they go to the dead-letter queue and never reach the processors.
    """

    __slots__ = ("batch", "failed", "positions")

    def __init__(self, batch: RecordBatch, positions: Sequence[Any], failed: dict[int, str] | None = None) -> None:
        if len(positions) != len(batch):
            raise ValueError(f"{len(positions)} positions for {len(batch)} records of {batch.partition}")
        self.batch = batch
        self.positions = positions
        self.failed = failed


class PartitionReader(ABC):
    """Reads one partition in order, starting after its checkpoint."""

    partition: Partition
    reached_end: bool = False
    """Set by a reader that read a closed partition to its end (a Kinesis shard after resharding). The
    runtime then waits until every record is finished, checkpoints, and calls :meth:`finished`."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.stopping = asyncio.Event()

    @abstractmethod
    def batches(self) -> AsyncIterator[SourceBatch]:
        """Batches in order until the partition ends or :meth:`stop` is called."""

    def stop(self) -> None:
        """Stop fetching after the current batch."""
        self.stopping.set()

    async def finished(self) -> None:
        """Called once every record of an ended partition is finished and checkpointed: mark the end
        (a Kinesis shard writes SHARD_END and creates its children's leases)."""


class PartitionHost(Protocol):
    """What the runtime offers a source to start and stop partitions."""

    async def assign(self, reader: PartitionReader) -> None:
        """Start reading a partition."""

    async def revoke(self, partition: Partition, *, graceful: bool) -> None:
        """Stop reading a partition. Graceful: finish in-flight records and checkpoint first (a hand-off or
        a rebalance). Not graceful: the partition was lost and its checkpoints would be rejected."""


class Source(ABC):
    """The contract between the runtime and a source."""

    name: str = "source"
    metrics: Metrics | None = None

    def checkpoint_store(self) -> CheckpointStore | None:
        """A store the source owns (lease table, broker offsets), or None to use the configured one."""
        return None

    async def start(self, store: CheckpointStore) -> None:
        """Connect and check the source exists; errors here fail start-up."""

    @abstractmethod
    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        """Assign and revoke partitions until ``stop`` is set (or, for a finite source, until done)."""

    async def close(self) -> None:
        """Release what the worker holds (leases, group membership). Called after the final checkpoint."""

    def checkpoint_of(self, position: Any) -> str | None:
        """The checkpoint string for the position of the last finished record (None: nothing safe yet)."""
        return str(position)

    @property
    def finite(self) -> bool:
        """True when the source ends by itself (a file, a bounded generator): the pipeline then completes."""
        return False
