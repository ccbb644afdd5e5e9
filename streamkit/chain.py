"""The chain that runs processors in order, as written or as the planner's fused steps.

Apart from :mod:`streamkit.processor` (the protocol every processor and the planner build on) because the
chain uses the planner, and the planner uses the processor protocol: in one module they imported each other.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from streamkit.batch import RecordBatch
from streamkit.planner import Step
from streamkit.planner import plan as plan_chain
from streamkit.processor import Failure, ProcessContext, Processor, stage_name
from streamkit.sink_views import SinkReads

__all__ = ["SLICE_RECORDS", "Chain"]

SLICE_RECORDS = 512
"""Source batches larger than this go through the chain in slices of this many records. Each stage makes its
own pass over its input: over a 10,000-record GetRecords batch the decoded values (~23 MB) fall out of the
CPU caches between passes, over 512 records they stay in L2 (streamkit bench: json.decode -> filter -> map
+25-35%). Chains with an async processor get whole batches, to keep its concurrency window."""


class Chain:
    """Processors applied in order; each stage sees every batch the previous stage produced.

    ``processors`` is the chain as written; unless ``plan`` is false, runs of built-in stages after
    ``json.decode`` execute as fused steps (:mod:`streamkit.planner`) with the same results. ``sinks``
    (:func:`streamkit.sink_views.sink_reads`) says which fields the sinks read, for the last fused step to
    decode them too.
    """

    def __init__(
        self,
        processors: Sequence[Processor],
        *,
        fail_fast: bool = False,
        plan: bool = True,
        sinks: SinkReads | None = None,
    ) -> None:
        self.processors = list(processors)
        self.fail_fast = fail_fast
        self.stages = self.processors
        """What runs: the processors, or the planner's fused steps for them."""
        self.steps: list[Step] = []
        """The physical plan, explained (``streamkit plan``)."""
        if plan:
            self.stages, self.steps = plan_chain(self.processors, sinks)
        self._names = [stage_name(p) for p in self.stages]
        self._async = [_returns_awaitable(p) for p in self.stages]

    async def run(self, batch: RecordBatch) -> tuple[list[RecordBatch], list[Failure]]:
        if len(batch) <= SLICE_RECORDS or any(self._async):
            return await self._run(batch)
        outputs: list[RecordBatch] = []
        failures: list[Failure] = []
        for start in range(0, len(batch), SLICE_RECORDS):
            out, failed = await self._run(batch.slice(start, start + SLICE_RECORDS))
            outputs.extend(out)
            failures.extend(failed)
        return outputs, failures

    async def _run(self, batch: RecordBatch) -> tuple[list[RecordBatch], list[Failure]]:
        ctx = ProcessContext(batch.partition, fail_fast=self.fail_fast)
        current = [batch]
        for processor, name, is_async in zip(self.stages, self._names, self._async, strict=True):
            ctx.stage = name
            produced: list[RecordBatch] = []
            for item in current:
                out = processor(item, ctx)
                if is_async or inspect.isawaitable(out):
                    out = await out  # type: ignore[misc]
                _collect(out, produced, name)
            current = produced
            if not current:
                break
        return current, ctx.failures


def _returns_awaitable(processor: object) -> bool:
    call = processor if inspect.isfunction(processor) else getattr(processor, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call) or bool(getattr(processor, "is_async", False))


def _collect(out: Any, produced: list[RecordBatch], name: str) -> None:
    if out is None:
        return
    if isinstance(out, RecordBatch):
        if len(out):
            produced.append(out)
        return
    if isinstance(out, Sequence):
        produced.extend(b for b in out if isinstance(b, RecordBatch) and len(b))
        if all(isinstance(b, RecordBatch) for b in out):
            return
    raise TypeError(f"processor {name!r} returned {type(out).__name__}; expected a RecordBatch, a list of them or None")
