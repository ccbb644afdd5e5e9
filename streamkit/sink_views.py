"""What sinks read, decoded in the chain's fused pass: views of the fields of sinks' ``when:`` and templates.

A chain that ends in a fused run without a ``map`` (``json.decode -> filter -> timestamp``, or
``json.decode`` alone) hands on the source bytes, and whole records are decoded only if something reads
them (:meth:`RecordBatch.with_values_on_demand`). A sink's ``when:`` and an S3 partition template read a
few fields, though: decoding whole records for them (orjson, ~2.5 us per 1 KB record and ~2.5x the bytes in
memory) costs more than the rest of the chain. The planner adds the fields they read to the fused step's
decoder instead, and the step's output is a :class:`ViewedBatch`: the same records, whole values still
decoded on demand, plus the views of the fused pass (small dicts holding only the decoded fields, as
:mod:`streamkit.processors.json_views` builds them). Routing reads the views; they never reach a sink,
except as the values of a sink that declares it reads values only through :attr:`Sink.value_fields`.

What the sinks read is collected once, at build time, by :func:`sink_reads`; a sink whose ``when:`` calls
user code, or a sink that keeps whole records, turns the push-down off (whole records are then decoded
once, for every sink, as before).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamkit.batch import RecordBatch
from streamkit.processors.json_views import FieldTree
from streamkit.sink import Sink

__all__ = ["SinkReads", "ViewedBatch", "covers", "for_sink", "sink_reads", "view_values", "with_views"]


class ViewedBatch(RecordBatch):
    """A fused step's output with the views it decoded. Every derived batch (select, slice, ...) is a plain
    :class:`RecordBatch`: the views belong to these records only and are dropped with them."""

    __slots__ = ("tree", "views")

    tree: FieldTree
    """The fields the views hold (field name to sub-fields; None where the whole value was decoded)."""
    views: list[Any]
    """One view per record: a dict of the decoded fields, or the whole value where the fused step fell
    back to orjson (a record that is not an object, for instance)."""


def with_views(batch: RecordBatch, views: list[Any], tree: FieldTree) -> ViewedBatch:
    """``batch``'s records with whole values decoded on demand from their bytes, and ``views`` beside them."""
    if len(views) != len(batch):
        raise ValueError(f"{len(views)} views for {len(batch)} records of {batch.partition}")
    viewed = ViewedBatch(
        batch.partition,
        payloads=batch.payloads,
        keys=batch.keys,
        arrival_ms=batch.arrival_ms,
        event_ms=batch.event_ms,
        headers=batch.headers,
        origin=batch.origin,
        origin_unique=batch.origin_unique,
        ticket=batch.ticket,
        values_on_demand=True,
    )
    viewed.tree = tree
    viewed.views = views
    return viewed


def covers(tree: FieldTree, path: str) -> bool:
    """Whether a view of ``tree`` holds what ``path`` reads (``user`` decoded whole covers ``user.id``)."""
    node: FieldTree | None = tree
    for part in path.split("."):
        if node is None:
            return True
        if part not in node:
            return False
        node = node[part]
    return node is None


def view_values(batch: RecordBatch, fields: Collection[str]) -> list[Any]:
    """What a predicate reading ``fields`` should evaluate: the views when they hold every one of those
    fields, else the whole records."""
    if type(batch) is ViewedBatch and all(covers(batch.tree, f) for f in fields):
        return batch.views
    return batch.values


def for_sink(batch: RecordBatch, value_fields: Collection[str] | None) -> RecordBatch:
    """``batch`` as a sink gets it: never a :class:`ViewedBatch`. For a sink that reads values only through
    ``value_fields`` (and the views hold them), the views are its values, with the bytes as written."""
    if type(batch) is not ViewedBatch:
        return batch
    if value_fields and all(covers(batch.tree, f) for f in value_fields):
        return batch.with_values(batch.views, keep_payloads=True)
    held = batch.values_held  # decoded on demand already (a predicate that read whole records): keep them
    return batch.with_values(held, keep_payloads=True) if held is not None else batch.with_values_on_demand()


@dataclass(frozen=True)
class SinkReads:
    """The fields the sinks read from a chain's output, or why they cannot be decoded in the fused pass."""

    fields: tuple[str, ...] = ()
    """Dotted paths read by the sinks' ``when:`` and by sinks that declare :attr:`Sink.value_fields`."""
    whole: str | None = None
    """Why whole records are needed (a ``when:`` calling user code, a sink writing values): no push-down."""


class RouteLike(Protocol):
    """A :class:`streamkit.dispatch.Route` (which imports the chain, which imports this: named by shape)."""

    @property
    def name(self) -> str: ...
    @property
    def sink(self) -> Sink: ...
    @property
    def predicate(self) -> Any: ...


def sink_reads(routes: Sequence[RouteLike]) -> SinkReads:
    """What the routes' predicates and sinks read (see the module docs)."""
    fields: dict[str, None] = {}
    for route in routes:
        predicate = route.predicate
        if predicate is not None:
            reads = getattr(predicate, "fields", None)
            if reads is None:
                return SinkReads(whole=f"sink {route.name!r}: its when: calls user code, which gets whole records")
            fields.update(dict.fromkeys(sorted(reads)))
        sink = route.sink
        if sink.keeps_values:
            if sink.value_fields is None:
                return SinkReads(whole=f"sink {route.name!r} writes decoded values: whole records are decoded once")
            fields.update(dict.fromkeys(sink.value_fields))
    return SinkReads(fields=tuple(fields))
