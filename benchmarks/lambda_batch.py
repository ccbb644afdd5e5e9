"""Lambda consumer: streamkit's handler against Powertools' BatchProcessor on the same Kinesis event.

The event holds 3,400 records of ~1 KB JSON (about what fits Lambda's 6 MB invocation payload), shaped
exactly as Lambda delivers it. The work per record is PERF_FACTS.md's W behind a Kinesis event source:
base64-decode, parse JSON, drop records whose status is "err", keep four fields, serialize; then join the
survivors as NDJSON and gzip them. Every side uses orjson and the same compressor (ISA-L gzip level 1,
what streamkit's memory sink uses), so the difference is the framework and the base64 decoder:

- streamkit: ``streamkit.aws_lambda`` with ``json.decode -> filter -> map -> json.encode -> memory sink``
  (gzip), every record tracked by acknowledgement tickets, the partial batch response built from them.
- Powertools: ``BatchProcessor(EventType.KinesisDataStreams)`` + ``process_partial_response`` with a
  record handler doing the same work (Powertools decodes the payload with the stdlib's base64).
- hand-written: a plain loop over ``event["Records"]`` with stdlib base64, no partial-failure tracking;
  and the same loop with pybase64, the ceiling for this work (what streamkit's bookkeeping costs shows
  as the distance to it).

The same compressed output on every side is the check that they did the same work. Also measured, in fresh
interpreters: the import time of ``streamkit.aws_lambda`` (``python -X importtime``) and the time from
the import to a started pipeline when ``STREAMKIT_CONFIG`` is set, as in Lambda's init phase.

Usage: python benchmarks/lambda_batch.py [--records N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pybase64
import structlog
import yaml
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from isal import igzip

from streamkit.aws_lambda import make_handler
from streamkit.connectors.local.generator import GeneratorOptions, make_payload
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.runtime import tune_gc

FIELDS = ["id", "event", "user", "amount"]
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
LAMBDA_PAYLOAD_LIMIT = 6_000_000  # "6 MB": read as decimal megabytes, the stricter reading

PIPELINE: dict[str, Any] = {
    "name": "lambda-bench",
    "source": {"type": "lambda"},
    "processors": [
        {"type": "json.decode"},
        {"type": "filter", "where": {"field": "status", "not_equals": "err"}},
        {"type": "map", "fields": FIELDS},
        {"type": "json.encode"},
    ],
    # One write per invocation, so the gzip input is the same bytes as the baselines'.
    "sinks": [{"type": "memory", "name": "out", "compression": "gzip", "keep": False,
               "max_records": 100_000, "max_bytes": "1GiB"}],
}  # fmt: skip


class Context:
    """What the handler reads from Lambda's context object."""

    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 600_000


def kinesis_event(n: int) -> dict[str, Any]:
    options = GeneratorOptions(record_bytes=920, error_ratio=0.1)  # PERF_FACTS.md: mean 920 B
    records = []
    for i in range(n):
        sequence = f"4959033827149025660855969253836157109592157598913{i:07d}"
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": f"user-{i % 97}",
                    "sequenceNumber": sequence,
                    "data": base64.b64encode(make_payload(options, 0, i)).decode(),
                    "approximateArrivalTimestamp": 1_795_000_000.123 + i / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000006:{sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
            }
        )
    return {"Records": records}


def project(value: dict[str, Any]) -> dict[str, Any]:
    return {k: value[k] for k in FIELDS if k in value}


def powertools_handler() -> tuple[Callable[[dict[str, Any], Any], Any], list[int]]:
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    lines: list[bytes] = []
    compressed = [0]

    def record_handler(record: KinesisStreamRecord) -> None:
        value = orjson.loads(record.kinesis.data_as_bytes())
        if value.get("status") != "err":
            lines.append(orjson.dumps(project(value)))

    def handler(event: dict[str, Any], context: Any) -> Any:
        lines.clear()
        response = process_partial_response(event, record_handler, processor, context)
        compressed[0] = len(igzip.compress(b"\n".join(lines), compresslevel=1))
        return response

    return handler, compressed


def hand_written_handler(b64decode: Callable[[str], bytes]) -> tuple[Callable[[dict[str, Any], Any], Any], list[int]]:
    compressed = [0]
    loads, dumps = orjson.loads, orjson.dumps

    def handler(event: dict[str, Any], context: Any) -> Any:
        lines = []
        for record in event["Records"]:
            value = loads(b64decode(record["kinesis"]["data"]))
            if value.get("status") != "err":
                lines.append(dumps(project(value)))
        compressed[0] = len(igzip.compress(b"\n".join(lines), compresslevel=1))
        return {"batchItemFailures": []}

    return handler, compressed


