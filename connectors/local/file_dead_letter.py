"""``file`` dead-letter store: NDJSON entries (see :mod:`streamkit.deadletter`) in a directory."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from pathlib import Path

from streamkit.deadletter import DeadLetterQueue, encode_entries
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Failure
from streamkit.sink import BufferOptions


class FileDeadLetterOptions(BufferOptions, forbid_unknown_fields=True):
    path: str = "dead-letter"


class FileDeadLetter(DeadLetterQueue):
    Options = FileDeadLetterOptions

    def __init__(self, options: FileDeadLetterOptions, env: PluginEnv) -> None:
        super().__init__(options)
        self.directory: Path = env.path(options.path)
        self._counter = itertools.count()
        self._run_id = uuid.uuid4().hex[:8]

    async def start(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("dead_letter.path", f"cannot create {self.directory}: {exc}") from None

    async def write_entries(self, failures: list[Failure]) -> None:
        data = encode_entries(failures, self.pipeline)
        await asyncio.to_thread(self._write_file, data)

    def _write_file(self, data: bytes) -> None:
        name = f"dead-letter-{time.time_ns()}-{self._run_id}-{next(self._counter):06d}.ndjson"
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
