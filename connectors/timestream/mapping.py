"""From decoded records to Timestream ``Record`` entries: dimensions, measures, time and version.

The mapping is declared in the sink's options and checked against Timestream's limits when the pipeline
is built (128 dimensions, 256 measures in a multi-measure record, reserved names). Each record is then
checked before it is sent: a missing time or measure, a value that does not fit its type, a record over
2 KB. Such a record goes to the dead-letter queue with the reason instead of failing the request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import orjson

from streamkit.batch import Int64Array, RecordBatch, occurrence_rank
from streamkit.errors import ConfigError
from streamkit.predicates import MISSING, field_getter

TimeUnit = Literal["MILLISECONDS", "SECONDS", "MICROSECONDS", "NANOSECONDS"]
MeasureType = Literal["DOUBLE", "BIGINT", "VARCHAR", "BOOLEAN", "TIMESTAMP"]

MAX_DIMENSIONS = 128
MAX_MEASURES = 256
MAX_RECORD_BYTES = 2048
MAX_REQUEST_RECORDS = 100
INT64_MAX = 2**63 - 1
VERSION_SCALE = 1_000_000
"""Arrival-time versions are ``arrival_ms * VERSION_SCALE + rank``: int64 holds them until 2262."""

_PER_MS = {"SECONDS": 1000, "MILLISECONDS": 1, "MICROSECONDS": 1 / 1000, "NANOSECONDS": 1 / 1_000_000}
# Fixed-size types count 8 bytes (BOOLEAN 1) towards the record size, as Timestream meters them.
_FIXED_SIZE = {"DOUBLE": 8, "BIGINT": 8, "TIMESTAMP": 8, "BOOLEAN": 1}


class TimeOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    field: str | None = None
    """Record field with the epoch time; absent: the event time set by the ``timestamp`` processor."""
    unit: TimeUnit = "MILLISECONDS"
    """Unit of ``field``'s numbers, sent as the record's TimeUnit."""


class DimensionOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    field: str | None = None
    """Dotted path of the value; defaults to ``name``."""


class MeasureOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    field: str | None = None
    """Dotted path of the value; defaults to ``name``."""
    type: MeasureType = "DOUBLE"
    optional: bool = False
    """A missing value is left out of the record instead of dead-lettering it."""
    unit: TimeUnit = "MILLISECONDS"
    """TIMESTAMP only: the unit of the field's numbers (they are sent as epoch milliseconds)."""


class InvalidRecord(Exception):
    """A record the mapping cannot turn into a Timestream record; the message is the DLQ reason."""


def _reserved(name: str) -> bool:
    lower = name.lower()
    return lower in ("time", "measure_name") or lower.startswith(("measure_value", "ts_"))


def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def double_text(value: Any) -> str:
    if isinstance(value, bool):
        raise InvalidRecord("is a boolean, expected a number")
    if isinstance(value, int):
        return str(value)
    number = float(value) if isinstance(value, (float, str)) else math.nan
    if not math.isfinite(number):
        raise InvalidRecord(f"{value!r} is not a finite number (Timestream stores no NaN or infinity)")
    return repr(number)


