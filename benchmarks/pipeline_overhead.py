"""Framework overhead: streamkit's runtime against a hand-written loop doing the same work, same run.

Work per record (PERF_FACTS.md's W): parse JSON, drop records whose status is "err", serialize, then join
as NDJSON and gzip. streamkit runs it as ``json.decode -> filter -> json.encode -> memory sink (gzip)``,
fed from memory, with every record tracked, acknowledged and checkpointed; the baseline is a plain loop
over the same payloads. Both compress with the same function (ISA-L gzip level 1) and run under the same
garbage-collector setting.

A second scenario adds a projection (``map`` to four fields) so that both sides must re-serialize every
record: in the first one streamkit's json.encode reuses the original bytes of records whose values did
not change, which the hand loop does not do.

Usage: python benchmarks/pipeline_overhead.py [--records N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from isal import igzip

from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.config import AwsSettings, Size
from streamkit.connectors.local.generator import GeneratorOptions, make_payload
from streamkit.connectors.local.memory_sink import MemorySink, MemorySinkOptions
from streamkit.connectors.local.replay import ReplaySource
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Processor
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode, JsonEncode
from streamkit.processors.project import Map
from streamkit.runtime import Pipeline, Route, Runtime, tune_gc

FIELDS = ["id", "event", "user", "amount"]
BATCH = 1000
SINK_RECORDS = 10_000


def payloads(n: int, partitions: int) -> dict[str, list[bytes]]:
    options = GeneratorOptions(record_bytes=1000, error_ratio=0.1)
    per = n // partitions
    return {str(p): [make_payload(options, p, i) for i in range(per)] for p in range(partitions)}


def hand_loop(data: dict[str, list[bytes]], project: bool) -> int:
    loads, dumps = orjson.loads, orjson.dumps
    out = 0
    pending: list[bytes] = []
    for records in data.values():
        for start in range(0, len(records), BATCH):
            for raw in records[start : start + BATCH]:
                value = loads(raw)
                if value.get("status") == "err":
                    continue
                if project:
                    value = {k: value[k] for k in FIELDS if k in value}
                pending.append(dumps(value))
            if len(pending) >= SINK_RECORDS:
                out += len(igzip.compress(b"\n".join(pending), compresslevel=1))
                pending = []
    if pending:
        out += len(igzip.compress(b"\n".join(pending), compresslevel=1))
    return out


def streamkit_run(data: dict[str, list[bytes]], project: bool) -> int:
    env = PluginEnv("bench", AwsSettings(), Path.cwd(), "processors")
    processors: list[Processor] = [
        JsonDecode(),
        Filter(Filter.Options(where={"field": "status", "not_equals": "err"}), env),
    ]
    if project:
        processors.append(Map(Map.Options(fields=FIELDS), env))
    processors.append(JsonEncode())
    options = MemorySinkOptions(compression="gzip", keep=False, max_records=SINK_RECORDS, max_bytes=Size(1 << 30))
    sink = MemorySink(options)
    pipeline = Pipeline(
        name="bench",
        source=ReplaySource(data, batch_size=BATCH),
        chain=Chain(processors),
        routes=[Route("memory", sink)],
        dead_letters=None,
        store=MemoryCheckpointStore(),
        checkpoint_interval_s=1.0,
    )
    sink.bind("memory", None, pipeline.metrics)
    asyncio.run(Runtime(pipeline).run(asyncio.Event()))
    return sink.compressed_bytes


def best_rate(fn: Callable[[], Any], records: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return records / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    # The runtime tunes the garbage collector process-wide (streamkit.runtime.tune_gc); apply it before
    # measuring anything so the hand loop runs under the same setting.
    tune_gc()
    data = payloads(args.records, args.partitions)
    n = sum(len(v) for v in data.values())
    results = {}
    for name, project in (("decode-filter-encode", False), ("decode-filter-project-encode", True)):
        # Same compressed output on both sides is the check that they did the same work.
        assert hand_loop(data, project) > 0 and streamkit_run(data, project) > 0
        hand = best_rate(lambda p=project: hand_loop(data, p), n, args.rounds)  # type: ignore[misc]
        kit = best_rate(lambda p=project: streamkit_run(data, p), n, args.rounds)  # type: ignore[misc]
        results[name] = {"hand_loop_rps": round(hand), "streamkit_rps": round(kit), "ratio": round(kit / hand, 3)}
    if args.json:
        json.dump({"records": n, "results": results}, sys.stdout, indent=2)
        print()
        return
    print(f"{n:,} records of ~1 KB JSON, {args.partitions} partitions, best of {args.rounds} rounds")
    print(f"{'scenario':<30} {'hand loop rec/s':>16} {'streamkit rec/s':>16} {'ratio':>7}")
    for name, r in results.items():
        print(f"{name:<30} {r['hand_loop_rps']:>16,} {r['streamkit_rps']:>16,} {r['ratio']:>7.2f}")


if __name__ == "__main__":
    main()
