"""``filter``: keep the records that match a predicate (see :mod:`streamkit.predicates`)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from streamkit.batch import RecordBatch
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import compile_values_predicate, predicate_fields
from streamkit.processor import ProcessContext


class Filter:
    """Keep records where ``where`` holds; with ``drop: true``, drop them instead."""

    name = "filter"

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        where: dict[str, Any]
        drop: bool = False

    def __init__(self, options: Options, env: PluginEnv) -> None:
        where = (env.where or "processors[?]") + ".where"
        self.predicate = compile_values_predicate(options.where, where, env.resolve)
        self.drop = options.drop
        self.where = options.where
        self.reads = predicate_fields(options.where)
        """The field paths the predicate reads (None: a callable, which may read anything); for the planner."""

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> RecordBatch | None:
        keep = np.fromiter(self.predicate(batch.values), dtype=np.bool_, count=len(batch))
        if self.drop:
            keep = ~keep
        if not keep.any():
            return None
        return batch.select(keep)
