"""Sinks: where records go, and the only place that may acknowledge them.

:class:`Sink` is the contract the runtime drives: ``submit`` hands over records (and may wait, which is
backpressure), ``flush`` writes everything buffered, ``run`` is a background loop for timers. A sink
acknowledges a record only once the service confirmed it, and hands records it cannot write for good to
the dead-letter queue with the reason. ``revoke`` tells it that partitions moved away (a Kinesis lease lost
or handed off, a Kafka revoke, the end of a Lambda invocation): it drops what it holds of them, unwritten.

:class:`BufferedSink` does the batching most sinks need: it collects records across partitions and writes
when a count, a byte size or an age is reached, with a bounded number of writes in flight.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import msgspec
import numpy as np
import structlog

from streamkit.batch import Partition, RecordBatch
from streamkit.config import PositiveInt, PositiveSeconds, Size
from streamkit.processor import Failure
from streamkit.retry import RetryPolicy

if TYPE_CHECKING:
    from streamkit.metrics import Metrics


class FailureTarget(Protocol):
    """What a sink needs from the dead-letter queue it is bound to: somewhere to hand records it gave up on,
    and a way to have them written now.

    A protocol rather than :class:`~streamkit.deadletter.DeadLetterQueue` itself, which is built on this
    module's BufferedWriter: naming it here would make the two modules import each other.
    """

    async def submit(self, failure: Failure) -> None: ...

    async def flush(self) -> None:
        """Write what was submitted; a sink that must not move past records before they are stored (a
        commit that advances a ledger) waits for this."""
        ...


Item = TypeVar("Item")

log = structlog.get_logger("streamkit.sink")


class BufferOptions(msgspec.Struct, forbid_unknown_fields=True):
    """When a buffered sink writes: whichever limit is reached first."""

    max_records: PositiveInt = 500
    max_bytes: Size = Size(4 * 1024**2)
    max_age_s: PositiveSeconds = 1.0
    """A quiet partition's records are written after at most this long (a timer, not the next record)."""
    max_concurrent_writes: PositiveInt = 4
    retry: RetryPolicy = RetryPolicy()


@dataclass(slots=True)
class Rejection:
    """One record a buffered write could not deliver for good: its index across the written batches."""

    index: int
    reason: str
    attempts: int = 1


@dataclass(slots=True)
class Rejected:
    """Records a sink will never be able to write, with the service's reason."""

    batch: RecordBatch
    reason: str
    attempts: int = 1


class Sink(ABC):
    """The contract between the runtime and a sink."""

    name: str = "sink"
    keeps_values: bool = True
    """False for a sink that writes payload bytes only: the runtime then hands it batches without their
    decoded values (encoding them first if needed), so its buffers keep no dicts alive."""
    value_fields: tuple[str, ...] | None = None
    """For a sink that keeps values only to read a few fields of them (an S3 partition template over NDJSON
    bytes): those dotted paths. The chain planner then decodes them in its fused pass, and the sink may get
    values holding only these fields (beside the payload bytes as written) instead of whole records
    (:mod:`streamkit.sink_views`). None: the sink reads whole records, if it keeps values at all."""
    dead_letters: FailureTarget | None = None
    metrics: Metrics | None = None

    def bind(self, name: str, dead_letters: FailureTarget | None, metrics: Metrics | None) -> None:
        self.name = name
        self.dead_letters = dead_letters
        self.metrics = metrics

    async def start(self) -> None:
        """Open clients and check the destination is reachable; errors here fail start-up."""

    @abstractmethod
    async def submit(self, batch: RecordBatch) -> None:
        """Take records for writing. The runtime already counted them as owed by this sink."""

    @abstractmethod
    async def flush(self) -> None:
        """Write everything submitted so far; return when it is acknowledged or dead-lettered."""

    async def run(self, stop: asyncio.Event) -> None:
        """A background loop (timers, in-flight writes) that lives in the runtime's task group."""
        await stop.wait()

    async def close(self) -> None:
        """Release clients. Called after the final flush."""

    async def revoke(self, partitions: Collection[Partition]) -> None:
        """These partitions are no longer this runtime's: drop what the sink holds of them, never write it.

        Called when a partition moves away without (or after) a drain: a Kinesis lease lost or handed
        off, a Kafka revoke, and at the end of every Lambda invocation for the event's partitions. Their
        records that are buffered and not acknowledged are discarded (the next owner replays them from the
        checkpoint, so a sink with deterministic object keys writes the very same objects again); writes
        that hold only their records are cancelled; write errors that concern only them are forgotten, so
        nothing of a failed invocation or a lost lease reaches the next one. Acknowledge nothing here.
        A sink that keeps no per-partition state needs nothing (the default); a sink with its own
        buffering must implement it (docs/plugins.md)."""

    # -- helpers for implementations -------------------------------------------------------------
    def record_retry(self, *, throttled: bool) -> None:
        """Count a retried request (``throttled``: the service asked us to slow down)."""
        if self.metrics is not None:
            self.metrics.sink_retry(self.name, throttled=throttled)

    def observe_write(self, seconds: float, failed: bool) -> None:
        if self.metrics is not None:
            self.metrics.sink_write(self.name, seconds, failed=failed)

    def acknowledge(self, batch: RecordBatch) -> None:
        """The service confirmed every record of ``batch``."""
        if batch.ticket is not None:
            batch.ticket.ack(batch.origin, batch.origin_unique)
        if self.metrics is not None:
            self.metrics.sink_records(self.name, len(batch))

    async def reject(self, rejected: Rejected) -> None:
        """Send records that can never be written to the dead-letter queue (which then acknowledges them)."""
        if self.dead_letters is None:
            from streamkit.errors import SinkError

            position = rejected.batch.position(0)
            raise SinkError(
                f"sink {self.name!r} rejected {len(rejected.batch)} record(s) of {rejected.batch.partition} "
                f"from position {position}: {rejected.reason}; configure dead_letter to keep them"
            )
        failure = Failure(rejected.batch, rejected.reason, f"sink:{self.name}", rejected.attempts)
        await self.dead_letters.submit(failure)


