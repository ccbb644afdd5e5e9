"""Decoded records (Python values) as Arrow arrays of a given type, exactly or not at all.

pyarrow's typed conversion from Python objects (``pa.array(values, type=...)``) silently alters values
that do not fit: 1.5 becomes 1 in an integer column, True becomes 1.0 in a double one, 1e300 becomes inf in
a float one. The sinks must never write a record altered (it goes to the dead-letter queue instead), so
values are converted the other way round: Arrow infers their types in one pass (in C, as fast as the typed
conversion), then each leaf is cast to the column's type with Arrow's *safe* cast, which fails on any
truncation or overflow, after a check that the kinds match at all (a bool is not a number, text is not a
number, a number is not text). Used by the S3 sink's Parquet writer and by the Iceberg sink.

What fits (docs/sinks-s3.md, schema mismatches): integers into any integer column in range, into float
columns when exactly representable, into decimal columns within the precision, into timestamp/date/time
columns as epoch numbers; floats into integer, decimal and temporal columns only without a fraction or extra
digits, into float32 columns when finite there (rounding to float32 precision is what the column is);
text into text, binary, decimal, and temporal columns (ISO 8601, without more precision than the column);
``null`` anywhere. Fields a struct column does not have are ignored; fields it has that a record lacks are
null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CONVERT_ERRORS", "Mismatch", "conform", "exact_array", "exact_cast", "widen_float32"]


class Mismatch(ValueError):
    """A value does not fit its column exactly; ``path`` names the field (``user.age``, ``tags[]``)."""

    def __init__(self, path: str, kind: pa.DataType, detail: str) -> None:
        self.path = path
        super().__init__(f"field {path!r} ({kind}): {detail}")


# Everything Arrow's conversion and cast raise for values that do not fit.
CONVERT_ERRORS: Final = (pa.ArrowException, ValueError, TypeError, OverflowError)


def exact_array(values: Sequence[Any], kind: pa.DataType, path: str = "") -> pa.Array:
    """``values`` as an array of ``kind`` without altering any; raises ``Mismatch`` (naming the field) or one
    of ``CONVERT_ERRORS`` (values whose types Arrow cannot even unify) otherwise."""
    return _conform(pa.array(values), kind, path)


def conform(array: pa.Array, kind: pa.DataType, path: str = "") -> pa.Array:
    """An array Arrow inferred from Python values, cast to ``kind`` with the rules of ``exact_array``."""
    return _conform(array, kind, path)


def exact_cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table cast column by column to ``schema`` with the same rules as ``exact_array``."""
    arrays = [
        _conform(table.column(f.name).combine_chunks(), f.type, f.name) if f.name in table.column_names else None
        for f in schema
    ]
    return pa.Table.from_arrays(
        [a if a is not None else pa.nulls(table.num_rows, f.type) for a, f in zip(arrays, schema, strict=True)],
        schema=schema,
    )


