"""The per-batch measuring shortcuts (leaf columns, positions, a known payload total) give the memory the
columns really hold, as tracemalloc sees it, and the same figures as the general walk."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from streamkit.acks import AckError, PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.footprint import _objects, batch_footprint, positions_size, sampled_size
from tests.helpers import traced

P = Partition("test", "0")


def walked(items: list[Any], samples: int = 24) -> int:
    """sampled_size's figure computed with the general object walk for every sample."""
    picks = min(len(items), samples)
    step = len(items) / picks
    seen_in: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for i in range(picks):
        for ident, size in _objects(items[int(i * step)]).items():
            seen_in[ident] = seen_in.get(ident, 0) + 1
            sizes[ident] = size
    own = sum(s for i, s in sizes.items() if seen_in[i] == 1)
    shared = sum(s for i, s in sizes.items() if seen_in[i] > 1)
    return sys.getsizeof(items) + round(own * len(items) / picks) + shared


def test_a_column_of_leaves_measures_as_the_walk_does_and_as_tracemalloc_sees_it() -> None:
    keys, measured = traced(lambda: [f"key-{i:08d}".encode() for i in range(5000)])
    assert sampled_size(keys) == walked(keys)
    assert 0.9 < sampled_size(keys) / measured < 1.1, (sampled_size(keys), measured)
    texts = [f"partition-key-{i}" for i in range(1000)]
    assert sampled_size(texts) == walked(texts)
    shared = [b"k" * 50] * 1000  # one object referenced 1,000 times: counted once
    assert sampled_size(shared) == sys.getsizeof(shared) + sys.getsizeof(shared[0]) == walked(shared)
    mixed: list[Any] = [None, b"x" * 10, {"a": "b" * 40}] * 100  # not all leaves: the walk
    assert sampled_size(mixed) == walked(mixed)


def test_positions_count_what_they_hold() -> None:
    offsets, measured = traced(lambda: range(10**12, 10**12 + 1000))
    assert 0.8 < positions_size(offsets) / measured < 1.25, (positions_size(offsets), measured)
    assert positions_size(offsets) < 200  # not one integer per record
    sequence_numbers, measured = traced(lambda: [f"4959{i:052d}" for i in range(2000)])
    assert 0.9 < positions_size(sequence_numbers) / measured < 1.1
    owned = np.arange(1000, dtype=np.int64)
    assert positions_size(owned) == sys.getsizeof(owned) >= owned.nbytes
    view = owned[10:500]
    assert positions_size(view) == sys.getsizeof(view) + view.nbytes


def test_a_known_payload_total_gives_the_measured_figure() -> None:
    payloads = [b"x" * n for n in range(1, 301)]
    batch = RecordBatch(P, payloads=payloads, keys=[str(i).encode() for i in range(300)])
    assert batch_footprint(batch, payload_bytes=batch.total_bytes()) == batch_footprint(batch)
    assert batch.total_bytes() == sum(map(len, payloads))


def test_releasing_the_processing_hold_finishes_a_ticket_only_when_every_delivery_is_in() -> None:
    done: list[Any] = []
    ticket = PartitionTracker(P).open(range(100, 110), 10, done.append)
    ticket.hold(np.array([2, 5], dtype=np.int64))
    ticket.release_processing()
    assert not done and ticket.finished_prefix() == 2 and ticket.outstanding == 2
    ticket.ack(np.array([2, 5], dtype=np.int64))
    assert done == [ticket] and ticket.done
    twice = PartitionTracker(P).open(range(3), 3)
    twice.release_processing()
    try:
        twice.release_processing()
    except AckError:
        pass
    else:
        raise AssertionError("a second release of the processing hold must be refused")
