"""From decoded records to line-protocol lines: measurement, tags, fields and timestamp.

The selection works like the Timestream sink's (``connectors/timestream/mapping.py``, whose value
converters, time options and JSON decoding are reused): tags are named values read from dotted paths,
fields are typed values, the time comes from a field in a declared unit or from the record's event or
arrival time. A record that cannot become a valid line (missing time or field, a value that does not fit
its type, a newline in a tag) gets a reason and goes to the dead-letter queue instead of failing the write.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec
import orjson

from streamkit.batch import Int64Array, RecordBatch
from streamkit.connectors.influxdb.lineproto import escape_key, escape_measurement, quote_string
from streamkit.connectors.timestream.mapping import (
    InvalidRecord,
    TimeOptions,
    bigint_text,
    boolean_text,
    decode_values,
    double_text,
    epoch,
)
from streamkit.errors import ConfigError
from streamkit.predicates import MISSING, field_getter

FieldType = Literal["auto", "float", "integer", "uinteger", "string", "boolean"]
Precision = Literal["s", "ms", "us", "ns"]

# Units of TimeOptions (Timestream's spelling) as line-protocol precisions, and each one in nanoseconds.
UNIT_PRECISION: dict[str, Precision] = {"SECONDS": "s", "MILLISECONDS": "ms", "MICROSECONDS": "us", "NANOSECONDS": "ns"}
PER_NS: dict[str, int] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
UINT64_MAX = 2**64 - 1
# Names the query side owns: `time` is the timestamp column (v3, InfluxQL); `_` starts v2's system names.
_RESERVED = ("time",)


class TagOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    field: str | None = None
    """Dotted path of the value; defaults to ``name``."""


class FieldOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    field: str | None = None
    """Dotted path of the value; defaults to ``name``."""
    type: FieldType = "auto"
    """auto: booleans, strings, and every JSON number as a float (so 1 and 1.5 never conflict)."""
    optional: bool = False
    """A missing value is left out of the line instead of dead-lettering the record."""


def _uinteger(value: Any) -> str:
    text = bigint_text(value) if not (isinstance(value, int) and value > 2**63 - 1) else str(value)
    number = int(text)
    if not 0 <= number <= UINT64_MAX:
        raise InvalidRecord(f"{value!r} is not an unsigned 64-bit integer")
    return text + "u"


def _auto(value: Any, what: str) -> str:
    kind = type(value)
    if kind is float and math.isfinite(value):  # type(), not isinstance: a bool is an int
        return repr(value)
    if kind is float or kind is int:
        return double_text(value)  # NaN and infinity are refused there
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return quote_string(value, what)
    if isinstance(value, (dict, list)):
        return quote_string(orjson.dumps(value).decode(), what)
    raise InvalidRecord(f"{value!r} has no line-protocol type")


def _string(value: Any, what: str) -> str:
    return quote_string(value if isinstance(value, str) else orjson.dumps(value).decode(), what)


def _integer(value: Any) -> str:
    return bigint_text(value) + "i"


def field_converter(spec: FieldOptions) -> Callable[[Any], str]:
    """The function giving a field value's line-protocol text; it raises InvalidRecord (or ValueError)."""
    what = f"field {spec.name!r}"
    match spec.type:
        case "auto":
            return functools.partial(_auto, what=what)
        case "float":
            return double_text
        case "integer":
            return _integer
        case "uinteger":
            return _uinteger
        case "boolean":
            return boolean_text
        case _:
            return functools.partial(_string, what=what)


def _check_name(name: str, where: str) -> None:
    if not name:
        raise ConfigError(where, "empty name")
    if name.lower() in _RESERVED or name.startswith("_"):
        raise ConfigError(where, f"{name!r} is reserved by InfluxDB (`time`, and names starting with `_`)")
    if "\n" in name:
        raise ConfigError(where, f"{name!r} contains a newline, which line protocol cannot carry")


