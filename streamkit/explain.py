"""``streamkit plan`` (and ``validate --explain``): the physical plan of a pipeline, in words.

Which processors the planner fused into one step, which fields that step decodes, where a plugin ends a
fused run and what that costs, which fields the sinks read and whether the fused pass decodes them.
"""

from __future__ import annotations

from typing import Any

from streamkit.config import PipelineConfig
from streamkit.predicates import predicate_fields
from streamkit.processors.json_views import field_tree
from streamkit.runtime import Pipeline
from streamkit.sink_views import covers

WHOLE_RECORD_COST = "whole records decoded (orjson: ~2.5 us per 1 KB record, ~2.5x the bytes in memory)"


def explain(config: PipelineConfig, pipeline: Pipeline) -> list[str]:
    """The lines ``streamkit plan`` prints."""
    chain = pipeline.chain
    steps = chain.steps
    lines = [f"physical plan of {pipeline.name!r}: {len(chain.processors)} processor(s) as written, "
             f"{len(steps)} step(s)"]  # fmt: skip
    ends_mapped = False
    ends_on_demand = False
    pushed = steps[-1].sink_fields if steps else None
    for number, step in enumerate(steps, 1):
        stages = " -> ".join(step.stages)
        if step.fused:
            lines.append(f"  step {number}: fused   {stages}")
            decoded = ", ".join(step.fields or []) or "no field (each record is only checked to be valid JSON)"
            lines.append(f"          decodes  {decoded}; every other field is skipped while parsing")
        else:
            lines.append(f"  step {number}: alone   {stages}")
        lines.extend(f"          note     {note}" for note in step.notes)
        ends_mapped = step.fused and not any(n.startswith("no map") for n in step.notes)
        ends_on_demand = step.fused and not ends_mapped
    if any(note.startswith("ends before") for s in steps for note in s.notes):
        lines.append(f"  cost     where a run ends: {WHOLE_RECORD_COST}, and each stage after it is its own pass")
    lines.append("sinks")
    for index, route in enumerate(pipeline.routes):
        section = config.sinks[index]
        reads = _sink_reads(section, route.sink)
        if reads is None:
            lines.append(f"  {route.name}: when: calls user code, which gets whole records")
            continue
        if not reads:
            lines.append(f"  {route.name}: reads no fields (writes the records' bytes)")
            continue
        where = "the output of the last map (small records, decoded from its bytes on demand)" if ends_mapped else (
            f"{WHOLE_RECORD_COST}, on demand" if ends_on_demand else "the decoded records")  # fmt: skip
        if pushed is not None and all(covers(field_tree(pushed), r) for r in reads):
            where = f"views decoded in the fused pass (step {len(steps)}), never whole records"
            if route.sink.keeps_values and route.sink.value_fields:
                where += "; the sink gets those views as its values, beside the bytes as written"
        lines.append(f"  {route.name}: reads {', '.join(reads)}: from {where}")
    return lines


def _sink_reads(section: dict[str, Any], sink: Any) -> list[str] | None:
    """Field paths a sink's ``when:``, partition template and declared ``value_fields`` read (None: a
    callable predicate)."""
    reads: list[str] = []
    if section.get("when") is not None:
        fields = predicate_fields(section["when"])
        if fields is None:
            return None
        reads.extend(sorted(fields))
    partitioner = getattr(sink, "partitioner", None)
    declared = sink.value_fields if sink.keeps_values and sink.value_fields else ()  # a Timestream mapping, ...
    reads.extend(f for f in [*getattr(partitioner, "fields", ()), *declared] if f not in reads)
    return reads
