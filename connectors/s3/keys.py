"""Object keys and Hive-style partitions for the S3 sink.

An object key is a pure function of what the object holds: the source (stream or topic), the source
partition (shard or Kafka partition), the positions of its first and last records, the Hive partition
its records fall in, and the format's extension. A replay after a crash rebuilds the same objects,
hence the same keys, and ``If-None-Match: *`` turns the second write into a harmless 412. Why the
objects come out the same, and what the sink must do for that, is in docs/s3-objects.md.

Keys (default ``DEFAULT_KEY_TEMPLATE``)::

    raw/dt=2026-11-26/hour=13/orders/shardId-000000000004/
        00000000049590338271490256608559692538361571095921575989136588898-...898.ndjson.gz

Partitions are rendered for a whole batch at once (``Partitioner.group``): event times are floored to
the template's finest time unit with numpy and each distinct bucket is formatted once.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_KEY_TEMPLATE",
    "DEFAULT_PARTITION_TEMPLATE",
    "HIVE_DEFAULT_PARTITION",
    "MISSING_EVENT_TIME",
    "KeyTemplate",
    "Partitioner",
    "PositionLike",
    "TemplateError",
    "compile_key_template",
    "compile_partitioner",
    "hive_escape",
    "render_position",
]

DEFAULT_KEY_TEMPLATE: Final = "{prefix}{partition}{stream}/{shard}/{first_position}-{last_position}{extension}"
DEFAULT_PARTITION_TEMPLATE: Final = "dt={event_time:%Y-%m-%d}/hour={event_time:%H}/"
# Hive's name for a null or empty partition value; Athena, Spark, Trino and pyarrow read it as null.
HIVE_DEFAULT_PARTITION: Final = "__HIVE_DEFAULT_PARTITION__"
# Marks a record without an event time in an event-time array; it goes to the default partition.
# Any negative time counts as missing: it is the Kinesis decoder's MISSING_ARRIVAL_MS (-1) when the
# arrival time stands in for the event time, and no stream record happened before 1970.
MISSING_EVENT_TIME: Final = -1
S3_MAX_KEY_BYTES: Final = 1024

# A Kinesis sequence number (decimal string, up to 128 digits) or a Kafka offset, optionally with
# the KPL sub-sequence number of an aggregated record: ("4959...", 3).
PositionLike = str | int | tuple[str | int, int | None]


class TemplateError(ValueError):
    """A key or partition template is invalid; the message names the problem and what is allowed."""


# ------------------------------------------------------------------------------------------- escaping

# Hive's FileUtils.escapePathName set, plus the characters S3 documents as needing special handling
# in keys. Hive, Spark, Trino and pyarrow decode any %XX, so escaping more is safe for readers.
_HIVE_SPECIAL: Final = "\"#%'*/:=?\\{[]^\x7f" + " &$@;+,`<>|}~"
_HIVE_ESCAPES: Final = {ord(c): f"%{ord(c):02X}" for c in [*_HIVE_SPECIAL, *(chr(i) for i in range(0x20))]}


def _partition_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # Hive spells booleans in lower case
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def hive_escape(value: object) -> str:
    """A partition value as Hive writes it in a path: ``a:b`` -> ``a%3Ab``; None or "" -> the default
    partition."""
    text = _partition_text(value)
    return text.translate(_HIVE_ESCAPES) if text else HIVE_DEFAULT_PARTITION


def _key_component(text: str, what: str) -> str:
    """One path segment of a key, percent-encoded down to letters, digits and ``-_.``."""
    if not text:
        raise ValueError(f"{what} must not be empty in an S3 key")
    encoded = quote(text, safe="").replace("~", "%7E")
    # "." and ".." segments are rewritten by some HTTP clients and path libraries.
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


# ------------------------------------------------------------------------------------------ positions

# Numeric positions are zero-padded to the first width that fits, so that keys of one shard sort in
# position order. 20 digits hold any Kafka offset (int64); Kinesis sequence numbers are 56 digits
# today and at most 128. A shard's positions stay in one width class, which is all ordering needs.
_POSITION_WIDTHS: Final = (20, 64, 128)
# KPL sub-sequence numbers index the user records of one aggregated record.
_SUB_SEQUENCE_WIDTH: Final = 10
# Opaque positions: "-" and "." separate positions and sub-sequences in keys, so they are encoded too.
_OPAQUE_EXTRA_ESCAPES: Final = {ord(c): f"%{ord(c):02X}" for c in "-.~"}


def render_position(position: PositionLike) -> str:
    """A source position as it appears in keys: fixed-width digits when numeric (compared as integers,
    as AWS asks for sequence numbers), else percent-encoded down to letters, digits and ``_``."""
    # Tuples carry (sequence, sub-sequence, ...): Kinesis positions also say how they checkpoint.
    sequence, sub = (position[0], position[1]) if isinstance(position, tuple) else (position, None)
    text = str(sequence)
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        width = next((w for w in _POSITION_WIDTHS if len(digits) <= w), len(digits))
        rendered = digits.zfill(width)
    elif text:
        rendered = quote(text, safe="").translate(_OPAQUE_EXTRA_ESCAPES)
    else:
        raise ValueError("a position must not be empty")
    if sub is None:
        return rendered
    if sub < 0:
        raise ValueError(f"sub-sequence number {sub} is negative")
    return f"{rendered}.{sub:0{_SUB_SEQUENCE_WIDTH}d}"


# ------------------------------------------------------------------------------------------ templates


@dataclass(frozen=True, slots=True)
class _Placeholder:
    name: str
    spec: str


def _parse(template: str, kind: str) -> list[str | _Placeholder]:
    """Literal text and placeholders, in order. Conversions (``!r``) are refused."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as error:
        raise TemplateError(f"{kind} template {template!r}: {error}") from error
    parts: list[str | _Placeholder] = []
    for literal, name, spec, conversion in pieces:
        if literal:
            parts.append(literal)
        if name is None:
            continue
        if conversion:
            raise TemplateError(f"{kind} template {template!r}: conversion !{conversion} is not allowed")
        parts.append(_Placeholder(name, spec or ""))
    return parts