def best_seconds(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def fresh_interpreter_ms(code: str, runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of ``code`` in new interpreters, minus the interpreter's own start-up."""

    def once(source: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", source], check=True, env=env)
        return time.perf_counter() - started

    baseline = statistics.median(once("pass") for _ in range(runs))
    return (statistics.median(once(code) for _ in range(runs)) - baseline) * 1000


def importtime_ms(module: str, runs: int) -> float:
    """Median cumulative import time of ``module`` in fresh interpreters, from ``python -X importtime``."""

    def once() -> float:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"], check=True, capture_output=True, text=True
        )
        line = next(line for line in proc.stderr.splitlines() if line.rstrip().endswith(f"| {module}"))
        return int(line.split("|")[1]) / 1000

    return statistics.median(once() for _ in range(runs))


def cold_start(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(yaml.safe_dump(PIPELINE))
        env = {**os.environ, "STREAMKIT_CONFIG": str(path), "_HANDLER": "streamkit.aws_lambda.handler"}
        return {
            "import_streamkit_aws_lambda_ms": importtime_ms("streamkit.aws_lambda", runs),
            "init_to_started_pipeline_ms": fresh_interpreter_ms("import streamkit.aws_lambda", runs, env),
            "import_powertools_batch_ms": importtime_ms("aws_lambda_powertools.utilities.batch", runs),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3400)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    # streamkit tunes the garbage collector at cold start (streamkit.runtime.tune_gc); apply it before
    # measuring anything so that every side runs under the same setting.
    tune_gc()
    event = kinesis_event(args.records)
    payload_bytes = len(orjson.dumps(event))
    context = Context()

    kit = make_handler(_config())
    sink = MemorySink.instances["out"]
    # streamkit's handler writes its EMF metric lines after every invocation, as in production (that cost
    # is measured); they go to a sink here instead of cluttering the report.
    quiet = contextlib.redirect_stdout(io.StringIO())
    quiet.__enter__()
    powertools, powertools_out = powertools_handler()
    hand, hand_out = hand_written_handler(base64.b64decode)
    fast, fast_out = hand_written_handler(pybase64.b64decode)

    responses = [kit(event, context), powertools(event, context), hand(event, context), fast(event, context)]
    assert all(r == {"batchItemFailures": []} for r in responses), responses
    outputs = (sink.compressed_bytes, powertools_out[0], hand_out[0], fast_out[0])
    assert len(set(outputs)) == 1, outputs

    n = args.records
    rates = {
        "streamkit": n / best_seconds(lambda: kit(event, context), args.rounds),
        "powertools": n / best_seconds(lambda: powertools(event, context), args.rounds),
        "hand_written": n / best_seconds(lambda: hand(event, context), args.rounds),
        "hand_written_pybase64": n / best_seconds(lambda: fast(event, context), args.rounds),
    }
    kit.close()
    quiet.__exit__(None, None, None)
    cold = cold_start(args.cold_runs)
    result = {
        "records": n,
        "event_bytes": payload_bytes,
        "fits_lambda_payload": payload_bytes <= LAMBDA_PAYLOAD_LIMIT,
        "records_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_vs_powertools": round(rates["streamkit"] / rates["powertools"], 2),
        "ratio_vs_hand_written": round(rates["streamkit"] / rates["hand_written"], 2),
        "ratio_vs_hand_written_pybase64": round(rates["streamkit"] / rates["hand_written_pybase64"], 2),
        "cold_start": {k: round(v, 1) for k, v in cold.items()},
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    fits = "fits Lambda's 6 MB" if result["fits_lambda_payload"] else "TOO BIG for Lambda's 6 MB"
    print(f"Kinesis event: {n:,} records of ~1 KB JSON, {payload_bytes:,} bytes ({fits}), best of {args.rounds}")
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:>10,.0f} records/s")
    for name in ("powertools", "hand_written", "hand_written_pybase64"):
        print(f"  streamkit / {name}: {result[f'ratio_vs_{name}']:.2f}x")
    print(f"Cold start, median of {args.cold_runs} fresh interpreters (imports: python -X importtime; init: wall")
    print("time of the import with STREAMKIT_CONFIG set, as in Lambda's init phase, minus interpreter start-up):")
    for name, ms in cold.items():
        print(f"  {name:<32} {ms:>7.1f} ms")


def _config() -> Any:
    from streamkit.config import parse_config

    return parse_config(PIPELINE, origin="benchmark")


if __name__ == "__main__":
    main()
