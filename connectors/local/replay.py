"""An in-process source replaying payloads held in memory: for benchmarks and tests of the framework alone.

It is built in code (``ReplaySource({"0": payloads})``), not from a pipeline file, so a benchmark can feed
streamkit and a baseline the very same bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np

from streamkit.batch import Partition, RecordBatch
from streamkit.checkpoint import CheckpointStore
from streamkit.source import PartitionHost, PartitionReader, Source, SourceBatch


class ReplayReader(PartitionReader):
    def __init__(self, partition: Partition, payloads: Sequence[bytes], batch_size: int, start: int) -> None:
        super().__init__(partition)
        self.payloads = payloads
        self.batch_size = batch_size
        self.start = start

    async def batches(self) -> AsyncIterator[SourceBatch]:
        n = len(self.payloads)
        for start in range(self.start, n, self.batch_size):
            if self.stopping.is_set():
                return
            end = min(start + self.batch_size, n)
            batch = RecordBatch(
                self.partition,
                payloads=list(self.payloads[start:end]),
                arrival_ms=np.zeros(end - start, dtype=np.int64),
            )
            yield SourceBatch(batch, range(start, end))
            await asyncio.sleep(0)


class ReplaySource(Source):
    """Replays ``partitions`` (key -> payloads) in batches of ``batch_size``; positions are indexes."""

    def __init__(self, partitions: Mapping[str, Sequence[bytes]], batch_size: int = 1000, name: str = "replay") -> None:
        self.data = dict(partitions)
        self.batch_size = batch_size
        self.name = name
        self._store: CheckpointStore | None = None

    @property
    def finite(self) -> bool:
        return True

    async def start(self, store: CheckpointStore) -> None:
        self._store = store

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        assert self._store is not None
        for key, payloads in self.data.items():
            partition = Partition(self.name, key)
            saved = await self._store.load(partition)
            start = int(saved) + 1 if saved is not None else 0
            await host.assign(ReplayReader(partition, payloads, self.batch_size, start))
