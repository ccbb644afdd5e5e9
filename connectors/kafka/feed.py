"""The hand-over between the consumer thread and one partition's reader on the event loop.

The consumer thread cuts every fetched message batch into runs of one topic-partition and delivers each
run as a :class:`Chunk` of columns (payloads, offsets, keys, headers, timestamps) to that partition's
:class:`PartitionFeed`. The feed lives on the event loop: the thread never touches it directly but
schedules :meth:`PartitionFeed.push` with ``call_soon_threadsafe``, once per fetch, so no lock is needed
and order is preserved. The reader takes whole chunks and turns them into one :class:`RecordBatch`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from streamkit.batch import Header, Partition, RecordBatch

TopicPartitionKey = tuple[str, int]
"""(topic, partition number): how the consumer thread names a partition."""

_timestamp_value = itemgetter(1)


class Chunk(NamedTuple):
    """Consecutive messages of one partition, as columns."""

    payloads: list[bytes]
    offsets: Sequence[int]
    """A ``range`` when the offsets are consecutive (the common case), else a list."""
    keys: list[bytes | None]
    headers: list[list[Header] | None]
    timestamps: list[tuple[int, int]]
    """confluent-kafka's (timestamp type, milliseconds) per message."""
    nbytes: int


class PartitionFeed:
    """Chunks of one assigned partition waiting for its reader. Used on the event loop only (see module)."""

    def __init__(self, key: TopicPartitionKey, partition: Partition) -> None:
        self.key = key
        self.partition = partition
        self.chunks: deque[Chunk] = deque()
        self._cursor = 0
        """Records of ``chunks[0]`` already taken (a big chunk is taken in slices, never re-copied)."""
        self.closed = False
        self.delivered_bytes = 0
        """Written by the consumer thread only."""
        self.taken_bytes = 0
        """Written by the event loop only (each counter has one writer, so no lock is needed)."""
        # Created on the consumer thread; asyncio.Event binds to a loop only when first awaited.
        self.ready = asyncio.Event()

    def push(self, chunk: Chunk) -> None:
        if not self.closed:
            self.chunks.append(chunk)
            self.ready.set()

    def close(self) -> None:
        """The partition was revoked: what is still queued is dropped (the next owner reads it again)."""
        self.closed = True
        self.chunks.clear()
        self._cursor = 0
        self.ready.set()

    def take(self, max_records: int) -> list[Chunk]:
        """Chunks with ``max_records`` records in all, or fewer when fewer are queued (the last one taken
        may be the head of a chunk whose tail stays queued)."""
        taken: list[Chunk] = []
        count = 0
        while self.chunks and count < max_records:
            chunk, start = self.chunks[0], self._cursor
            end = min(len(chunk.offsets), start + max_records - count)
            if end == len(chunk.offsets):
                self.chunks.popleft()
                self._cursor = 0
            else:
                self._cursor = end
            if start or end < len(chunk.offsets):
                chunk = _slice(chunk, start, end)
            taken.append(chunk)
            count += end - start
        return taken


class Backlog:
    """Bytes delivered to the feeds and not yet taken by their readers, against the ``buffer`` limit.

    The consumer thread adds what it delivers, the readers (on the event loop) add what they take; each
    counter has a single writer. When the backlog is over the limit the thread sleeps until it is down to
    half (or a command arrives): waking it per taken batch would hand the GIL back and forth and cost the
    event loop ~20% of its throughput, measured.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.delivered = 0
        self.dropped = 0
        """Delivered to feeds of revoked partitions and never taken (consumer thread only)."""
        self.taken = 0
        self.waiting = False
        self.wake = threading.Event()

    @property
    def held(self) -> int:
        return self.delivered - self.dropped - self.taken

    def note_taken(self, feed: PartitionFeed, nbytes: int) -> None:
        """A reader took ``nbytes`` out of ``feed`` (on the event loop)."""
        feed.taken_bytes += nbytes
        self.taken += nbytes
        if self.waiting and self.held <= self.limit // 2:
            self.wake.set()


def _slice(chunk: Chunk, start: int, end: int) -> Chunk:
    """Records ``[start, end)`` of ``chunk``. Its bytes are shared out in proportion to the records: the count
    only feeds the buffer's accounting, which must add up (the slices of a chunk sum to its bytes), not be
    exact; measuring would cost ~20 ns a record."""
    n = len(chunk.offsets)
    nbytes = chunk.nbytes * end // n - chunk.nbytes * start // n
    return Chunk(chunk.payloads[start:end], chunk.offsets[start:end], chunk.keys[start:end],
                 chunk.headers[start:end], chunk.timestamps[start:end], nbytes)  # fmt: skip


def to_batch(partition: Partition, chunks: list[Chunk]) -> tuple[RecordBatch, Sequence[int], int]:
    """One record batch from ``chunks``: (batch, offsets as positions, payload bytes)."""
    if len(chunks) == 1:
        payloads, offsets, keys, headers, timestamps, nbytes = chunks[0]
    else:
        payloads = list(chain.from_iterable(c.payloads for c in chunks))
        offsets = _join_offsets([c.offsets for c in chunks])
        keys = list(chain.from_iterable(c.keys for c in chunks))
        headers = list(chain.from_iterable(c.headers for c in chunks))
        timestamps = list(chain.from_iterable(c.timestamps for c in chunks))
        nbytes = sum(c.nbytes for c in chunks)
    n = len(payloads)
    arrival = np.fromiter(map(_timestamp_value, timestamps), dtype=np.int64, count=n)
    # Columns that are empty for every record are left out: processors and sinks then skip them. Counting
    # None is only fast on a list of Nones (identity), so a column whose first value is set is kept as is.
    batch_keys: list[Any] | None = None if keys[0] is None and keys.count(None) == n else keys
    batch_headers = None if headers[0] is None and headers.count(None) == n else headers
    batch = RecordBatch(partition, payloads=payloads, keys=batch_keys, arrival_ms=arrival, headers=batch_headers)
    return batch, offsets, nbytes


def _join_offsets(parts: list[Sequence[int]]) -> Sequence[int]:
    """One sequence of offsets; still a range when the parts are consecutive ranges."""
    if all(type(p) is range for p in parts) and all(a[-1] + 1 == b[0] for a, b in pairwise(parts)):
        return range(parts[0][0], parts[-1][-1] + 1)
    return list(chain.from_iterable(parts))
