"""Decoding only the fields a chain reads: JSON payloads into small dicts ("views") with msgspec.

The chain planner (:mod:`streamkit.planner`) knows which field paths the stages after ``json.decode``
read. A view holds exactly those: msgspec decodes each payload into a ``TypedDict`` naming them (nested
paths such as ``user.country`` as nested ``TypedDict`` s) and skips everything else while parsing, which
builds a fraction of the Python objects ``orjson.loads`` builds for a whole record. The stages then run
unchanged over the views, and see what they would have seen in the whole record.

orjson (what ``json.decode`` uses) stays the authority on what a record is: a record msgspec does not
decode into a view (malformed JSON, not an object, a nested field that is not an object) is decoded by
orjson record by record, and either becomes a whole-record view or goes to the dead-letter queue with
orjson's message, as ``json.decode`` sends it. msgspec does not check UTF-8 in the text it skips, so a
batch with any non-ASCII byte is checked record by record too.

Two differences from ``orjson.loads`` remain, both about numbers outside 64-bit range (see
docs/performance.md): an integer beyond 64 bits in a field the chain reads is an exact ``int`` here
(orjson gives a float), and a number beyond the float range in a field nobody reads is skipped here
(orjson rejects the record).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict, Union

import msgspec
import orjson

from streamkit.batch import RecordBatch
from streamkit.processor import ProcessContext

FieldTree = dict[str, "FieldTree | None"]
"""Field name to the sub-fields read of it; None where the whole value is read."""


def field_tree(paths: Iterable[str]) -> FieldTree:
    """The tree of dotted ``paths``: ``["user.country", "id"]`` gives ``{"user": {"country": None}, "id": None}``.

    A field read whole (``user``) wins over reads of its parts (``user.country``)."""
    tree: FieldTree = {}
    for path in sorted(dict.fromkeys(paths), key=lambda p: p.count(".")):  # in reading order, shallow first
        node: FieldTree | None = tree
        parts = path.split(".")
        for depth, part in enumerate(parts):
            assert node is not None
            if depth == len(parts) - 1:
                node[part] = None
                break
            if part in node and node[part] is None:
                break  # read whole already
            node = node.setdefault(part, {})
    return tree


def tree_paths(tree: FieldTree, prefix: str = "") -> list[str]:
    """The leaves of ``tree`` as dotted paths, for explaining a plan."""
    out: list[str] = []
    for name, sub in tree.items():
        path = f"{prefix}{name}"
        out.extend([path] if sub is None else tree_paths(sub, f"{path}."))
    return out


def view_type(tree: FieldTree, name: str = "View") -> Any:
    """A ``TypedDict`` (all keys optional) of the tree's fields; nested trees are nested ``TypedDict`` s.

    A nested field may also be a scalar, null or an array in a record (a path then reads nothing there,
    as ``filter`` and ``map`` read it in a whole record), so its type is a union with those."""
    fields: dict[str, Any] = {}
    for i, (key, sub) in enumerate(tree.items()):
        if sub is None:
            fields[key] = Any
        else:
            nested = view_type(sub, f"{name}_{i}")
            fields[key] = Union[nested, None, bool, int, float, str, list[Any]]  # noqa: UP007 (a runtime union of types)
    return TypedDict(name, fields, total=False)  # type: ignore[operator]


class JsonViewDecoder:
    """``json.decode`` for the fields of ``tree`` only: the same records kept, the same failures reported."""

    def __init__(self, tree: FieldTree) -> None:
        self.tree = tree
        self._decode = msgspec.json.Decoder(view_type(tree)).decode

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        """``batch`` with views as values (and its payloads kept), or None if every record failed."""
        payloads = batch.payloads
        try:
            views = list(map(self._decode, payloads))
        except msgspec.DecodeError:  # ValidationError included
            return self._record_by_record(batch, ctx)
        if not all(map(bytes.isascii, payloads)):
            return self._record_by_record(batch, ctx)
        return batch.with_values(views, keep_payloads=True)

    def _record_by_record(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        decode, loads = self._decode, orjson.loads
        views: list[Any] = []
        good: list[bool] = []
        for i, payload in enumerate(batch.payloads):
            try:
                view = decode(payload)
                if not payload.isascii():
                    payload.decode("utf-8")  # what msgspec skipped was not checked
                views.append(view)
                good.append(True)
                continue
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass
            try:
                views.append(loads(payload))  # orjson decides, as json.decode would
                good.append(True)
            except orjson.JSONDecodeError as exc:
                good.append(False)
                ctx.fail(batch, [i], f"invalid JSON: {exc}")
        if not views:
            return None
        return batch.select(good).with_values(views, keep_payloads=True)
