"""Record predicates from configuration, compiled to batch-wide functions.

Used by the ``filter`` processor and by sink routes (``when:``). A predicate is a mapping such as
``{field: status, not_equals: err}``, combined with ``all`` / ``any`` / ``not``, or a reference to user
code (``callable: module.path:function``). Each compiles to one list comprehension over the batch's values,
never a Python call per condition per record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamkit.batch import BoolArray, RecordBatch
from streamkit.errors import ConfigError
from streamkit.sink_views import view_values

ValuesPredicate = Callable[[list[Any]], list[bool]]

MISSING = object()

COMPARISONS = ("equals", "not_equals", "in", "not_in", "exists", "gt", "ge", "lt", "le", "matches")


def field_getter(path: str) -> Callable[[Any], Any]:
    """A fast accessor for a dotted field path; a missing field gives ``MISSING``, never an exception."""
    parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]

        def get_one(value: Any) -> Any:
            return value.get(key, MISSING) if isinstance(value, dict) else MISSING

        return get_one

    def get_path(value: Any) -> Any:
        for part in parts:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        return value

    return get_path


def _ordered(op: Callable[[Any, Any], bool], ref: Any) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        try:
            return v is not MISSING and v is not None and op(v, ref)
        except TypeError:
            return False

    return test


def _flat_fast_path(path: str, key: str, ref: Any) -> ValuesPredicate | None:
    """For a top-level field compared by equality, one inline ``dict.get`` per record (no call per record).

    Falls back to the general path when a value is not a dict (``AttributeError``)."""
    if "." in path or key not in ("equals", "not_equals"):
        return None
    general = _comparison(path, key, ref, "", fast=False)
    if key == "equals":

        def equals(values: list[Any]) -> list[bool]:
            try:
                return [v.get(path, MISSING) == ref for v in values]
            except AttributeError:
                return general(values)

        return equals

    def not_equals(values: list[Any]) -> list[bool]:
        try:
            return [v.get(path, MISSING) != ref for v in values]
        except AttributeError:
            return general(values)

    return not_equals


def _comparison(path: str, key: str, ref: Any, where: str, fast: bool = True) -> ValuesPredicate:
    if fast and (quick := _flat_fast_path(path, key, ref)) is not None:
        return quick
    get = field_getter(path)
    if key == "equals":
        return lambda values: [get(v) == ref for v in values]
    if key == "not_equals":
        return lambda values: [get(v) != ref for v in values]
    if key in ("in", "not_in"):
        if not isinstance(ref, list):
            raise ConfigError(f"{where}.{key}", f"expected a list of values, got {ref!r}")
        members = set(map(_hashable, ref))
        if key == "in":
            return lambda values: [_hashable(get(v)) in members for v in values]
        return lambda values: [_hashable(get(v)) not in members for v in values]
    if key == "exists":
        if not isinstance(ref, bool):
            raise ConfigError(f"{where}.exists", f"expected true or false, got {ref!r}")
        return lambda values: [(get(v) is not MISSING) is ref for v in values]
    if key == "matches":
        try:
            pattern = re.compile(str(ref))
        except re.error as exc:
            raise ConfigError(f"{where}.matches", f"invalid regular expression {ref!r}: {exc}") from exc
        search = pattern.search
        return lambda values: [isinstance(x := get(v), str) and search(x) is not None for v in values]
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    test = _ordered(ops[key], ref)
    return lambda values: [test(get(v)) for v in values]


def _hashable(value: Any) -> Any:
    return value if not isinstance(value, (list, dict)) else repr(value)


def compile_values_predicate(spec: Any, where: str, resolve: Callable[[str, str], Any]) -> ValuesPredicate:
    """Compile a predicate mapping. ``resolve(reference, where)`` loads ``module:callable`` references."""
    if not isinstance(spec, Mapping):
        raise ConfigError(where, f"expected a mapping such as {{field: status, equals: ok}}, got {spec!r}")
    keys = set(spec)
    if keys == {"all"} or keys == {"any"}:
        combinator = next(iter(keys))
        items = spec[combinator]
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}.{combinator}", "expected a non-empty list of predicates")
        parts = [compile_values_predicate(p, f"{where}.{combinator}[{i}]", resolve) for i, p in enumerate(items)]
        join = all if combinator == "all" else any
        return lambda values: [join(row) for row in zip(*(p(values) for p in parts), strict=True)]
    if keys == {"not"}:
        inner = compile_values_predicate(spec["not"], f"{where}.not", resolve)
        return lambda values: [not x for x in inner(values)]
    if keys == {"callable"}:
        fn = resolve(str(spec["callable"]), f"{where}.callable")
        return lambda values: [bool(fn(v)) for v in values]
    if "field" in keys:
        ops = keys - {"field"}
        if len(ops) != 1 or not ops <= set(COMPARISONS):
            raise ConfigError(
                where,
                f"a field predicate takes exactly one comparison of {', '.join(COMPARISONS)}; got {sorted(ops)}",
            )
        path = spec["field"]
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}.field", f"expected a field name such as user.id, got {path!r}")
        op = ops.pop()
        return _comparison(path, op, spec[op], where)
    raise ConfigError(
        where, f"unknown predicate keys {sorted(keys)}: use field + a comparison, all, any, not or callable"
    )


def predicate_fields(spec: Any) -> frozenset[str] | None:
    """The dotted field paths a predicate mapping reads, or None when user code (``callable``) is involved.

    The chain planner decodes only these fields for a ``filter`` or a sink's ``when:``; user code may read
    anything, so it needs whole records."""
    if not isinstance(spec, Mapping):
        return frozenset()
    if "callable" in spec:
        return None
    found: set[str] = set()
    if isinstance(spec.get("field"), str):
        found.add(spec["field"])
    parts = [*(spec.get("all") or ()), *(spec.get("any") or ())]
    if "not" in spec:
        parts.append(spec["not"])
    for part in parts:
        inner = predicate_fields(part)
        if inner is None:
            return None
        found |= inner
    return frozenset(found)


class BatchPredicate:
    """A compiled predicate over a batch's records, and the fields it reads (None: user code, any field).

    Over a fused step's output that decoded those fields (:class:`streamkit.sink_views.ViewedBatch`) it
    reads the small views instead of decoding whole records."""

    def __init__(self, values_predicate: ValuesPredicate, fields: frozenset[str] | None = None) -> None:
        self.values_predicate = values_predicate
        self.fields = fields

    def __call__(self, batch: RecordBatch) -> BoolArray:
        values = batch.values if self.fields is None else view_values(batch, self.fields)
        return np.fromiter(self.values_predicate(values), dtype=np.bool_, count=len(batch))


def batch_predicate(values_predicate: ValuesPredicate, fields: frozenset[str] | None = None) -> BatchPredicate:
    """``values_predicate`` over batches; give ``fields`` (:func:`predicate_fields`) to let it read views."""
    return BatchPredicate(values_predicate, fields)
