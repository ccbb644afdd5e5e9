"""Table schemas: from the configuration or the first records, and how records become Arrow rows of one.

Evolution rules (docs/sinks-iceberg.md):

- A field the table does not have becomes a new optional column (``new_columns: add``, the default), with
  the type inferred from its values; ``ignore`` drops such fields, ``reject`` dead-letters the records.
- An ``int`` column whose values outgrow 32 bits is widened to ``long`` (a change Iceberg allows).
- Anything else that does not fit (a string in a ``long`` column, a fraction in an integer column, a
  missing or null ``required`` column) is a record error: the record goes to the dead-letter queue with
  the column and the reason. Columns are never dropped, renamed or narrowed by the sink.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
)

from streamkit.connectors.arrow_exact import CONVERT_ERRORS, conform, exact_array
from streamkit.connectors.iceberg.settings import ColumnOptions
from streamkit.connectors.s3.formats import decode_json_payloads, read_json_table

_PRIMITIVES: Final[dict[str, IcebergType]] = {
    "boolean": BooleanType(),
    "int": IntegerType(),
    "long": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "string": StringType(),
    "binary": BinaryType(),
    "date": DateType(),
    "time": TimeType(),
    "timestamp": TimestampType(),
    "timestamptz": TimestamptzType(),
}
_DECIMAL = re.compile(r"decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_CONVERT_ERRORS = CONVERT_ERRORS


def iceberg_type(name: str) -> IcebergType:
    """The Iceberg type named in the configuration; ValueError names what is allowed."""
    spelled = name.strip().lower()
    if spelled in _PRIMITIVES:
        return _PRIMITIVES[spelled]
    decimal = _DECIMAL.fullmatch(spelled)
    if decimal:
        precision, scale = int(decimal.group(1)), int(decimal.group(2))
        if not 1 <= precision <= 38 or scale > precision:
            raise ValueError(f"decimal({precision},{scale}): precision is 1-38 and scale at most the precision")
        return DecimalType(precision, scale)
    raise ValueError(f"unknown type {name!r}; use one of {', '.join(_PRIMITIVES)} or decimal(P,S)")


def configured_schema(columns: Sequence[ColumnOptions]) -> Schema:
    fields = [
        NestedField(i + 1, c.name, iceberg_type(c.type), required=c.required, doc=c.doc) for i, c in enumerate(columns)
    ]
    return Schema(*fields)


def _without_nulls(kind: pa.DataType) -> pa.DataType | None:
    """The type with fields that only ever held null removed (Iceberg has no null type); None if nothing is left."""
    if pa.types.is_null(kind):
        return None
    if pa.types.is_struct(kind):
        children = (kind.field(i) for i in range(kind.num_fields))
        fields = [pa.field(f.name, t) for f in children if (t := _without_nulls(f.type)) is not None]
        return pa.struct(fields) if fields else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = _without_nulls(kind.value_type)
        return pa.list_(item) if item is not None else None
    return kind


def infer_columns(values: Sequence[Any], names: Sequence[str] | None = None) -> pa.Schema:
    """Arrow types of the fields of decoded records (all of them, or only ``names``), widened as Arrow's
    permissive unification allows (int to double, null to anything). Fields that only held null, or whose
    values no single type holds, are left out: they are added once a value says what they are."""
    wanted = names if names is not None else _field_names([v for v in values if isinstance(v, dict)])
    out: list[pa.Field] = []
    for name in wanted:
        column = [v.get(name) for v in values if isinstance(v, dict)]
        kind = _column_type(column)
        if kind is not None and (kind := _without_nulls(kind)) is not None:
            out.append(pa.field(name, kind))
    return pa.schema(out)


def _column_type(column: list[Any]) -> pa.DataType | None:
    try:
        return pa.array(column).type
    except _CONVERT_ERRORS:
        pass
    # Mixed values: the type of the first value that converts; the others are rejected as not fitting.
    for value in column:
        if value is None:
            continue
        try:
            return pa.array([value]).type
        except _CONVERT_ERRORS:
            continue
    return None


def _field_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of the records, in first-seen order (iterated in C: this runs on every batch)."""
    return list(dict.fromkeys(chain.from_iterable(records)))


@dataclass
class Evolution:
    """Schema changes the records ask for."""

    add: dict[str, pa.DataType] = field(default_factory=dict)
    widen_to_long: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.add or self.widen_to_long)

    def describe(self) -> str:
        parts = [f"add {name} ({kind})" for name, kind in self.add.items()]
        parts += [f"widen {name} to long" for name in sorted(self.widen_to_long)]
        return ", ".join(parts)


@dataclass
class Converted:
    """The rows of one batch: ``rows[j]`` is the batch index of row ``j`` of ``data``."""

    data: pa.Table | None
    rows: list[int]
    failures: dict[int, str]
    evolution: Evolution


