"""One ordered GetRecords loop per owned shard.

Pacing respects the per-shard read limits, which every polling consumer of the stream shares: at most
``reads_per_second`` calls (the service allows 5) and ``read_bytes_per_second`` (the service allows
2 MiB/s; after a 10 MiB response it refuses calls for 5 s, which byte pacing already avoids). Near the tip
(an empty response, or a partial one with MillisBehindLatest 0) the loop polls every ``idle_poll_s``
instead. Throttling, 5xx answers and connection failures of GetRecords and GetShardIterator back off
exponentially with full jitter, the failed call counting against the call budget too. An expired iterator
is renewed at the last record handed to the runtime (AT_SEQUENCE_NUMBER, skipping through it), so nothing is
skipped or read twice; a reader that started at LATEST and delivered nothing yet renews AT_TIMESTAMP just
before its first iterator instead of at a new LATEST, which would skip what arrived meanwhile.

The enhanced fan-out reader (:mod:`efo`, SubscribeToShard) replaces :meth:`ShardReader._responses` only:
everything after a response (deaggregation, positions, end of shard) is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from botocore.exceptions import ClientError

from streamkit.batch import Partition, RecordBatch
from streamkit.connectors.aws_clients import KINESIS_TRANSIENT_CODES, SDK_ERRORS, transient_reason
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import (
    ChildShard,
    DeaggregatedRecords,
    DecodedRecords,
    as_user_records,
    deaggregate,
)
from streamkit.connectors.kinesis.positions import BatchPositions, KinesisPosition
from streamkit.retry import RetryPolicy
from streamkit.source import PartitionReader, SourceBatch

log = structlog.get_logger("streamkit.kinesis")

# Re-reading this far before the time of the last (empty) response covers clock skew between this host and
# Kinesis when an iterator started at LATEST must be renewed before anything was delivered (see _iterator).
_LATEST_RENEW_MARGIN_S = 5.0


def _error_code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


def _transient(exc: BaseException) -> str | None:
    """The reason to retry ``exc`` (throttling, a 5xx, a connection failure), or None when it is permanent."""
    return transient_reason(exc, KINESIS_TRANSIENT_CODES)


@dataclass(frozen=True)
class ReadSettings:
    max_records: int = 10_000
    reads_per_second: float = 5.0
    read_bytes_per_second: int = 2 * 1024**2
    idle_poll_s: float = 1.0
    deaggregate: bool = True
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_elapsed_s=0, base_delay_s=0.2, max_delay_s=10.0))


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
        totals: Counter[str] | None = None,
        shard_id: str | None = None,
    ) -> None:
        super().__init__(partition)
        self._shard_id = shard_id  # the partition key is the lease key: with several streams, prefix + shard id
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
        """GetRecords calls made."""
        self.throttled = 0
        """Calls refused for throttling or a transient failure (then retried after a back-off)."""
        self.expired_iterators = 0
        """ExpiredIteratorException answers (the iterator was renewed at the last delivered record)."""
        self.bytes_read = 0
        """Bytes of GetRecords response bodies (what the byte pacing counts)."""
        self.kpl_dropped = 0
        """KPL user records dropped because their hash key is outside this shard's range."""
        self._totals = totals
        self._latest_from: dt.datetime | None = None
        """When the first LATEST iterator was asked for (renewing it later must not skip anything)."""

    @property
    def shard_id(self) -> str:
        return self._shard_id or self.partition.key

    async def finished(self) -> None:
        await self._on_end(self.child_shards)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.stopping.wait()

    def _count(self, what: str) -> None:
        if self._totals is not None:
            self._totals[what] += 1

    async def _iterator(self) -> str | None:
        """A shard iterator at the last delivered record, or at the start position; throttling is retried.
        None when the reader is stopped meanwhile."""
        last = self.last_delivered
        s = self.start
        if last is not None:
            # AT, then skip what was delivered: correct for plain and partly delivered aggregated records.
            kwargs: dict[str, Any] = {"sequence_number": last.sequence}
            iterator_type = "AT_SEQUENCE_NUMBER"
        elif s.iterator_type == "LATEST" and self._latest_from is not None:
            # Nothing delivered since we started at LATEST: a new LATEST iterator would skip what arrived
            # meanwhile. Read from (a little before) the first one instead; nothing since was delivered.
            iterator_type = "AT_TIMESTAMP"
            kwargs = {"timestamp": self._latest_from - dt.timedelta(seconds=_LATEST_RENEW_MARGIN_S)}
        else:
            iterator_type = s.iterator_type
            kwargs = {"sequence_number": s.sequence_number, "timestamp": s.timestamp}
            if iterator_type == "LATEST":
                self._latest_from = dt.datetime.now(dt.UTC)
        attempt = 0
        while True:
            try:
                return await self.client.shard_iterator(self.stream, self.shard_id, iterator_type, **kwargs)
            except SDK_ERRORS as exc:
                reason = _transient(exc)
                if reason is None:
                    raise
                attempt += 1
                await self._back_off(reason, attempt, "GetShardIterator")
                if self.stopping.is_set():
                    return None

    async def _back_off(self, reason: str, attempt: int, operation: str) -> None:
        self.throttled += 1
        self._count("throttled")
        delay = self.settings.retry.delay(attempt)
        log.warning(
            "kinesis call refused; backing off",
            partition=str(self.partition),
            operation=operation,
            reason=reason,
            attempt=attempt,
            delay_s=round(delay, 3),
        )
        await self._sleep(delay)

    async def _responses(self) -> AsyncIterator[DecodedRecords]:
        """GetRecords responses in order, paced, with throttling, transient failures and expiry handled."""
        iterator: str | None = await self._iterator()
        attempt = 0
        while iterator is not None and not self.stopping.is_set():
            await self._sleep(self.pacer.delay())
            if self.stopping.is_set():
                return
            try:
                self.calls += 1
                self._count("calls")
                decoded, nbytes = await self.client.get_records(iterator, self.settings.max_records)
            except SDK_ERRORS as exc:
                if isinstance(exc, ClientError) and _error_code(exc) == "ExpiredIteratorException":
                    self.expired_iterators += 1
                    self._count("expired_iterators")
                    log.info("iterator expired; renewing", partition=str(self.partition), at=str(self.last_delivered))
                    iterator = await self._iterator()
                    continue
                reason = _transient(exc)
                if reason is None:
                    raise
                # The failed call counts against the shard's budget too; then back off exponentially.
                attempt += 1
                self.pacer.record(0)
                await self._back_off(reason, attempt, "GetRecords")
                continue
            attempt = 0
            self.pacer.record(nbytes)
            self.bytes_read += nbytes
            if self._totals is not None:
                self._totals["bytes"] += nbytes
            if self._on_lag is not None:
                self._on_lag(decoded.millis_behind_latest)
            iterator, children, at_tip = decoded.next_shard_iterator, decoded.child_shards, self._at_tip(decoded)
            # Hand the response over without keeping a reference in this frame: its records must be
            # freeable once the runtime is done with them, not only when the next call returns.
            handoff = [decoded]
            del decoded
            yield handoff.pop()
            if iterator is None:
                self.child_shards = children
                self.reached_end = True
                return
            if at_tip:
                await self._sleep(self.settings.idle_poll_s)

    def _at_tip(self, decoded: DecodedRecords) -> bool:
        """Nothing more to read right now: poll slowly. A full response means more is waiting, whatever
        MillisBehindLatest says (emulators report 0 throughout)."""
        if not len(decoded):
            return True
        return decoded.millis_behind_latest == 0 and len(decoded) < self.settings.max_records

    async def batches(self) -> AsyncIterator[SourceBatch]:
        async for decoded in self._responses():
            if not len(decoded):
                continue
            users, failed = self._user_records(decoded)
            # No local keeps the records while the runtime processes them and the next call is made.
            batch = self._to_batch(users, failed)
            del decoded, users
            if batch is not None:
                handoff = [batch]
                del batch
                yield handoff.pop()

    def _user_records(self, decoded: DecodedRecords) -> tuple[DeaggregatedRecords, dict[int, str]]:
        if not self.settings.deaggregate:
            return as_user_records(decoded), {}
        # A malformed aggregate is passed on as one failed record (it goes to the dead-letter queue with
        # the reason) instead of stopping the shard.
        users = deaggregate(decoded, self.hash_range, malformed="fail_record")
        failed = users.failures
        if users.dropped:
            self.kpl_dropped += users.dropped
            if self._totals is not None:
                self._totals["kpl_dropped"] += users.dropped
            log.info(
                "KPL user records outside the shard's hash range dropped",
                partition=str(self.partition),
                dropped=users.dropped,
            )
        return users, failed

    def _to_batch(self, users: DeaggregatedRecords, failed: dict[int, str]) -> SourceBatch | None:
        seqs, subs = users.sequence_numbers, users.sub_sequence_numbers
        if not seqs:
            # Every user record of the response was dropped (outside this shard's hash range): nothing to
            # deliver. Re-reading such records after a restart drops them again.
            return None
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
