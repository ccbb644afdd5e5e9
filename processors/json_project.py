"""``json.project``: decode only the fields a projection keeps, filter, and write the projection, in one step.

The same result as ``json.decode -> filter -> map`` on top-level fields, at a fraction of the cost:
``json.decode`` builds every field of every record as Python objects (~2.6 us for a 1 KB record) and the
``map`` after it builds a second dict. Here msgspec decodes each record into a struct that names only the
projected fields, kept as raw JSON bytes (``msgspec.Raw``: never turned into Python objects, copied byte
for byte into the output) and the fields the ``where`` predicate reads; everything else is skipped while
parsing. Encoding the struct writes the projection directly. PERF_FACTS.md measured ~2.6x orjson's full
decode for the parse alone; ``streamkit bench`` shows the whole-pipeline effect.

Output records are JSON bytes (not decoded values): put ``json.decode`` after it if a later processor or a
sink's ``when:`` reads fields. Differences from ``json.decode -> filter -> map``:

- only top-level input fields (``user``, not ``user.country``); use ``map`` for nested paths;
- a record that is not a JSON object goes to the dead-letter queue (``map`` would emit ``{}``);
- projected values keep their bytes as written (inner whitespace included); the text of skipped fields is
  not validated, projected text is (invalid UTF-8 there sends the record to the dead-letter queue).
"""

from __future__ import annotations

import operator
from collections import deque
from itertools import compress, repeat, starmap
from operator import attrgetter
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np

from streamkit.batch import RecordBatch
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import compile_values_predicate
from streamkit.processor import ProcessContext

_UNSET: Any = msgspec.UNSET


class NotExact(Exception):
    """Raised in exact mode when a batch has a record this step would not treat exactly as
    ``json.decode -> filter -> map`` does; the chain planner then runs the batch through its general path."""


def _exact_float(text: str) -> float:
    """msgspec's float_hook in exact mode, for floats nested in kept lists and objects: floats orjson
    writes with an ``e+`` exponent (abs >= 1e16), which msgspec writes without the ``+``, and numbers
    beyond the float range, leave the fast path."""
    value = float(text)
    if not -1e16 < value < 1e16:
        raise NotExact(text)
    return value


_EXACT_VALUE: Any = Union[  # noqa: UP007 (a runtime union of types)
    None, bool, int, Annotated[float, msgspec.Meta(gt=-1e16, lt=1e16)], str, list[Any], dict[str, Any]
]
"""A top-level field in exact mode: any JSON value, as ``Any`` decodes it, except that a float outside
``_exact_float``'s range fails validation in C (the batch leaves the fast path). The same rule as the
float_hook without a Python call per record: most records carry their floats at the top level."""


def _where_fields(spec: Any) -> set[str]:
    """Top-level fields a predicate mapping reads (the first part of each dotted path)."""
    if isinstance(spec, dict):
        found = set()
        if isinstance(spec.get("field"), str):
            found.add(spec["field"].split(".", 1)[0])
        for key in ("all", "any"):
            for item in spec.get(key) or ():
                found |= _where_fields(item)
        if "not" in spec:
            found |= _where_fields(spec["not"])
        return found
    return set()


