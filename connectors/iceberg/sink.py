"""``iceberg``: appends records to an Apache Iceberg table through pyiceberg, exactly once across restarts.

- Records are buffered across partitions and committed on size or age (``max_records``, ``max_bytes``,
  ``max_age_s``): one snapshot per commit interval, never one per batch. Commits are serial.
- Exactly once: every snapshot carries, in its summary, the last position of every partition the table
  holds (:mod:`.positions`). On replay after a crash, records at or below those positions are acknowledged
  without being written. Records are acknowledged only after the catalog commit succeeded.
- Records that cannot fit the table (see :mod:`.schema` for the evolution rules) go to the dead-letter
  queue, which is flushed *before* the commit: the commit moves the ledger past them, so they must be
  safe elsewhere first.
- pyiceberg is synchronous: every call runs on this sink's own one-thread executor, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import structlog

from streamkit.batch import BoolArray, Partition, RecordBatch
from streamkit.connectors.iceberg.settings import IcebergOptions, catalog_properties, checked
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.sink import BufferedWriter, Rejected, Sink

if TYPE_CHECKING:
    pass

log = structlog.get_logger("streamkit.connectors.iceberg")
T = TypeVar("T")


class IcebergSink(Sink, BufferedWriter[RecordBatch]):
    """Appends records to an Iceberg table; see the module docstring and docs/sinks-iceberg.md."""

    Options = IcebergOptions
    # Rows are built from the payload bytes (pyarrow's columnar JSON reader, ~2x decoded values): buffers
    # of bytes only hold no dicts alive until the commit.
    keeps_values = False

    def __init__(self, options: IcebergOptions, env: PluginEnv) -> None:
        options = checked(options, env)
        BufferedWriter.__init__(self, options)
        self.where = env.where or "sink"
        self.options = options
        properties = catalog_properties(options.catalog, env)
        try:
            # pyiceberg is an extra: the options above validate without it, the sink needs it.
            from streamkit.connectors.iceberg.table import TableWriter
        except ImportError as exc:
            raise ConfigError(
                f"{self.where}.type", f"needs pyiceberg: pip install 'streamkit[iceberg]' ({exc})"
            ) from None
        self.writer = TableWriter(options, properties, options.scope or env.pipeline, self.where)
        # One thread: pyiceberg calls never overlap, and never block the event loop.
        self._executor: ThreadPoolExecutor | None = None
        self.skipped = 0

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iceberg")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._call(self.writer.open)
        log.info(
            "iceberg sink ready",
            sink=self.name,
            table=self.options.table,
            catalog=self.options.catalog.type,
            max_age_s=self.options.max_age_s,
        )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    # -- the Sink contract on the buffered engine -----------------------------------------------
    def measure(self, item: RecordBatch) -> tuple[int, int]:
        return len(item), item.total_bytes()

    def partition_of(self, item: RecordBatch) -> Partition:
        return item.partition

    async def revoke(self, partitions: Collection[Partition]) -> None:
        """Drop the revoked partitions' buffered records. A commit already running on the sink's thread
        cannot be stopped; if it lands, its ledger makes the next owner skip those records."""
        await BufferedWriter.revoke(self, partitions)

    async def submit(self, batch: RecordBatch) -> None:
        await self.add(batch)

    async def flush(self) -> None:
        await BufferedWriter.flush(self)

    async def run(self, stop: asyncio.Event) -> None:
        await BufferedWriter.run(self, stop)

    async def write_items(self, items: list[RecordBatch]) -> None:
        prepared = await self._call(self.writer.prepare, items)
        rejected: dict[int, BoolArray] = {}
        for batch, failures in prepared.failures:
            mask = np.zeros(len(batch), dtype=np.bool_)
            mask[list(failures)] = True
            rejected[id(batch)] = mask
            for reason in sorted(set(failures.values())):
                picked = [i for i, r in failures.items() if r == reason]
                await self.reject(Rejected(batch.take(picked), reason, attempts=0))
        if prepared.failures and self.dead_letters is not None:
            # The commit moves the ledger past these records: they must be stored before it.
            await self.dead_letters.flush()
        await self._call(self.writer.commit, prepared)
        self.skipped += prepared.skipped
        for batch in items:
            failed = rejected.get(id(batch))
            self.acknowledge(batch if failed is None else batch.select(~failed))
