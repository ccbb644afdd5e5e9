"""The Lambda consumer: one event loop, one started pipeline per execution environment, one call per event.

Each invocation decodes the event into one batch per shard or Kafka partition and runs it, in order and in
chunks, through the same dispatch step as the long-lived runtime (:class:`~streamkit.dispatch.Dispatch`:
processors, routing to sinks, dead-lettering, acknowledgement tickets): a record counts as done only when
every sink it was routed to confirmed it (or the dead-letter queue wrote it, or a processor dropped it).
Sinks are flushed before the handler returns, and the response names, per partition, the first record that
is not done: Lambda checkpoints just before it and redelivers everything from it.

The event loop outlives the invocation on purpose. aiobotocore clients (and the asyncio primitives inside
sinks) are bound to the loop they were first used on, so the loop made at cold start runs every invocation
with ``run_until_complete``; ``asyncio.run`` per invocation would break warm invocations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import structlog

from streamkit.acks import AckTicket, PartitionTracker
from streamkit.aws_lambda.events import EventPartition, decode_event
from streamkit.aws_lambda.pipeline import LambdaOptions, PipelineSpec, load, resolve_record_errors
from streamkit.batch import BoolArray, RecordBatch
from streamkit.chain import Chain
from streamkit.deadletter import DeadLetterQueue
from streamkit.dispatch import Dispatch
from streamkit.emf import EmfReporter
from streamkit.processor import Failure
from streamkit.runtime import Pipeline, tune_gc
from streamkit.sink import BufferOptions, Sink
from streamkit.sink_views import sink_reads

log = structlog.get_logger("streamkit.aws_lambda")

Response = dict[str, list[dict[str, Any]]]


class LambdaApp:
    """A pipeline started for one execution environment; call it as the Lambda handler."""

    def __init__(self, pipeline: Pipeline, options: LambdaOptions | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or LambdaOptions()
        self.on_record_error = resolve_record_errors(self.options, pipeline)
        # fail_fast is honoured as on_record_error=retry; the chain itself must report failed records
        # one by one, so the handler knows which record to name in the response.
        self.chain = Chain(pipeline.chain.processors, fail_fast=False, sinks=sink_reads(pipeline.routes))
        self.dispatch = Dispatch(self.chain, pipeline.routes, pipeline.dead_letters, pipeline.metrics)
        self.sinks: list[Sink] = self.dispatch.sinks
        self.held = _HeldRejections() if self.options.on_sink_reject == "retry" else None
        for route in pipeline.routes:
            route.sink.bind(route.name, self.held if self.held is not None else pipeline.dead_letters, pipeline.metrics)
        self.invocations = 0
        # Metrics as EMF lines on stdout at the end of every invocation: Lambda ships stdout to CloudWatch
        # Logs, which turns them into metrics with no agent and no extra API call on the hot path.
        self.emf: EmfReporter | None = None
        if pipeline.settings.metrics.emf:
            self.emf = EmfReporter(pipeline.metrics, pipeline.name, namespace=pipeline.settings.metrics.namespace)
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._start())
        except BaseException:
            self.loop.close()
            raise

    @classmethod
    def create(cls, spec: PipelineSpec, **options: Any) -> LambdaApp:
        pipeline, resolved = load(spec, options)
        return cls(pipeline, resolved)

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> Response:
        return self.handle(event, context)

    def handle(self, event: Mapping[str, Any], context: Any = None) -> Response:
        """Process one event; the partial batch response names what Lambda must redeliver."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # the normal case: no loop runs in this thread
        else:
            raise RuntimeError("the Lambda handler is synchronous: call it outside a running event loop")
        self.invocations += 1
        request_id = getattr(context, "aws_request_id", None)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                return self.loop.run_until_complete(self._invoke(event, _Deadline(context, self.options)))
            finally:
                if self.emf is not None:
                    self.emf.emit()

    def close(self) -> None:
        """Close sinks and the event loop (tests, or a runtime shutdown hook)."""
        if self.loop.is_closed():
            return
        try:
            self.loop.run_until_complete(self._close())
        finally:
            self.loop.close()

    # -- lifecycle -------------------------------------------------------------------------------
    async def _start(self) -> None:
        if self.pipeline.settings.gc_tuning:
            tune_gc()
        await self.dispatch.start()

    async def _close(self) -> None:
        await self.dispatch.close()

    # -- one invocation --------------------------------------------------------------------------
    async def _invoke(self, event: Mapping[str, Any], deadline: _Deadline) -> Response:
        runs = [_PartitionRun(part, self.options) for part in decode_event(event, deaggregate=self.options.deaggregate)]
        stop = asyncio.Event()
        background = [asyncio.ensure_future(runner) for _, runner in self.dispatch.runners(stop)]
        try:
            await self._process(runs, deadline)
        finally:
            # Flush even when processing raised, so that what can be written is written.
            await self._flush(deadline)
            stop.set()
            for outcome in await asyncio.gather(*background, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    log.error("sink failed; its unconfirmed records are reported", error=repr(outcome))
            response = self._response(runs)
            # The event's partitions go back to the event source mapping: whatever a sink still holds of
            # them (records a failed or cut-off flush left, writes in flight, write errors) is dropped, so
            # the next invocation starts with clean sinks. Those records are reported, hence redelivered.
            await self.dispatch.revoke([run.part.partition for run in runs])
        return response

    async def _process(self, runs: list[_PartitionRun], deadline: _Deadline) -> None:
        chunk = self.options.chunk_records
        for run in runs:
            self.pipeline.metrics.records_in(run.part.partition, len(run.part), sum(map(len, run.part.batch.payloads)))
            for start in range(0, len(run.part), chunk):
                if run.halted:
                    break
                if deadline.short():
                    # Unprocessed records keep their processing hold: the response reports the first.
                    log.warning(
                        "invocation deadline near: stopped taking records", remaining_ms=deadline.remaining_ms()
                    )
                    return
                await self._process_chunk(run, start, min(start + chunk, len(run.part)))

    async def _process_chunk(self, run: _PartitionRun, start: int, end: int) -> None:
        batch, failures = _split_undecodable(run.part, start, end)
        try:
            outputs, chain_failures = await self.dispatch.process(batch)
            failures.extend(chain_failures)
        except Exception:
            # A processor raised instead of reporting records: nothing of this chunk is trusted.
            log.exception("processor chain raised; the chunk is reported for retry", partition=str(batch.partition))
            blocked = run.block(list(range(start, end)), start, end)
            failures, outputs = [], []
        else:
            if self.on_record_error == "retry" and failures:
                _log_failures(failures, "records failed; reported for retry")
                blocked = run.block([int(o) for f in failures for o in f.batch.origin], start, end)
                failures = []
            else:
                blocked = run.block([], start, end)
        if blocked is not None:
            # Records held back by the ordering rule are redelivered: neither written nor dead-lettered now.
            outputs = [kept for out in outputs if len(kept := out.select(~blocked[out.origin - start]))]
            failures = _unblocked(failures, blocked, start)
        await self.dispatch.deliver(run.ticket, self.dispatch.deliveries(outputs), failures)
        # Release the processing hold of every record that was dealt with; a blocked record keeps it, so it
        # stays unfinished and the response can name it.
        done = np.arange(start, end, dtype=np.int64)
        run.ticket.ack(done if blocked is None else done[~blocked])

    async def _flush(self, deadline: _Deadline) -> None:
        try:
            async with asyncio.timeout(deadline.flush_budget_s()):
                await self.dispatch.flush(_log_flush_error)
        except TimeoutError:
            log.warning("flush did not finish before the deadline; unconfirmed records are reported")

    def _response(self, runs: list[_PartitionRun]) -> Response:
        failures: list[dict[str, Any]] = []
        for run in runs:
            first = run.ticket.finished_prefix()
            if first < len(run.part):
                identifier = run.part.identifier(first)
                failures.append({"itemIdentifier": identifier})
                log.warning(
                    "partial batch failure",
                    partition=str(run.part.partition),
                    first_position=str(run.part.positions[first]),
                    unfinished=int(np.count_nonzero(run.ticket.pending)),
                    records=len(run.part),
                )
        return {"batchItemFailures": failures}


class _PartitionRun:
    """One partition of the event: its ticket and the ordering rule that decides what may still be written."""

    def __init__(self, part: EventPartition, options: LambdaOptions) -> None:
        self.part = part
        self.per_key = options.ordering == "per_key"
        self.ticket: AckTicket = PartitionTracker(part.partition).open(part.positions, 0)
        part.batch.ticket = self.ticket
        self.cut: int | None = None
        """per_partition: index of the first failed record; nothing from it on is written."""
        self.key_cuts: dict[Any, int] = {}
        """per_key: index of the first failed record of each key."""

    @property
    def halted(self) -> bool:
        return self.cut is not None

    def block(self, failed: list[int], start: int, end: int) -> BoolArray | None:
        """Which records of ``[start, end)`` must not be written, given newly ``failed`` record indexes."""
        if not self.per_key:
            if failed:
                self.cut = min(failed) if self.cut is None else min(self.cut, *failed)
            if self.cut is None:
                return None
            return np.arange(start, end) >= self.cut
        keys = self.part.batch.keys or [None] * len(self.part)
        for index in sorted(failed):
            self.key_cuts.setdefault(keys[index], index)
        if not self.key_cuts:
            return None
        cuts = self.key_cuts
        return np.fromiter((cuts.get(keys[i], end) <= i for i in range(start, end)), dtype=np.bool_, count=end - start)


class _HeldRejections(DeadLetterQueue):
    """Stands in for the dead-letter queue of sinks when rejections must be retried by Lambda.

    A rejected record is logged and never acknowledged, so it stays unfinished and the response names it.
    """

    def __init__(self) -> None:
        super().__init__(BufferOptions())

    async def submit(self, failure: Failure) -> None:
        batch = failure.batch
        log.warning(
            "sink rejected records; reported for retry",
            stage=failure.stage,
            partition=str(batch.partition),
            records=len(batch),
            first_position=str(batch.position(0)),
            reason=failure.reason,
        )

    async def write_entries(self, failures: list[Failure]) -> None:
        return None


class _Deadline:
    """The invocation's remaining time, from the Lambda context (no context, no deadline)."""

    def __init__(self, context: Any, options: LambdaOptions) -> None:
        self._remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._margin = options.deadline_margin_ms
        self._flush_margin = options.flush_margin_ms

    def remaining_ms(self) -> float | None:
        return None if self._remaining is None else float(self._remaining())

    def short(self) -> bool:
        remaining = self.remaining_ms()
        return remaining is not None and remaining < self._margin

    def flush_budget_s(self) -> float | None:
        remaining = self.remaining_ms()
        return None if remaining is None else max(0.0, (remaining - self._flush_margin) / 1000)


def _split_undecodable(part: EventPartition, start: int, end: int) -> tuple[RecordBatch, list[Failure]]:
    """Records ``[start, end)`` of ``part`` that decoded, and failures for those that did not."""
    batch = part.batch.slice(start, end)
    bad = [(i - start, reason) for i, reason in part.decode_failures if start <= i < end]
    if not bad:
        return batch, []
    mask = np.ones(end - start, dtype=np.bool_)
    mask[[i for i, _ in bad]] = False
    failures = [Failure(batch.take([i]), reason, "source:lambda") for i, reason in bad]
    return batch.select(mask), failures


def _unblocked(failures: list[Failure], blocked: BoolArray, start: int) -> list[Failure]:
    """The failures without the records the ordering rule holds back (``blocked``, indexed from ``start``)."""
    kept = []
    for failure in failures:
        batch = failure.batch.select(~blocked[failure.batch.origin - start])
        if len(batch) == len(failure.batch):
            kept.append(failure)
        elif len(batch):
            kept.append(Failure(batch, failure.reason, failure.stage, failure.attempts))
    return kept


def _log_flush_error(component: str, error: Exception) -> None:
    if component == "sink":
        log.error("sink flush failed; its unconfirmed records are reported", error=repr(error))
    else:
        log.error("dead-letter write failed; those records are reported", error=repr(error))


def _log_failures(failures: list[Failure], message: str) -> None:
    first = failures[0].batch
    log.warning(
        message,
        partition=str(first.partition),
        records=sum(len(f.batch) for f in failures),
        first_position=str(first.position(0)),
        stage=failures[0].stage,
        reason=failures[0].reason,
    )