class LineMapping:
    """The compiled mapping of one sink; :meth:`map_batch` turns a batch into lines (bytes, no newline)."""

    def __init__(
        self,
        *,
        measurement: str,
        measurement_field: str | None,
        tags: Sequence[str | TagOptions],
        fields: Sequence[str | FieldOptions],
        time: TimeOptions,
        precision: Precision,
        where: str = "sink",
    ) -> None:
        tag_specs = [TagOptions(name=t) if isinstance(t, str) else t for t in tags]
        field_specs = [FieldOptions(name=f) if isinstance(f, str) else f for f in fields]
        self._validate(measurement, tag_specs, field_specs, where)
        self.measurement = measurement
        self._measurement_get = field_getter(measurement_field) if measurement_field else None
        self._fixed_measurement = escape_measurement(measurement)
        # Sorted by key: the reference recommends tags in key order (the server's own sort is then a no-op).
        # (",key=", getter, name, what) per tag and ("key=", getter, converter, spec) per field, built once.
        self._tags = [
            ("," + escape_key(t.name) + "=", field_getter(t.field or t.name), t.name, f"tag {t.name!r} value")
            for t in tag_specs
        ]
        self._tags.sort(key=lambda t: t[0])
        self._fields = [
            (escape_key(f.name, "field key") + "=", field_getter(f.field or f.name), field_converter(f), f)
            for f in field_specs
        ]
        self.time = time
        self._time_get = field_getter(time.field) if time.field else None
        self.precision = precision
        # Record times are epoch numbers in time.unit (or milliseconds): integer factors to the precision.
        source = UNIT_PRECISION[time.unit] if time.field else "ms"
        self._scale_up, self._scale_down = _factors(source, precision)

    @staticmethod
    def _validate(measurement: str, tags: list[TagOptions], fields: list[FieldOptions], where: str) -> None:
        try:
            escape_measurement(measurement)
        except InvalidRecord as exc:
            raise ConfigError(f"{where}.measurement", str(exc)) from None
        if not fields:
            raise ConfigError(f"{where}.fields", "at least one field is required (a line needs a field)")
        seen: set[str] = set()
        for key, names in (("tags", [t.name for t in tags]), ("fields", [f.name for f in fields])):
            for i, name in enumerate(names):
                _check_name(name, f"{where}.{key}[{i}]")
                if name in seen:
                    raise ConfigError(f"{where}.{key}[{i}]", f"{name!r} is used twice (tag and field keys)")
                seen.add(name)

    # -- per batch ---------------------------------------------------------------------------------
    def map_batch(self, batch: RecordBatch) -> tuple[list[bytes | None], list[tuple[int, str]]]:
        """One line per record (None where it failed) and the failures as ``(index, reason)``."""
        values, failures = decode_values(batch)
        times = self._times(batch)
        lines: list[bytes | None] = []
        bad = {i for i, _ in failures}
        for i, value in enumerate(values):
            if i in bad:
                lines.append(None)
                continue
            try:
                lines.append(self.line(value, None if times is None else int(times[i])).encode("utf-8"))
            except InvalidRecord as exc:
                lines.append(None)
                failures.append((i, str(exc)))
        return lines, failures

    def _times(self, batch: RecordBatch) -> Int64Array | None:
        if self._time_get is not None:
            return None
        return batch.event_ms if batch.event_ms is not None else batch.arrival_ms

    # -- per record --------------------------------------------------------------------------------
    def line(self, value: Any, time_ms: int | None) -> str:
        """The line of one decoded record; raises InvalidRecord with the reason."""
        if not isinstance(value, dict):
            raise InvalidRecord(f"expected a JSON object, got {type(value).__name__}")
        parts = [self._measurement(value)]
        for prefix, get, name, what in self._tags:
            raw = get(value)
            if raw is MISSING or raw is None or raw == "":
                continue  # line protocol has no empty tag value: the point simply lacks the tag
            if type(raw) is not str:
                if isinstance(raw, (dict, list)):
                    raise InvalidRecord(f"tag {name!r} is a {type(raw).__name__}, expected a scalar")
                raw = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
            parts.append(prefix)
            parts.append(escape_key(raw, what))
        separator = " "
        for prefix, get, convert, spec in self._fields:
            raw = get(value)
            if raw is MISSING or raw is None:
                if spec.optional:
                    continue
                raise InvalidRecord(f"field {spec.name!r}: {spec.field or spec.name!r} is missing")
            try:
                text = convert(raw)
            except (InvalidRecord, ValueError, OverflowError) as exc:
                raise InvalidRecord(f"field {spec.name!r} ({spec.type}): {exc}") from None
            parts.append(separator)
            parts.append(prefix)
            parts.append(text)
            separator = ","
        if separator == " ":
            raise InvalidRecord("no field value present (a line needs at least one field)")
        parts.append(" ")
        parts.append(str(self._timestamp(value, time_ms)))
        return "".join(parts)

    def _measurement(self, value: dict[str, Any]) -> str:
        if self._measurement_get is None:
            return self._fixed_measurement
        raw = self._measurement_get(value)
        if raw is MISSING or raw is None or raw == "":
            return self._fixed_measurement
        if isinstance(raw, (dict, list, bool)):
            raise InvalidRecord(f"measurement field holds a {type(raw).__name__}, expected a string")
        return escape_measurement(str(raw))

    def _timestamp(self, value: dict[str, Any], time_ms: int | None) -> int:
        if self._time_get is not None:
            raw = self._time_get(value)
            if raw is MISSING or raw is None:
                raise InvalidRecord(f"time field {self.time.field!r} is missing")
            try:
                # Scaling up inside epoch() keeps a float's fraction (1.7e9 s with a .5 -> ms exactly).
                return epoch(raw, self._scale_up) // self._scale_down
            except (InvalidRecord, ValueError, OverflowError) as exc:
                raise InvalidRecord(f"time field {self.time.field!r}: {exc}") from None
        if time_ms is None or time_ms <= 0:
            raise InvalidRecord("the record has no event or arrival time (set time.field or add a timestamp)")
        return time_ms * self._scale_up // self._scale_down


def _factors(source: str, precision: str) -> tuple[int, int]:
    """(multiply, divide) turning a time in ``source`` units into ``precision`` units with integers."""
    ratio_up, ratio_down = PER_NS[source], PER_NS[precision]
    if ratio_up >= ratio_down:
        return ratio_up // ratio_down, 1
    return 1, ratio_down // ratio_up
