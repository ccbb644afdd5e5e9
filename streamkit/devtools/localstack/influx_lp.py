"""A line-protocol parser for the InfluxDB stand-in, written from the line-protocol reference alone.

It shares no code with the sink's encoder (``connectors/influxdb/lineproto.py``) on purpose: a test that
writes through the encoder and reads back through this parser checks the escaping against the documented
rules, not against itself.

Rules implemented (InfluxDB 3 / v2 line-protocol reference):
- ``measurement[,tag=value...] field=value[,...] [timestamp]``; one point per ``\\n``-separated line; a
  line starting with ``#`` is a comment.
- A backslash escapes the element's special characters (measurement: comma, space; tag keys, tag values
  and field keys: comma, equals sign, space) and a backslash; any other backslash is literal.
- Field values: ``"string"`` (``\\"`` and ``\\\\`` escaped), ``12i`` integer, ``12u`` unsigned,
  ``t``/``T``/``true``/``True``/``TRUE`` (and the false forms) booleans, anything else a float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_BOOLEANS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True}
_BOOLEANS |= {"f": False, "F": False, "false": False, "False": False, "FALSE": False}
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1


class LineError(ValueError):
    """A line the stand-in refuses; the message is what the server reports."""


@dataclass
class Point:
    table: str
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None
    """As written, in the request's precision (None: the server's clock)."""
    time_ns: int = 0

    def field_types(self) -> dict[str, str]:
        return {k: type_name(v) for k, v in self.fields.items()}


class UInt(int):
    """An unsigned integer field (``12u``), kept apart from ``12i`` for type checks."""


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, UInt):
        return "uinteger"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _identifier(line: str, i: int, special: str, stops: str) -> tuple[str, int]:
    out: list[str] = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and (line[i + 1] in special or line[i + 1] == "\\"):
            out.append(line[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _string(line: str, i: int) -> tuple[str, int]:
    """A quoted string starting at ``line[i] == '"'``; returns the value and the index after the quote."""
    out: list[str] = []
    i += 1
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
            out.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise LineError("unterminated string field value")


def _scalar(text: str) -> Any:
    if not text:
        raise LineError("missing field value")
    if text in _BOOLEANS:
        return _BOOLEANS[text]
    if text[-1] in "iu":
        try:
            number = int(text[:-1])
        except ValueError:
            raise LineError(f"invalid integer {text!r}") from None
        if text[-1] == "u":
            if not 0 <= number <= UINT64_MAX:
                raise LineError(f"unsigned integer {text!r} out of range")
            return UInt(number)
        if not INT64[0] <= number <= INT64[1]:
            raise LineError(f"integer {text!r} out of range")
        return number
    try:
        value = float(text)
    except ValueError:
        raise LineError(f"invalid field value {text!r}") from None
    if not math.isfinite(value) or text.lower() in ("nan", "inf", "+inf", "-inf", "infinity"):
        raise LineError(f"invalid float {text!r}")
    return value


def parse_line(line: str) -> Point:
    """One point; raises LineError naming what is wrong."""
    measurement, i = _identifier(line, 0, ", ", ", ")
    if not measurement:
        raise LineError("missing measurement")
    point = Point(measurement)
    n = len(line)
    while i < n and line[i] == ",":
        key, i = _identifier(line, i + 1, ",= ", ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineError("missing tag key or '='")
        tag, i = _identifier(line, i + 1, ",= ", ", ")
        if not tag:
            raise LineError(f"missing tag value for {key!r}")
        point.tags[key] = tag
    if i >= n or line[i] != " ":
        raise LineError("missing fields")
    i += 1
    while True:
        key, i = _identifier(line, i, ",= ", ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineError("missing field key or '='")
        i += 1
        value: Any
        if i < n and line[i] == '"':
            value, i = _string(line, i)
        else:
            start = i
            while i < n and line[i] not in ", ":
                i += 1
            value = _scalar(line[start:i])
        if key in point.fields:
            raise LineError(f"duplicate field {key!r}")
        point.fields[key] = value
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    if i < n:
        if line[i] != " ":
            raise LineError(f"unexpected {line[i]!r} after the fields")
        text = line[i + 1 :]
        try:
            point.timestamp = int(text)
        except ValueError:
            raise LineError(f"invalid timestamp {text!r}") from None
    return point
