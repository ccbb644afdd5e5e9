"""``map``: project and rename fields (``{user_id: user.id, status: status}``)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from streamkit.batch import RecordBatch
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import MISSING, field_getter
from streamkit.processor import ProcessContext


class Map:
    """Build each output record from named fields of the input.

    ``fields`` maps output names to input paths (a list keeps names as they are). A missing input field is
    left out (``missing: omit``), set to null (``missing: null``), or fails the record (``missing: fail``).
    """

    name = "map"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        fields: dict[str, str] | list[str]
        missing: Literal["omit", "null", "fail"] = "omit"

    def __init__(self, options: Options, env: PluginEnv) -> None:
        mapping = options.fields if isinstance(options.fields, dict) else {f: f for f in options.fields}
        if not mapping:
            raise ConfigError((env.where or "processors[?]") + ".fields", "expected at least one field")
        self.getters = [(out, field_getter(path), path) for out, path in mapping.items()]
        self.missing = options.missing
        self.paths = list(mapping.values())
        """The input field paths read; for the planner."""
        # One dict comprehension per record is the fast path when all paths are plain keys.
        self.flat = {out: path for out, path in mapping.items() if "." not in path}
        self.all_flat = len(self.flat) == len(mapping)
        self.items = list(self.flat.items())
        # Kept names need no (out, path) tuple unpacking per field: measurably faster per record.
        self.same_names = all(out == path for out, path in self.items)
        self.names = [path for _, path in self.items]

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        values = batch.values
        if self.missing == "omit" and self.all_flat:
            try:
                # No isinstance per record: a non-dict value either has none of the keys (giving {} like
                # the general path) or raises TypeError on indexing, and then the general path decides.
                if self.same_names:
                    names = self.names
                    out = [{p: v[p] for p in names if p in v} for v in values]
                else:
                    items = self.items
                    out = [{o: v[p] for o, p in items if p in v} for v in values]
            except (TypeError, KeyError):
                return self._general(batch, ctx)
            return batch.with_values(out)
        return self._general(batch, ctx)

    def _general(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        out: list[dict[str, Any]] = []
        keep: list[bool] = []
        for i, value in enumerate(batch.values):
            record: dict[str, Any] = {}
            ok = True
            for name, get, path in self.getters:
                found = get(value)
                if found is MISSING:
                    if self.missing == "fail":
                        ctx.fail(batch, [i], f"field {path!r} is missing")
                        ok = False
                        break
                    if self.missing == "null":
                        record[name] = None
                    continue
                record[name] = found
            keep.append(ok)
            if ok:
                out.append(record)
        if not out:
            return None
        return batch.select(keep).with_values(out)