def _unknown(kind: str, template: str, name: str, allowed: str) -> TemplateError:
    return TemplateError(f"unknown placeholder {{{name}}} in {kind} template {template!r}; allowed: {allowed}")


_KEY_PLACEHOLDERS: Final = ("prefix", "partition", "stream", "shard", "first_position", "last_position", "extension")
# stream + shard + first position make a key unique; the last position makes a 412 on replay prove
# that exactly these records were written (a different rotation would give a different key: a
# duplicate object, never a lost record).
_KEY_REQUIRED: Final = ("stream", "shard", "first_position", "last_position")


@dataclass(frozen=True)
class KeyTemplate:
    """A validated object key template with its prefix; ``key()`` renders one object's key."""

    template: str
    prefix: str

    def key(
        self,
        *,
        stream: str,
        shard: str | int,
        first_position: PositionLike,
        last_position: PositionLike,
        partition: str = "",
        extension: str = "",
    ) -> str:
        """The key of the object holding records ``first_position`` .. ``last_position`` (inclusive)
        of ``stream``/``shard`` in Hive ``partition`` (as rendered by a Partitioner)."""
        if partition and not partition.endswith("/"):
            raise ValueError(f"partition {partition!r} must end with '/' (render it with a Partitioner)")
        key = self.template.format(
            prefix=self.prefix,
            partition=partition,
            stream=_key_component(stream, "stream"),
            shard=_key_component(str(shard), "shard"),
            first_position=render_position(first_position),
            last_position=render_position(last_position),
            extension=quote(extension, safe="."),
        )
        if len(key.encode()) > S3_MAX_KEY_BYTES:
            raise ValueError(f"object key is longer than S3's {S3_MAX_KEY_BYTES} bytes: {key[:120]}...")
        return key


