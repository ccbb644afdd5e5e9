"""In-memory sink and dead-letter store, for tests and benchmarks.

Instances register themselves by name in ``MemorySink.instances`` so a test can inspect what a pipeline
built from a YAML file wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from isal import igzip

from streamkit.batch import Partition, RecordBatch, concat_payloads
from streamkit.deadletter import DeadLetterQueue, entries
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Failure
from streamkit.sink import BufferedSink, BufferOptions, Rejection


class MemorySinkOptions(BufferOptions, forbid_unknown_fields=True):
    compression: Literal["none", "gzip"] = "none"
    """gzip: each write is joined as NDJSON and compressed (the work a real object sink does)."""
    keep: bool = True
    """Keep the payloads (tests); false keeps only counts and compressed sizes (benchmarks)."""


class MemorySink(BufferedSink):
    Options = MemorySinkOptions
    keeps_values = False
    instances: ClassVar[dict[str, MemorySink]] = {}

    def __init__(self, options: MemorySinkOptions | None = None, env: PluginEnv | None = None) -> None:
        super().__init__(options or MemorySinkOptions())
        opts = options or MemorySinkOptions()
        self.compression = opts.compression
        self.keep = opts.keep
        self.records: defaultdict[Partition, list[tuple[Any, bytes]]] = defaultdict(list)
        self.writes = 0
        self.written_records = 0
        self.compressed_bytes = 0

    def bind(self, name: str, dead_letters: Any, metrics: Any) -> None:
        super().bind(name, dead_letters, metrics)
        MemorySink.instances[name] = self

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        if self.compression == "gzip":
            data = b"\n".join(concat_payloads(batches))
            self.compressed_bytes += len(igzip.compress(data, compresslevel=1))
        for batch in batches:
            self.written_records += len(batch)
            if self.keep:
                stored = self.records[batch.partition]
                stored.extend(zip((batch.position(i) for i in range(len(batch))), batch.payloads, strict=True))
        self.writes += 1
        return []

    def payloads(self) -> list[bytes]:
        return [p for items in self.records.values() for _, p in items]


class MemoryDeadLetter(DeadLetterQueue):
    Options = BufferOptions
    instances: ClassVar[list[MemoryDeadLetter]] = []

    def __init__(self, options: BufferOptions | None = None, env: PluginEnv | None = None) -> None:
        super().__init__(options or BufferOptions())
        self.entries: list[dict[str, Any]] = []
        MemoryDeadLetter.instances.append(self)

    async def write_entries(self, failures: list[Failure]) -> None:
        for failure in failures:
            self.entries.extend(entries(failure, self.pipeline))