class Buffer(Generic[Item]):
    """Items waiting for a write, with their record count and bytes."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.records = 0
        self.nbytes = 0
        self.since: float | None = None

    def add(self, item: Item, records: int, nbytes: int) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.items.append(item)
        self.records += records
        self.nbytes += nbytes

    def take(self) -> tuple[list[Item], int, int]:
        items, records, nbytes = self.items, self.records, self.nbytes
        self.items, self.records, self.nbytes, self.since = [], 0, 0, None
        return items, records, nbytes

    def drop(self, unwanted: Callable[[Item], bool], measure: Callable[[Item], tuple[int, int]]) -> int:
        """Remove the items ``unwanted`` picks; return how many records they held."""
        kept = [item for item in self.items if not unwanted(item)]
        if len(kept) == len(self.items):
            return 0
        before = self.records
        since = self.since
        self.take()
        for item in kept:
            self.add(item, *measure(item))
        if kept:
            self.since = since  # the age timer still counts from the oldest record kept
        return before - self.records


class BufferedWriter(ABC, Generic[Item]):
    """Batching, timers and bounded concurrent writes; the common engine of buffered sinks and the DLQ."""

    def __init__(self, options: BufferOptions) -> None:
        self.buffer_options = options
        self._buffer: Buffer[Item] = Buffer()
        self._writes: dict[asyncio.Task[None], frozenset[Partition]] = {}
        """Writes in flight, with the partitions their records came from."""
        self._slots = asyncio.Semaphore(options.max_concurrent_writes)
        self._errors: list[tuple[frozenset[Partition], BaseException]] = []
        """Errors of failed writes not yet raised, with the partitions the write held."""
        self._failed = asyncio.Event()
        self._wake = asyncio.Event()

    @abstractmethod
    def measure(self, item: Item) -> tuple[int, int]:
        """(records, bytes) of an item."""

    @abstractmethod
    def partition_of(self, item: Item) -> Partition:
        """The source partition of an item's records."""

    @abstractmethod
    async def write_items(self, items: list[Item]) -> None:
        """Write items, acknowledge or reject every record in them; raise only when the sink must stop."""

    async def add(self, item: Item) -> None:
        records, nbytes = self.measure(item)
        self._buffer.add(item, records, nbytes)
        opts = self.buffer_options
        if self._buffer.records >= opts.max_records or self._buffer.nbytes >= opts.max_bytes:
            await self._dispatch()
        elif len(self._buffer.items) == 1:
            self._wake.set()

    async def _dispatch(self) -> None:
        if not self._buffer.items:
            return
        items, _, _ = self._buffer.take()
        # Waiting for a slot is the backpressure a slow destination puts on the partitions.
        await self._slots.acquire()
        partitions = frozenset(map(self.partition_of, items))
        task = asyncio.get_running_loop().create_task(self._run_write(items, partitions))
        self._writes[task] = partitions
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        self._writes.pop(task, None)

    async def _run_write(self, items: list[Item], partitions: frozenset[Partition]) -> None:
        began = time.perf_counter()
        failed = False
        try:
            await self.write_items(items)
        except Exception as exc:
            failed = True
            self._errors.append((partitions, exc))
            self._failed.set()
        finally:
            self._slots.release()
            self.observe_write(time.perf_counter() - began, failed)

    def observe_write(self, seconds: float, failed: bool) -> None:
        """Hook for metrics about one write (sinks report it per sink name)."""

    async def flush(self) -> None:
        await self._dispatch()
        while self._writes:
            # wait, not gather: a write that revoke() cancelled must not cancel the flush.
            await asyncio.wait(list(self._writes))
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._errors:
            _, error = self._errors.pop(0)
            if not self._errors:
                self._failed.clear()
            raise error

    async def revoke(self, partitions: Collection[Partition]) -> None:
        """Drop the buffered items of ``partitions``, cancel writes holding nothing else, forget their errors.

        A write that also holds records of partitions still owned goes on: cancelling it would leave
        those records unacknowledged for good."""
        gone = frozenset(partitions)
        if not gone:
            return
        dropped = self._buffer.drop(lambda item: self.partition_of(item) in gone, self.measure)
        doomed = [task for task, held in self._writes.items() if held <= gone]
        for task in doomed:
            task.cancel()
        if doomed:
            await asyncio.wait(doomed)
        self._errors = [(held, error) for held, error in self._errors if not held <= gone]
        if not self._errors:
            self._failed.clear()
        if dropped or doomed:
            log.info(
                "revoked partitions dropped from the buffer",
                writer=type(self).__name__,
                partitions=sorted(map(str, gone)),
                records=dropped,
                writes_cancelled=len(doomed),
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Write buffers that reached their age; surface write errors into the runtime's task group."""
        max_age = self.buffer_options.max_age_s
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                since = self._buffer.since
                timeout = max_age if since is None else max(0.0, since + max_age - time.monotonic())
                failed = asyncio.ensure_future(self._failed.wait())
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stopping, failed, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                failed.cancel()
                woken.cancel()
                self._raise_pending()
                self._wake.clear()
                since = self._buffer.since
                if since is not None and time.monotonic() - since >= max_age:
                    await self._dispatch()
        finally:
            stopping.cancel()


class BufferedSink(Sink, BufferedWriter[RecordBatch]):
    """A sink that writes requests of many records. Subclasses implement :meth:`write`."""

    Options: type[BufferOptions] = BufferOptions

    def __init__(self, options: BufferOptions) -> None:
        BufferedWriter.__init__(self, options)

    def measure(self, item: RecordBatch) -> tuple[int, int]:
        return len(item), item.total_bytes()

    def partition_of(self, item: RecordBatch) -> Partition:
        return item.partition

    async def submit(self, batch: RecordBatch) -> None:
        await self.add(batch)

    async def flush(self) -> None:
        await BufferedWriter.flush(self)

    async def run(self, stop: asyncio.Event) -> None:
        await BufferedWriter.run(self, stop)

    async def revoke(self, partitions: Collection[Partition]) -> None:
        await BufferedWriter.revoke(self, partitions)

    async def write_items(self, items: list[RecordBatch]) -> None:
        rejections = await self.write(items)
        if not rejections:
            for batch in items:
                self.acknowledge(batch)
            return
        by_index = {r.index: r for r in rejections}
        offset = 0
        for batch in items:
            n = len(batch)
            mine = [by_index[i] for i in range(offset, offset + n) if i in by_index]
            offset += n
            if not mine:
                self.acknowledge(batch)
                continue
            failed = np.zeros(n, dtype=np.bool_)
            failed[[r.index - (offset - n) for r in mine]] = True
            if not failed.all():
                self.acknowledge(batch.select(~failed))
            for reason, attempts in {(r.reason, r.attempts) for r in mine}:
                picked = [r.index - (offset - n) for r in mine if r.reason == reason and r.attempts == attempts]
                await self.reject(Rejected(batch.take(picked), reason, attempts))

    @abstractmethod
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        """Write the records of ``batches`` (in order), retrying transient errors inside.

        Return the records that can never be written; every other record counts as confirmed by the
        service and is acknowledged. Raise only when the sink cannot go on (the pipeline then stops
        without checkpointing these records, so a restart replays them)."""
