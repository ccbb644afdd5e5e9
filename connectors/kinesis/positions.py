"""Kinesis positions: a sequence number plus the sub-sequence of a KPL user record.

A checkpoint is written as ``"<sequence>:<sub>"`` to the checkpoint store, and as the KCL's
``checkpoint`` + ``checkpointSubSequenceNumber`` attributes in the lease table.

Resuming always uses AT_SEQUENCE_NUMBER and skips user records at or below the checkpoint, which is right
whether or not the checkpointed record was aggregated. The KCL instead resumes AFTER_SEQUENCE_NUMBER when
the sub-sequence is 0, which would skip the rest of an aggregate checkpointed at its first user record; to
keep a KCL taking over our table safe, the first user record of a multi-record aggregate checkpoints as
the record before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, overload

import numpy as np
import numpy.typing as npt

SPECIAL = frozenset({"TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "SHARD_END"})


class KinesisPosition(NamedTuple):
    sequence: str
    sub_sequence: int
    first_of_aggregate: bool = False
    """The first user record of a multi-record aggregate: it checkpoints as the record before it."""
    previous: KinesisPosition | None = None

    def __str__(self) -> str:
        return f"{self.sequence}:{self.sub_sequence}"

    def after(self, sequence: str, sub_sequence: int) -> bool:
        """True when (sequence, sub_sequence) comes after this position (sequence numbers compare as ints)."""
        mine, theirs = int(self.sequence), int(sequence)
        return theirs > mine or (theirs == mine and sub_sequence > self.sub_sequence)


def parse_checkpoint(checkpoint: str) -> KinesisPosition | str:
    """A stored checkpoint: a special marker (TRIM_HORIZON, SHARD_END, ...) or a position."""
    if checkpoint in SPECIAL:
        return checkpoint
    sequence, _, sub = checkpoint.partition(":")
    if not sequence.isdigit() or (sub and not sub.isdigit()):
        raise ValueError(f"not a Kinesis checkpoint: {checkpoint!r}")
    return KinesisPosition(sequence, int(sub or 0))


class BatchPositions(Sequence[KinesisPosition]):
    """The positions of one batch, built on demand (the runtime reads only a few of them)."""

    __slots__ = ("_before", "_first_of_aggregate", "_sequences", "_subs")

    def __init__(
        self,
        sequences: list[str],
        subs: npt.NDArray[np.int64],
        first_of_aggregate: npt.NDArray[np.bool_] | None,
        before: KinesisPosition | None,
    ) -> None:
        self._sequences = sequences
        self._subs = subs
        self._first_of_aggregate = first_of_aggregate
        self._before = before

    def __len__(self) -> int:
        return len(self._sequences)

    @overload
    def __getitem__(self, index: int) -> KinesisPosition: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[KinesisPosition]: ...
    def __getitem__(self, index: int | slice) -> KinesisPosition | Sequence[KinesisPosition]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        first = self._first_of_aggregate
        if first is not None and first[index]:
            previous = self[index - 1] if index > 0 else self._before
            return KinesisPosition(self._sequences[index], int(self._subs[index]), True, previous)
        return KinesisPosition(self._sequences[index], int(self._subs[index]))


def checkpoint_for(position: KinesisPosition) -> str | None:
    """The checkpoint to write once ``position`` is finished, or None when nothing is safe yet."""
    if position.first_of_aggregate:
        return checkpoint_for(position.previous) if position.previous is not None else None
    return str(position)
