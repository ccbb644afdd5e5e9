"""``streamkit demo``: a realistic pipeline with no AWS account and no set-up.

It writes the pipeline file it runs next to its output, so the user can read it, edit it and run it again
with ``streamkit run``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import structlog
import yaml

from streamkit.build import build_pipeline
from streamkit.cli import install_stop_signals, report_progress
from streamkit.config import load_config
from streamkit.runtime import Runtime


def demo_config(output: Path, records: int, partitions: int) -> dict[str, object]:
    return {
        "name": "demo",
        "source": {
            "type": "generator",
            "count": records,
            "partitions": partitions,
            "batch_size": 500,
            "invalid_ratio": 0.001,
            "stream": "clickstream",
        },
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
            {"type": "json.encode"},
        ],
        "sinks": [
            {
                "type": "file",
                "name": "events",
                "path": "events",
                "compression": "gzip",
                "max_records": 20_000,
            },
            {
                "type": "file",
                "name": "purchases",
                "path": "purchases",
                "when": {"field": "event", "equals": "purchase"},
            },
        ],
        "dead_letter": {"type": "file", "path": "dead-letter"},
        "checkpoint": {"type": "file", "path": "checkpoints.json", "interval_s": 1.0},
        "runtime": {"progress_interval_s": 1.0},
    }


def write_demo_config(output: Path, records: int, partitions: int) -> Path:
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(output, records, partitions), sort_keys=False))
    return config_path


async def run_demo(output: Path, *, records: int, partitions: int) -> int:
    config_path = await asyncio.to_thread(write_demo_config, output, records, partitions)
    output = config_path.parent
    print(f"demo: pipeline file {config_path}", file=sys.stderr)
    pipeline = build_pipeline(load_config(config_path))
    runtime = Runtime(pipeline)
    stop = asyncio.Event()
    install_stop_signals(stop, structlog.get_logger("streamkit"))
    reporter = asyncio.create_task(report_progress(runtime, 1.0))
    started = time.monotonic()
    try:
        summary = await runtime.run(stop)
    finally:
        reporter.cancel()
    elapsed = time.monotonic() - started
    print(f"progress: {pipeline.metrics.progress_line()}", file=sys.stderr)
    print(
        f"demo: {summary.records_in:,} records in {elapsed:.1f}s; "
        f"{summary.dead_lettered:,} dead-lettered; checkpoints in {output / 'checkpoints.json'}"
    )
    for route in pipeline.routes:
        directory = getattr(route.sink, "directory", None)
        print(f"demo: sink {route.name!r} wrote {pipeline.metrics.sink_out[route.name]:,} records to {directory}")
    print(f"demo: dead-letter entries in {output / 'dead-letter'}")
    print(f"demo: run it again with: streamkit run {config_path}")
    return 0
