"""The chain planner: runs of built-in stages after ``json.decode`` become one fused step.

A chain as users write it (``json.decode -> filter -> map -> json.encode``) would make one pass per stage
and build every field of every record as Python objects, although the stages read only a few. The
planner looks at the stages once, when the chain is built, and replaces each run that starts with
``json.decode`` and goes on with ``filter``, ``map``, ``timestamp``, ``json.encode`` (and ``json.decode``
again) by a :class:`FusedJson` step that

- decodes only the field paths the run reads (predicate and projection push-down into the decoder:
  :mod:`streamkit.processors.json_views`), and
- runs the same stage objects over those small views, one slice of records at a time, writing the output
  bytes in the same step.

Failures are reported by the stage they belong to, with the same reasons, in the same order; records
stay in order. What a run cannot know it does not fuse: a ``filter`` with a ``callable`` (user code may
read any field), ``json.encode`` with ``sort_keys`` on whole records, and any plugin or callable, which
ends the run (the stages after it keep their own passes). When no ``map`` in the run replaced the
records, the output keeps the source bytes and decodes whole records only if something later reads
them (a plugin, a Parquet writer): :meth:`RecordBatch.with_values_on_demand`. If that run ends the chain,
the fields the sinks read (``when:``, an S3 partition template, a Timestream mapping: ``sinks``) are
decoded in the same pass and handed on beside the records (:mod:`streamkit.sink_views`). ``avro.decode``
is not fused: measured, a projecting reader schema is slower than decoding whole records (``AVRO_NOT_FUSED``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamkit.batch import RecordBatch
from streamkit.config import AwsSettings
from streamkit.plugin_env import PluginEnv
from streamkit.processor import ProcessContext, Processor, ProcessorOutput, stage_name
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode, JsonEncode
from streamkit.processors.json_project import JsonProject, NotExact
from streamkit.processors.json_views import FieldTree, JsonViewDecoder, field_tree, tree_paths
from streamkit.processors.project import Map
from streamkit.processors.timestamp import Timestamp
from streamkit.sink_views import SinkReads, with_views


@dataclass
class Step:
    """One step of the physical plan: the logical stages it runs and what it decodes."""

    stages: list[str]
    fused: bool
    fields: list[str] | None = None
    """Field paths decoded (fused steps)."""
    notes: list[str] = field(default_factory=list)
    """Why the run ended here, and what that costs."""
    sink_fields: list[str] | None = None
    """Field paths decoded in this step for the sinks' ``when:`` and templates (the chain's last step)."""


class FusedJson:
    """``json.decode`` and the built-in stages after it, run as one step over decoded views."""

    def __init__(
        self,
        decode: JsonDecode,
        stages: Sequence[Processor],
        tree: FieldTree,
        fast: JsonProject | None = None,
        *,
        sink_views: bool = False,
    ) -> None:
        self.decode_name = stage_name(decode)
        self.stages = [(p, stage_name(p)) for p in stages]
        self.name = " + ".join([self.decode_name, *(n for _, n in self.stages)])
        self.decoder = JsonViewDecoder(tree)
        # Until a map replaces them, the values are views: they must not leave this step.
        self.views_leave = not any(isinstance(p, Map) for p in stages)
        self.fast = fast
        """For filter* -> map -> json.encode?: json.project in exact mode, tried first on every batch."""
        self.sink_views = sink_views and self.views_leave
        """The tree holds the fields the sinks read too: the output carries the views for them."""

    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> ProcessorOutput:
        views = not batch.decoded  # json.decode passes decoded batches through unchanged
        if views and self.fast is not None:
            try:
                projected = self.fast(batch, ctx)
            except NotExact:
                pass  # a record it would not treat exactly as the stages do: the general path below
            else:
                return None if projected is None else projected.with_values_on_demand()
        if views:
            ctx.stage = self.decode_name
            decoded = self.decoder(batch, ctx)
            if decoded is None:
                return None
            batch = decoded
        for processor, name in self.stages:
            ctx.stage = name
            out = processor(batch, ctx)
            if out is None:
                return None
            assert isinstance(out, RecordBatch), f"{name} is a built-in that returns one batch"
            batch = out
        if views and self.views_leave:
            if self.sink_views:
                return with_views(batch, batch.values, self.decoder.tree)
            return batch.with_values_on_demand()
        return batch


_BUILT_INS = (JsonDecode, JsonEncode, Filter, Map, Timestamp)
"""Exactly these classes: a plugin subclassing one of them may behave differently, so it is not fused."""


def _fusable(processor: Processor, mapped: bool) -> tuple[bool, str]:
    """Whether ``processor`` can join a fused run (``mapped``: a map already replaced the records)."""
    if type(processor) not in _BUILT_INS:
        return False, "a plugin or callable: it gets whole decoded records, and the stages after it run one pass each"
    if isinstance(processor, (JsonDecode, Map, Timestamp)):
        return True, ""
    if isinstance(processor, Filter):
        if processor.reads is None and not mapped:
            return False, "its predicate calls user code, which may read any field: whole records are decoded"
        return True, ""
    if isinstance(processor, JsonEncode):
        if processor.option and not mapped:
            return False, "sort_keys re-encodes whole records: they are decoded in full"
        return True, ""
    return False, "a plugin or callable: it gets whole decoded records, and the stages after it run one pass each"


def _reads(processor: Processor) -> list[str]:
    if isinstance(processor, Filter):
        return sorted(processor.reads or ())
    if isinstance(processor, Map):
        return list(processor.paths)
    if isinstance(processor, Timestamp):
        return [processor.field]
    return []


def plan(processors: Sequence[Processor], sinks: SinkReads | None = None) -> tuple[list[Processor], list[Step]]:
    """The physical stages for ``processors`` and a description of each (see the module docs).

    ``sinks``: what the sinks read of the chain's output. When the chain ends in a fused run that hands on
    the source bytes (no ``map``), those fields are decoded in that run's pass too (:mod:`streamkit.sink_views`)."""
    physical: list[Processor] = []
    steps: list[Step] = []
    i = 0
    while i < len(processors):
        head = processors[i]
        if type(head) is not JsonDecode:
            physical.append(head)
            steps.append(Step([stage_name(head)], fused=False, notes=[AVRO_NOT_FUSED] if _is_avro_decode(head) else []))
            i += 1
            continue
        run: list[Processor] = []
        paths: list[str] = []
        mapped = False
        note = ""
        j = i + 1
        while j < len(processors):
            ok, note = _fusable(processors[j], mapped)
            if not ok:
                break
            if not mapped:
                paths.extend(_reads(processors[j]))
            mapped = mapped or isinstance(processors[j], Map)
            run.append(processors[j])
            j += 1
        if not run and j < len(processors):
            # json.decode alone before a plugin: the plugin reads whole records, decoding them is all there is.
            physical.append(head)
            steps.append(
                Step([stage_name(head)], fused=False, notes=[f"not fused with {_next(processors, j)}: {note}"])
            )
            i += 1
            continue
        last = j == len(processors)
        views_leave = not any(isinstance(p, Map) for p in run)
        push = last and views_leave and sinks is not None and sinks.whole is None and bool(sinks.fields)
        tree = field_tree([*paths, *(sinks.fields if push and sinks is not None else ())])
        fused = FusedJson(head, run, tree, _projection(run), sink_views=push)
        physical.append(fused)
        step = Step([fused.decode_name, *(n for _, n in fused.stages)], fused=True, fields=tree_paths(tree))
        if push and sinks is not None:
            step.sink_fields = list(sinks.fields)
            arrives = "" if i == 0 else " (when its input arrives as bytes; decoded input is read as it is)"
            step.notes.append(
                f"sinks read {', '.join(sinks.fields)}: decoded in this pass, not from whole records{arrives}"
            )
        elif last and views_leave and sinks is not None and sinks.whole is not None:
            step.notes.append(f"sink fields not decoded here: {sinks.whole}")
        if fused.fast is not None:
            step.notes.append("projection: only the kept fields are built, and written straight back as JSON")
        if j < len(processors):
            step.notes.append(f"ends before {_next(processors, j)}: {note}")
        if fused.views_leave:
            step.notes.append("no map in the run: the output keeps the source bytes; whole records are decoded "
                              "only if something after it reads values")  # fmt: skip
        steps.append(step)
        i = j
    return physical, steps


