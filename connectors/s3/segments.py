"""Segments: how the S3 sink cuts each source partition's records into objects, without any I/O.

This is the rule of docs/s3-objects.md ("Proposed rule: segments"), as built:

- Each source partition (shard, topic-partition) has one open :class:`Segment`. A segment holds one
  object per Hive partition its records fall in; all of them close together.
- Records are fed to the writers in slices of ``slice_records`` counted from the segment start, whatever
  the fetch batches were: records wait in ``pending`` until a slice is full. So the writers see the same
  calls, and produce the same sizes, on a replay as on the first run.
- After each slice the *deterministic* triggers are checked: the segment's record count reaches
  ``max_records``, or an object's encoded size reaches ``max_bytes``. A segment also never spans two
  windows of ``window_ms`` of the records' *arrival* time (stored in the stream, so a replay sees the same
  values); it is cut before the first record of a later window.
- An object whose encoded size reaches ``stream_threshold`` at a slice end gets an *anchor*: the position
  of its last record at that point. The sink then streams it as a multipart upload under the key
  ``first..anchor`` (its end is not known yet); docs/sinks-s3.md explains why that stays replay-safe.
- Everything else (age, memory pressure, flush at shutdown or hand-off) is a *forced* cut, made by the
  sink through :meth:`ShardSegments.cut`.

The segment keeps what is needed to acknowledge its records once every object is durable (the tickets
and origins, not the payloads), and the records that failed to encode, for the dead-letter queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamkit.acks import AckTicket
from streamkit.batch import BatchError, Partition, RecordBatch
from streamkit.connectors.s3.formats import ObjectWriter, RecordEncodeError
from streamkit.connectors.s3.keys import Partitioner
from streamkit.errors import SinkError
from streamkit.sink import Rejected

__all__ = ["AckPiece", "OpenObject", "Segment", "SegmentRules", "ShardSegments"]


@dataclass(frozen=True, slots=True)
class SegmentRules:
    """The deterministic cutting rules (every field changes where objects end: keep them stable)."""

    max_records: int
    max_bytes: int
    """Encoded (compressed) bytes of one object."""
    slice_records: int = 500
    window_ms: int = 0
    """Arrival-time window a segment may not leave (0: none)."""
    stream_threshold: int | None = None
    """Encoded bytes from which an object is streamed as a multipart upload (None: never)."""
    use_values: bool = False
    """Feed decoded values to the writers when every record of a call has them (Avro, Parquet)."""
    object_overhead: int = 0
    """Memory an open object takes besides its bytes (compressor state, Arrow buffers), for the budget."""


@dataclass(eq=False, slots=True)
class OpenObject:
    """One object of a segment: the records of one Hive partition."""

    partition: str
    writer: ObjectWriter
    overhead: int = 0
    first: Any = None
    last: Any = None
    records: int = 0
    anchor: Any = None
    """Position of the last record when the object reached the streaming threshold (None: not yet)."""
    uploaded: int = 0
    """Bytes handed to S3 as multipart parts (they no longer take memory)."""
    upload: Any = None
    """The sink's multipart upload while streaming."""
    fallback: bool = False
    """The anchored key existed already (a replay): keep the bytes, decide at the end (see the sink)."""
    done: bool = False
    """Written (or given up): it holds no memory any more."""

    @property
    def buffered(self) -> int:
        """Encoded bytes held in memory (an estimate while data is still inside the compressor)."""
        return 0 if self.done else self.overhead + max(0, self.writer.encoded_bytes - self.uploaded)


@dataclass(frozen=True, slots=True)
class AckPiece:
    """Records to acknowledge once the segment is durable: a ticket and the origins within it."""

    partition: Partition
    ticket: AckTicket | None
    origin: npt.NDArray[np.int64]
    unique: bool

    def batch(self) -> RecordBatch:
        """A payload-free batch carrying only what ``Sink.acknowledge`` reads."""
        n = len(self.origin)
        return RecordBatch(
            self.partition,
            payloads=None,
            values=[None] * n,
            origin=self.origin,
            origin_unique=self.unique,
            ticket=self.ticket,
        )


