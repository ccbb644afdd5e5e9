"""The runtime: one ordered task per partition, sinks batching across partitions, checkpoints, shutdown.

Structured concurrency throughout: every task lives in one :class:`asyncio.TaskGroup`, so a failing
partition, sink or checkpoint write stops the pipeline with its error instead of vanishing. A stop
(SIGTERM, SIGINT, or a finite source running out) stops fetching, drains in-flight records to the sinks,
writes the final checkpoints and releases partitions, within the configured grace period. If draining
does not finish in time, what was acknowledged is still checkpointed: nothing unacknowledged ever is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from streamkit.acks import AckTicket, PartitionTracker
from streamkit.backpressure import ByteBudget, Expansion
from streamkit.batch import Partition, RecordBatch
from streamkit.chain import Chain
from streamkit.checkpoint import CheckpointStore
from streamkit.config import RuntimeSettings
from streamkit.deadletter import DeadLetterQueue
from streamkit.dispatch import Dispatch
from streamkit.dispatch import Route as Route  # defined with the dispatch step; still importable from here
from streamkit.errors import CheckpointDeferred, CheckpointRejected
from streamkit.footprint import batch_footprint, footprint, positions_size
from streamkit.metrics import Metrics
from streamkit.processor import Failure
from streamkit.sink import Sink
from streamkit.source import PartitionReader, Source, SourceBatch

log = structlog.get_logger("streamkit.runtime")


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often.

    Batches of decoded records allocate millions of small dicts that die young and hold no cycles; with
    CPython's default threshold (700 allocations) the collector keeps scanning the batches in flight and
    costs ~15% of throughput (benchmarks/pipeline_overhead.py). Objects that exist at start-up (modules,
    clients, configuration) are frozen so that full collections skip them. Reference counting still frees
    everything promptly; only cycle detection runs less often.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gc.get_threshold()[0], 50_000), gen1, gen2)


@dataclass
class Pipeline:
    """A built pipeline: connected components, ready to run."""

    name: str
    source: Source
    chain: Chain
    routes: list[Route]
    dead_letters: DeadLetterQueue | None
    store: CheckpointStore
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    checkpoint_interval_s: float = 5.0
    metrics: Metrics = field(default_factory=Metrics)


@dataclass
class RunSummary:
    records_in: int
    dead_lettered: int
    checkpoints: dict[Partition, str]
    drained: bool
    """False when the grace period ran out before every in-flight record was acknowledged."""
    elapsed_s: float


@dataclass
class _PartitionState:
    reader: PartitionReader
    tracker: PartitionTracker
    task: asyncio.Task[None] | None = None
    lost: bool = False


class Runtime:
    """Runs a :class:`Pipeline` until stopped. Implements the source's :class:`PartitionHost`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.dispatch = Dispatch(pipeline.chain, pipeline.routes, pipeline.dead_letters, pipeline.metrics)
        """The chain, sinks and dead-letter queue: the step this runtime shares with the Lambda consumer."""
        self.store: CheckpointStore = pipeline.source.checkpoint_store() or pipeline.store
        self._budget = ByteBudget(pipeline.settings.max_bytes_in_flight)
        self._expansion = Expansion()
        self._partitions: dict[Partition, _PartitionState] = {}
        self._last_saved: dict[Partition, str] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._checkpoint_lock = asyncio.Lock()
        self._partition_ended = asyncio.Event()
        self._ticket_done = asyncio.Event()
        self._source_closed = False
        self._releasing: dict[Partition, asyncio.Task[None]] = {}
        """Sinks dropping what they hold of a lost partition; a new reader of it waits for this first."""
        self._draining = False
        self.ready = asyncio.Event()
        """Set once start-up finished (clients open, source running)."""

    @property
    def sinks(self) -> list[Sink]:
        return self.dispatch.sinks

    @property
    def held_partitions(self) -> list[Partition]:
        return [p for p, s in self._partitions.items() if not s.lost]

    @property
    def budget(self) -> ByteBudget:
        return self._budget

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> RunSummary:
        pipeline = self.pipeline
        started = time.monotonic()
        try:
            await self._start()
        except BaseException:
            # Close what did start (clients, sessions) before reporting why start-up failed.
            await self._close()
            raise
        sinks_stop = asyncio.Event()
        drained = True
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for name, runner in self.dispatch.runners(sinks_stop):
                    tg.create_task(runner, name=name)
                checkpoints = tg.create_task(self._checkpoint_loop(sinks_stop), name="checkpoints")
                source_task = tg.create_task(pipeline.source.run(self, stop), name="source")
                self.ready.set()
                await self._until_stop_or_done(stop, source_task)
                stop.set()
                drained = await self._drain(started_at=time.monotonic())
                # Release partitions only after the final checkpoints (a source may keep leases alive
                # until then: its run() returns once closed).
                await self._close_source()
                sinks_stop.set()
                await checkpoints
        except BaseException:
            # Whatever failed, records that every sink confirmed are safe to checkpoint.
            with contextlib.suppress(Exception):
                await self._checkpoint_all()
            raise
        finally:
            self._tg = None
            await self._close()
        return RunSummary(
            records_in=self.metrics.total_in,
            dead_lettered=self.metrics.total_dead_lettered,
            checkpoints=dict(self._last_saved),
            drained=drained,
            elapsed_s=time.monotonic() - started,
        )

    async def _start(self) -> None:
        pipeline = self.pipeline
        if pipeline.settings.gc_tuning:
            tune_gc()
        await self.store.start()
        await self.dispatch.start()
        await pipeline.source.start(self.store)

    async def _close_source(self) -> None:
        if not self._source_closed:
            self._source_closed = True
            await self.pipeline.source.close()

    async def _close(self) -> None:
        for closer in (self._close_source, self.dispatch.close, self.store.close):
            try:
                await closer()
            except Exception:
                log.exception("close failed", component=getattr(closer, "__self__", None).__class__.__name__)

    async def _until_stop_or_done(self, stop: asyncio.Event, source_task: asyncio.Task[None]) -> None:
        """Return on stop, or when a finite source has run out and every partition ended."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if source_task.done() and self.pipeline.source.finite and not self._active_tasks():
                    return
                ended = asyncio.ensure_future(self._partition_ended.wait())
                await asyncio.wait({stopped, ended, source_task}, return_when=asyncio.FIRST_COMPLETED)
                ended.cancel()
                self._partition_ended.clear()
        finally:
            stopped.cancel()

    def _active_tasks(self) -> list[asyncio.Task[None]]:
        return [s.task for s in self._partitions.values() if s.task is not None and not s.task.done()]

    async def _drain(self, started_at: float) -> bool:
        """Stop fetching, finish in-flight records within the grace period, checkpoint. True if drained."""
        grace = self.pipeline.settings.shutdown_grace_s
        self._draining = True
        # Keep a slice of the grace period for the final checkpoint and releasing partitions.
        budget = max(0.0, grace * 0.8 - (time.monotonic() - started_at))
        for state in self._partitions.values():
            state.reader.stop()
        drained = True
        try:
            async with asyncio.timeout(budget):
                tasks = self._active_tasks()
                if tasks:
                    await asyncio.wait(tasks)
                await self._until_idle(lambda: all(s.tracker.idle() for s in self._partitions.values()))
        except TimeoutError:
            drained = False
            log.warning("shutdown grace period ran out; checkpointing what was acknowledged", grace_s=grace)
            for task in self._active_tasks():
                task.cancel()
        await self._checkpoint_all()
        return drained

    async def _until_idle(self, idle: Callable[[], bool], *, flush: bool = True) -> None:
        """Wait until ``idle()``; flushing sinks each round, since a flush can dead-letter records."""
        while True:
            self._ticket_done.clear()
            if flush:
                await self._flush_all()
            if idle():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._ticket_done.wait()

    async def _flush_all(self) -> None:
        await self.dispatch.flush()

    # -- partitions (PartitionHost) --------------------------------------------------------------
    async def assign(self, reader: PartitionReader) -> None:
        if self._tg is None:
            raise RuntimeError("partitions can only be assigned while the pipeline runs")
        partition = reader.partition
        if partition in self._partitions and not self._partitions[partition].lost:
            raise RuntimeError(f"partition {partition} is already assigned")
        state = _PartitionState(reader, PartitionTracker(partition))
        if self._draining:
            # A source can still be handing out partitions when a stop arrives during start-up (SIGTERM just
            # after launch): such a partition reads nothing, or it would keep the drain waiting for ever.
            reader.stop()
        self._partitions[partition] = state
        state.task = self._tg.create_task(self._consume(state), name=f"partition:{partition}")
        self.metrics.leases_held = len(self.held_partitions)
        log.info("partition assigned", partition=str(partition))

    async def revoke(self, partition: Partition, *, graceful: bool) -> None:
        state = self._partitions.get(partition)
        if state is None:
            return
        state.reader.stop()
        if not graceful:
            state.lost = True
            if state.task is not None:
                state.task.cancel()
            # Its unfinished records will never be acknowledged here (the sinks drop them): give their
            # bytes back to the budget now.
            state.tracker.abandon()
            del self._partitions[partition]
            self.metrics.leases_held = len(self.held_partitions)
            log.warning("partition lost", partition=str(partition))
            release = self._release_from_sinks(partition, state.task)
            if release is not None and state.task is not asyncio.current_task():
                await asyncio.wait({release})
            return
        if state.task is not None:
            await asyncio.wait({state.task})
        # Lost meanwhile (a Kafka revoke that ran out of time, a rejected checkpoint): nothing to wait for.
        await self._until_idle(lambda: state.lost or state.tracker.idle())
        if state.lost:
            return
        await self._checkpoint(partition, state)
        # Gone already if the checkpoint was rejected (revoked as lost) or the partition ended meanwhile.
        if self._partitions.get(partition) is state:
            del self._partitions[partition]
        self.metrics.leases_held = len(self.held_partitions)
        if not state.lost:
            await self._revoke_in_sinks(partition)
        log.info("partition released", partition=str(partition))

    def _release_from_sinks(self, partition: Partition, task: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """Once the lost partition's task has stopped, have every sink drop what it holds of the partition.

        A task of its own: a partition task whose checkpoint is rejected revokes its own partition, and
        must not wait for its own end."""
        previous = self._releasing.get(partition)

        async def release() -> None:
            for earlier in (previous, task):
                if earlier is not None:
                    await asyncio.wait({earlier})
            await self._revoke_in_sinks(partition)
            if self._releasing.get(partition) is asyncio.current_task():
                del self._releasing[partition]

        if self._tg is None:
            return None  # the pipeline is closing: its sinks are closed with whatever they hold
        try:
            release_task = self._tg.create_task(release(), name=f"revoke:{partition}")
        except RuntimeError:  # the task group is finishing (a failure): same as closing
            release().close()
            return None
        self._releasing[partition] = release_task
        return release_task

    async def _revoke_in_sinks(self, partition: Partition) -> None:
        """The sinks and the dead-letter queue drop what they hold of ``partition``, unwritten."""
        await self.dispatch.revoke([partition])

    async def _consume(self, state: _PartitionState) -> None:
        reader = state.reader
        try:
            releasing = self._releasing.get(reader.partition)
            if releasing is not None:
                # An earlier reader of this partition was lost: its records must be out of the sinks
                # before the replay goes in, or a sink could append the replay to them.
                await asyncio.wait({releasing})
            async for source_batch in reader.batches():
                work = self._process(state, source_batch)
                # The coroutine alone holds the batch, so its records die when it is done with them.
                del source_batch
                await work
            if reader.reached_end and not reader.stopping.is_set():
                await self._finish_partition(state)
        finally:
            self._partition_ended.set()

    async def _process(self, state: _PartitionState, source_batch: SourceBatch) -> None:
        """One source batch through the chain to the sinks. Its locals (decoded values, outputs) die on
        return, so the next fetch does not wait while holding them."""
        reader, tracker = state.reader, state.tracker
        batch, positions, failed = source_batch.batch, source_batch.positions, source_batch.failed
        del source_batch
        payload_bytes = batch.total_bytes()
        # The positions stay with the ticket until the batch is finished: they count too.
        positions_bytes = positions_size(positions)
        fetched = batch_footprint(batch, payload_bytes=payload_bytes) + positions_bytes
        expansion = self._expansion
        try:
            reserved = await expansion.reserve(fetched)
            await self._budget.acquire(reserved)
        except BaseException:
            expansion.unblock()
            raise
        ticket = tracker.open(positions, reserved, self._on_ticket_done)
        batch.ticket = ticket
        self.metrics.records_in(reader.partition, len(batch), payload_bytes)
        try:
            if failed:
                batch = await self._dead_letter_unreadable(batch, failed)
            outputs, failures = await self.dispatch.process(batch)
            del batch  # the source payloads live on only where outputs still share them
            deliveries = self.dispatch.deliveries(outputs)
            del outputs
            # From here on the ticket's records hold what the sinks and the dead-letter queue keep.
            held = footprint([sub for _, sub in deliveries] + [f.batch for f in failures])
            held += positions_bytes
            expansion.observe(fetched, held)
            await self._resize(ticket, held)
            await self.dispatch.deliver(ticket, deliveries, failures)
        except asyncio.CancelledError:
            # A lost partition: nothing of this batch will be checkpointed, free its bytes.
            ticket.abandon()
            raise
        finally:
            expansion.unblock()
        ticket.release_processing()

    async def _resize(self, ticket: AckTicket, nbytes: int) -> None:
        """Re-account a ticket whose batches changed shape: growth waits (ahead of fetches), shrinking
        gives bytes back at once."""
        delta = nbytes - ticket.nbytes
        if delta > 0:
            await self._budget.grow(delta, held=ticket.nbytes)
        elif delta < 0:
            self._budget.release(-delta)
        ticket.nbytes = nbytes

    async def _finish_partition(self, state: _PartitionState) -> None:
        """A closed partition was read to its end: once everything is finished, checkpoint and let the
        reader mark the end (children of a Kinesis shard may only be read after that)."""
        partition = state.reader.partition
        await self._until_idle(state.tracker.idle, flush=False)
        await self._checkpoint(partition, state)
        async with self._checkpoint_lock:
            await state.reader.finished()
        if self._partitions.get(partition) is state:
            del self._partitions[partition]
        self.metrics.leases_held = len(self.held_partitions)
        if not state.lost:
            await self._revoke_in_sinks(partition)  # nothing is buffered; sinks forget its state
        log.info("partition ended", partition=str(partition))

    async def _dead_letter_unreadable(self, batch: RecordBatch, failed: dict[int, str]) -> RecordBatch:
        """Records the source could not read go to the dead-letter queue; the rest go on."""
        for index, reason in sorted(failed.items()):
            await self.dead_letter(Failure(batch.take([index]), reason, f"source:{self.pipeline.source.name}"))
        keep = np.ones(len(batch), dtype=np.bool_)
        keep[list(failed)] = False
        return batch.select(keep)

    def _on_ticket_done(self, ticket: AckTicket) -> None:
        self._budget.release(ticket.nbytes)
        self._ticket_done.set()

    async def dead_letter(self, failure: Failure, *, log_it: bool = True) -> None:
        await self.dispatch.dead_letter(failure, log_it=log_it)

    # -- checkpoints -----------------------------------------------------------------------------
    async def _checkpoint_loop(self, stop: asyncio.Event) -> None:
        interval = self.pipeline.checkpoint_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if not stop.is_set():
                await self._checkpoint_all()

    async def _checkpoint_all(self) -> None:
        for partition, state in list(self._partitions.items()):
            if not state.lost:
                await self._checkpoint(partition, state)

    async def _checkpoint(self, partition: Partition, state: _PartitionState) -> None:
        if state.lost:
            return  # another worker owns it now; late acknowledgements of its records prove nothing here
        position: Any = state.tracker.checkpoint_position()
        if position is None:
            return
        checkpoint = self.pipeline.source.checkpoint_of(position)
        if checkpoint is None or self._last_saved.get(partition) == checkpoint:
            return
        async with self._checkpoint_lock:
            try:
                await self.store.save(partition, checkpoint)
            except CheckpointRejected as exc:
                log.warning("checkpoint rejected; partition lost", partition=str(partition), error=str(exc))
                await self.revoke(partition, graceful=False)
                return
            except CheckpointDeferred as exc:
                # Not written: not remembered as saved either, so the next interval writes it even if the
                # position has not moved (the end of a quiet shard would otherwise never be checkpointed).
                log.warning("checkpoint not written; retried next interval", partition=str(partition), error=str(exc))
                return
        self._last_saved[partition] = checkpoint
        self.metrics.checkpointed(partition)
