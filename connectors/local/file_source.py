"""``file``: NDJSON files as a source; each file is a partition and positions are line numbers."""

from __future__ import annotations

import asyncio
import glob
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from streamkit.batch import Partition, RecordBatch
from streamkit.checkpoint import CheckpointStore
from streamkit.config import PositiveInt
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.share import process_share
from streamkit.source import PartitionHost, PartitionReader, Source, SourceBatch


class FileSourceOptions(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    """A file or a glob pattern (``data/*.ndjson``); relative to the pipeline file."""
    batch_size: PositiveInt = 1000


class FileReader(PartitionReader):
    def __init__(self, partition: Partition, path: Path, batch_size: int, skip: int) -> None:
        super().__init__(partition)
        self.path = path
        self.batch_size = batch_size
        self.skip = skip

    def _read_lines(self) -> list[tuple[int, bytes]]:
        with open(self.path, "rb") as fh:
            return [(n, line.rstrip(b"\r\n")) for n, line in enumerate(fh) if n >= self.skip and line.strip()]

    async def batches(self) -> AsyncIterator[SourceBatch]:
        lines = await asyncio.to_thread(self._read_lines)
        for start in range(0, len(lines), self.batch_size):
            if self.stopping.is_set():
                return
            chunk = lines[start : start + self.batch_size]
            batch = RecordBatch(self.partition, payloads=[line for _, line in chunk])
            yield SourceBatch(batch, [n for n, _ in chunk])


class FileSource(Source):
    Options = FileSourceOptions

    def __init__(self, options: FileSourceOptions, env: PluginEnv) -> None:
        pattern = str(env.path(options.path))
        self.files = sorted(Path(p) for p in glob.glob(pattern))
        if not self.files:
            raise ConfigError("source.path", f"no file matches {pattern}")
        self.batch_size = options.batch_size
        self.name = "file"
        self._store: CheckpointStore | None = None

    @property
    def finite(self) -> bool:
        return True

    async def start(self, store: CheckpointStore) -> None:
        self._store = store

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        assert self._store is not None
        share = process_share()
        for number, path in enumerate(self.files):
            if not share.owns(number):
                continue
            partition = Partition(self.name, str(path))
            saved = await self._store.load(partition)
            skip = int(saved) + 1 if saved is not None else 0
            await host.assign(FileReader(partition, path, self.batch_size, skip))