def compile_key_template(template: str = DEFAULT_KEY_TEMPLATE, *, prefix: str = "") -> KeyTemplate:
    """Validate a key template and a prefix (checked once, at start-up)."""
    allowed = ", ".join(f"{{{p}}}" for p in _KEY_PLACEHOLDERS)
    names = []
    for part in _parse(template, "key"):
        if isinstance(part, _Placeholder):
            if part.name not in _KEY_PLACEHOLDERS:
                raise _unknown("key", template, part.name, allowed)
            if part.spec:
                raise TemplateError(f"key template {template!r}: {{{part.name}}} takes no format")
            names.append(part.name)
    missing = [f"{{{n}}}" for n in _KEY_REQUIRED if n not in names]
    if missing:
        raise TemplateError(
            f"key template {template!r} lacks {', '.join(missing)}: stream, shard, first and last "
            "position make keys unique and replays idempotent"
        )
    if prefix.startswith("/") or "//" in prefix or (prefix and not prefix.endswith("/")):
        raise TemplateError(f"prefix {prefix!r} must be empty or end with '/', without a leading '/' or '//'")
    keys = KeyTemplate(template, prefix)
    for partition in ("", "p=1/"):
        sample = keys.key(stream="s", shard="0", first_position=1, last_position=2, partition=partition)
        if sample.startswith("/") or "//" in sample:
            raise TemplateError(f"key template {template!r} makes keys with an empty segment: {sample!r}")
    return keys


# ------------------------------------------------------------------------------------------ partitions

_MS_PER: Final = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
# The finest time unit each strftime directive depends on. Coarser than a day (month, year, week)
# still floors to days: formatting each distinct day once is cheap. Unknown directives: 1 ms.
_DIRECTIVE_UNIT: Final = {
    **dict.fromkeys("SsTrcX", _MS_PER["second"]),
    **dict.fromkeys("MR", _MS_PER["minute"]),
    **dict.fromkeys("HIklp", _MS_PER["hour"]),
    **dict.fromkeys("YymdjaAbBhwuUWVGgCeDFx", _MS_PER["day"]),
    **dict.fromkeys("zZ%nt"),
}
_DIRECTIVE: Final = re.compile(r"%[-_0^#]?(.)")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HIVE_SEGMENT: Final = re.compile(r"[a-z_][a-z0-9_]*=.+")
_PARTITION_ALLOWED: Final = "{event_time:<strftime format>}, {field.<name>[.<name>...]}"


@dataclass(frozen=True, slots=True)
class _TimePart:
    format: str
    unit_ms: int | None  # None: the format has no time directive

    def render(self, at: datetime | None) -> str:
        return hive_escape(at.strftime(self.format)) if at is not None else HIVE_DEFAULT_PARTITION


@dataclass(frozen=True, slots=True)
class _FieldPart:
    path: tuple[str, ...]

    def lookup(self, value: Any) -> Any:
        for name in self.path:
            value = _get(value, name)
        return value

    def keys(self, values: Sequence[Any]) -> list[Any]:
        """The field of every record as a hashable key that renders like the value does."""
        found: list[Any] = list(values)
        for name in self.path:  # one pass per level; the dict test inline is the fast case
            found = [v.get(name) if type(v) is dict else _get(v, name) for v in found]
        # str, int and None keys render as themselves; bool (== 1) and float (1.0 == 1) would share
        # a key with an int that renders differently, so they (and the rest) become their text.
        return [x if type(x) in _PLAIN_KEYS else _partition_text(x) for x in found]


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else None


_PLAIN_KEYS: Final = frozenset({str, int, type(None)})
_Part = str | _TimePart | _FieldPart
Indexes = npt.NDArray[np.intp]


def _time_unit(spec: str) -> int | None:
    units = [_DIRECTIVE_UNIT.get(d, 1) for d in _DIRECTIVE.findall(spec)]
    known = [u for u in units if u is not None]
    return min(known) if known else None


def _datetime(ms: int) -> datetime | None:
    if ms < 0:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:  # a nonsense event time: the default partition, not a failed batch
        return None


def _codes(keys: Sequence[Any]) -> tuple[Indexes, list[Any]]:
    """Dense codes of ``keys`` and the distinct keys, in first-seen order."""
    seen: dict[Any, int] = {}
    codes = np.fromiter((seen.setdefault(k, len(seen)) for k in keys), dtype=np.intp, count=len(keys))
    return codes, list(seen)