class RecordConverter:
    """Turns records into Arrow rows of one table schema (rebuilt whenever the schema changes)."""

    def __init__(self, schema: Schema, new_columns: str) -> None:
        self.schema = schema
        self.arrow = schema_to_pyarrow(schema)
        self.names = set(self.arrow.names)
        self.required = [f.name for f in schema.fields if f.required]
        self.new_columns = new_columns

    def convert(self, payloads: Sequence[bytes] | None, values: Sequence[Any] | None) -> Converted:
        """Rows for the records given as JSON ``payloads`` or decoded ``values`` (one of them)."""
        if values is None:
            assert payloads is not None
            unexpected = "ignore" if self.new_columns == "ignore" else "error"
            table = read_json_table(payloads, self.arrow, unexpected_fields=unexpected)
            if table is not None:
                rows = list(range(len(payloads)))
                data, failures = self._check_required(table, rows, {})
                return Converted(data, [r for r in rows if r not in failures], failures, Evolution())
            decoded, indexes, decode_failures = decode_json_payloads(payloads)
            failures = {f.index: f.reason for f in decode_failures}
            return self._convert_values(decoded, indexes, failures)
        return self._convert_values(list(values), list(range(len(values))), {})

    def _convert_values(self, values: list[Any], indexes: list[int], failures: dict[int, str]) -> Converted:
        good: list[Any] = []
        rows: list[int] = []
        for value, index in zip(values, indexes, strict=True):
            if isinstance(value, dict):
                good.append(value)
                rows.append(index)
            else:
                failures[index] = f"not a JSON object: {type(value).__name__}"
        evolution = Evolution()
        unknown = [n for n in _field_names(good) if n not in self.names]
        if unknown and self.new_columns == "add":
            evolution.add = dict(zip(*_pair(infer_columns(good, unknown)), strict=True))
        elif unknown and self.new_columns == "reject":
            unknown_set = set(unknown)
            keep = []
            for value, index in zip(good, rows, strict=True):
                extra = sorted(unknown_set.intersection(value))
                if extra:
                    failures[index] = f"fields {extra} are not columns of the table (new_columns: reject)"
                else:
                    keep.append((value, index))
            good, rows = [v for v, _ in keep], [i for _, i in keep]
        data = self._struct_table(good)
        if data is None:
            data, bad = self._column_by_column(good, evolution)
            for j, reason in bad.items():
                failures[rows[j]] = reason
            rows = [r for j, r in enumerate(rows) if j not in bad]
        if evolution:
            return Converted(None, [], failures, evolution)
        data, failures = self._check_required(data, rows, failures)
        return Converted(data, [r for r in rows if r not in failures], failures, evolution)

    def _struct_table(self, values: list[Any]) -> pa.Table | None:
        """The fast path: Arrow infers the records' types in one pass, then each column is cast (safely:
        pyarrow's typed conversion would silently truncate 1.5 into an integer column)."""
        try:
            inferred = pa.array(values)
        except _CONVERT_ERRORS:
            return None
        if not pa.types.is_struct(inferred.type):
            return None
        arrays = []
        for target in self.arrow:
            index = inferred.type.get_field_index(target.name)
            try:
                child = inferred.field(index) if index >= 0 else pa.nulls(len(values), target.type)
                arrays.append(conform(child, target.type, target.name))
            except _CONVERT_ERRORS:
                return None
        return pa.Table.from_arrays(arrays, schema=self.arrow)

    def _column_by_column(self, values: list[Any], evolution: Evolution) -> tuple[pa.Table, dict[int, str]]:
        """The slow path, for batches with records that do not fit: find them, and what to widen."""
        bad: dict[int, str] = {}
        columns: dict[str, list[Any]] = {}
        for arrow_field in self.arrow:
            name, kind = arrow_field.name, arrow_field.type
            column = [v.get(name) for v in values]
            columns[name] = column
            if _fits(column, kind):
                continue
            if pa.types.is_int32(kind) and _fits(column, pa.int64()):
                evolution.widen_to_long.add(name)
                continue
            for j, value in enumerate(column):
                if j not in bad and not _fits([value], kind):
                    bad[j] = f"column {name!r} ({self.schema.find_field(name).field_type}): {value!r:.80} does not fit"
        keep = [j for j in range(len(values)) if j not in bad]
        arrays = [_array([columns[f.name][j] for j in keep], f.type) for f in self.arrow] if not evolution else None
        if arrays is None:
            return pa.table({}), bad
        return pa.Table.from_arrays(arrays, schema=self.arrow), bad

    def _check_required(
        self, data: pa.Table, rows: list[int], failures: dict[int, str]
    ) -> tuple[pa.Table, dict[int, str]]:
        """Rows with a null in a required column are record errors (Arrow would store them as nulls)."""
        if not self.required:
            return data, failures
        missing: dict[int, str] = {}
        for name in self.required:
            column = data.column(name)
            if column.null_count:
                for j in pc.indices_nonzero(column.is_null()).to_pylist():
                    missing.setdefault(j, f"required column {name!r} is missing or null")
        if not missing:
            return data, failures
        keep = pa.array([j not in missing for j in range(data.num_rows)])
        for j, reason in missing.items():
            failures[rows[j]] = reason
        return data.filter(keep), failures


def _pair(schema: pa.Schema) -> tuple[list[str], list[pa.DataType]]:
    return list(schema.names), list(schema.types)


def _array(column: list[Any], kind: pa.DataType) -> pa.Array:
    """Values as an array of ``kind``, none altered (streamkit.connectors.arrow_exact): ISO 8601 text becomes
    a timestamp, 1.5 never becomes an integer (pyarrow's typed conversion would truncate it)."""
    return exact_array(column, kind)


def _fits(column: list[Any], kind: pa.DataType) -> bool:
    try:
        _array(column, kind)
    except _CONVERT_ERRORS:
        return False
    return True