def bigint_text(value: Any) -> str:
    if isinstance(value, bool):
        raise InvalidRecord("is a boolean, expected an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = int(value.strip())
    if not isinstance(value, int) or not -(2**63) <= value <= INT64_MAX:
        raise InvalidRecord(f"{value!r} is not a 64-bit integer")
    return str(value)


def boolean_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    raise InvalidRecord(f"{value!r} is not a boolean")


def epoch(value: Any, per_ms: float) -> int:
    """An epoch number (int, float or numeric string) in some unit, as an int in that unit * ``per_ms``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRecord(f"{value!r} is not an epoch number")
    number: float | int
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = float(value)  # "1.7e9" or "1700000000.5"; a ValueError here names the bad text
    else:
        number = value
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidRecord(f"{value!r} is not a finite time")
    result = round(number * per_ms) if per_ms != 1 else round(number)
    if result <= 0:
        raise InvalidRecord(f"{value!r} is not a positive epoch time")
    return int(result)


_CONVERT: dict[str, Callable[[Any], str]] = {
    "DOUBLE": double_text,
    "BIGINT": bigint_text,
    "VARCHAR": scalar_text,
    "BOOLEAN": boolean_text,
}


def _measure_text(spec: MeasureOptions, value: Any) -> str:
    if spec.type == "TIMESTAMP":
        # Epoch milliseconds, as AWS's multi-measure examples write TIMESTAMP measures.
        return str(epoch(value, _PER_MS[spec.unit]))
    return _CONVERT[spec.type](value)


def _utf8(text: str) -> int:
    return len(text.encode("utf-8")) if not text.isascii() else len(text)


class RecordMapping:
    """The compiled mapping of one sink; :meth:`map_batch` turns a batch into Timestream records."""

    def __init__(
        self,
        *,
        time: TimeOptions,
        dimensions: Sequence[str | DimensionOptions],
        measures: Sequence[str | MeasureOptions],
        measure_name: str | None,
        version: Literal["none", "position"] = "none",
        where: str = "sink",
    ) -> None:
        dims = [DimensionOptions(name=d) if isinstance(d, str) else d for d in dimensions]
        specs = [MeasureOptions(name=m) if isinstance(m, str) else m for m in measures]
        self._validate(dims, specs, measure_name, where)
        self.time = time
        self.multi = measure_name is not None
        self.measure_name = measure_name if measure_name is not None else specs[0].name
        self.version = version
        self._dims = [(d.name, field_getter(d.field or d.name), _utf8(d.name)) for d in dims]
        self._measures = [(m, field_getter(m.field or m.name), _utf8(m.name)) for m in specs]
        self._time_get = field_getter(time.field) if time.field else None
        paths = [*([time.field] if time.field else []), *(d.field or d.name for d in dims)]
        self.fields = tuple(dict.fromkeys([*paths, *(m.field or m.name for m in specs)]))
        """Every field path the mapping reads of a record (and nothing else of it): the sink's value_fields."""
        # The time, plus the record's measure name (a single measure's name is counted with its value).
        self._base_size = 8 + (_utf8(self.measure_name) if self.multi else 0)

    @staticmethod
    def _validate(
        dims: list[DimensionOptions], measures: Sequence[MeasureOptions], measure_name: str | None, where: str
    ) -> None:
        if len(dims) > MAX_DIMENSIONS:
            raise ConfigError(f"{where}.dimensions", f"{len(dims)} dimensions; Timestream allows {MAX_DIMENSIONS}")
        if not measures:
            raise ConfigError(f"{where}.measures", "at least one measure is required")
        if measure_name is None and len(measures) > 1:
            raise ConfigError(
                f"{where}.measure_name",
                f"{len(measures)} measures need a measure_name (they are written as one multi-measure record)",
            )
        if len(measures) > MAX_MEASURES:
            raise ConfigError(
                f"{where}.measures", f"{len(measures)} measures; a multi-measure record holds {MAX_MEASURES}"
            )
        seen: set[str] = set()
        for key, names in (("dimensions", [d.name for d in dims]), ("measures", [m.name for m in measures])):
            for i, name in enumerate(names):
                if not name or _reserved(name):
                    raise ConfigError(f"{where}.{key}[{i}]", f"{name!r} is empty or reserved by Timestream")
                if name in seen:
                    raise ConfigError(f"{where}.{key}[{i}]", f"{name!r} is used twice (dimension and measure names)")
                seen.add(name)
        if measure_name is not None and (not measure_name or _reserved(measure_name)):
            raise ConfigError(f"{where}.measure_name", f"{measure_name!r} is empty or reserved by Timestream")

    # -- per batch ---------------------------------------------------------------------------------
    def map_batch(self, batch: RecordBatch) -> tuple[list[dict[str, Any] | None], list[tuple[int, str]]]:
        """One entry per record (None where it failed) and the failures as ``(index, reason)``."""
        values, failures = decode_values(batch)
        times = self._times(batch)
        versions = self._versions(batch)
        records: list[dict[str, Any] | None] = []
        bad = {i for i, _ in failures}
        for i, value in enumerate(values):
            if i in bad:
                records.append(None)
                continue
            try:
                version = None if versions is None else int(versions[i])
                records.append(self.record(value, None if times is None else int(times[i]), version))
            except InvalidRecord as exc:
                records.append(None)
                failures.append((i, str(exc)))
        return records, failures

    def _times(self, batch: RecordBatch) -> Int64Array | None:
        if self._time_get is not None:
            return None  # read per record from the field
        return batch.event_ms if batch.event_ms is not None else batch.arrival_ms

    def _versions(self, batch: RecordBatch) -> Int64Array | None:
        """Version per record from its source position (see docs/sinks-firehose-timestream.md)."""
        if self.version == "none":
            return None
        picked: list[Any] = batch.origin.tolist()
        if batch.ticket is not None:
            positions = batch.ticket.positions
            picked = [positions[o] for o in picked]
        if all(type(p) is int and 0 <= p < INT64_MAX for p in picked):
            # Offsets (Kafka, synthetic sources) are int64 and increase within a partition: use them.
            return np.asarray(picked, dtype=np.int64) + 1
        # Kinesis sequence numbers have up to 128 digits: order by arrival time, then by source order.
        arrival = batch.arrival_ms
        rank = np.minimum(occurrence_rank(arrival), VERSION_SCALE - 1)
        return np.where(arrival > 0, arrival * VERSION_SCALE + rank, -1)

    # -- per record --------------------------------------------------------------------------------
    def record(self, value: Any, time_ms: int | None, version: int | None) -> dict[str, Any]:
        """The full Timestream record of one value (nothing hoisted); raises InvalidRecord."""
        if not isinstance(value, dict):
            raise InvalidRecord(f"expected a JSON object, got {type(value).__name__}")
        size = self._base_size
        if self._time_get is not None:
            raw = self._time_get(value)
            if raw is MISSING or raw is None:
                raise InvalidRecord(f"time field {self.time.field!r} is missing")
            try:
                time_value = epoch(raw, 1)
            except (InvalidRecord, ValueError) as exc:
                raise InvalidRecord(f"time field {self.time.field!r}: {exc}") from None
            unit = self.time.unit
        else:
            if time_ms is None or time_ms <= 0:
                raise InvalidRecord("the record has no event or arrival time (set time.field or add a timestamp)")
            time_value, unit = time_ms, "MILLISECONDS"
        record: dict[str, Any] = {"Time": str(time_value), "TimeUnit": unit}
        if version is not None:
            if version <= 0:
                raise InvalidRecord("no version: the record has no arrival time to derive it from")
            record["Version"] = version
            size += 8
        dimensions = []
        for name, get, name_size in self._dims:
            raw = get(value)
            if raw is MISSING or raw is None or raw == "":
                continue  # Timestream has no null dimension: the record simply lacks it
            if isinstance(raw, (dict, list)):
                raise InvalidRecord(f"dimension {name!r} is a {type(raw).__name__}, expected a scalar")
            text = scalar_text(raw)
            dimensions.append({"Name": name, "Value": text})
            size += name_size + _utf8(text)
        if dimensions:
            record["Dimensions"] = dimensions
        measures = []
        for spec, get, name_size in self._measures:
            raw = get(value)
            if raw is MISSING or raw is None:
                if spec.optional:
                    continue
                raise InvalidRecord(f"measure {spec.name!r}: field {spec.field or spec.name!r} is missing")
            try:
                text = _measure_text(spec, raw)
            except (InvalidRecord, ValueError, OverflowError) as exc:
                raise InvalidRecord(f"measure {spec.name!r} ({spec.type}): {exc}") from None
            if not text:
                raise InvalidRecord(f"measure {spec.name!r} is empty (Timestream needs at least one character)")
            measures.append({"Name": spec.name, "Value": text, "Type": spec.type})
            size += name_size + _FIXED_SIZE.get(spec.type, 0) + (_utf8(text) if spec.type == "VARCHAR" else 0)
        if not measures:
            raise InvalidRecord("no measure value present")
        if size > MAX_RECORD_BYTES:
            raise InvalidRecord(f"record of about {size:,} bytes exceeds Timestream's {MAX_RECORD_BYTES:,}-byte limit")
        if self.multi:
            record.update(MeasureName=self.measure_name, MeasureValueType="MULTI", MeasureValues=measures)
        else:
            only = measures[0]
            record.update(MeasureName=only["Name"], MeasureValueType=only["Type"], MeasureValue=only["Value"])
        return record


def decode_values(batch: RecordBatch) -> tuple[list[Any], list[tuple[int, str]]]:
    """Decoded values; undecoded payloads are parsed as JSON here (failures become reasons)."""
    if batch.decoded:
        return batch.values, []
    values: list[Any] = []
    failures: list[tuple[int, str]] = []
    for i, payload in enumerate(batch.payloads):
        try:
            values.append(orjson.loads(payload))
        except orjson.JSONDecodeError as exc:
            values.append(None)
            failures.append((i, f"payload is not JSON: {exc}"))
    return values, failures


_HOISTABLE = ("MeasureName", "MeasureValueType", "TimeUnit", "Time", "Version")


def hoist(records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Move what every record of a request shares into CommonAttributes (smaller requests, same data).

    Shared: the measure name and type, the time unit, the time or version when equal, and each dimension
    whose name and value are the same in every record. Returns ``(common, records)``; the records given
    are not modified.
    """
    if len(records) < 2:
        return {}, records
    first = records[0]
    common: dict[str, Any] = {}
    for key in _HOISTABLE:
        value = first.get(key)
        if value is not None and all(r.get(key) == value for r in records):
            common[key] = value
    shared = {(d["Name"], d["Value"]) for d in first.get("Dimensions", ())}
    for r in records[1:]:
        if not shared:
            break
        shared &= {(d["Name"], d["Value"]) for d in r.get("Dimensions", ())}
    if shared:
        common["Dimensions"] = [d for d in first["Dimensions"] if (d["Name"], d["Value"]) in shared]
    if not common:
        return {}, records
    out = []
    for r in records:
        slim = {k: v for k, v in r.items() if k not in common}
        if shared:
            own = [d for d in r["Dimensions"] if (d["Name"], d["Value"]) not in shared]
            if own:
                slim["Dimensions"] = own
        out.append(slim)
    return common, out
