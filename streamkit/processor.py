"""The processor protocol and per-record wrappers (the chain that runs processors in order: streamkit.chain).

A processor takes a batch and returns a batch, several batches, or None (everything dropped). A record that
makes a processor fail is reported through :meth:`ProcessContext.fail` and left out of the output: it goes
to the dead-letter queue with the reason, and the rest of the batch goes on. With ``fail_fast`` the first
failure stops the pipeline instead.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from streamkit.batch import Partition, Record, RecordBatch
from streamkit.errors import ProcessingError

ProcessorOutput: TypeAlias = RecordBatch | Sequence[RecordBatch] | None


@dataclass(slots=True)
class Failure:
    """Records that failed in a stage, with the reason; bound for the dead-letter queue."""

    batch: RecordBatch
    reason: str
    stage: str
    attempts: int = 1


@dataclass
class ProcessContext:
    """What a processor may need besides the batch: where it runs and how to report failed records."""

    partition: Partition
    fail_fast: bool = False
    failures: list[Failure] = field(default_factory=list)
    stage: str = ""

    def fail(self, batch: RecordBatch, indices: Sequence[int], reason: str | BaseException) -> None:
        """Mark records ``indices`` of ``batch`` failed (the caller leaves them out of its output)."""
        if not len(indices):
            return
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        failed = batch.take(list(indices))
        if self.fail_fast:
            where = f"{batch.partition} position {failed.position(0)}"
            raise ProcessingError(f"processor {self.stage!r} failed on the record at {where}: {text}")
        self.failures.append(Failure(failed, text, self.stage))


@runtime_checkable
class Processor(Protocol):
    """Anything callable as ``processor(batch, ctx)``; may be a coroutine function."""

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> ProcessorOutput | Awaitable[ProcessorOutput]: ...


def batch_processor(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function ``fn(batch, ctx)`` as a batch processor, so config references do not wrap it."""
    fn.__streamkit_batch__ = True  # type: ignore[attr-defined]
    return fn


def is_batch_processor(obj: object) -> bool:
    return bool(getattr(obj, "__streamkit_batch__", False))


class PerRecord:
    """Wraps ``f(value) -> value | None | list[value]`` into a batch processor.

    ``None`` drops the record; a list replaces it by several. With ``with_metadata`` the function receives a
    :class:`~streamkit.batch.Record` view (key, position, timestamps, headers) and returns values the same
    way. Async functions run with bounded concurrency and keep record order.
    """

    def __init__(self, fn: Callable[[Any], Any], *, with_metadata: bool = False, concurrency: int = 64) -> None:
        self.fn = fn
        self.with_metadata = with_metadata
        self.is_async = inspect.iscoroutinefunction(fn)
        self.concurrency = concurrency
        self.__name__ = getattr(fn, "__qualname__", repr(fn))

    def _inputs(self, batch: RecordBatch) -> list[Any]:
        if self.with_metadata:
            return list(batch.records())
        return batch.values if batch.decoded else batch.payloads

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> ProcessorOutput | Awaitable[ProcessorOutput]:
        if self.is_async:
            return self._run_async(batch, ctx)
        results: list[Any] = []
        errors: list[tuple[int, BaseException]] = []
        fn = self.fn
        for i, item in enumerate(self._inputs(batch)):
            try:
                results.append(fn(item))
            except Exception as exc:  # a user function may raise anything; the record is what failed
                results.append(_FAILED)
                errors.append((i, exc))
        return _assemble(batch, results, errors, ctx)

    async def _run_async(self, batch: RecordBatch, ctx: ProcessContext) -> ProcessorOutput:
        inputs = self._inputs(batch)
        limit = asyncio.Semaphore(self.concurrency)

        async def one(item: Any) -> Any:
            async with limit:
                return await self.fn(item)

        outcomes = await asyncio.gather(*(one(item) for item in inputs), return_exceptions=True)
        results: list[Any] = []
        errors: list[tuple[int, BaseException]] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                results.append(_FAILED)
                errors.append((i, outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(outcome)
        return _assemble(batch, results, errors, ctx)


_FAILED = object()


def _assemble(
    batch: RecordBatch, results: list[Any], errors: list[tuple[int, BaseException]], ctx: ProcessContext
) -> RecordBatch | None:
    for index, exc in errors:
        ctx.fail(batch, [index], exc)
    values: list[Any] = []
    origin: list[int] = []
    for i, result in enumerate(results):
        if result is None or result is _FAILED:
            continue
        if isinstance(result, list):
            values.extend(result)
            origin.extend([i] * len(result))
        else:
            values.append(result.value if isinstance(result, Record) else result)
            origin.append(i)
    if not values:
        return None
    return RecordBatch.expand(batch, values, np.asarray(origin, dtype=np.int64))


def as_processor(obj: Any, *, with_metadata: bool = False) -> Processor:
    """A batch processor for ``obj``: batch processors as they are, plain functions wrapped per record."""
    if is_batch_processor(obj) or (not inspect.isfunction(obj) and isinstance(obj, Processor)):
        return obj  # type: ignore[no-any-return]
    if callable(obj):
        return PerRecord(obj, with_metadata=with_metadata)
    raise TypeError(f"{obj!r} is not a processor: expected a callable")


def stage_name(processor: object) -> str:
    return str(getattr(processor, "name", None) or getattr(processor, "__name__", type(processor).__name__))
