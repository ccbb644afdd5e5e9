"""Reading a real stream for a benchmark: every open shard, no leases, no checkpoints, nothing written.

The kinesis source keeps its leases and checkpoints in a DynamoDB table; a benchmark against a production
stream must not create or touch one. This source lists the shards and reads each with the production
:class:`ShardReader` (the same client, decoding, pacing and retries), from TRIM_HORIZON or LATEST. The
per-shard read limits (5 calls/s, 2 MiB/s) stay in force: they are shared with the stream's other consumers.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from streamkit.batch import Partition
from streamkit.checkpoint import CheckpointStore
from streamkit.config import AwsSettings
from streamkit.errors import ConfigError
from streamkit.source import PartitionHost, Source


class ReadOnlyStreamSource(Source):
    def __init__(
        self, stream: str, aws: AwsSettings, *, shards: int | None = None, initial_position: str = "TRIM_HORIZON"
    ) -> None:
        self.stream = stream
        self.aws = aws
        self.limit = shards
        self.initial_position = initial_position
        self.name = f"kinesis:{stream}"
        self.shard_ids: list[str] = []
        self._stack = AsyncExitStack()
        self._client: Any = None

    def checkpoint_of(self, position: Any) -> str | None:
        from streamkit.connectors.kinesis.positions import checkpoint_for

        checkpoint: str | None = checkpoint_for(position)
        return checkpoint

    async def start(self, store: CheckpointStore) -> None:
        from streamkit.connectors.kinesis.client import KinesisClient

        self._client = await self._stack.enter_async_context(KinesisClient(self.aws))
        try:
            shards = await self._client.list_shards(self.stream)
        except Exception as exc:
            await self._stack.aclose()
            raise ConfigError("--stream", f"cannot list the shards of {self.stream!r}: {exc}") from None
        open_shards = [s["ShardId"] for s in shards if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})]
        self.shard_ids = open_shards[: self.limit] if self.limit else open_shards
        if not self.shard_ids:
            await self._stack.aclose()
            raise ConfigError("--stream", f"stream {self.stream!r} has no open shard")

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        from streamkit.connectors.kinesis.reader import ReadSettings, ShardReader, StartAt

        for shard_id in self.shard_ids:
            partition = Partition(self.name, shard_id)
            reader = ShardReader(
                partition,
                self._client,
                self.stream,
                StartAt(self.initial_position),
                ReadSettings(),
                hash_range=None,
                on_end=_ignore_end,
                on_lag=self._lagger(partition),
            )
            await host.assign(reader)
        await stop.wait()

    async def close(self) -> None:
        await self._stack.aclose()

    def _lagger(self, partition: Partition) -> Any:
        def on_lag(millis_behind: int | None) -> None:
            if self.metrics is not None and millis_behind is not None:
                self.metrics.partitions[partition].millis_behind = millis_behind

        return on_lag


async def _ignore_end(children: list[Any]) -> None:
    """A shard closed by resharding while we read it: a benchmark does not follow it to its children."""
