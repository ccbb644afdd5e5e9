"""The step every driver shares: a batch through the processor chain, its records to the sinks, its failures to
the dead-letter queue, with the acknowledgement bookkeeping; and the start, flush, revoke and close of those
outputs.

Two drivers use it: the long-lived :class:`~streamkit.runtime.Runtime` (one task per partition, checkpoints)
and the Lambda consumer (:mod:`streamkit.aws_lambda.app`: one event per invocation, the partial batch
response). What differs between them stays in the drivers: when batches arrive, the byte budget, and
Lambda's ordering rule, which decides before delivery which records may still be written.

Bookkeeping: a record counts as done once every sink it was routed to confirmed it, the dead-letter queue
wrote it, or a processor dropped it. Each delivery holds one count on its records' ticket; the sink's or
queue's acknowledgement releases it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from streamkit.acks import AckTicket
from streamkit.batch import BoolArray, Partition, RecordBatch
from streamkit.chain import Chain
from streamkit.deadletter import DeadLetterQueue
from streamkit.errors import ProcessingError
from streamkit.metrics import Metrics
from streamkit.processor import Failure
from streamkit.sink import Sink
from streamkit.sink_views import for_sink

__all__ = ["Delivery", "Dispatch", "Route"]

log = structlog.get_logger("streamkit.dispatch")


@dataclass
class Route:
    """A sink and the predicate that selects the records it receives (None: all of them)."""

    name: str
    sink: Sink
    predicate: Callable[[RecordBatch], BoolArray] | None = None


Delivery = tuple[Sink, RecordBatch]
"""Records for one sink, in the form that sink keeps."""


class Dispatch:
    """A pipeline's chain, routes and dead-letter queue, driven one batch at a time."""

    def __init__(
        self, chain: Chain, routes: Sequence[Route], dead_letters: DeadLetterQueue | None, metrics: Metrics
    ) -> None:
        self.chain = chain
        self.routes = routes
        self.dead_letters = dead_letters
        self.metrics = metrics

    @property
    def sinks(self) -> list[Sink]:
        return [route.sink for route in self.routes]

    # -- one batch -------------------------------------------------------------------------------
    async def process(self, batch: RecordBatch) -> tuple[list[RecordBatch], list[Failure]]:
        """Run ``batch`` through the chain: the output batches and the records that failed."""
        began = time.perf_counter()
        outputs, failures = await self.chain.run(batch) if len(batch) else ([], [])
        self.metrics.processed(batch.partition, sum(map(len, outputs)), time.perf_counter() - began)
        return outputs, failures

    def deliveries(self, outputs: list[RecordBatch]) -> list[Delivery]:
        """Each output's records for each sink whose predicate selects them, in the form the sink keeps
        (payload bytes only for a sink that writes bytes: decoded values are released here)."""
        deliveries: list[Delivery] = []
        for out in outputs:
            # Predicates read the views a fused step decoded for them, if it did (streamkit.sink_views);
            # sinks get plain batches (the views as values only for a sink that reads just those fields).
            masks = [None if route.predicate is None else route.predicate(out) for route in self.routes]
            for route, mask in zip(self.routes, masks, strict=True):
                sink = route.sink
                given = for_sink(out, sink.value_fields if sink.keeps_values else None)
                sub = given if mask is None else given.select(mask)
                if len(sub):
                    deliveries.append((sink, sub if sink.keeps_values else sub.encoded()))
        return deliveries

    async def deliver(self, ticket: AckTicket, deliveries: list[Delivery], failures: list[Failure]) -> None:
        """Hand deliveries to their sinks and failures to the dead-letter queue, holding their records."""
        for sink, sub in deliveries:
            ticket.hold(sub.origin, sub.origin_unique)
            await sink.submit(sub)
        for failure in failures:
            await self.dead_letter(failure, log_it=False)
        if failures:
            first = failures[0].batch
            log.warning(
                "records dead-lettered",
                partition=str(first.partition),
                records=sum(len(f.batch) for f in failures),
                first_position=str(first.position(0)),
                stage=failures[0].stage,
                reason=failures[0].reason,
            )

    async def dead_letter(self, failure: Failure, *, log_it: bool = True) -> None:
        """Send ``failure`` to the dead-letter queue; without one, stop with the record and the reason."""
        dlq = self.dead_letters
        batch = failure.batch
        if dlq is None:
            raise ProcessingError(
                f"{failure.stage!r} failed on the record at {batch.partition} position {batch.position(0)}: "
                f"{failure.reason}; configure dead_letter to keep failed records and go on"
            )
        if batch.ticket is not None:
            batch.ticket.hold(batch.origin, batch.origin_unique)
        self.metrics.dead_lettered(batch.partition, len(batch))
        if log_it:
            log.warning(
                "records dead-lettered",
                partition=str(batch.partition),
                first_position=str(batch.position(0)),
                records=len(batch),
                stage=failure.stage,
                reason=failure.reason,
            )
        await dlq.submit(failure)

    # -- the outputs' lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the dead-letter queue, then the sinks (which may hand it records from then on)."""
        if self.dead_letters is not None:
            await self.dead_letters.start()
        for sink in self.sinks:
            await sink.start()

    def runners(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """(task name, coroutine) of every sink's and the dead-letter queue's background loop, until ``stop``."""
        runners: list[tuple[str, Coroutine[Any, Any, None]]] = [(f"sink:{s.name}", s.run(stop)) for s in self.sinks]
        if self.dead_letters is not None:
            runners.append(("dead-letter", self.dead_letters.run(stop)))
        return runners

    async def flush(self, on_error: Callable[[str, Exception], None] | None = None) -> None:
        """Flush the sinks, then the dead-letter queue (their rejections may have gone to it).

        Without ``on_error`` the first failure propagates. With it, every failure is passed to it (with
        ``"sink"`` or ``"dead_letter"``) and the other flushes go on: Lambda reports what stayed unconfirmed.
        """
        flushes = [sink.flush() for sink in self.sinks]
        if on_error is None:
            await asyncio.gather(*flushes)
            if self.dead_letters is not None:
                await self.dead_letters.flush()
            return
        for outcome in await asyncio.gather(*flushes, return_exceptions=True):
            if isinstance(outcome, Exception):
                on_error("sink", outcome)
        if self.dead_letters is not None:
            try:
                await self.dead_letters.flush()
            except Exception as exc:
                on_error("dead_letter", exc)

    async def revoke(self, partitions: list[Partition]) -> None:
        """The sinks and the dead-letter queue drop what they hold of ``partitions``, unwritten."""
        for sink in self.sinks:
            await sink.revoke(partitions)
        if self.dead_letters is not None:
            await self.dead_letters.revoke(partitions)

    async def close(self) -> None:
        """Close every sink, then the dead-letter queue; a failure is logged and the others still close."""
        closers: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [(s.name, s.close) for s in self.sinks]
        if self.dead_letters is not None:
            closers.append(("dead-letter", self.dead_letters.close))
        for name, closer in closers:
            try:
                await closer()
            except Exception:
                log.exception("close failed", component=name)
