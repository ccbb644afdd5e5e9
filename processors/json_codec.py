"""``json.decode`` and ``json.encode``: bytes to values and back, with orjson.

Decoding tries the whole batch in one comprehension first (no per-record ``try`` on the hot path) and only
on an error goes record by record to find which records are bad; those go to the dead-letter queue with the
parser's message. Encoding is skipped when the values are still exactly what the payloads encode.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from streamkit.batch import RecordBatch
from streamkit.json_bytes import dumps_all, dumps_tight
from streamkit.plugin_env import PluginEnv
from streamkit.processor import ProcessContext


class JsonDecode:
    """Parse every payload as JSON."""

    name = "json.decode"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        pass

    def __init__(self, options: Options | None = None, env: PluginEnv | None = None) -> None:
        pass

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        if batch.decoded:
            return batch
        payloads = batch.payloads
        loads = orjson.loads
        try:
            values = [loads(p) for p in payloads]
        except orjson.JSONDecodeError:
            return self._decode_slowly(batch, ctx)
        return batch.with_values(values, keep_payloads=True)

    def _decode_slowly(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        values: list[Any] = []
        good: list[bool] = []
        for i, payload in enumerate(batch.payloads):
            try:
                values.append(orjson.loads(payload))
                good.append(True)
            except orjson.JSONDecodeError as exc:
                good.append(False)
                ctx.fail(batch, [i], f"invalid JSON: {exc}")
        if not values:
            return None
        return batch.select(good).with_values(values, keep_payloads=True)


class JsonEncode:
    """Serialize values as JSON bytes (compact, UTF-8)."""

    name = "json.encode"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        sort_keys: bool = False

    def __init__(self, options: Options | None = None, env: PluginEnv | None = None) -> None:
        self.option = orjson.OPT_SORT_KEYS if options is not None and options.sort_keys else 0

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch:
        if not batch.decoded or (batch.has_payloads and not self.option):
            # Values unchanged since decoding: the payload bytes already are their JSON.
            return batch
        option = self.option
        failed: list[int] = []
        try:
            # Right-sized bytes: these stay in sink buffers (see streamkit.json_bytes).
            payloads = dumps_all(batch.values, option)
        except orjson.JSONEncodeError:
            payloads = []
            for i, value in enumerate(batch.values):
                try:
                    payloads.append(dumps_tight(value, option))
                except orjson.JSONEncodeError as exc:
                    failed.append(i)
                    ctx.fail(batch, [i], f"cannot encode as JSON: {exc}")
        if failed:
            keep = [i not in set(failed) for i in range(len(batch))]
            return batch.select(keep).with_payloads(payloads, keep_values=True)
        return batch.with_payloads(payloads, keep_values=True)
