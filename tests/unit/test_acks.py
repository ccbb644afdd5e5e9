from __future__ import annotations

import numpy as np
import pytest

from streamkit.acks import AckError, PartitionTracker
from tests.helpers import P


def idx(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_checkpoint_advances_only_over_contiguous_acknowledged_positions() -> None:
    tracker = PartitionTracker(P)
    ticket = tracker.open(["p0", "p1", "p2", "p3", "p4"], nbytes=5)
    ticket.hold(idx(0, 1, 2, 3, 4))  # routed to one sink
    ticket.release_processing()
    assert tracker.checkpoint_position() is None

    ticket.ack(idx(3, 4))  # out of order: the tail first
    assert tracker.checkpoint_position() is None
    ticket.ack(idx(0))
    assert tracker.checkpoint_position() == "p0"
    ticket.ack(idx(2))
    assert tracker.checkpoint_position() == "p0"  # p1 is still owed
    ticket.ack(idx(1))
    assert tracker.checkpoint_position() == "p4"
    assert ticket.done


def test_every_sink_must_acknowledge_before_a_record_counts() -> None:
    tracker = PartitionTracker(P)
    ticket = tracker.open(["a", "b"], nbytes=2)
    ticket.hold(idx(0, 1))  # sink 1
    ticket.hold(idx(0, 1))  # sink 2
    ticket.release_processing()
    ticket.ack(idx(0, 1))  # sink 1 done
    assert tracker.checkpoint_position() is None
    ticket.ack(idx(0))  # sink 2, first record
    assert tracker.checkpoint_position() == "a"


def test_later_ticket_finished_first_does_not_move_the_checkpoint() -> None:
    tracker = PartitionTracker(P, start_position="start")
    first = tracker.open(["a", "b"], nbytes=2)
    second = tracker.open(["c", "d"], nbytes=2)
    for t in (first, second):
        t.hold(idx(0, 1))
        t.release_processing()
    second.ack(idx(0, 1))
    assert second.done
    assert tracker.checkpoint_position() == "start"
    first.ack(idx(0, 1))
    assert tracker.checkpoint_position() == "d"


def test_filtered_records_finish_without_any_sink() -> None:
    tracker = PartitionTracker(P)
    ticket = tracker.open(["a", "b", "c"], nbytes=3)
    ticket.hold(idx(1))  # only b was routed
    ticket.release_processing()
    assert tracker.checkpoint_position() == "a"
    ticket.ack(idx(1))
    assert tracker.checkpoint_position() == "c"


def test_split_records_need_every_part_acknowledged() -> None:
    tracker = PartitionTracker(P)
    ticket = tracker.open(["a", "b"], nbytes=2)
    ticket.hold(idx(0, 0, 1), unique=False)  # record a became two records
    ticket.release_processing()
    ticket.ack(idx(0, 1), unique=True)
    assert tracker.checkpoint_position() is None
    ticket.ack(idx(0))
    assert tracker.checkpoint_position() == "b"


def test_done_callback_fires_once_and_overacknowledging_is_an_error() -> None:
    done: list[int] = []
    tracker = PartitionTracker(P)
    ticket = tracker.open(["a"], nbytes=7, on_done=lambda t: done.append(t.nbytes))
    ticket.release_processing()
    assert done == [7]
    with pytest.raises(AckError):
        ticket.ack(idx(0))
