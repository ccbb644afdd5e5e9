"""``generator``: synthetic JSON events, seeded and reproducible, at a configurable size and rate.

Record ``i`` of partition ``p`` is a pure function of (seed, p, i), so a restart from a checkpoint replays
exactly the same records: tests can prove nothing was lost by regenerating what should have arrived.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson

from streamkit.batch import Partition, RecordBatch
from streamkit.checkpoint import CheckpointStore
from streamkit.config import NonNegativeInt, PositiveInt, Ratio
from streamkit.json_bytes import dumps_tight
from streamkit.plugin_env import PluginEnv
from streamkit.share import process_share
from streamkit.source import PartitionHost, PartitionReader, Source, SourceBatch

EVENTS = ("click", "view", "purchase", "signup", "logout")
BASE_TIME_MS = 1_795_000_000_000  # 2026-11-18, a fixed origin so event times are reproducible


class GeneratorOptions(msgspec.Struct, forbid_unknown_fields=True):
    count: NonNegativeInt = 10_000
    """Records per partition; 0 means unbounded (run until stopped)."""
    partitions: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    batch_size: PositiveInt = 500
    record_bytes: Annotated[int, msgspec.Meta(ge=1, le=10 * 1024**2)] = 1000
    """Approximate size of each JSON record (padding makes up the difference)."""
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Records per second per partition; 0 means as fast as possible."""
    seed: NonNegativeInt = 42
    error_ratio: Ratio = 0.1
    """Share of records with ``"status": "err"`` (for filters)."""
    invalid_ratio: Ratio = 0.0
    """Share of records that are not valid JSON (poison records for the dead-letter queue)."""
    stream: str = "generator"


def make_record(seed: int, partition: int, index: int, record_bytes: int, error_ratio: float) -> dict[str, Any]:
    rng = random.Random(f"{seed}/{partition}/{index}")
    record: dict[str, Any] = {
        "id": f"{partition}-{index}",
        "seq": index,
        "ts": BASE_TIME_MS + index * 37 + partition,
        "status": "err" if rng.random() < error_ratio else "ok",
        "event": EVENTS[rng.randrange(len(EVENTS))],
        "user": {"id": rng.randrange(1, 100_000), "country": rng.choice(("DE", "US", "JP", "BR", "IN"))},
        "amount": round(rng.random() * 500, 2),
        "payload": "",
    }
    pad = record_bytes - len(orjson.dumps(record))
    if pad > 0:
        record["payload"] = ("abcdefghijklmnopqrstuvwxyz0123456789" * (pad // 36 + 1))[:pad]
    return record


def make_payload(options: GeneratorOptions, partition: int, index: int) -> bytes:
    rng = random.Random(f"poison/{options.seed}/{partition}/{index}")
    if options.invalid_ratio and rng.random() < options.invalid_ratio:
        return b'{"id": "' + f"{partition}-{index}".encode() + b'", not json'
    return dumps_tight(make_record(options.seed, partition, index, options.record_bytes, options.error_ratio))


class GeneratorReader(PartitionReader):
    def __init__(self, partition: Partition, number: int, options: GeneratorOptions, start: int) -> None:
        super().__init__(partition)
        self.number = number
        self.options = options
        self.next_index = start

    async def batches(self) -> AsyncIterator[SourceBatch]:
        opts = self.options
        started = time.monotonic()
        produced = 0
        while not self.stopping.is_set():
            end = self.next_index + opts.batch_size
            if opts.count:
                end = min(end, opts.count)
            if end <= self.next_index:
                return
            indexes = range(self.next_index, end)
            payloads = [make_payload(opts, self.number, i) for i in indexes]
            now_ms = int(time.time() * 1000)
            batch = RecordBatch(
                self.partition,
                payloads=payloads,
                keys=[f"user-{i % 97}" for i in indexes],
                arrival_ms=np.full(len(payloads), now_ms, dtype=np.int64),
            )
            self.next_index = end
            produced += len(payloads)
            handoff = [SourceBatch(batch, list(indexes))]
            del payloads, batch  # this frame keeps no reference while the runtime processes the batch
            yield handoff.pop()
            if opts.rate > 0:
                # Pace to the configured rate without drifting: sleep until this many records are due.
                due = started + produced / opts.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                await asyncio.sleep(0)


class GeneratorSource(Source):
    """Synthetic events in ``partitions`` partitions; positions are record indexes."""

    Options = GeneratorOptions

    def __init__(self, options: GeneratorOptions, env: PluginEnv | None = None) -> None:
        self.options = options
        self.name = f"generator:{options.stream}"
        self._store: CheckpointStore | None = None

    @property
    def finite(self) -> bool:
        return self.options.count > 0

    async def start(self, store: CheckpointStore) -> None:
        self._store = store

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        assert self._store is not None
        share = process_share()
        for number in range(self.options.partitions):
            if not share.owns(number):
                continue
            partition = Partition(self.name, str(number))
            saved = await self._store.load(partition)
            start = int(saved) + 1 if saved is not None else 0
            await host.assign(GeneratorReader(partition, number, self.options, start))
