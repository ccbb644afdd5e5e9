"""What an InfluxDB write answer says about each line of the request.

A request's lines are numbered from 1, as the server numbers them. The answers mapped here:

- 2xx (204 as documented): every line written -> :class:`Written`.
- v3 400 ``{"error": "partial write of line protocol occurred", "data": [{"line_number", "error_message",
  ...}]}``: the listed lines were refused, the others written -> :class:`Partial`.
- v3 400 ``{"error": "parsing failed ...", "data": {"line_number", ...}}`` (``accept_partial=false``):
  nothing written, the line named is bad -> :class:`FirstBad`.
- v2 400 ``{"code": "invalid", "line": N}``, or a ``message`` quoting ``unable to parse '<line>'``:
  nothing written (OSS 2.x rejects the whole request at the first bad line) -> :class:`FirstBad`.
- any other 400, a 413, a 422 (v2's partial write names no line): unknown which lines -> :class:`Unclear`.

An ``Unclear`` answer is narrowed down by the sink (halving the request until the lines stand alone);
resending lines the server already wrote is harmless, because a point with the same measurement, tag
set and timestamp and the same fields is the same point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

PARTIAL_REPORT_LIMIT = 100
"""InfluxDB documents error details for "up to 100" rejected points: a list that long may be cut short."""


@dataclass(frozen=True)
class Written:
    pass


@dataclass(frozen=True)
class Partial:
    """Refused lines (1-based number -> reason); the others were written unless ``complete`` is False."""

    refused: dict[int, str]
    complete: bool = True


@dataclass(frozen=True)
class FirstBad:
    """Nothing was written; ``line`` (1-based) is bad, the lines after it were not checked."""

    line: int
    reason: str


@dataclass(frozen=True)
class Unclear:
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


Outcome = Written | Partial | FirstBad | Unclear

_UNABLE_TO_PARSE = re.compile(r"unable to parse '(?P<line>.*?)': (?P<reason>.*)", re.DOTALL)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def short(body: bytes, limit: int = 300) -> str:
    """The body as text for a reason or an error message, cut to ``limit`` characters."""
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _entry(item: Any, lines: int) -> tuple[int, str] | None:
    if not isinstance(item, dict):
        return None
    number = item.get("line_number")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= lines:
        return None
    message = item.get("error_message") or "no reason given"
    return number, str(message)


def interpret(status: int, body: bytes, lines: list[bytes]) -> Outcome:
    """The outcome of a write of ``lines`` answered with ``status`` and ``body``."""
    if 200 <= status < 300:
        return Written()
    document = _json(body)
    what = f"HTTP {status}: {short(body) or 'no body'}"
    if status != 400 or not isinstance(document, dict):
        return Unclear(what)
    data = document.get("data")
    if isinstance(data, list) and data:  # v3 partial write
        entries = [_entry(item, len(lines)) for item in data]
        if any(e is None for e in entries):
            return Unclear(f"{what} (line numbers outside the request)")
        refused = dict(e for e in entries if e is not None)
        return Partial(refused, complete=len(data) < PARTIAL_REPORT_LIMIT)
    if isinstance(data, dict):  # v3 with accept_partial=false
        entry = _entry(data, len(lines))
        return FirstBad(*entry) if entry is not None else Unclear(what)
    message = str(document.get("message") or "")
    number = document.get("line")
    if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= len(lines):
        return FirstBad(number, message or "no reason given")
    quoted = _UNABLE_TO_PARSE.match(message)
    if quoted is not None:
        wanted = quoted.group("line").encode("utf-8")
        for number, line in enumerate(lines, start=1):
            if line == wanted:
                return FirstBad(number, message)
    return Unclear(what)
