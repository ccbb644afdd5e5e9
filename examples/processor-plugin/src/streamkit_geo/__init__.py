"""An example processor plugin: ``type: geo.enrich`` adds a region to each record from a country field.

It shows the whole contract: an ``Options`` struct (validated at start-up, errors name the key path), a
constructor taking ``(options, env)``, and ``__call__(batch, ctx)`` working on the whole batch.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamkit.batch import RecordBatch
from streamkit.plugin_env import PluginEnv
from streamkit.processor import ProcessContext

REGIONS = {"DE": "eu", "FR": "eu", "US": "na", "BR": "sa", "JP": "apac", "IN": "apac"}


class GeoEnrich:
    name = "geo.enrich"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        field: str = "country"
        target: str = "region"
        unknown: str = "fail"
        """What to do with a country not in the table: ``fail`` (dead-letter the record) or a region name."""

    def __init__(self, options: Options, env: PluginEnv) -> None:
        self.options = options

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        opts = self.options
        out: list[dict[str, Any]] = []
        keep: list[bool] = []
        for i, value in enumerate(batch.values):
            if not isinstance(value, dict):
                ctx.fail(batch, [i], f"expected a JSON object, got {type(value).__name__}")
                keep.append(False)
                continue
            country = value.get(opts.field)
            # Only a string can name a country; a list or dict would not even be hashable for the lookup.
            region = REGIONS.get(country) if isinstance(country, str) else None
            if region is None and opts.unknown == "fail":
                ctx.fail(batch, [i], f"no region for {opts.field}={country!r}")
                keep.append(False)
                continue
            keep.append(True)
            out.append({**value, opts.target: region or opts.unknown})
        if not out:
            return None
        return batch.select(keep).with_values(out)
