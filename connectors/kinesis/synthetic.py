"""An in-process Kinesis-like source replaying recorded GetRecords response bodies.

Each shard is read by a :class:`ShardReader` whose only difference from production is where responses
come from: :meth:`SyntheticShardReader._responses` decodes recorded bodies with the production decoder
instead of calling GetRecords. Deaggregation, resume filtering, positions, batches and checkpoints are the
production code, so a benchmark on this source measures the framework alone, decoding included, without a
network or an emulator in the way. It is also the proof that another fetcher (enhanced fan-out, a test
double) slots in by replacing ``_responses`` only.

Built in code, not from a pipeline file: ``SyntheticKinesisSource({"shardId-000000000000": bodies})``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

from streamkit.batch import Partition
from streamkit.checkpoint import CheckpointStore
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import ChildShard, DecodedRecords, decode_get_records
from streamkit.connectors.kinesis.positions import checkpoint_for
from streamkit.connectors.kinesis.reader import ReadSettings, ShardReader, StartAt
from streamkit.source import PartitionHost, Source


class SyntheticShardReader(ShardReader):
    """A shard reader fed recorded response bodies instead of GetRecords calls."""

    def __init__(
        self,
        partition: Partition,
        bodies: Sequence[bytes],
        settings: ReadSettings,
        *,
        on_lag: Callable[[int | None], None] | None = None,
    ) -> None:
        # No client: _responses below is the only method that would call the service, and it does not.
        super().__init__(
            partition,
            cast(KinesisClient, None),
            partition.source,
            StartAt("TRIM_HORIZON"),
            settings,
            hash_range=None,
            on_end=_nothing_to_finish,
            on_lag=on_lag,
        )
        self.bodies = bodies
        self.body_bytes = 0
        """Bytes of response bodies decoded (what the network would have carried)."""

    async def _responses(self) -> AsyncIterator[DecodedRecords]:
        for body in self.bodies:
            if self.stopping.is_set():
                return
            self.calls += 1
            decoded = decode_get_records(body)
            self.body_bytes += len(body)
            if self._on_lag is not None:
                self._on_lag(decoded.millis_behind_latest)
            last, children = decoded.next_shard_iterator is None, decoded.child_shards
            handoff = [decoded]  # as in ShardReader._responses: this frame keeps no reference
            del decoded
            yield handoff.pop()
            if last:
                self.child_shards = children
                self.reached_end = True
                return
            # A real call awaits the network here; yielding keeps the shards and the sinks interleaved the
            # same way instead of one shard running through all of its bodies at once.
            await asyncio.sleep(0)


async def _nothing_to_finish(children: list[ChildShard]) -> None:
    """A replayed shard is never closed for real: there are no children to hand out."""


class SyntheticKinesisSource(Source):
    """Replays ``shards`` (shard id -> recorded bodies) once, each shard by its own reader; then ends."""

    def __init__(
        self,
        shards: Mapping[str, Sequence[bytes]],
        *,
        stream: str = "synthetic",
        settings: ReadSettings | None = None,
    ) -> None:
        self.shards = dict(shards)
        self.name = f"kinesis:{stream}"
        self.settings = settings or ReadSettings()
        self.readers: dict[str, SyntheticShardReader] = {}

    @property
    def finite(self) -> bool:
        return True

    def checkpoint_of(self, position: Any) -> str | None:
        return checkpoint_for(position)

    async def start(self, store: CheckpointStore) -> None:
        pass

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        for shard_id, bodies in self.shards.items():
            if stop.is_set():
                return
            partition = Partition(self.name, shard_id)
            reader = SyntheticShardReader(partition, bodies, self.settings, on_lag=self._lagger(partition))
            self.readers[shard_id] = reader
            await host.assign(reader)

    def _lagger(self, partition: Partition) -> Callable[[int | None], None]:
        def on_lag(millis_behind: int | None) -> None:
            if self.metrics is not None and millis_behind is not None:
                self.metrics.partitions[partition].millis_behind = millis_behind

        return on_lag
