"""Checkpoint stores: where the acknowledged position of every partition is kept.

The runtime writes a partition's checkpoint periodically and on shutdown or hand-off, never per record. A
checkpoint is an opaque string chosen by the source (a Kinesis sequence number, a Kafka offset). Sources
that own their checkpoints (the Kinesis lease table, Kafka's committed offsets) provide their own store.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from abc import ABC, abstractmethod

import msgspec
import orjson

from streamkit.batch import Partition
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv


class CheckpointStore(ABC):
    """Load and save the checkpoint of each partition."""

    async def start(self) -> None:
        """Open connections; errors fail start-up."""

    @abstractmethod
    async def load(self, partition: Partition) -> str | None:
        """The saved checkpoint, or None when the partition was never checkpointed."""

    @abstractmethod
    async def save(self, partition: Partition, checkpoint: str) -> None:
        """Persist a checkpoint. Raise CheckpointRejected when this worker may no longer write it, and
        CheckpointDeferred when it cannot be written now but may be later (the runtime tries again)."""

    async def close(self) -> None:
        """Flush and release."""


class MemoryCheckpointStore(CheckpointStore):
    """Checkpoints in a dict: for tests, benchmarks and Lambda (where the event source mapping checkpoints)."""

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        pass

    def __init__(self, options: Options | None = None, env: PluginEnv | None = None) -> None:
        self.saved: dict[Partition, str] = {}
        self.writes = 0

    async def load(self, partition: Partition) -> str | None:
        return self.saved.get(partition)

    async def save(self, partition: Partition, checkpoint: str) -> None:
        self.saved[partition] = checkpoint
        self.writes += 1


class FileCheckpointStore(CheckpointStore):
    """Checkpoints in one JSON file, replaced atomically (write, fsync, rename) on every save."""

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        path: str
        """The JSON file; relative paths are relative to the pipeline file."""

    def __init__(self, options: Options, env: PluginEnv) -> None:
        self.path = env.path(options.path)
        self._data: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self.writes = 0

    @staticmethod
    def _key(partition: Partition) -> str:
        return f"{partition.source}/{partition.key}"

    async def start(self) -> None:
        if self.path.exists():
            try:
                loaded = orjson.loads(self.path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise ConfigError("checkpoint.path", f"{self.path} is not a checkpoint file: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError("checkpoint.path", f"{self.path} is not a checkpoint file (expected an object)")
            self._data = {str(k): str(v) for k, v in loaded.items()}
        elif not self.path.parent.exists():
            raise ConfigError("checkpoint.path", f"directory {self.path.parent} does not exist")

    async def load(self, partition: Partition) -> str | None:
        return self._data.get(self._key(partition))

    async def save(self, partition: Partition, checkpoint: str) -> None:
        async with self._lock:
            self._data[self._key(partition)] = checkpoint
            await asyncio.to_thread(self._replace, self._key(partition), checkpoint)
            self.writes += 1

    def _replace(self, key: str, checkpoint: str) -> None:
        # Several processes (`streamkit run --processes N`) may share the file, each owning other partitions:
        # under an exclusive lock, merge this one key into what is on disk now, so no process's write undoes
        # another's.
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Only this store's atomic renames write the file, so what is there parses (start() checked it).
            current = orjson.loads(self.path.read_bytes()) if self.path.exists() else {}
            merged = {**current, key: checkpoint}
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(merged, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
