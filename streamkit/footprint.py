"""How much memory a batch holds: what the byte budget counts (``runtime.max_bytes_in_flight``).

Payload bytes say little about memory once records are decoded: a ~940-byte JSON record becomes ~2.3 KB
of dicts and strings. So the budget counts the measured footprint of what a batch references:

- payloads exactly: their lengths (one vector sum) plus the bytes-object header and list slot of each;
- decoded values, keys and headers by sampling: the deep size (``sys.getsizeof`` of every object reached
  from the record: dict, list, tuple, set, struct fields, leaves) of up to ``SAMPLES`` evenly spaced
  records, averaged and multiplied by the record count. Records of one batch come from one producer and
  look alike, so a few dozen samples land within a few percent of the total (tests/test_footprint.py
  checks it against tracemalloc) for ~0.1 ms per batch instead of a walk over every object;
- metadata arrays by their ``nbytes``.

Columns shared by several batches (a sink's payload-only copy of a batch shares its payload list) are
counted once per call.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamkit.batch import RecordBatch

SAMPLES = 24
"""Records measured per column of a batch (fewer when the batch is smaller)."""
POINTER = 8
"""A list slot."""
BYTES_HEADER = sys.getsizeof(b"")
"""What a bytes object costs besides its content (33 bytes on 64-bit CPython)."""
_CONTAINERS = (dict, list, tuple, set, frozenset)


def deep_size(obj: Any) -> int:
    """``sys.getsizeof`` of ``obj`` and of everything it references (each object once)."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    getsizeof = sys.getsizeof
    while stack:
        item = stack.pop()
        ident = id(item)
        if ident in seen:
            continue
        seen.add(ident)
        total += getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend(item)
        else:
            fields = getattr(type(item), "__struct_fields__", None)  # msgspec structs
            if fields is not None:
                stack.extend(getattr(item, name) for name in fields)
    return total


def sampled_size(items: Sequence[Any], samples: int = SAMPLES) -> int:
    """Estimated memory of a list of records: the list itself plus the mean deep size of evenly spaced
    samples times the record count."""
    n = len(items)
    if n == 0:
        return sys.getsizeof(items)
    picks = n if n <= samples else samples
    step = n / picks
    measured = sum(deep_size(items[int(i * step)]) for i in range(picks))
    return sys.getsizeof(items) + round(measured * n / picks)


def payload_size(payloads: Sequence[bytes], sizes: Any = None) -> int:
    """Exact memory of a list of payloads: contents, headers and list slots."""
    n = len(payloads)
    content = int(sizes.sum()) if sizes is not None else sum(map(len, payloads))
    return content + n * (BYTES_HEADER + POINTER) + sys.getsizeof([])


def batch_footprint(batch: RecordBatch, seen: set[int] | None = None) -> int:
    """Memory the columns of ``batch`` hold; columns whose id is in ``seen`` are skipped (and added)."""
    seen = set() if seen is None else seen
    total = 0
    payloads = batch.payloads_held
    if payloads is not None and id(payloads) not in seen:
        seen.add(id(payloads))
        total += payload_size(payloads)
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
