"""The checks fastavro's validator leaves out: values an Avro schema would hold only altered.

fastavro's validator refuses floats, booleans, text and out-of-range integers where an ``int`` or ``long``
is due, but it lets through values that its encoder then changes or cannot encode:

- a finite number too big for a 32-bit ``float`` (1e300 is written as infinity);
- an integer that a ``float`` or ``double`` cannot hold exactly (2^53 + 1 is written as 2^53; an integer
  beyond the double range makes the encoder raise half way through the record);
- text that is not a UUID in a ``uuid`` string (written as it is; readers then fail on the file).

``exactness_check`` compiles, once per schema, a function that finds such a value in a record and names
its field the way the Parquet path does (``user.score``, ``series[]`` for array items, ``gauges{}`` for map
values). Schemas without ``float``, ``double`` or ``uuid`` fields compile to no check at all. What is not
an alteration: rounding a double to 32-bit precision (1e-50 becomes 0.0; that is what a ``float`` field
is), and infinity or NaN, which Avro floats hold. The rules match connectors/arrow_exact.py's.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from typing import Any

# The validator fastavro's writer runs itself, with the named types passed in (the public validate()
# parses the schema again on every call). Not in fastavro's stubs.
from fastavro._validation import _validate  # type: ignore[attr-defined]

__all__ = ["exactness_check"]

Check = Callable[[Any, str], str | None]
"""(value, field path) -> the reason the value does not fit exactly, or None."""

_FLOAT32 = struct.Struct("<f")
_NO_OPTIONS: dict[str, Any] = {}


def exactness_check(parsed: Any, named: Mapping[str, Any]) -> Callable[[Any], str | None] | None:
    """A function giving the reason a record would be written altered (None if it would not), or None when
    the schema has nothing to check. ``parsed``/``named``: ``fastavro.parse_schema``'s result and the named
    types it filled in."""
    check = _Compiler(named).compile(parsed)
    if check is None:
        return None
    return lambda record: check(record, "")


def _float32(value: Any, path: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # the validator's business
    try:
        stored = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except (OverflowError, struct.error):  # struct.error: an integer beyond even a double
        return f"field {path!r} (float): {_short(value)} is beyond a 32-bit float (±3.4e38)"
    if isinstance(value, int) and stored != value:
        return f"field {path!r} (float): the integer {value} would be written as {stored!r}"
    return None


def _float64(value: Any, path: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None  # a float is a double already
    try:
        exact = float(value) == value
    except OverflowError:
        return f"field {path!r} (double): the integer {_short(value)} is beyond a double"
    if not exact:
        return f"field {path!r} (double): the integer {value} would be written as {float(value)!r}"
    return None


def _short(number: int | float) -> str:
    text = repr(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _uuid(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        try:
            uuid.UUID(value)
        except ValueError:
            return f"field {path!r} (uuid): {value!r:.60} is not a UUID"
    return None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Compiler:
    """Builds the check of a (parsed) schema; named types are compiled once, recursive ones lazily."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._done: dict[str, Check | None] = {}

    def compile(self, schema: Any) -> Check | None:
        if isinstance(schema, str):
            return self._primitive_or_named(schema)
        if isinstance(schema, list):
            return self._union(schema)
        kind = schema["type"]
        if kind == "string" and schema.get("logicalType") == "uuid":
            return _uuid
        if kind in ("record", "error"):
            return self._named_type(schema["name"], lambda: self._record(schema))
        if kind == "array":
            return self._items(self.compile(schema["items"]), "[]", list | tuple)
        if kind == "map":
            return self._items(self.compile(schema["values"]), "{}", Mapping)
        if isinstance(kind, str) and kind not in ("enum", "fixed"):
            return self.compile(kind)  # {"type": "float"}, logical types on primitives
        return None

    def _primitive_or_named(self, name: str) -> Check | None:
        if name == "float":
            return _float32
        if name == "double":
            return _float64
        if name in self._named:
            return self._named_type(name, lambda: self.compile(self._named[name]))
        return None

    def _named_type(self, name: str, build: Callable[[], Check | None]) -> Check | None:
        if name in self._done:
            done = self._done[name]
            # A recursive reference to a type still being compiled: look its check up when it runs.
            return done if done is not _pending else (lambda v, p: (self._done[name] or _never)(v, p))
        self._done[name] = _pending
        self._done[name] = check = build()
        return check

    def _record(self, schema: Mapping[str, Any]) -> Check | None:
        fields = [(f["name"], c) for f in schema["fields"] if (c := self.compile(f["type"])) is not None]
        if not fields:
            return None

        def check(value: Any, path: str) -> str | None:
            if type(value) is not dict and not isinstance(value, Mapping):  # the ABC check is slow
                return None
            for name, field_check in fields:
                item = value.get(name)
                if item is not None and (reason := field_check(item, _join(path, name))) is not None:
                    return reason
            return None

        return check

    @staticmethod
    def _items(item_check: Check | None, suffix: str, container: Any) -> Check | None:
        if item_check is None:
            return None

        def check(value: Any, path: str) -> str | None:
            if not isinstance(value, container):
                return None
            items = value.values() if isinstance(value, Mapping) else value
            where = path + suffix
            for item in items:
                if item is not None and (reason := item_check(item, where)) is not None:
                    return reason
            return None

        return check

    def _union(self, branches: list[Any]) -> Check | None:
        checks = [self.compile(b) for b in branches]
        if not any(checks):
            return None
        named = self._named

        def check(value: Any, path: str) -> str | None:
            index = _union_branch(value, branches, named)
            branch_check = checks[index] if index >= 0 else None
            return branch_check(value, path) if branch_check is not None else None

        return check


def _never(value: Any, path: str) -> str | None:
    return None


_pending: Check = _never  # marks a named type whose check is being compiled


def _union_branch(value: Any, branches: list[Any], named: Mapping[str, Any]) -> int:
    """The branch fastavro's writer encodes ``value`` with (``write_union``): the first that validates, but
    ``double`` over an earlier ``float``, and of records the one sharing most fields; -1 for none."""
    best, most_fields, after_float = -1, -1, False
    for index, branch in enumerate(branches):
        kind = _kind(branch, named)
        if after_float:
            if kind == "double":
                return index
            continue
        if not _validate(value, branch, named, "", False, _NO_OPTIONS):
            continue
        if kind in ("record", "error"):
            resolved = named[branch] if isinstance(branch, str) else branch
            shared = len({f["name"] for f in resolved["fields"]}.intersection(value))
            if shared > most_fields:
                best, most_fields = index, shared
        elif kind == "float":
            best, after_float = index, True
        else:
            return index
    return best


def _kind(schema: Any, named: Mapping[str, Any]) -> str:
    if isinstance(schema, str):
        return _kind(named[schema], named) if schema in named else schema
    if isinstance(schema, list):
        return "union"
    kind = schema["type"]
    return kind if isinstance(kind, str) else "union"
