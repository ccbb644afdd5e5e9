"""The dead-letter queue: records that cannot be processed or written, kept with the reason.

Every dead-letter store writes the same entry, one JSON object per line, so any of them is readable with
``jq``, DuckDB or Athena: where the record came from (source, partition, position), which stage failed and
why, how many attempts were made, and the original payload (base64, plus the text when it is UTF-8).
A dead-lettered record counts as finished for checkpoints only once the entry is written.
"""

from __future__ import annotations

import base64
import datetime as dt
from abc import abstractmethod
from typing import Any

import orjson

from streamkit.batch import Partition
from streamkit.processor import Failure
from streamkit.sink import BufferedWriter, BufferOptions


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _key(key: Any) -> Any:
    if isinstance(key, bytes):
        return _text(key) or base64.b64encode(key).decode("ascii")
    return key


def entries(failure: Failure, pipeline: str) -> list[dict[str, Any]]:
    """The dead-letter entries of a failure, one per record."""
    batch = failure.batch
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    keys = batch.keys
    out = []
    for i, payload in enumerate(batch.payloads):
        out.append(
            {
                "pipeline": pipeline,
                "source": batch.partition.source,
                "partition": batch.partition.key,
                "position": str(batch.position(i)),
                "key": _key(keys[i]) if keys is not None else None,
                "stage": failure.stage,
                "reason": failure.reason,
                "attempts": failure.attempts,
                "failed_at": now,
                "payload_base64": base64.b64encode(payload).decode("ascii"),
                "payload_text": _text(payload),
            }
        )
    return out


def encode_entries(failures: list[Failure], pipeline: str) -> bytes:
    """NDJSON of the entries of several failures."""
    lines = [orjson.dumps(e) for f in failures for e in entries(f, pipeline)]
    return b"\n".join(lines) + b"\n" if lines else b""


class DeadLetterQueue(BufferedWriter[Failure]):
    """Base of dead-letter stores: buffered like a sink, acknowledging the original records once written."""

    Options: type[BufferOptions] = BufferOptions
    pipeline: str = "pipeline"
    written = 0

    def measure(self, item: Failure) -> tuple[int, int]:
        return len(item.batch), item.batch.total_bytes()

    def partition_of(self, item: Failure) -> Partition:
        return item.batch.partition

    async def start(self) -> None:
        """Open clients; errors fail start-up."""

    async def submit(self, failure: Failure) -> None:
        await self.add(failure)

    async def close(self) -> None:
        """Release clients after the final flush."""

    async def write_items(self, items: list[Failure]) -> None:
        await self.write_entries(items)
        for failure in items:
            batch = failure.batch
            if batch.ticket is not None:
                batch.ticket.ack(batch.origin, batch.origin_unique)
            self.written += len(batch)

    @abstractmethod
    async def write_entries(self, failures: list[Failure]) -> None:
        """Store the entries durably (see :func:`encode_entries`); raise if that is impossible."""