class Partitioner:
    """Renders the Hive partition (``dt=2026-11-26/hour=13/``) of records from their event time (UTC
    epoch milliseconds) and decoded fields. Build it with ``compile_partitioner``."""

    def __init__(self, template: str, parts: Sequence[_Part]) -> None:
        self.template = template
        self._parts = tuple(parts)
        self._time_parts = [p for p in self._parts if isinstance(p, _TimePart)]
        self._field_parts = [p for p in self._parts if isinstance(p, _FieldPart)]
        units = [p.unit_ms for p in self._time_parts if p.unit_ms is not None]
        self._unit_ms = min(units) if units else None

    @property
    def uses_event_time(self) -> bool:
        return bool(self._time_parts)

    @property
    def fields(self) -> tuple[str, ...]:
        """Dotted paths of the record fields the partition depends on."""
        return tuple(".".join(p.path) for p in self._field_parts)

    def render(self, event_time_ms: int | None = None, value: Any = None) -> str:
        """The partition of one record (no event time: the default partition for time placeholders)."""
        at = None if event_time_ms is None else _datetime(int(event_time_ms))
        return self._join(lambda p: p.render(at), lambda p: hive_escape(p.lookup(value)))

    def _join(self, time: Callable[[_TimePart], str], field: Callable[[_FieldPart], str]) -> str:
        rendered = "".join(
            p if isinstance(p, str) else time(p) if isinstance(p, _TimePart) else field(p) for p in self._parts
        )
        return _escape_dot_segments(rendered) if "." in rendered else rendered

    def group(
        self, event_time_ms: npt.ArrayLike | None = None, values: Sequence[Any] | None = None
    ) -> dict[str, Indexes]:
        """Records of a batch grouped by partition: partition -> ascending record indexes."""
        size = self._batch_size(event_time_ms, values)
        if size == 0:
            return {}
        columns: list[Indexes] = []
        renderers: list[Any] = []
        if self._time_parts:
            codes, moments = self._time_codes(np.asarray(event_time_ms, dtype=np.int64))
            columns.append(codes)
            renderers.append(moments)
        for part in self._field_parts:
            assert values is not None
            codes, texts = _codes(part.keys(values))
            columns.append(codes)
            renderers.append([hive_escape(t) for t in texts])
        if not columns:
            return {self.render(): np.arange(size, dtype=np.intp)}
        return self._split(columns, renderers)

    def _batch_size(self, event_time_ms: npt.ArrayLike | None, values: Sequence[Any] | None) -> int:
        if self._time_parts and event_time_ms is None:
            raise ValueError(f"partition template {self.template!r} uses {{event_time}}: pass event_time_ms")
        if self._field_parts and values is None:
            raise ValueError(f"partition template {self.template!r} uses record fields: pass decoded values")
        sizes = {len(np.asarray(event_time_ms))} if event_time_ms is not None else set()
        sizes |= {len(values)} if values is not None else set()
        if len(sizes) > 1:
            raise ValueError(f"event_time_ms and values differ in length: {sorted(sizes)}")
        return sizes.pop() if sizes else 0

    def _time_codes(self, millis: npt.NDArray[np.int64]) -> tuple[Indexes, list[datetime | None]]:
        """Codes of the distinct time buckets and the moment (or None) each bucket renders from."""
        unit = self._unit_ms
        missing = millis < 0
        buckets = np.zeros_like(millis) if unit is None else millis // unit
        buckets[missing] = -1  # floor division keeps valid buckets >= 0
        distinct, inverse = np.unique(buckets, return_inverse=True)
        moments = [None if b < 0 else _datetime(int(b) * (unit or 0)) for b in distinct.tolist()]
        return inverse.reshape(-1).astype(np.intp), moments

    def _split(self, columns: list[Indexes], renderers: list[Any]) -> dict[str, Indexes]:
        combos, inverse = _combine(columns, [len(r) for r in renderers])
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(combos)))[:-1])
        result: dict[str, Indexes] = {}
        for combo, indexes in zip(combos.tolist(), groups, strict=True):
            if len(indexes) == 0:
                continue
            name = self._render_combo(combo, renderers)
            if name in result:  # two buckets can render alike (an hour-only format across days)
                indexes = np.sort(np.concatenate([result[name], indexes]))
            result[name] = indexes
        return result

    def _render_combo(self, combo: list[int], renderers: list[Any]) -> str:
        it = iter(zip(combo, renderers, strict=True))
        at: datetime | None = None
        if self._time_parts:
            code, moments = next(it)
            at = moments[code]
        fields = {id(p): texts[code] for p, (code, texts) in zip(self._field_parts, it, strict=True)}
        return self._join(lambda p: p.render(at), lambda p: fields[id(p)])