def widen_float32(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every float32 (at any depth) made float64, to read numbers without overflow."""
    return pa.schema([f.with_type(_widen(f.type)) for f in schema])


def _widen(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_float32(kind):
        return pa.float64()
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_widen(f.type)) for f in kind])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_widen(kind.value_type)))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_widen(kind.value_type)))
    if pa.types.is_map(kind):
        return pa.map_(kind.key_type, kind.item_field.with_type(_widen(kind.item_type)))
    return kind


def _conform(array: pa.Array, kind: pa.DataType, path: str) -> pa.Array:
    source = array.type
    if source == kind:
        return array
    if pa.types.is_null(source):
        return pa.nulls(len(array), kind)
    if pa.types.is_struct(kind):
        return _struct(array, kind, path)
    if pa.types.is_map(kind):
        return _map(array, kind, path)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _list(array, kind, path)
    if not _kinds_fit(source, kind):
        raise Mismatch(path, kind, f"{_sample(array)} is {_name(source)}")
    try:
        if pa.types.is_temporal(kind) and (pa.types.is_integer(source) or pa.types.is_floating(source)):
            # Epoch numbers: integral (safe cast to int64), then to the width the temporal type needs.
            width = pa.int32() if kind.bit_width == 32 else pa.int64()
            return array.cast(pa.int64()).cast(width).cast(kind)
        out = array.cast(kind)
    except CONVERT_ERRORS as error:
        raise Mismatch(path, kind, str(error).splitlines()[0]) from error
    if pa.types.is_floating(source) and (pa.types.is_float32(kind) or pa.types.is_decimal(kind)):
        _check_round_trip(array, out, kind, path)
    return out


def _kinds_fit(source: pa.DataType, kind: pa.DataType) -> bool:
    t = pa.types
    number = t.is_integer(source) or t.is_floating(source)
    if t.is_boolean(kind) or t.is_boolean(source):
        return bool(t.is_boolean(kind) and t.is_boolean(source))
    if t.is_integer(kind) or t.is_floating(kind):
        return bool(number)
    if t.is_decimal(kind):
        return bool(number or t.is_decimal(source) or t.is_string(source) or t.is_large_string(source))
    if t.is_temporal(kind):
        return bool(number or t.is_temporal(source) or t.is_string(source) or t.is_large_string(source))
    if t.is_string(kind) or t.is_large_string(kind):
        return bool(t.is_string(source) or t.is_large_string(source))
    if t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind):
        return bool(not number and not t.is_temporal(source) and not t.is_decimal(source) and not t.is_nested(source))
    return False


def _check_round_trip(source: pa.Array, out: pa.Array, kind: pa.DataType, path: str) -> None:
    """Floats into float32 must stay finite; into a decimal they must not lose digits (1.234 into
    decimal(5,2) would be 1.23: Arrow's safe cast rounds there)."""
    if pa.types.is_float32(kind):
        lost = pc.and_(pc.is_finite(source), pc.invert(pc.is_finite(out)))
    else:
        lost = pc.not_equal(out.cast(pa.float64()), source)
    if pc.any(lost).as_py():
        index = pc.index(lost, True).as_py()
        raise Mismatch(path, kind, f"{source[index].as_py()!r:.80} would be altered")


def _struct(array: pa.Array, kind: pa.StructType, path: str) -> pa.Array:
    if not pa.types.is_struct(array.type):
        raise Mismatch(path or "record", kind, f"{_sample(array)} is {_name(array.type)}, not an object")
    children = []
    for target in kind:
        index = array.type.get_field_index(target.name)
        child = array.field(index) if index >= 0 else pa.nulls(len(array), target.type)
        children.append(_conform(child, target.type, f"{path}.{target.name}" if path else target.name))
    return pa.StructArray.from_arrays(children, fields=list(kind), mask=_nulls(array))


def _list(array: pa.Array, kind: pa.DataType, path: str) -> pa.Array:
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise Mismatch(path, kind, f"{_sample(array)} is {_name(array.type)}, not an array")
    items = _conform(array.values, kind.value_type, f"{path}[]")
    build = pa.LargeListArray if pa.types.is_large_list(kind) else pa.ListArray
    offsets = array.offsets.cast(pa.int64() if pa.types.is_large_list(kind) else pa.int32())
    return build.from_arrays(offsets, items, type=kind, mask=_nulls(array))


def _map(array: pa.Array, kind: pa.MapType, path: str) -> pa.Array:
    """A JSON object read as a map: Arrow infers it as a struct with a field per key seen in the batch, so
    the entries of a row are its fields that hold a value (a key whose value is null is left out: the
    inferred struct cannot tell it from a missing key)."""
    if not pa.types.is_struct(array.type):
        raise Mismatch(path, kind, f"{_sample(array)} is {_name(array.type)}, not an object")
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    values = [_conform(array.field(i), kind.item_type, f"{path}{{}}") for i in range(len(names))]
    # Row-major entries: per row, the fields that hold a value, taken from the stacked columns.
    stacked = pa.concat_arrays(values) if values else pa.array([], kind.item_type)
    rows = len(array)
    present = [pc.is_valid(array.field(i)).to_pylist() for i in range(len(names))]
    keys: list[str] = []
    picks: list[int] = []
    offsets = [0]
    for row in range(rows):
        for i, name in enumerate(names):
            if present[i][row]:
                keys.append(name)
                picks.append(i * rows + row)
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(keys, kind.key_type),
        stacked.take(pa.array(picks, pa.int64())),
        type=kind,
        mask=_nulls(array),
    )


def _nulls(array: pa.Array) -> pa.Array | None:
    return array.is_null() if array.null_count else None


def _sample(array: pa.Array) -> str:
    first = next((v for v in array if v.is_valid), None)
    return f"{first.as_py()!r:.80}" if first is not None else "null"


def _name(kind: pa.DataType) -> str:
    if pa.types.is_boolean(kind):
        return "a boolean"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "a number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    return str(kind)