@dataclass(eq=False)
class Segment:
    """Consecutive records of one source partition, written as one object per Hive partition."""

    partition: Partition
    number: int
    opened: float = field(default_factory=time.monotonic)
    window: int | None = None
    records: int = 0
    """Records fed to the writers."""
    pending: list[RecordBatch] = field(default_factory=list)
    pending_records: int = 0
    pending_bytes: int = 0
    raw_bytes: int = 0
    """Source bytes of the records held (what the runtime counts as in flight until acknowledged)."""
    objects: dict[str, OpenObject] = field(default_factory=dict)
    acks: list[AckPiece] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    forced: bool = False
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.records == 0 and self.pending_records == 0

    @property
    def buffered(self) -> int:
        return self.pending_bytes + sum(o.buffered for o in self.objects.values())


def raw_bytes(batch: RecordBatch) -> int:
    """The source bytes behind ``batch``'s records, as the runtime counted them when fetching."""
    ticket = batch.ticket
    if ticket is not None and len(ticket):
        return int(ticket.nbytes * len(batch) / len(ticket))
    return batch.total_bytes() if batch.has_payloads else 0


class ShardSegments:
    """The open segment of one source partition, and the cutting rules applied to it."""

    def __init__(
        self,
        partition: Partition,
        rules: SegmentRules,
        partitioner: Partitioner,
        new_writer: Callable[[], ObjectWriter],
    ) -> None:
        self.partition = partition
        self.rules = rules
        self.partitioner = partitioner
        self.new_writer = new_writer
        self.segment: Segment | None = None
        self._numbers = 0

    def current(self) -> Segment:
        if self.segment is None:
            self._numbers += 1
            self.segment = Segment(self.partition, self._numbers)
        return self.segment

    # -- adding records --------------------------------------------------------------------------
    def add(self, batch: RecordBatch) -> list[Segment]:
        """Take the records of ``batch``; return the segments the deterministic triggers closed."""
        closed: list[Segment] = []
        rest = batch
        while len(rest):
            segment = self.current()
            limit = self._window_limit(segment, rest)
            if limit == 0 and not segment.empty:
                closed.append(self._close(forced=False, reason="window"))
                continue
            room = self._slice_size(segment) - segment.pending_records
            take = max(1, min(limit, room))
            piece, rest = rest.slice(0, take), rest.slice(take, len(rest))
            self._hold(segment, piece)
            if segment.pending_records == self._slice_size(segment):
                self._feed(segment)
                reason = self._full(segment)
                if reason:
                    closed.append(self._close(forced=False, reason=reason))
                    continue
                self._anchor(segment)
            if take == limit and len(rest):
                closed.append(self._close(forced=False, reason="window"))
        return closed

    def cut(self, reason: str) -> Segment | None:
        """Close the open segment now (a forced cut), with its pending records."""
        if self.segment is None or self.segment.empty:
            return None
        return self._close(forced=True, reason=reason)

    def _slice_size(self, segment: Segment) -> int:
        return min(self.rules.slice_records, self.rules.max_records - segment.records)

    def _full(self, segment: Segment) -> str:
        if segment.records >= self.rules.max_records:
            return "max_records"
        if any(o.writer.encoded_bytes >= self.rules.max_bytes for o in segment.objects.values()):
            return "max_bytes"
        return ""

    def _window_limit(self, segment: Segment, batch: RecordBatch) -> int:
        """How many leading records of ``batch`` belong to ``segment``'s arrival window."""
        width = self.rules.window_ms
        if width <= 0:
            return len(batch)
        arrival = batch.arrival_ms
        valid = arrival >= 0  # a missing arrival time (-1) never cuts
        windows = arrival // width
        window = segment.window
        if window is None:
            first = np.flatnonzero(valid)
            if not len(first):
                return len(batch)
            window = int(windows[first[0]])
        later = np.flatnonzero(valid & (windows > window))
        return int(later[0]) if len(later) else len(batch)

    def _hold(self, segment: Segment, piece: RecordBatch) -> None:
        if segment.window is None and self.rules.window_ms > 0:
            valid = np.flatnonzero(piece.arrival_ms >= 0)
            if len(valid):
                segment.window = int(piece.arrival_ms[valid[0]] // self.rules.window_ms)
        nbytes = raw_bytes(piece)
        segment.pending.append(piece)
        segment.pending_records += len(piece)
        segment.pending_bytes += nbytes
        segment.raw_bytes += nbytes

    def _anchor(self, segment: Segment) -> None:
        threshold = self.rules.stream_threshold
        if threshold is None:
            return
        for obj in segment.objects.values():
            if obj.anchor is None and obj.records and obj.writer.encoded_bytes >= threshold:
                obj.anchor = obj.last

    def _close(self, *, forced: bool, reason: str) -> Segment:
        segment = self.current()
        if segment.pending:
            self._feed(segment)
        segment.forced = forced
        segment.reason = reason
        self.segment = None
        return segment

    # -- feeding the writers ---------------------------------------------------------------------
    def _feed(self, segment: Segment) -> None:
        """Write one slice (the pending records) into the segment's objects: one call per object."""
        pieces = segment.pending
        segment.pending = []
        segment.records += segment.pending_records
        segment.pending_records = segment.pending_bytes = 0
        groups: dict[str, list[tuple[int, npt.NDArray[np.intp]]]] = {}
        for number, piece in enumerate(pieces):
            for hive, indexes in self._group(piece).items():
                groups.setdefault(hive, []).append((number, indexes))
        failed: list[dict[int, str]] = [{} for _ in pieces]
        for hive, members in groups.items():
            obj = segment.objects.get(hive)
            if obj is None:
                obj = segment.objects[hive] = OpenObject(hive, self.new_writer(), self.rules.object_overhead)
            self._write(obj, pieces, members, failed)
        for piece, failures in zip(pieces, failed, strict=True):
            self._settle(segment, piece, failures)

    def _group(self, piece: RecordBatch) -> dict[str, npt.NDArray[np.intp]]:
        partitioner = self.partitioner
        # Event time when a processor set it (``timestamp``), else the arrival time. Always passed: it
        # also tells the partitioner how many records there are when the template has no placeholder.
        times = piece.event_ms if piece.event_ms is not None else piece.arrival_ms
        values = None
        if partitioner.fields:
            try:
                values = piece.values
            except BatchError as exc:
                raise SinkError(
                    f"the S3 partition_template reads fields {list(partitioner.fields)}, but the records of "
                    f"{piece.partition} are not decoded: put a decoder (json.decode) before the sink"
                ) from exc
        return partitioner.group(times, values)

    def _write(
        self,
        obj: OpenObject,
        pieces: Sequence[RecordBatch],
        members: list[tuple[int, npt.NDArray[np.intp]]],
        failed: list[dict[int, str]],
    ) -> None:
        use_values = self.rules.use_values and all(pieces[n].decoded for n, _ in members)
        items: list[Any] = []
        for number, indexes in members:
            source = pieces[number].values if use_values else pieces[number].payloads
            if len(indexes) == len(source):  # the whole piece (the common case): no per-record lookup
                items.extend(source)
            else:
                items.extend([source[i] for i in indexes.tolist()])
        # Where item k of the call came from: member m covers items offsets[m] .. offsets[m + 1] - 1.
        offsets = np.cumsum([0, *(len(indexes) for _, indexes in members)])

        def owner(k: int) -> tuple[int, int]:
            m = int(np.searchsorted(offsets, k, side="right")) - 1
            number, indexes = members[m]
            return number, int(indexes[k - offsets[m]])

        bad: set[int] = set()
        try:
            if use_values:
                obj.writer.write_values(items)
            else:
                obj.writer.write_payloads(items)
        except RecordEncodeError as error:
            for failure in error.failures:
                number, i = owner(failure.index)
                failed[number][i] = failure.reason
                bad.add(failure.index)
        written = [k for k in range(len(items)) if k not in bad] if bad else range(len(items))
        if not written:
            return
        first_number, first_index = owner(written[0])
        last_number, last_index = owner(written[-1])
        if obj.first is None:
            obj.first = pieces[first_number].position(first_index)
        obj.last = pieces[last_number].position(last_index)
        obj.records += len(written)

    @staticmethod
    def _settle(segment: Segment, piece: RecordBatch, failures: dict[int, str]) -> None:
        """Remember how to acknowledge ``piece``'s written records, and which ones go to the dead letters."""
        origin = piece.origin
        if failures:
            keep = np.ones(len(piece), dtype=np.bool_)
            keep[list(failures)] = False
            origin = origin[keep]
            by_reason: dict[str, list[int]] = {}
            for index, reason in sorted(failures.items()):
                by_reason.setdefault(reason, []).append(index)
            for reason, indexes in by_reason.items():
                segment.rejects.append(Rejected(piece.take(indexes), reason))
        if len(origin):
            segment.acks.append(AckPiece(piece.partition, piece.ticket, origin, piece.origin_unique))
