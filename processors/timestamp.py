"""``timestamp``: take each record's event time from a field, for partitioning and lag.

Event time (not arrival time) is what S3 partitions and Timestream records are keyed by. Numbers are read
in the configured unit; ``iso8601`` parses strings such as ``2026-11-26T13:05:00Z``. Records without a
usable value either fall back to their arrival time or go to the dead-letter queue.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

import msgspec
import numpy as np

from streamkit.batch import RecordBatch
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import MISSING, field_getter
from streamkit.processor import ProcessContext

_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
# Event times are int64 milliseconds; 2**62 ms (about 146 million years) leaves room for arithmetic on them.
_MAX_MS = float(2**62)


class Timestamp:
    name = "timestamp"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        field: str
        unit: Literal["s", "ms", "us", "ns", "iso8601"] = "ms"
        on_missing: Literal["arrival", "fail"] = "arrival"

    def __init__(self, options: Options, env: PluginEnv | None = None) -> None:
        self.get = field_getter(options.field)
        self.field = options.field
        self.unit = options.unit
        self.on_missing = options.on_missing

    def _to_ms(self, value: Any) -> float | None:
        if value is MISSING or value is None or isinstance(value, bool):
            return None
        if self.unit == "iso8601":
            if not isinstance(value, str):
                return None
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed.timestamp() * 1000.0
        if isinstance(value, (int, float)):
            ms = float(value) * _TO_MS[self.unit]
            # inf, NaN or beyond int64 milliseconds would become a garbage event time in the cast below:
            # such a value is not a usable timestamp (on_missing decides), never a silent -2**63.
            return ms if math.isfinite(ms) and abs(ms) < _MAX_MS else None
        return None

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        get, to_ms = self.get, self._to_ms
        raw = [to_ms(get(v)) for v in batch.values]
        missing = np.fromiter((x is None for x in raw), dtype=np.bool_, count=len(raw))
        times = np.array([0.0 if x is None else x for x in raw], dtype=np.float64).astype(np.int64)
        if missing.any():
            if self.on_missing == "fail":
                bad = np.flatnonzero(missing).tolist()
                for i in bad:
                    ctx.fail(batch, [i], f"field {self.field!r} has no usable {self.unit} timestamp")
                keep = ~missing
                if not keep.any():
                    return None
                return batch.select(keep).with_event_ms(times[keep])
            times[missing] = batch.arrival_ms[missing]
        return batch.with_event_ms(times)
