"""How much memory a batch holds: what the byte budget counts (``runtime.max_bytes_in_flight``).

Payload bytes say little about memory once records are decoded: a ~940-byte JSON record becomes ~2.3 KB
of dicts and strings. So the budget counts the measured footprint of what a batch references:

- payloads exactly: their lengths (one vector sum) plus the bytes-object header and list slot of each;
- decoded values, keys and headers by sampling: the deep size (``sys.getsizeof`` of every object reached
  from the record: dict, list, tuple, set, struct fields, leaves) of up to ``SAMPLES`` evenly spaced
  records, scaled to the record count; objects several samples share (dict keys the decoder interns,
  small ints) are counted once. Records of one batch come from one producer and look alike, so a few
  dozen samples land within ~10% of the total (tests/unit/test_footprint.py checks it against
  tracemalloc) for ~0.1 ms per batch instead of a walk over every object;
- metadata arrays by their ``nbytes``.

Columns shared by several batches (a sink's payload-only copy of a batch shares its payload list) are
counted once per call.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamkit.batch import Int64Array, RecordBatch

SAMPLES = 24
"""Records measured per column of a batch (fewer when the batch is smaller)."""
POINTER = 8
"""A list slot."""
BYTES_HEADER = sys.getsizeof(b"")
"""What a bytes object costs besides its content (33 bytes on 64-bit CPython)."""
_CONTAINERS = (dict, list, tuple, set, frozenset)
_LEAVES = frozenset({bytes, str, int, float, bool, type(None)})
"""Types that reference no other object: a sample of these needs no walk (Kafka keys, Kinesis partition keys)."""


def _objects(obj: Any) -> dict[int, int]:
    """Every object reachable from ``obj`` (each once), by id, with its ``sys.getsizeof``."""
    found: dict[int, int] = {}
    stack = [obj]
    getsizeof = sys.getsizeof
    while stack:
        item = stack.pop()
        ident = id(item)
        if ident in found:
            continue
        found[ident] = getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend(item)
        else:
            fields = getattr(type(item), "__struct_fields__", None)  # msgspec structs
            if fields is not None:
                stack.extend(getattr(item, name) for name in fields)
    return found


def deep_size(obj: Any) -> int:
    """``sys.getsizeof`` of ``obj`` and of everything it references (each object once)."""
    return sum(_objects(obj).values())


def sampled_size(items: Sequence[Any], samples: int = SAMPLES) -> int:
    """Estimated memory of a list of records: the list itself, plus the deep size of evenly spaced samples
    scaled to the record count. Objects that several samples share (dict keys a decoder interns, small
    ints, constants) exist once, not once per record: they are counted once, unscaled."""
    n = len(items)
    if n == 0:
        return sys.getsizeof(items)
    picks = n if n <= samples else samples
    step = n / picks
    chosen = [items[int(i * step)] for i in range(picks)]
    seen_in: dict[int, int] = {}
    sizes: dict[int, int] = {}
    if _LEAVES.issuperset(map(type, chosen)):
        # Leaves (a column of keys): each is its own only object, no walk needed. Per batch this is the
        # difference between ~2 us and ~30 us.
        getsizeof = sys.getsizeof
        for item in chosen:
            ident = id(item)
            seen_in[ident] = seen_in.get(ident, 0) + 1
            sizes[ident] = getsizeof(item)
    else:
        for item in chosen:
            for ident, size in _objects(item).items():
                seen_in[ident] = seen_in.get(ident, 0) + 1
                sizes[ident] = size
    own = sum(size for ident, size in sizes.items() if seen_in[ident] == 1)
    shared = sum(size for ident, size in sizes.items() if seen_in[ident] > 1)
    return sys.getsizeof(items) + round(own * n / picks) + shared


def payload_size(payloads: Sequence[bytes], total: int | None = None) -> int:
    """Exact memory of a list of payloads: contents, headers and list slots. ``total``: their summed
    length when the caller has it already (saves a pass)."""
    n = len(payloads)
    content = total if total is not None else sum(map(len, payloads))
    return content + n * (BYTES_HEADER + POINTER) + sys.getsizeof([])


def positions_size(positions: Sequence[Any] | Int64Array) -> int:
    """Memory a batch's source positions hold: a ``range`` (consecutive Kafka offsets) holds three integers,
    not one per record; an array its buffer; other sequences (Kinesis sequence numbers) are sampled."""
    if type(positions) is range:
        # The object and the integers it keeps (start, stop, length; a step of 1 is a shared small int).
        return sys.getsizeof(positions) + 3 * sys.getsizeof(positions.stop)
    if isinstance(positions, np.ndarray):
        return sys.getsizeof(positions) + (0 if positions.base is None else positions.nbytes)
    return sampled_size(positions)


def batch_footprint(batch: RecordBatch, seen: set[int] | None = None, *, payload_bytes: int | None = None) -> int:
    """Memory the columns of ``batch`` hold; columns whose id is in ``seen`` are skipped (and added).
    ``payload_bytes``: the payloads' total length when the caller has it already (saves a pass)."""
    seen = set() if seen is None else seen
    total = 0
    payloads = batch.payloads_held
    if payloads is not None and id(payloads) not in seen:
        seen.add(id(payloads))
        total += payload_size(payloads, total=payload_bytes)
    for column in (batch.values_held, batch.keys, batch.headers):
        if column is not None and id(column) not in seen:
            seen.add(id(column))
            total += sampled_size(column)
    for array in (batch.arrival_ms, batch.event_ms, batch.origin):
        if isinstance(array, np.ndarray) and id(array) not in seen:
            seen.add(id(array))
            total += array.nbytes
    return total


def footprint(batches: Iterable[RecordBatch]) -> int:
    """Memory several batches hold together (shared columns counted once)."""
    seen: set[int] = set()
    return sum(batch_footprint(b, seen) for b in batches)
