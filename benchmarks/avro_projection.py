"""Would fusing ``avro.decode -> filter -> map`` pay? Projection through an Avro reader schema, measured.

fastavro has no field projection on decode. The one way to decode fewer fields is Avro schema resolution:
a reader schema naming only the fields the chain reads, so that the writer's other fields are skipped.
This benchmark runs the same chain, ``avro.decode -> filter(status != err) -> map(id, event, user.country)
-> json.encode``, over the same Confluent-framed records (~1 KB, the shape of the generator's JSON records
plus an array and a map), two ways in the same run:

- ``whole``: avro.decode with the writer schema (what the chain does today);
- ``projected``: avro.decode with a reader schema of ``id, status, event, user.country`` (what a fused
  step would decode), then the same stages.

Both must give the same output bytes. The figure decides whether the planner fuses avro.decode
(docs/performance.md "The chain planner").

Usage: python benchmarks/avro_projection.py [--records N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro

from streamkit.batch import Partition, RecordBatch
from streamkit.chain import Chain
from streamkit.config import AwsSettings
from streamkit.plugin_env import PluginEnv
from streamkit.processors.avro_codec import AvroDecode, AvroDecodeOptions
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonEncode
from streamkit.processors.project import Map

BATCH = 1000
USER_FIELDS = [{"name": "id", "type": "long"}, {"name": "country", "type": "string"}]
USER = {"type": "record", "name": "User", "fields": USER_FIELDS}
WRITER = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "ts", "type": "long"},
        {"name": "status", "type": "string"},
        {"name": "event", "type": "string"},
        {"name": "user", "type": USER},
        {"name": "amount", "type": "double"},
        {"name": "payload", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
    ],
}
READER = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "status", "type": "string"},
        {"name": "event", "type": "string"},
        {"name": "user", "type": {"type": "record", "name": "User", "fields": [{"name": "country", "type": "string"}]}},
    ],
}


def records(n: int) -> list[bytes]:
    schema = fastavro.parse_schema(WRITER)
    out = []
    for i in range(n):
        value = {
            "id": f"0-{i}",
            "seq": i,
            "ts": 1_795_000_000_000 + i,
            "status": "err" if i % 10 == 0 else "ok",
            "event": ("view", "click", "purchase")[i % 3],
            "user": {"id": i * 7, "country": "DE" if i % 2 else "US"},
            "amount": i * 1.5,
            "payload": "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] * 800,
            "tags": ["a", "b", "c"],
            "attrs": {"k": i, "j": 2},
        }
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, value)
        out.append(b"\x00" + (1).to_bytes(4, "big") + body.getvalue())
    return out


def chain(directory: Path, projected: bool) -> Chain:
    env = PluginEnv("bench", AwsSettings(), directory, "processors[0]")
    (directory / "writer.avsc").write_text(json.dumps(WRITER))
    (directory / "reader.avsc").write_text(json.dumps(READER))
    options = AvroDecodeOptions(schemas={"1": "writer.avsc"}, reader_schema="reader.avsc" if projected else None)
    return Chain(
        [
            AvroDecode(options, env),
            Filter(Filter.Options(where={"field": "status", "not_equals": "err"}), env),
            Map(Map.Options(fields=["id", "event", "user.country"]), env),
            JsonEncode(),
        ]
    )


def run(steps: Chain, data: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for start in range(0, len(data), BATCH):
        batch = RecordBatch(Partition("bench", "0"), payloads=data[start : start + BATCH])
        outputs, failures = _run(steps, batch)
        assert not failures
        for o in outputs:
            out.extend(o.payloads)
    return out


def _run(steps: Chain, batch: RecordBatch) -> Any:
    """One batch through the chain (avro.decode is sync once its schemas are known: no task switches)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(steps.run(batch))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = records(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        ways = {"whole": chain(Path(tmp), False), "projected": chain(Path(tmp), True)}
        outputs = {name: run(steps, data) for name, steps in ways.items()}
        assert outputs["whole"] == outputs["projected"] and outputs["whole"], "the two ways differ"
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(args.rounds):  # interleaved, so that a load change hits both alike
            for name, steps in ways.items():
                started = time.perf_counter()
                run(steps, data)
                best[name] = min(best[name], time.perf_counter() - started)
    rates = {name: args.records / seconds for name, seconds in best.items()}
    result = {
        "records": args.records,
        "record_bytes": round(sum(map(len, data)) / len(data)),
        **{f"{name}_rps": round(rate) for name, rate in rates.items()},
        "projected_vs_whole": round(rates["projected"] / rates["whole"], 3),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{args.records:,} Avro records of ~{result['record_bytes']} bytes, best of {args.rounds} rounds")
    print(f"whole (writer schema)        {result['whole_rps']:>10,} rec/s")
    print(f"projected (reader schema)    {result['projected_rps']:>10,} rec/s")
    print(f"projected / whole            {result['projected_vs_whole']:>10.2f}")


if __name__ == "__main__":
    main()
