"""One ordered GetRecords loop per owned shard.

Pacing respects the per-shard read limits, which every polling consumer of the stream shares: at most
``reads_per_second`` calls (the service allows 5) and ``read_bytes_per_second`` (the service allows
2 MiB/s; after a 10 MiB response it refuses calls for 5 s, which byte pacing already avoids). Near the tip
(an empty response or MillisBehindLatest 0) the loop polls every ``idle_poll_s`` instead. Throttling and
transient errors back off exponentially with jitter; an expired iterator is renewed at the last position
handed to the runtime, so nothing is skipped or re-read beyond that record.

A fetcher for enhanced fan-out (SubscribeToShard) would replace :meth:`ShardReader._responses` only:
everything after a response (deaggregation, positions, end of shard) is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog
from botocore.exceptions import ClientError
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import (
    ChildShard,
    DeaggregatedRecords,
    DecodedRecords,
    KplDecodeError,
    deaggregate,
)
from streamkit.connectors.kinesis.positions import BatchPositions, KinesisPosition

from streamkit.batch import Partition, RecordBatch
from streamkit.retry import RetryPolicy
from streamkit.source import PartitionReader, SourceBatch

log = structlog.get_logger("streamkit.kinesis")

THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "KMSThrottlingException",
        "ThrottlingException",
        "InternalFailure",
        "InternalFailureException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)


@dataclass(frozen=True)
class ReadSettings:
    max_records: int = 10_000
    reads_per_second: float = 5.0
    read_bytes_per_second: int = 2 * 1024**2
    idle_poll_s: float = 1.0
    deaggregate: bool = True
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=0, base_delay_s=0.2, max_delay_s=10.0))


@dataclass(frozen=True)
class StartAt:
    """Where a shard is read from: an iterator type, and the position to skip up to (resume)."""

    iterator_type: str
    sequence_number: str | None = None
    timestamp: Any = None
    skip_through: KinesisPosition | None = None


class ReadPacer:
    """Spaces GetRecords calls by count and by the bytes of the previous response."""

    def __init__(self, calls_per_second: float, bytes_per_second: int) -> None:
        self.min_gap = 1.0 / calls_per_second
        self.bytes_per_second = bytes_per_second
        self.next_at = 0.0

    def delay(self) -> float:
        return max(0.0, self.next_at - time.monotonic())

    def record(self, nbytes: int) -> None:
        self.next_at = time.monotonic() + max(self.min_gap, nbytes / self.bytes_per_second)


class ShardReader(PartitionReader):
    def __init__(
        self,
        partition: Partition,
        client: KinesisClient,
        stream: str,
        start: StartAt,
        settings: ReadSettings,
        *,
        hash_range: tuple[int, int] | None,
        on_end: Callable[[list[ChildShard]], Awaitable[None]],
        on_lag: Callable[[int | None], None] | None = None,
    ) -> None:
        super().__init__(partition)
        self.client = client
        self.stream = stream
        self.start = start
        self.settings = settings
        self.hash_range = hash_range
        self.pacer = ReadPacer(settings.reads_per_second, settings.read_bytes_per_second)
        self.last_delivered: KinesisPosition | None = start.skip_through
        self.child_shards: list[ChildShard] = []
        self._on_end = on_end
        self._on_lag = on_lag
        self.calls = 0
        self.throttled = 0
        self.expired_iterators = 0

    @property
    def shard_id(self) -> str:
        return self.partition.key

    async def finished(self) -> None:
        await self._on_end(self.child_shards)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.stopping.wait()

    async def _iterator(self) -> str:
        last = self.last_delivered
        if last is not None:
            # AT, then skip what was delivered: correct for plain and partly delivered aggregated records.
            return await self.client.shard_iterator(
                self.stream, self.shard_id, "AT_SEQUENCE_NUMBER", sequence_number=last.sequence
            )
        s = self.start
        return await self.client.shard_iterator(
            self.stream, self.shard_id, s.iterator_type, sequence_number=s.sequence_number, timestamp=s.timestamp
        )

    async def _responses(self) -> AsyncIterator[DecodedRecords]:
        """GetRecords responses in order, paced, with throttling and expiry handled."""
        iterator: str | None = await self._iterator()
        attempt = 0
        while iterator is not None and not self.stopping.is_set():
            await self._sleep(self.pacer.delay())
            if self.stopping.is_set():
                return
            try:
                self.calls += 1
                decoded, nbytes = await self.client.get_records(iterator, self.settings.max_records)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "ExpiredIteratorException":
                    self.expired_iterators += 1
                    log.info("iterator expired; renewing", partition=str(self.partition))
                    iterator = await self._iterator()
                    continue
                if code in THROTTLED:
                    attempt += 1
                    self.throttled += 1
                    self.pacer.record(0)
                    log.warning("throttled", partition=str(self.partition), code=code, attempt=attempt)
                    await self._sleep(self.settings.retry.delay(attempt))
                    continue
                raise
            attempt = 0
            self.pacer.record(nbytes)
            if self._on_lag is not None:
                self._on_lag(decoded.millis_behind_latest)
            yield decoded
            iterator = decoded.next_shard_iterator
            if iterator is None:
                self.child_shards = decoded.child_shards
                self.reached_end = True
                return
            if not len(decoded) or decoded.millis_behind_latest == 0:
                await self._sleep(self.settings.idle_poll_s)

    async def batches(self) -> AsyncIterator[SourceBatch]:
        async for decoded in self._responses():
            if not len(decoded):
                continue
            users, failed = self._user_records(decoded)
            batch = self._to_batch(users, failed)
            if batch is not None:
                yield batch

    def _user_records(self, decoded: DecodedRecords) -> tuple[DeaggregatedRecords, dict[int, str]]:
        if not self.settings.deaggregate:
            return _plain(decoded), {}
        try:
            return deaggregate(decoded, self.hash_range), {}
        except KplDecodeError:
            return _deaggregate_each(decoded, self.hash_range)

    def _to_batch(self, users: DeaggregatedRecords, failed: dict[int, str]) -> SourceBatch | None:
        seqs, subs = users.sequence_numbers, users.sub_sequence_numbers
        keep = _after(seqs, subs, self.last_delivered)
        if keep is not None:
            if not keep.any():
                return None
            users = _select(users, keep)
            failed = _renumber(failed, keep)
            seqs, subs = users.sequence_numbers, users.sub_sequence_numbers
        n = len(seqs)
        first = _first_of_aggregate(seqs, subs, users.aggregated)
        positions = BatchPositions(seqs, subs, first, self.last_delivered)
        batch = RecordBatch(
            self.partition,
            payloads=users.payloads,
            keys=users.partition_keys,
            arrival_ms=users.arrival_ms,
        )
        self.last_delivered = KinesisPosition(seqs[n - 1], int(subs[n - 1]))
        return SourceBatch(batch, positions, failed or None)


def _plain(decoded: DecodedRecords) -> DeaggregatedRecords:
    n = len(decoded)
    return DeaggregatedRecords(
        payloads=decoded.payloads,
        sequence_numbers=decoded.sequence_numbers,
        sub_sequence_numbers=np.zeros(n, dtype=np.int64),
        partition_keys=decoded.partition_keys,
        explicit_hash_keys=[None] * n,
        arrival_ms=decoded.arrival_ms,
        aggregated=np.zeros(n, dtype=np.bool_),
        dropped=0,
    )


def _single(decoded: DecodedRecords, i: int) -> DecodedRecords:
    return replace(
        decoded,
        payloads=decoded.payloads[i : i + 1],
        sequence_numbers=decoded.sequence_numbers[i : i + 1],
        partition_keys=decoded.partition_keys[i : i + 1],
        arrival_ms=decoded.arrival_ms[i : i + 1],
    )


def _deaggregate_each(
    decoded: DecodedRecords, hash_range: tuple[int, int] | None
) -> tuple[DeaggregatedRecords, dict[int, str]]:
    """Slow path after a malformed aggregate: deaggregate record by record; a bad aggregate is passed on as
    one failed record (it goes to the dead-letter queue with the reason) instead of stopping the shard."""
    parts: list[DeaggregatedRecords] = []
    failed: dict[int, str] = {}
    offset = 0
    for i in range(len(decoded)):
        one = _single(decoded, i)
        try:
            part = deaggregate(one, hash_range)
        except KplDecodeError as exc:
            part = _plain(one)
            failed[offset] = f"malformed KPL aggregated record: {exc}"
        parts.append(part)
        offset += len(part.payloads)
    return _concat(parts), failed


def _concat(parts: list[DeaggregatedRecords]) -> DeaggregatedRecords:
    return DeaggregatedRecords(
        payloads=[p for part in parts for p in part.payloads],
        sequence_numbers=[s for part in parts for s in part.sequence_numbers],
        sub_sequence_numbers=np.concatenate([p.sub_sequence_numbers for p in parts]),
        partition_keys=[k for part in parts for k in part.partition_keys],
        explicit_hash_keys=[e for part in parts for e in part.explicit_hash_keys],
        arrival_ms=np.concatenate([p.arrival_ms for p in parts]),
        aggregated=np.concatenate([p.aggregated for p in parts]),
        dropped=sum(p.dropped for p in parts),
    )


def _select(users: DeaggregatedRecords, keep: np.ndarray[Any, np.dtype[np.bool_]]) -> DeaggregatedRecords:
    flags = keep.tolist()
    return DeaggregatedRecords(
        payloads=[p for p, k in zip(users.payloads, flags, strict=True) if k],
        sequence_numbers=[s for s, k in zip(users.sequence_numbers, flags, strict=True) if k],
        sub_sequence_numbers=users.sub_sequence_numbers[keep],
        partition_keys=[p for p, k in zip(users.partition_keys, flags, strict=True) if k],
        explicit_hash_keys=[e for e, k in zip(users.explicit_hash_keys, flags, strict=True) if k],
        arrival_ms=users.arrival_ms[keep],
        aggregated=users.aggregated[keep],
        dropped=users.dropped,
    )


def _renumber(failed: dict[int, str], keep: np.ndarray[Any, np.dtype[np.bool_]]) -> dict[int, str]:
    if not failed:
        return failed
    new_index = np.cumsum(keep) - 1
    return {int(new_index[i]): reason for i, reason in failed.items() if keep[i]}


def _after(
    seqs: list[str], subs: np.ndarray[Any, np.dtype[np.int64]], last: KinesisPosition | None
) -> np.ndarray[Any, np.dtype[np.bool_]] | None:
    """Mask of records after ``last`` (None when all are): resuming AT a sequence number re-reads it."""
    if last is None or not seqs:
        return None
    last_seq = int(last.sequence)
    if int(seqs[0]) > last_seq:
        return None
    keep = np.fromiter(
        (
            int(s) > last_seq or (int(s) == last_seq and sub > last.sub_sequence)
            for s, sub in zip(seqs, subs.tolist(), strict=True)
        ),
        dtype=np.bool_,
        count=len(seqs),
    )
    return None if keep.all() else keep


def _first_of_aggregate(
    seqs: list[str], subs: np.ndarray[Any, np.dtype[np.int64]], aggregated: np.ndarray[Any, np.dtype[np.bool_]]
) -> np.ndarray[Any, np.dtype[np.bool_]] | None:
    if not aggregated.any():
        return None
    n = len(seqs)
    nxt = [*seqs[1:], ""]
    more = np.fromiter((a == b for a, b in zip(seqs, nxt, strict=True)), dtype=np.bool_, count=n)
    first: np.ndarray[Any, np.dtype[np.bool_]] = aggregated & (subs == 0) & more
    return first
