"""Committed source positions, kept in the Iceberg snapshot summary: the sink's exactly-once ledger.

Every snapshot the sink commits carries one summary property (``streamkit.positions.<scope>``) holding
a JSON object: partition (``source/key``) -> the position of the last record of that partition the table
holds. The catalog commit swaps data and ledger in one atomic step, so after a crash the table itself says
what it holds; records at or below those positions are acknowledged on replay without being written again.

Each commit carries the whole map forward (merged with what the table held), so the current snapshot
answers for every partition, whichever worker wrote it last; reading merges the ledgers of the whole
lineage anyway, so snapshots written by others (compaction, maintenance, another tool) lose nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

PROPERTY_PREFIX = "streamkit.positions."

OrderKey = tuple[int, int]


class PositionError(ValueError):
    """A source position the sink cannot order (it needs offsets or sequence numbers)."""


def order_key(position: Any) -> OrderKey:
    """A position as (sequence or offset, sub-sequence), so positions of one partition compare correctly.

    Kafka offsets and generator/file positions are integers; Kinesis positions are ``"<sequence>:<sub>"``
    (sequence numbers compare as integers, never as strings, AWS_FACTS.md).
    """
    if isinstance(position, int) and not isinstance(position, bool):
        return (position, 0)
    text = str(position)
    sequence, _, sub = text.partition(":")
    if not sequence.isdigit() or (sub and not sub.isdigit()):
        raise PositionError(f"position {text!r} cannot be ordered; the iceberg sink needs offsets or sequence numbers")
    return (int(sequence), int(sub or 0))


def encode(positions: Mapping[str, str]) -> str:
    return orjson.dumps(dict(sorted(positions.items()))).decode()


def decode(text: str, where: str) -> dict[str, str]:
    try:
        loaded = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PositionError(f"{where}: the snapshot property is not JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise PositionError(f"{where}: the snapshot property is not a JSON object")
    return {str(k): str(v) for k, v in loaded.items()}


def merge(held: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """The ledger after a commit: the higher position of each partition (never moves back)."""
    out = dict(held)
    for partition, position in new.items():
        before = out.get(partition)
        if before is None or order_key(position) > order_key(before):
            out[partition] = position
    return out


class _Snapshot(Protocol):
    snapshot_id: int
    parent_snapshot_id: int | None
    summary: Any


class _Table(Protocol):
    def current_snapshot(self) -> Any: ...
    def snapshot_by_id(self, snapshot_id: int) -> Any: ...


def committed_positions(
    table: _Table, prop: str, cache: dict[int, dict[str, str]] | None = None
) -> tuple[dict[str, str], int | None]:
    """The ledger of the table's current lineage, and the newest snapshot id that carries one.

    Ledgers of every ancestor are merged (the highest position per partition wins), so neither a snapshot
    without one (compaction, another tool) nor a commit that carried an older map forward loses what an
    ancestor recorded. Snapshot summaries are part of the table metadata already loaded: walking them
    reads nothing more from storage, and ``cache`` keeps each decoded ledger by snapshot id.
    """
    memo = cache if cache is not None else {}
    merged: dict[str, str] = {}
    newest: int | None = None
    snapshot: _Snapshot | None = table.current_snapshot()
    while snapshot is not None:
        ledger = memo.get(snapshot.snapshot_id)
        if ledger is None:
            summary = snapshot.summary
            text = summary.get(prop) if summary is not None else None
            ledger = decode(text, f"snapshot {snapshot.snapshot_id} property {prop}") if text is not None else {}
            memo[snapshot.snapshot_id] = ledger
        if ledger:
            newest = newest if newest is not None else snapshot.snapshot_id
            merged = merge(ledger, merged)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return merged, newest
