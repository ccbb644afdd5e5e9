"""Sink push-down: the fields of sinks' ``when:`` and of partition templates decoded in the fused pass.

Same run, same records (~1 KB JSON, 10% status "err"), chain ``json.decode -> filter(status != err)``; each
scenario runs through the runtime three ways:

- ``unplanned``: every stage its own pass (``Chain(plan=False)``): json.decode builds whole records;
- ``planned``: the chain planner without sink push-down (what it did before): the fused step hands on the
  source bytes, and the sinks' ``when:`` / template decode whole records (orjson) on demand;
- ``pushdown``: the planner decodes what the sinks read in its msgspec pass (``Chain(sinks=sink_reads(...))``).

Scenarios:

- ``when``: two NDJSON sinks routed by ``when: {field: event, equals: purchase}`` and its negation;
- ``partition``: one sink that puts records in Hive partitions by ``country={field.user.country}/`` (the
  S3 sink's Partitioner over NDJSON bytes; gzip per partition stands in for the upload);
- ``mapping``: one sink that maps records with the Timestream sink's RecordMapping (dimensions ``event``,
  ``user.country``, measures ``amount``, ``seq``) and gzips the mapped records' JSON (for the request).

Every sink gzips what it writes (ISA-L level 1). The compressed sizes must agree between the three ways
(the check that they did the same work).

Usage: python benchmarks/sink_pushdown.py [--records N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from isal import igzip

from streamkit.batch import RecordBatch
from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.config import AwsSettings, Size
from streamkit.connectors.local.generator import GeneratorOptions, make_payload
from streamkit.connectors.local.memory_sink import MemorySink, MemorySinkOptions
from streamkit.connectors.local.replay import ReplaySource
from streamkit.connectors.s3.keys import compile_partitioner
from streamkit.connectors.timestream.mapping import DimensionOptions, MeasureOptions, RecordMapping, TimeOptions
from streamkit.plugin_env import PluginEnv
from streamkit.predicates import batch_predicate, compile_values_predicate, predicate_fields
from streamkit.processor import Processor
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode
from streamkit.runtime import Pipeline, Route, Runtime, tune_gc
from streamkit.sink import Rejection
from streamkit.sink_views import sink_reads

BATCH = 1000
SINK_RECORDS = 10_000
ENV = PluginEnv("bench", AwsSettings(), Path.cwd(), "sinks")
WAYS = ("unplanned", "planned", "pushdown")


class PartitionedSink(MemorySink):
    """Records into Hive partitions by a field template, as the S3 sink groups NDJSON records
    (connectors/s3/segments.py ``_group``), then one gzip member per partition and write."""

    keeps_values = True

    def __init__(self, template: str) -> None:
        super().__init__(
            MemorySinkOptions(compression="gzip", keep=False, max_records=SINK_RECORDS, max_bytes=Size(1 << 30))
        )
        self.partitioner = compile_partitioner(template)
        self.value_fields = self.partitioner.fields

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        objects: dict[str, list[bytes]] = {}
        for batch in batches:
            times = batch.event_ms if batch.event_ms is not None else batch.arrival_ms
            payloads = batch.payloads
            for hive, indexes in self.partitioner.group(times, batch.values).items():
                objects.setdefault(hive, []).extend(payloads[i] for i in indexes.tolist())
        for lines in objects.values():
            self.compressed_bytes += len(igzip.compress(b"\n".join(lines), compresslevel=1))
        self.written_records += sum(map(len, batches))
        self.writes += 1
        return []


class MappingSink(MemorySink):
    """Records mapped as the Timestream sink maps them (connectors/timestream/mapping.py), declaring the
    mapping's fields as value_fields as that sink does; the mapped records are gzipped as JSON."""

    keeps_values = True

    def __init__(self) -> None:
        super().__init__(
            MemorySinkOptions(compression="gzip", keep=False, max_records=SINK_RECORDS, max_bytes=Size(1 << 30))
        )
        self.mapping = RecordMapping(
            time=TimeOptions(field="ts"),
            dimensions=["event", DimensionOptions(name="country", field="user.country")],
            measures=[MeasureOptions(name="amount"), MeasureOptions(name="seq", type="BIGINT")],
            measure_name="order",
        )
        self.value_fields = self.mapping.fields

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        mapped = [r for batch in batches for r in self.mapping.map_batch(batch)[0] if r is not None]
        self.compressed_bytes += len(igzip.compress(orjson.dumps(mapped), compresslevel=1))
        self.written_records += sum(map(len, batches))
        self.writes += 1
        return []