def _has_callable(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    if "callable" in spec:
        return True
    return any(_has_callable(i) for k in ("all", "any") for i in spec.get(k) or ()) or _has_callable(spec.get("not"))


class JsonProject:
    """Keep ``fields`` (a list, or ``{output: input}``) of records where ``where`` holds, as JSON bytes."""

    name = "json.project"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        fields: dict[str, str] | list[str]
        where: dict[str, Any] | None = None
        """A predicate as for ``filter`` (field comparisons, all/any/not); records where it is false are dropped."""
        missing: Literal["omit", "null", "fail"] = "omit"

    def __init__(self, options: Options, env: PluginEnv, *, exact: bool = False) -> None:
        """``exact`` (used by the chain planner, not configurable): decode kept fields as values and
        write them back, so the bytes are orjson's; raise :class:`NotExact` instead of dead-lettering."""
        self.exact = exact
        where_path = env.where or "processors[?]"
        mapping = options.fields if isinstance(options.fields, dict) else {f: f for f in options.fields}
        if not mapping:
            raise ConfigError(f"{where_path}.fields", "expected at least one field")
        nested = [p for p in mapping.values() if "." in p]
        if nested:
            raise ConfigError(
                f"{where_path}.fields",
                f"json.project keeps top-level fields only, got {nested[0]!r}: use json.decode + map for nested paths",
            )
        if len(set(mapping.values())) != len(mapping):
            raise ConfigError(f"{where_path}.fields", "each input field can be projected once; use map to copy one")
        if options.where is not None and _has_callable(options.where):
            raise ConfigError(
                f"{where_path}.where", "json.project filters on fields only; use json.decode + filter for callables"
            )
        self.missing = options.missing
        inputs = list(mapping.values())
        read = _where_fields(options.where) if options.where is not None else set()
        # Struct attribute names are f0, f1, ... (JSON keys need not be identifiers); rename maps them back.
        # Every field is optional while decoding: a record the predicate drops must not fail for a missing
        # field (json.decode -> filter -> map would drop it too); `missing` applies to the records kept.
        spec: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        self._attr: dict[str, str] = {}
        for i, key in enumerate([*inputs, *sorted(read - set(inputs))]):
            attr = f"f{i}"
            rename[attr] = key
            self._attr[key] = attr
            # A field the predicate reads is decoded into Python values (and re-encoded if also projected);
            # the others stay raw bytes. Exact mode decodes every field into values (see _EXACT_VALUE).
            kind: Any = (
                _EXACT_VALUE | msgspec.UnsetType if exact else Any if key in read else msgspec.Raw | msgspec.UnsetType
            )
            spec.append((attr, kind, _UNSET))
        # gc=False: the structs hold raw bytes and JSON values only, which cannot form reference cycles.
        struct = msgspec.defstruct("Projection", spec, rename=rename, gc=False)
        self._decode = msgspec.json.Decoder(struct, float_hook=_exact_float if exact else None).decode
        self._encode = msgspec.json.Encoder().encode
        self._projected = [(self._attr[src], src) for src in inputs]
        self._clear = [self._attr[k] for k in sorted(read - set(inputs))]
        """Fields read only by the predicate: unset before encoding, so they are not written."""
        self._out: Any = None
        if any(out != src for out, src in mapping.items()):
            attrs = [self._attr[src] for src in inputs]
            out_rename = {self._attr[src]: out for out, src in mapping.items()}
            self._out = msgspec.defstruct("Projected", [(a, Any, _UNSET) for a in attrs], rename=out_rename, gc=False)
            getter = attrgetter(*attrs)
            self._row = getter if len(attrs) > 1 else lambda s: (getter(s),)
        self._keep = self._compile(options.where, read, f"{where_path}.where", env) if options.where else None

    def _compile(self, where: dict[str, Any], read: set[str], path: str, env: PluginEnv) -> Any:
        ops = set(where) - {"field"}
        field = where.get("field")
        if isinstance(field, str) and "." not in field and len(ops) == 1 and ops <= {"equals", "not_equals"}:
            # The common case (status != "err"): one C-level comparison per record, no dict built. An absent
            # field is UNSET, which equals nothing, exactly like a missing key for the filter processor.
            op = operator.eq if "equals" in ops else operator.ne
            ref = where[ops.pop()]
            get = attrgetter(self._attr[field])
            return lambda structs: list(map(op, map(get, structs), repeat(ref)))
        # Anything else: the filter processor's compiler over small dicts of the fields it reads.
        predicate = compile_values_predicate(where, path, env.resolve)
        keys = sorted(read)
        attrs = [self._attr[k] for k in keys]

        def general(structs: list[Any]) -> list[bool]:
            views = [
                {k: v for k, a in zip(keys, attrs, strict=True) if (v := getattr(s, a)) is not _UNSET} for s in structs
            ]
            return predicate(views)

        return general

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        payloads = batch.payloads
        try:
            structs = list(map(self._decode, payloads))
        except msgspec.DecodeError as exc:  # ValidationError included
            if self.exact:
                raise NotExact(str(exc)) from None
            return self._slowly(batch, ctx)
        if self.exact and not all(map(bytes.isascii, payloads)):
            raise NotExact("non-ASCII bytes: skipped text is not checked for UTF-8 here")
        return self._finish(batch, structs, ctx)

    def _finish(self, batch: RecordBatch, structs: list[Any], ctx: ProcessContext) -> RecordBatch | None:
        if self._keep is not None:
            flags = self._keep(structs)
            if not any(flags):
                return None
            if not all(flags):
                batch = batch.select(np.fromiter(flags, dtype=np.bool_, count=len(flags)))
                structs = list(compress(structs, flags))
        if self.missing != "omit":
            batch, structs = self._apply_missing(batch, structs, ctx)
            if not structs:
                return None
        for attr in self._clear:
            deque(map(setattr, structs, repeat(attr), repeat(_UNSET)), maxlen=0)
        if self._out is not None:
            structs = list(starmap(self._out, map(self._row, structs)))
        out = list(map(self._encode, structs))
        if self.exact:
            return batch.with_payloads(out)  # ASCII in, values re-encoded: valid UTF-8 out
        try:
            # Raw values are copied unchecked: validate the output text once per batch (fast for ASCII).
            b"".join(out).decode("utf-8")
        except UnicodeDecodeError:
            return self._drop_invalid_utf8(batch, out, ctx)
        return batch.with_payloads(out)

    def _apply_missing(
        self, batch: RecordBatch, structs: list[Any], ctx: ProcessContext
    ) -> tuple[RecordBatch, list[Any]]:
        """``missing: null`` fills absent projected fields with null; ``fail`` dead-letters their records."""
        bad = np.zeros(len(structs), dtype=np.bool_)
        for attr, key in self._projected:
            absent = np.fromiter(
                map(operator.is_, map(attrgetter(attr), structs), repeat(_UNSET)), dtype=np.bool_, count=len(structs)
            )
            if not absent.any():
                continue
            if self.missing == "null":
                for i in np.flatnonzero(absent).tolist():
                    setattr(structs[i], attr, None)
                continue
            fresh = absent & ~bad
            if fresh.any():
                ctx.fail(batch, np.flatnonzero(fresh).tolist(), f"field {key!r} is missing")
            bad |= absent
        if not bad.any():
            return batch, structs
        keep = (~bad).tolist()
        return batch.select(~bad), list(compress(structs, keep))

    def _drop_invalid_utf8(self, batch: RecordBatch, out: list[bytes], ctx: ProcessContext) -> RecordBatch | None:
        good = []
        for i, payload in enumerate(out):
            try:
                payload.decode("utf-8")
                good.append(True)
            except UnicodeDecodeError as exc:
                good.append(False)
                ctx.fail(batch, [i], f"invalid UTF-8 in a projected field: {exc}")
        if not any(good):
            return None
        return batch.select(good).with_payloads(list(compress(out, good)))

    def _slowly(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        """Record by record, to send exactly the bad records to the dead-letter queue."""
        structs: list[Any] = []
        good: list[bool] = []
        for i, payload in enumerate(batch.payloads):
            try:
                structs.append(self._decode(payload))
                good.append(True)
            except msgspec.ValidationError as exc:
                # Every field is optional and typed loosely: only a value that is not an object fails here.
                good.append(False)
                ctx.fail(batch, [i], f"not a JSON object: {exc}")
            except msgspec.DecodeError as exc:  # after ValidationError, which is a kind of DecodeError
                good.append(False)
                ctx.fail(batch, [i], f"invalid JSON: {exc}")
        if not structs:
            return None
        return self._finish(batch.select(good), structs, ctx)
