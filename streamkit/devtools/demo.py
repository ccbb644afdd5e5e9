"""``streamkit demo``: Kinesis -> processors -> S3, with DynamoDB leases, all on local stand-ins.

It starts moto (S3, DynamoDB) and kinesalite (Kinesis) as child processes on 127.0.0.1, creates a stream and
a bucket, produces sample events while the pipeline runs, shows progress, stops once every event was read,
copies the S3 output to a local folder, and stops everything it started. It writes the pipeline file it
ran next to the output, so the user can read it and run it again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import yaml

from streamkit.build import build_pipeline
from streamkit.config import load_config
from streamkit.errors import StreamkitError
from streamkit.lifecycle import install_stop_signals, report_progress
from streamkit.runtime import Runtime

STREAM, BUCKET, SHARDS = "clickstream", "demo-lake", 4


class DemoUnavailable(StreamkitError):
    """The demo cannot run on this machine (a missing extra, or a stand-in that would not start)."""


def demo_config(endpoints: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "demo",
        "source": {"type": "kinesis", "stream": STREAM, "idle_poll_s": 0.2, "failover_time_s": 5},
        "processors": [
            {"type": "json.decode"},
            {"type": "filter", "where": {"field": "status", "not_equals": "err"}},
            {"type": "timestamp", "field": "ts", "unit": "ms"},
            {
                "type": "map",
                "fields": {
                    "id": "id",
                    "event": "event",
                    "user_id": "user.id",
                    "country": "user.country",
                    "amount": "amount",
                    "ts": "ts",
                },
            },
        ],
        "sinks": [
            {
                "type": "s3",
                "name": "lake",
                "bucket": BUCKET,
                "prefix": "events/",
                "format": "ndjson",
                "compression": "gzip",
                "max_age_s": 1.0,
            },
            {
                "type": "s3",
                "name": "purchases",
                "bucket": BUCKET,
                "prefix": "purchases/",
                "format": "parquet",
                "when": {"field": "event", "equals": "purchase"},
                "max_age_s": 1.0,
            },
        ],
        "dead_letter": {"type": "s3", "bucket": BUCKET, "prefix": "dead-letter/"},
        "checkpoint": {"interval_s": 1.0},
        "aws": {"region": "us-east-1", "endpoints": endpoints},
        "runtime": {"progress_interval_s": 1.0, "metrics": {"emf": False}},
    }


async def run_demo(output: Path, *, records: int, partitions: int) -> int:
    missing = [m for m in ("boto3", "moto") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoUnavailable(f"needs {' and '.join(missing)}: pip install 'streamkit[demo]'")
    from streamkit.connectors.local import demo_stack
    from streamkit.devtools.localstack import Kinesalite, LocalStack, LocalStackError

    # The demo talks only to stand-ins on 127.0.0.1: give them dummy credentials, never the user's.
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        os.environ.pop(variable, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    output = await asyncio.to_thread(output.resolve)
    # kinesalite is lossless under concurrent writers; the demo has one producer, so moto's Kinesis (pure Python,
    # installed with the demo extra) serves as well where Node.js or the npm package is missing.
    no_kinesalite = Kinesalite.unavailable()
    kinesis = "kinesalite" if no_kinesalite is None else "moto (no Node.js or kinesalite here)"
    print(f"demo: starting local stand-ins (moto for S3 and DynamoDB, {kinesis} for Kinesis) ...", file=sys.stderr)
    try:
        stack = await asyncio.to_thread(LocalStack.start, moto=True, kinesalite=no_kinesalite is None)
    except LocalStackError as exc:
        raise DemoUnavailable(f"could not start the local stand-ins: {exc}") from exc
    try:
        endpoints = stack.aws_endpoints()
        await asyncio.to_thread(demo_stack.create_resources, endpoints, STREAM, partitions or SHARDS, BUCKET)
        config_path = await asyncio.to_thread(_write_config, output, demo_config(endpoints))
        print(f"demo: pipeline file {config_path}", file=sys.stderr)
        pipeline = build_pipeline(load_config(config_path))
        runtime = Runtime(pipeline)
        stop = asyncio.Event()
        install_stop_signals(stop, structlog.get_logger("streamkit"))
        started = time.monotonic()
        producer = asyncio.create_task(asyncio.to_thread(demo_stack.produce, endpoints, STREAM, records, 0.001))
        reporter = asyncio.create_task(report_progress(runtime, 1.0))
        running = asyncio.create_task(runtime.run(stop))
        sent = await producer
        # Stop once every produced event was read (the drain then writes and checkpoints them all).
        while runtime.metrics.total_in < sent and not running.done() and not stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        stop.set()
        summary = await running
        reporter.cancel()
        elapsed = time.monotonic() - started
        objects = await asyncio.to_thread(demo_stack.download, endpoints, BUCKET, output / "s3")
        leases = await asyncio.to_thread(demo_stack.lease_checkpoints, endpoints, "demo-leases")
    finally:
        await asyncio.to_thread(stack.stop)
    print(f"progress: {pipeline.metrics.progress_line()}", file=sys.stderr)
    print(f"demo: produced {sent:,} events to Kinesis stream {STREAM!r} ({partitions or SHARDS} shards)")
    print(f"demo: read {summary.records_in:,} in {elapsed:.1f}s; {summary.dead_lettered:,} dead-lettered")
    for route in pipeline.routes:
        print(f"demo: sink {route.name!r} wrote {pipeline.metrics.sink_out.get(route.name, 0):,} records")
    print(f"demo: {len(objects)} S3 objects ({sum(s for _, s in objects):,} bytes) copied to {output / 's3'}")
    for key, _ in objects[:5]:
        print(f"demo:   s3://{BUCKET}/{key}")
    print(f"demo: lease table checkpoints: {leases}")
    print(f"demo: pipeline file: {config_path} (the stand-ins are stopped; endpoints in it are gone)")
    return 0 if summary.drained else 1


def _write_config(output: Path, config: dict[str, Any]) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