def gzip_sink() -> MemorySink:
    return MemorySink(
        MemorySinkOptions(compression="gzip", keep=False, max_records=SINK_RECORDS, max_bytes=Size(1 << 30))
    )


def when(spec: dict[str, Any]) -> Any:
    return batch_predicate(compile_values_predicate(spec, "sinks[0].when", ENV.resolve), predicate_fields(spec))


def routes_of(scenario: str) -> list[Route]:
    if scenario == "when":
        purchases = {"field": "event", "equals": "purchase"}
        return [
            Route("purchases", gzip_sink(), when(purchases)),
            Route("others", gzip_sink(), when({"not": purchases})),
        ]
    if scenario == "mapping":
        return [Route("timestream", MappingSink())]
    return [Route("by-country", PartitionedSink("country={field.user.country}/"))]


def run(data: dict[str, list[bytes]], scenario: str, way: str) -> int:
    processors: list[Processor] = [
        JsonDecode(),
        Filter(Filter.Options(where={"field": "status", "not_equals": "err"}), ENV),
    ]
    routes = routes_of(scenario)
    if way == "unplanned":
        chain = Chain(processors, plan=False)
    elif way == "planned":
        chain = Chain(processors)
    else:
        chain = Chain(processors, sinks=sink_reads(routes))
        assert chain.steps[-1].sink_fields, "the push-down did not happen"
    pipeline = Pipeline(
        name="bench",
        source=ReplaySource(data, batch_size=BATCH),
        chain=chain,
        routes=routes,
        dead_letters=None,
        store=MemoryCheckpointStore(),
        checkpoint_interval_s=1.0,
    )
    for route in routes:
        route.sink.bind(route.name, None, pipeline.metrics)
    asyncio.run(Runtime(pipeline).run(asyncio.Event()))
    return sum(r.sink.compressed_bytes for r in routes if isinstance(r.sink, MemorySink))


def best_rate(scenario: str, way: str, data: dict[str, list[bytes]], records: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run(data, scenario, way)
        best = min(best, time.perf_counter() - started)
    return records / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tune_gc()  # the runtime's garbage-collector setting, for every way alike
    options = GeneratorOptions(record_bytes=1000, error_ratio=0.1)
    per = args.records // args.partitions
    data = {str(p): [make_payload(options, p, i) for i in range(per)] for p in range(args.partitions)}
    n = per * args.partitions
    results: dict[str, dict[str, Any]] = {}
    for scenario in ("when", "partition", "mapping"):
        sizes = {way: run(data, scenario, way) for way in WAYS}
        assert len(set(sizes.values())) == 1 and sizes["pushdown"] > 0, f"{scenario}: different output {sizes}"
        # Interleaved rounds, so that a load change on the machine hits every way alike.
        rates: dict[str, float] = dict.fromkeys(WAYS, 0.0)
        for _ in range(args.rounds):
            for way in WAYS:
                rates[way] = max(rates[way], best_rate(scenario, way, data, n, 1))
        results[scenario] = {
            **{f"{way}_rps": round(rate) for way, rate in rates.items()},
            "pushdown_vs_planned": round(rates["pushdown"] / rates["planned"], 3),
            "pushdown_vs_unplanned": round(rates["pushdown"] / rates["unplanned"], 3),
        }
    if args.json:
        json.dump({"records": n, "results": results}, sys.stdout, indent=2)
        print()
        return
    print(f"{n:,} records of ~1 KB JSON, {args.partitions} partitions, best of {args.rounds} rounds")
    header = ("unplanned", "planned", "pushdown", "vs planned")
    print(f"{'scenario':<10} " + " ".join(f"{h:>11}" for h in header) + f" {'vs unplanned':>13}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['unplanned_rps']:>11,} {r['planned_rps']:>11,} {r['pushdown_rps']:>11,} "
            f"{r['pushdown_vs_planned']:>11.2f} {r['pushdown_vs_unplanned']:>13.2f}"
        )


if __name__ == "__main__":
    main()
