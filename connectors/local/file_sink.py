"""``file``: NDJSON files in a directory, one file per write, optionally gzip-compressed.

Each write is atomic (a temporary file, fsync, rename), and records are acknowledged only after the
rename, so a crash leaves either a whole file or none.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from isal import igzip

from streamkit.batch import RecordBatch, concat_payloads
from streamkit.config import PositiveInt, PositiveSeconds, Size
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.sink import BufferedSink, BufferOptions, Rejection


class FileSinkOptions(BufferOptions, forbid_unknown_fields=True):
    path: str = "output"
    compression: Literal["none", "gzip"] = "none"
    max_records: PositiveInt = 10_000
    max_bytes: Size = Size(16 * 1024**2)
    max_age_s: PositiveSeconds = 5.0


class FileSink(BufferedSink):
    Options = FileSinkOptions
    keeps_values = False

    def __init__(self, options: FileSinkOptions, env: PluginEnv) -> None:
        super().__init__(options)
        self.directory: Path = env.path(options.path)
        self.compression = options.compression
        self._counter = itertools.count()
        self._run_id = uuid.uuid4().hex[:8]
        self.files_written = 0

    async def start(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"sinks[{self.name}].path", f"cannot create {self.directory}: {exc}") from None

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        payloads = concat_payloads(batches)
        if not payloads:
            return []
        await asyncio.to_thread(self._write_file, payloads)
        return []

    def _write_file(self, payloads: list[bytes]) -> None:
        data = b"\n".join(payloads) + b"\n"
        suffix = ".ndjson"
        if self.compression == "gzip":
            data = igzip.compress(data, compresslevel=1)
            suffix += ".gz"
        name = f"part-{time.time_ns()}-{self._run_id}-{next(self._counter):06d}{suffix}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self.files_written += 1