# The fused json.project is built from filters that read named fields only (never a callable reference) and
# touches no file or AWS service, so its env only names it in errors.
_PROJECTION_ENV = PluginEnv("chain planner", AwsSettings(), Path.cwd(), where="chain planner")


def _projection(run: Sequence[Processor]) -> JsonProject | None:
    """json.project in exact mode for runs shaped ``filter* -> map -> json.encode?`` (top-level fields kept
    under their own names, missing fields omitted): the shape of most pipelines, and its fastest path."""
    if not run:
        return None
    *filters, last = run
    if isinstance(last, JsonEncode) and filters:
        if last.option:
            return None
        *filters, last = filters
    if not (isinstance(last, Map) and last.all_flat and last.same_names and last.missing == "omit"):
        return None
    wheres: list[Any] = []
    for f in filters:
        if not isinstance(f, Filter) or f.reads is None:
            return None
        wheres.append({"not": f.where} if f.drop else f.where)
    where = None if not wheres else wheres[0] if len(wheres) == 1 else {"all": wheres}
    return JsonProject(JsonProject.Options(fields=list(last.paths), where=where), _PROJECTION_ENV, exact=True)


AVRO_NOT_FUSED = (
    "avro.decode is not fused: fastavro cannot skip fields faster than it reads them (a reader schema naming "
    "only the fields read measured 0.72-0.89x of whole records, benchmarks/avro_projection.py), and skipping "
    "would accept invalid UTF-8 in unread strings that decoding whole records rejects; the stages after it run one "
    "pass each over whole records"
)


def _is_avro_decode(processor: Processor) -> bool:
    # By name, not isinstance: importing the Avro codec (fastavro) here would slow every start-up, Lambda's too.
    kind = type(processor)
    return kind.__name__ == "AvroDecode" and kind.__module__ == "streamkit.processors.avro_codec"


def _next(processors: Sequence[Processor], j: int) -> str:
    return repr(stage_name(processors[j])) if j < len(processors) else "the end of the chain"
