"""InfluxDB line protocol: escaping of names and values, as the line-protocol reference specifies.

    <measurement>[,<tag_key>=<tag_value>...] <field_key>=<field_value>[,...] [<timestamp>]

What needs a backslash (InfluxDB 3 and v2 line-protocol reference, "Special characters"):

| element                      | escaped                            |
|------------------------------|------------------------------------|
| measurement                  | comma, space                       |
| tag key, tag value, field key | comma, equals sign, space          |
| string field value           | double quote, backslash            |

Backslashes in names and tag values are doubled too: the reference reads ``\\\\`` as one literal backslash,
and without it a name ending in a backslash would escape the separator after it. Line protocol cannot
carry a newline in any element, and a line starting with ``#`` is a comment: those are refused
(:class:`InvalidRecord`), never silently altered, so the record goes to the dead-letter queue.
"""

from __future__ import annotations

import re

from streamkit.connectors.timestream.mapping import InvalidRecord

__all__ = [
    "InvalidRecord",
    "escape_key",
    "escape_measurement",
    "quote_string",
]

_MEASUREMENT = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_PLAIN_KEY = re.compile(r"[^\\,= \n]+")
_PLAIN_STRING = re.compile(r'[^\\"\n]*')

MAX_NAME_BYTES = 64 * 1024
"""Measurement, tag key, tag value and field key: 64 KB each (the reference's string limits)."""
MAX_STRING_FIELD_BYTES = 1024 * 1024
"""A string field value: 1 MB."""


def _check(text: str, what: str, limit: int) -> None:
    if not text:
        raise InvalidRecord(f"{what} is empty (line protocol needs at least one character)")
    if "\n" in text:
        raise InvalidRecord(f"{what} {text[:40]!r}... contains a newline, which line protocol cannot carry")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > limit:
        raise InvalidRecord(f"{what} is {size:,} bytes; line protocol allows {limit:,}")


def escape_measurement(name: str) -> str:
    _check(name, "measurement", MAX_NAME_BYTES)
    if name.startswith("#"):
        raise InvalidRecord(f"measurement {name!r} starts with '#': the line would be read as a comment")
    return name.translate(_MEASUREMENT)


def escape_key(text: str, what: str = "tag key") -> str:
    """A tag key, tag value or field key."""
    if text and len(text) < 4096 and _PLAIN_KEY.fullmatch(text):
        return text  # the common case, on the per-record path: nothing to escape or refuse
    _check(text, what, MAX_NAME_BYTES)
    return text.translate(_KEY)


def quote_string(text: str, what: str = "string field") -> str:
    """A string field value in double quotes."""
    if len(text) < 4096 and _PLAIN_STRING.fullmatch(text):
        return '"' + text + '"'
    if "\n" in text:
        raise InvalidRecord(f"{what} contains a newline, which line protocol cannot carry")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_STRING_FIELD_BYTES:
        raise InvalidRecord(f"{what} is {size:,} bytes; line protocol allows {MAX_STRING_FIELD_BYTES:,}")
    return '"' + text.translate(_STRING) + '"'