def _combine(columns: list[Indexes], cardinalities: list[int]) -> tuple[npt.NDArray[np.intp], Indexes]:
    """Distinct rows of codes (one column per placeholder) and each record's row number."""
    if len(columns) == 1:
        return np.arange(cardinalities[0])[:, None], columns[0]
    if np.prod(cardinalities, dtype=np.float64) < 2**62:
        # Mixed-radix number of the code tuple: a 1-D unique, ~10x faster than unique(axis=0).
        radix = np.cumprod([1, *cardinalities[:0:-1]])[::-1].astype(np.int64)
        numbers = np.stack(columns, axis=1).astype(np.int64) @ radix
        distinct, inverse = np.unique(numbers, return_inverse=True)
        combos = (distinct[:, None] // radix) % np.asarray(cardinalities, dtype=np.int64)
        return combos.astype(np.intp), inverse.reshape(-1).astype(np.intp)
    combos, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return combos, inverse.reshape(-1)


def _escape_dot_segments(path: str) -> str:
    """``.`` and ``..`` segments rendered from values, escaped as ``_key_component`` escapes stream and
    shard names: HTTP clients and path libraries rewrite them (``safe/prefix/../file``). Hive segments
    (``name=..``) are never bare dots, so only ``hive: false`` layouts reach this."""
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in path.split("/"))


def _check_hive_layout(template: str, skeleton: str) -> None:
    """Every segment must be ``key=value`` with a literal lower-case key: what Athena discovers."""
    for segment in skeleton.split("/")[:-1]:
        if not _HIVE_SEGMENT.fullmatch(segment):
            raise TemplateError(
                f"partition template {template!r}: segment {segment.replace(chr(0), '{...}')!r} is not "
                "Hive-style 'name=value' with a lower-case literal name (Athena discovers only those); "
                "pass hive=False to allow it"
            )


def _compile_part(template: str, part: _Placeholder) -> _Part:
    if part.name == "event_time":
        if not part.spec:
            raise TemplateError(f"partition template {template!r}: give {{event_time}} a strftime format")
        if "/" in part.spec:
            raise TemplateError(
                f"partition template {template!r}: '/' inside {{event_time:{part.spec}}} would be escaped "
                "as a value; write one placeholder per segment, e.g. year={event_time:%Y}/month={event_time:%m}/"
            )
        return _TimePart(part.spec, _time_unit(part.spec))
    head, _, rest = part.name.partition(".")
    path = tuple(rest.split("."))
    if head != "field" or not all(path):
        raise _unknown("partition", template, part.name, _PARTITION_ALLOWED)
    if part.spec:
        raise TemplateError(f"partition template {template!r}: {{{part.name}}} takes no format")
    return _FieldPart(path)


def compile_partitioner(template: str = DEFAULT_PARTITION_TEMPLATE, *, hive: bool = True) -> Partitioner:
    """Validate a partition template (checked once, at start-up). ``""`` means no partitioning.

    Placeholders: ``{event_time:<strftime format>}`` (UTC) and ``{field.<name>[.<name>...]}``. Each
    rendered value is escaped as Hive does (``:`` -> ``%3A``; empty or missing ->
    ``__HIVE_DEFAULT_PARTITION__``). The template must end with ``/``.
    """
    parts: list[_Part] = []
    skeleton = ""
    for piece in _parse(template, "partition"):
        if isinstance(piece, str):
            parts.append(piece)
            skeleton += piece
        else:
            parts.append(_compile_part(template, piece))
            skeleton += "\0"
    if template and not template.endswith("/"):
        raise TemplateError(f"partition template {template!r} must end with '/'")
    if "//" in skeleton or skeleton.startswith("/"):
        raise TemplateError(f"partition template {template!r}: empty path segment")
    if {".", ".."} & set(skeleton.split("/")):
        raise TemplateError(f"partition template {template!r}: '.' and '..' are not allowed as path segments")
    if hive:
        _check_hive_layout(template, skeleton)
    return Partitioner(template, parts)
