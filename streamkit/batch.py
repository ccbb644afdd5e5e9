"""The record batch: the records of one source partition, in order, with metadata in arrays.

A batch is the unit of work everywhere in streamkit. Per-record metadata that the runtime computes over
(sizes, timestamps, where each record came from) lives in numpy arrays so that filtering, splitting into
service requests and byte accounting are vector operations. Payloads stay ``bytes`` until a processor
asks for decoded values, and a batch whose values were never changed keeps serving its original bytes, so
routing bytes never builds Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamkit.json_bytes import dumps_all

# Partition and the array aliases live in a leaf module that acks.py imports too (no acks <-> batch
# cycle); the explicit aliases re-export them, so `from streamkit.batch import Partition` keeps working.
from streamkit.partition import BoolArray as BoolArray
from streamkit.partition import Int64Array as Int64Array
from streamkit.partition import Partition as Partition

if TYPE_CHECKING:
    from streamkit.acks import AckTicket

Header = tuple[str, bytes | None]


class BatchError(Exception):
    """A batch was used in a way its state does not allow (for example values read before decoding)."""


def sizes_of(payloads: Sequence[bytes]) -> Int64Array:
    """Byte length of every payload, as an int64 array."""
    return np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))


def chunk_bounds(sizes: Int64Array, max_records: int, max_bytes: int, overhead: int = 0) -> list[tuple[int, int]]:
    """Cut ``sizes`` into consecutive ``[start, end)`` runs of at most ``max_records`` and ``max_bytes``.

    ``overhead`` is added per record (a delimiter, a request envelope). A single record larger than
    ``max_bytes`` gets a run of its own; callers reject oversize records before sending.
    """
    n = len(sizes)
    if n == 0:
        return []
    if max_records < 1 or max_bytes < 1:
        raise ValueError("max_records and max_bytes must be positive")
    cumulative = np.cumsum(sizes + overhead, dtype=np.int64)
    bounds: list[tuple[int, int]] = []
    start = 0
    base = 0
    while start < n:
        # The furthest end whose bytes fit; searchsorted finds it in O(log n) instead of a Python loop.
        end = int(np.searchsorted(cumulative, base + max_bytes, side="right"))
        end = min(max(end, start + 1), start + max_records, n)
        bounds.append((start, end))
        base = int(cumulative[end - 1])
        start = end
    return bounds


def occurrence_rank(keys: Int64Array) -> Int64Array:
    """For each element, how many earlier elements have the same key (0 for the first of each key).

    A stable sort groups equal keys in their original order; the rank is the distance from the start of
    the group. O(n log n) in numpy instead of a Python dict walk.
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = ordered[1:] != ordered[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


@dataclass(slots=True)
class Record:
    """A view of one record, for per-record processor functions (the convenience path, not the hot path)."""

    value: Any
    key: str | bytes | None
    partition: Partition
    position: Any
    arrival_ms: int
    event_ms: int | None
    headers: list[Header] | None


class RecordBatch:
    """Records of one partition in order. Treat as immutable: operations return new batches.

    ``origin[i]`` is the index of the source record that record ``i`` came from, inside the batch's
    acknowledgement ticket; a processor that splits one record into several repeats its origin. That is how
    an acknowledgement from any sink finds its way back to the source position.
    """

    __slots__ = (
        "_payloads",
        "_values",
        "_values_on_demand",
        "arrival_ms",
        "event_ms",
        "headers",
        "keys",
        "origin",
        "origin_unique",
        "partition",
        "ticket",
    )

    def __init__(
        self,
        partition: Partition,
        *,
        payloads: list[bytes] | None,
        values: list[Any] | None = None,
        keys: list[Any] | None = None,
        arrival_ms: Int64Array | None = None,
        event_ms: Int64Array | None = None,
        headers: list[list[Header] | None] | None = None,
        origin: Int64Array | None = None,
        origin_unique: bool = True,
        ticket: AckTicket | None = None,
        values_on_demand: bool = False,
    ) -> None:
        if payloads is None and values is None:
            raise BatchError(f"a batch of {partition} needs payloads or values")
        n = len(payloads) if payloads is not None else len(values or ())
        self.partition = partition
        self._payloads = payloads
        self._values = values
        self.keys = keys
        self.arrival_ms = arrival_ms if arrival_ms is not None else np.zeros(n, dtype=np.int64)
        self.event_ms = event_ms
        self.headers = headers
        self.origin = origin if origin is not None else np.arange(n, dtype=np.int64)
        self.origin_unique = origin_unique
        self.ticket = ticket
        self._values_on_demand = values_on_demand and values is None and payloads is not None
        """The values are what the payloads decode to as JSON, decoded on first use (see with_values_on_demand)."""

    # -- contents --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.origin)

    def __repr__(self) -> str:
        return f"RecordBatch({self.partition}, {len(self)} records)"

    @property
    def decoded(self) -> bool:
        return self._values is not None or self._values_on_demand

    @property
    def values(self) -> list[Any]:
        """Decoded records. Raises unless a decoder (for example ``json.decode``) ran earlier."""
        if self._values is None and self._values_on_demand:
            loads = orjson.loads
            self._values = [loads(p) for p in self.payloads]
        if self._values is None:
            raise BatchError(
                f"records of {self.partition} are not decoded yet: put a decoder such as json.decode "
                "before processors that read fields"
            )
        return self._values

    @property
    def payloads(self) -> list[bytes]:
        """The records as bytes: the source bytes, or the values encoded as JSON if they were replaced."""
        if self._payloads is None:
            self._payloads = dumps_all(self.values)
        return self._payloads

    @property
    def has_payloads(self) -> bool:
        """True when bytes are at hand without encoding (source bytes, or an encoder ran)."""
        return self._payloads is not None

    @property
    def payloads_held(self) -> list[bytes] | None:
        """The payload list if the batch holds one (no encoding), else None: for measuring memory."""
        return self._payloads

    @property
    def values_held(self) -> list[Any] | None:
        """The decoded values if the batch holds them, else None: for measuring memory."""
        return self._values

    def encoded(self) -> RecordBatch:
        """The same records as payload bytes only (encoding values if needed), decoded values released.

        What a sink that writes bytes keeps until its write: a buffer of these holds no dicts alive.
        """
        if self._values is None and not self._values_on_demand:
            return self
        return self._bytes_only(values_on_demand=False)

    def _bytes_only(self, *, values_on_demand: bool) -> RecordBatch:
        """The same records with their payload bytes and no decoded values held."""
        return self._derive(
            payloads=self.payloads,
            values=None,
            keys=self.keys,
            arrival_ms=self.arrival_ms,
            event_ms=self.event_ms,
            headers=self.headers,
            origin=self.origin,
            origin_unique=self.origin_unique,
            values_on_demand=values_on_demand,
        )

    def sizes(self) -> Int64Array:
        """Byte size of every record's payload (encoding values first if needed)."""
        return sizes_of(self.payloads)

    def total_bytes(self) -> int:
        # Summed in one C-level pass: faster than building the sizes array for a batch of ~1,000.
        return sum(map(len, self.payloads))

    def position(self, index: int) -> Any:
        """The source position that record ``index`` came from."""
        if self.ticket is None:
            return int(self.origin[index])
        return self.ticket.positions[int(self.origin[index])]

    def records(self) -> Iterator[Record]:
        """Per-record views (slow path: builds an object per record)."""
        values = self.values if self.decoded else self.payloads
        keys = self.keys
        headers = self.headers
        event = self.event_ms
        for i in range(len(self)):
            yield Record(
                value=values[i],
                key=keys[i] if keys is not None else None,
                partition=self.partition,
                position=self.position(i),
                arrival_ms=int(self.arrival_ms[i]),
                event_ms=int(event[i]) if event is not None else None,
                headers=headers[i] if headers is not None else None,
            )

    # -- derived batches -------------------------------------------------------------------------
    def _derive(
        self,
        *,
        payloads: list[bytes] | None,
        values: list[Any] | None,
        keys: list[Any] | None,
        arrival_ms: Int64Array,
        event_ms: Int64Array | None,
        headers: list[list[Header] | None] | None,
        origin: Int64Array,
        origin_unique: bool,
        values_on_demand: bool = False,
    ) -> RecordBatch:
        return RecordBatch(
            self.partition,
            payloads=payloads,
            values=values,
            keys=keys,
            arrival_ms=arrival_ms,
            event_ms=event_ms,
            headers=headers,
            origin=origin,
            origin_unique=origin_unique,
            ticket=self.ticket,
            values_on_demand=values_on_demand,
        )

    def with_values(self, values: list[Any], *, keep_payloads: bool = False) -> RecordBatch:
        """The same records with new decoded values (one per record).

        ``keep_payloads`` says the values are exactly what the payload bytes encode (a decoder, or a
        processor that only read them), so sinks can keep writing the original bytes.
        """
        if len(values) != len(self):
            raise BatchError(f"{len(values)} values for {len(self)} records of {self.partition}")
        return self._derive(
            payloads=self._payloads if keep_payloads else None,
            values=values,
            keys=self.keys,
            arrival_ms=self.arrival_ms,
            event_ms=self.event_ms,
            headers=self.headers,
            origin=self.origin,
            origin_unique=self.origin_unique,
        )

    def with_payloads(self, payloads: list[bytes], *, keep_values: bool = False) -> RecordBatch:
        """The same records with new bytes; decoded values are dropped unless they still match."""
        if len(payloads) != len(self):
            raise BatchError(f"{len(payloads)} payloads for {len(self)} records of {self.partition}")
        return self._derive(
            payloads=payloads,
            # Values decoded on demand come from the old payloads: decode them before those are replaced.
            values=(self.values if self._values_on_demand else self._values) if keep_values else None,
            keys=self.keys,
            arrival_ms=self.arrival_ms,
            event_ms=self.event_ms,
            headers=self.headers,
            origin=self.origin,
            origin_unique=self.origin_unique,
        )

    def with_event_ms(self, event_ms: Int64Array) -> RecordBatch:
        batch = self._derive(
            payloads=self._payloads,
            values=self._values,
            keys=self.keys,
            arrival_ms=self.arrival_ms,
            event_ms=event_ms,
            headers=self.headers,
            origin=self.origin,
            origin_unique=self.origin_unique,
            values_on_demand=self._values_on_demand,
        )
        return batch

    def with_values_on_demand(self) -> RecordBatch:
        """The same records whose values are decoded from the payloads (as JSON) only when first read.

        For a fused pass that decoded only some fields: its output keeps the source bytes, and whoever
        reads values later (a plugin, a sink's ``when:``, a Parquet writer) gets whole records, exactly as
        ``json.decode`` would have given them."""
        return self._bytes_only(values_on_demand=True)

    def select(self, mask: BoolArray | Sequence[bool]) -> RecordBatch:
        """The records where ``mask`` is true, in order (a vector operation on every column)."""
        m = np.asarray(mask, dtype=np.bool_)
        if len(m) != len(self):
            raise BatchError(f"mask of {len(m)} for {len(self)} records of {self.partition}")
        if m.all():
            return self
        flags = m.tolist()
        return self._derive(
            payloads=list(compress(self._payloads, flags)) if self._payloads is not None else None,
            values=list(compress(self._values, flags)) if self._values is not None else None,
            keys=list(compress(self.keys, flags)) if self.keys is not None else None,
            arrival_ms=self.arrival_ms[m],
            event_ms=self.event_ms[m] if self.event_ms is not None else None,
            headers=list(compress(self.headers, flags)) if self.headers is not None else None,
            origin=self.origin[m],
            origin_unique=self.origin_unique,
            values_on_demand=self._values_on_demand,
        )

    def slice(self, start: int, end: int) -> RecordBatch:
        """Records ``[start, end)``."""
        if start == 0 and end >= len(self):
            return self
        return self._derive(
            payloads=self._payloads[start:end] if self._payloads is not None else None,
            values=self._values[start:end] if self._values is not None else None,
            keys=self.keys[start:end] if self.keys is not None else None,
            arrival_ms=self.arrival_ms[start:end],
            event_ms=self.event_ms[start:end] if self.event_ms is not None else None,
            headers=self.headers[start:end] if self.headers is not None else None,
            origin=self.origin[start:end],
            origin_unique=self.origin_unique,
            values_on_demand=self._values_on_demand,
        )

    def take(self, indices: Sequence[int] | Int64Array) -> RecordBatch:
        """Records at ``indices`` (in the order given)."""
        idx = np.asarray(indices, dtype=np.int64)
        ids = idx.tolist()
        return self._derive(
            payloads=[self._payloads[i] for i in ids] if self._payloads is not None else None,
            values=[self._values[i] for i in ids] if self._values is not None else None,
            keys=[self.keys[i] for i in ids] if self.keys is not None else None,
            arrival_ms=self.arrival_ms[idx],
            event_ms=self.event_ms[idx] if self.event_ms is not None else None,
            headers=[self.headers[i] for i in ids] if self.headers is not None else None,
            origin=self.origin[idx],
            origin_unique=self.origin_unique,
            values_on_demand=self._values_on_demand,
        )

    def split(self, max_records: int, max_bytes: int, overhead: int = 0) -> list[RecordBatch]:
        """Consecutive sub-batches that each fit ``max_records`` and ``max_bytes`` (see chunk_bounds)."""
        return [self.slice(s, e) for s, e in chunk_bounds(self.sizes(), max_records, max_bytes, overhead)]

    @staticmethod
    def expand(
        parent: RecordBatch, values: list[Any], origin_index: Int64Array, *, keep_payloads: bool = False
    ) -> RecordBatch:
        """A batch of ``values`` where value ``j`` descends from ``parent`` record ``origin_index[j]``.

        Used by processors that drop or multiply records (a per-record function returning a list).
        """
        idx = origin_index
        ids = idx.tolist()
        return parent._derive(
            payloads=[parent.payloads[i] for i in ids] if keep_payloads else None,
            values=values,
            keys=[parent.keys[i] for i in ids] if parent.keys is not None else None,
            arrival_ms=parent.arrival_ms[idx],
            event_ms=parent.event_ms[idx] if parent.event_ms is not None else None,
            headers=[parent.headers[i] for i in ids] if parent.headers is not None else None,
            origin=parent.origin[idx],
            origin_unique=parent.origin_unique and bool(len(idx) == len(np.unique(idx))),
        )


def concat_payloads(batches: Sequence[RecordBatch]) -> list[bytes]:
    """All payloads of several batches, in order."""
    out: list[bytes] = []
    for batch in batches:
        out.extend(batch.payloads)
    return out
