"""S3 object encoding: streamkit's streaming writers vs a one-call baseline per format, same run.

    .venv/bin/python benchmarks/sink_encode.py [--records N] [--repeat N] [--json]

50,000 deterministic ~1 KB JSON events. Throughput is MiB/s of *input JSON* (so formats compare on
the same work), best of N runs, one core (pyarrow's JSON reader may use a second). Ratio is input
JSON bytes / object bytes. Our writers are fed in batches of 500 records and drained as 5 MiB
multipart parts, as the sink does; the baselines get everything in one call and keep it in memory.

  ndjson+gzip   ours: isal level 1, streaming      baseline: gzip.compress(b"\\n".join(...), 6)
  ndjson+zstd   ours: zstd level 1, streaming      baseline: the same gzip line (and a zstd one-shot line)
  avro          ours: validated, isal deflate      baseline: fastavro.writer(BytesIO, ...) in one call
  parquet       ours: from values / JSON payloads  baseline: Table.from_pylist + pq.write_table (zstd)
Absolute figures drift between runs and machines; the ratios are the result.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import io
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from streamkit.connectors.s3.formats import MIN_PART_SIZE, ObjectWriter, make_writer

BATCH = 500
_WORDS = [
    "GET", "POST", "/api/v1/orders", "/api/v1/users", "checkout", "cart", "session", "timeout", "retry",
    "payment", "accepted", "declined", "warehouse", "eu-west-1", "us-east-1", "mobile", "desktop", "tablet",
    "Mozilla/5.0", "okhttp/4.12", "cache", "hit", "miss", "latency", "upstream", "shipping", "invoice",
]  # fmt: skip
SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "status", "type": "string"},
        {
            "name": "user",
            "type": {
                "type": "record",
                "name": "User",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "country", "type": "string"},
                    {"name": "age", "type": "int"},
                    {"name": "premium", "type": "boolean"},
                ],
            },
        },
        {"name": "amount", "type": "double"},
        {"name": "request_id", "type": "string"},
        {"name": "payload", "type": "string"},
    ],
}


def make_events(count: int, seed: int = 42) -> list[dict[str, Any]]:
    """~1 KB events: a few typed fields and a log-like text payload with ids and numbers in it."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(60, 90))]
        words += [f"{rng.randrange(1000)}ms", f"order-{rng.randrange(10**6):06d}", f"{rng.getrandbits(32):08x}"]
        rng.shuffle(words)
        events.append(
            {
                "id": i,
                "ts": 1_764_165_600_000 + i * 7,
                "status": "err" if rng.random() < 0.1 else "ok",
                "user": {
                    "name": f"user-{rng.randrange(20_000):05d}",
                    "country": rng.choice(["FR", "DE", "US", "JP", "BR", "IN"]),
                    "age": rng.randrange(18, 90),
                    "premium": rng.random() < 0.3,
                },
                "amount": round(rng.uniform(0, 1000), 2),
                "request_id": f"{rng.getrandbits(128):032x}",
                "payload": " ".join(words),
            }
        )
    return events


def stream(writer: ObjectWriter, batches: Sequence[Sequence[Any]], as_json: bool) -> int:
    """Feed batches as the sink does, draining multipart parts; returns the object size."""
    size = 0
    for batch in batches:
        if as_json:
            writer.write_payloads(batch)
        else:
            writer.write_values(batch)
        part = writer.take_ready(MIN_PART_SIZE)
        size += len(part) if part else 0
    return size + len(writer.finish())


def ours(fmt: str, compression: str | None, batches: Sequence[Sequence[Any]], as_json: bool) -> Callable[[], int]:
    avro_schema = SCHEMA if fmt == "avro" else None
    return lambda: stream(make_writer(fmt, compression=compression, avro_schema=avro_schema), batches, as_json)


def avro_baseline(events: list[dict[str, Any]], codec: str) -> Callable[[], int]:
    schema = fastavro.parse_schema(SCHEMA)

    def run() -> int:
        out = io.BytesIO()
        fastavro.writer(out, schema, events, codec=codec)
        return len(out.getvalue())

    return run


def parquet_baseline(events: list[dict[str, Any]]) -> Callable[[], int]:
    def run() -> int:
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(events), out, compression="zstd")
        return len(out.getvalue())

    return run


def measure(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        size = fn()
        best = min(best, time.perf_counter() - start)
    return best, size


def cases(events: list[dict[str, Any]], payloads: list[bytes]) -> list[tuple[str, str, Callable[[], int]]]:
    """(group, name, run): each group's first line is its baseline."""
    values = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    jsons = [payloads[i : i + BATCH] for i in range(0, len(payloads), BATCH)]
    joined = b"\n".join(payloads)
    return [
        ("ndjson", "gzip.compress(join, 6)", lambda: len(gzip.compress(b"\n".join(payloads), 6))),
        ("ndjson", "zstd one-shot, level 1", lambda: len(zstandard.compress(joined, 1))),
        ("ndjson", "ours gzip (isal 1), payloads", ours("ndjson", "gzip", jsons, True)),
        ("ndjson", "ours zstd (1), payloads", ours("ndjson", "zstd", jsons, True)),
        ("ndjson", "ours gzip (isal 1), values", ours("ndjson", "gzip", values, False)),
        ("avro", "fastavro.writer deflate", avro_baseline(events, "deflate")),
        ("avro", "fastavro.writer null", avro_baseline(events, "null")),
        ("avro", "ours deflate (isal 1), values", ours("avro", "deflate", values, False)),
        ("avro", "ours null, values", ours("avro", None, values, False)),
        ("avro", "ours zstd (1), values", ours("avro", "zstd", values, False)),
        ("parquet", "from_pylist + write_table zstd", parquet_baseline(events)),
        ("parquet", "ours zstd, values", ours("parquet", None, values, False)),
        ("parquet", "ours zstd, payloads", ours("parquet", None, jsons, True)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per line; the best counts")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    events = make_events(args.records)
    payloads = [orjson.dumps(e) for e in events]
    input_mib = sum(map(len, payloads)) / 2**20
    rows: list[dict[str, Any]] = []
    baseline: dict[str, float] = {}
    for group, name, run in cases(events, payloads):
        seconds, size = measure(run, args.repeat)
        mib_s = input_mib / seconds
        baseline.setdefault(group, mib_s)
        rows.append(
            {
                "format": group,
                "case": name,
                "mib_per_s": round(mib_s, 1),
                "ratio": round(input_mib * 2**20 / size, 2),
                "vs_baseline": round(mib_s / baseline[group], 2),
            }
        )
    if args.json:
        print(json.dumps({"records": args.records, "input_mib": round(input_mib, 1), "rows": rows}, indent=2))
        return
    print(f"{args.records} records, {input_mib:.1f} MiB of JSON (mean {input_mib * 2**20 / args.records:.0f} B)")
    print(f"{'format':8} {'case':34} {'MiB/s':>8} {'ratio':>6} {'x base':>7}")
    for row in rows:
        print(
            f"{row['format']:8} {row['case']:34} {row['mib_per_s']:8.1f} {row['ratio']:6.2f} {row['vs_baseline']:7.2f}"
        )


if __name__ == "__main__":
    main()
