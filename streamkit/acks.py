"""Acknowledgement tracking: when may a source position be checkpointed?

Every source batch gets an :class:`AckTicket` with one counter per record: the number of deliveries still
outstanding for it. Processing holds one count on every record until the processor chain is done; each
route to a sink (or to the dead-letter queue) adds one; each confirmed write removes one. A record whose
counter is zero is finished: written everywhere it was routed, filtered out, or dead-lettered.

The checkpoint of a partition is the position of the last record of its longest finished prefix, across
tickets in source order. Counters are numpy arrays, so an acknowledgement of a 500-record request is one
vector subtraction and finding the finished prefix is one scan in C.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamkit.partition import Int64Array, Partition


class AckError(Exception):
    """An acknowledgement that cannot be right (for example a record acknowledged more often than routed)."""


class AckTicket:
    """Outstanding deliveries of the records of one source batch."""

    __slots__ = ("_on_done", "nbytes", "outstanding", "pending", "positions", "tracker")

    def __init__(
        self,
        tracker: PartitionTracker,
        positions: Sequence[Any],
        nbytes: int,
        on_done: Callable[[AckTicket], None] | None = None,
    ) -> None:
        n = len(positions)
        self.tracker = tracker
        self.positions = positions
        self.nbytes = nbytes
        # One processing hold per record, released by the runtime when the chain has routed the batch.
        self.pending = np.ones(n, dtype=np.int32)
        self.outstanding = n
        self._on_done = on_done

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def done(self) -> bool:
        return self.outstanding == 0

    def hold(self, origin: Int64Array, unique: bool = True) -> None:
        """One more delivery is owed for each record in ``origin`` (routed to one more sink)."""
        if len(origin) == 0:
            return
        if unique:
            self.pending[origin] += 1
        else:
            np.add.at(self.pending, origin, 1)
        self.outstanding += len(origin)

    def ack(self, origin: Int64Array, unique: bool = True) -> None:
        """One delivery of each record in ``origin`` is confirmed."""
        if len(origin) == 0:
            return
        if unique:
            self.pending[origin] -= 1
        else:
            np.subtract.at(self.pending, origin, 1)
        self.outstanding -= len(origin)
        self._check_and_finish()

    def _check_and_finish(self) -> None:
        if self.outstanding < 0 or (self.outstanding == 0 and self.pending.any()):
            raise AckError(f"records of {self.tracker.partition} acknowledged more often than routed")
        if self.outstanding == 0:
            self._finish()

    def release_processing(self) -> None:
        """The chain has routed every output of this batch: drop the processing hold (one per record, so
        one whole-array subtraction, not an index array)."""
        n = len(self.positions)
        if n == 0:
            return
        self.pending -= 1
        self.outstanding -= n
        self._check_and_finish()

    def abandon(self) -> None:
        """The partition was lost: give the ticket's resources back without acknowledging anything."""
        self._finish()

    def finished_prefix(self) -> int:
        """How many leading records are finished."""
        if self.outstanding == 0:
            return len(self.positions)
        nonzero = np.flatnonzero(self.pending)
        return int(nonzero[0]) if len(nonzero) else len(self.positions)

    def _finish(self) -> None:
        if self._on_done is not None:
            callback, self._on_done = self._on_done, None
            callback(self)


class PartitionTracker:
    """The tickets of one partition in source order, and its checkpointable position."""

    def __init__(self, partition: Partition, start_position: Any = None) -> None:
        self.partition = partition
        self._tickets: deque[AckTicket] = deque()
        self._last_finished: Any = start_position
        self.checkpointed: Any = start_position
        """The last position written to the checkpoint store (maintained by the checkpointer)."""

    def open(
        self, positions: Sequence[Any], nbytes: int, on_done: Callable[[AckTicket], None] | None = None
    ) -> AckTicket:
        ticket = AckTicket(self, positions, nbytes, on_done)
        self._tickets.append(ticket)
        return ticket

    def abandon(self) -> None:
        """The partition was lost: give back the resources of every open ticket, acknowledging nothing."""
        for ticket in self._tickets:
            ticket.abandon()

    def idle(self) -> bool:
        """True when every record handed to the runtime is finished."""
        return all(t.done for t in self._tickets)

    def checkpoint_position(self) -> Any:
        """The position of the last record of the longest finished prefix (None if nothing yet)."""
        tickets = self._tickets
        while tickets and tickets[0].done:
            ticket = tickets.popleft()
            if len(ticket.positions):
                self._last_finished = ticket.positions[-1]
        if tickets:
            prefix = tickets[0].finished_prefix()
            if prefix:
                return tickets[0].positions[prefix - 1]
        return self._last_finished
