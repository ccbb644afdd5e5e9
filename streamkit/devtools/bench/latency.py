"""``streamkit bench --source local --latency``: put-to-sink latency, enhanced fan-out against polling.

kinesis-local (the stand-in that implements SubscribeToShard) behind the event-stream proxy
(streamkit/devtools/localstack/efo_proxy.py), moto for the lease table. For each consumer in turn a fresh stream is
read by the kinesis source as a pipeline configures it, while a writer puts records at a steady rate. A
record's latency is the time its sink write started minus its ApproximateArrivalTimestamp (set by the
emulator when it accepted the PutRecords, on the same host clock): put to sink, the sink's own batching
(``max_age_s`` 0.05) included, the same on both sides.

What the figures are about: polling's latency follows ``idle_poll_s`` (the wait between calls at the tip);
enhanced fan-out's follows how soon the service pushes a record. kinesis-local pushes once a second (it
polls its own store every second), where AWS pushes within about 70 ms: on the emulator EFO cannot beat a
fast poll, and the comparison says more about each consumer's behaviour than about AWS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamkit.batch import RecordBatch
from streamkit.config import AwsSettings
from streamkit.sink import Rejection

REGION = "us-east-1"


@dataclass
class LatencyFigures:
    name: str
    settings: str
    records: int
    written_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LatencyRun:
    name: str
    settings: str
    source: dict[str, Any]


def runs() -> list[LatencyRun]:
    return [
        LatencyRun("polling (defaults)", "idle_poll_s 1.0, reads_per_second 5", {"consumer": "polling"}),
        LatencyRun(
            "polling (fast)", "idle_poll_s 0.2, reads_per_second 5", {"consumer": "polling", "idle_poll_s": 0.2}
        ),
        LatencyRun("efo (defaults)", "SubscribeToShard, stall_timeout_s 60", {"consumer": "efo"}),
    ]


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float, float]:
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99), float(values.max())


def _latency_sink(built: Any) -> list[float]:
    """Swap the pipeline's memory sink for one that notes each record's put-to-sink latency."""
    from streamkit.connectors.local.memory_sink import MemorySink, MemorySinkOptions

    seen: list[float] = []

    class LatencySink(MemorySink):
        async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
            now_ms = time.time() * 1000.0
            for batch in batches:
                seen.extend((now_ms - batch.arrival_ms).tolist())
            return await super().write(batches)

    sink = LatencySink(MemorySinkOptions(max_age_s=0.05, keep=False))
    sink.bind("out", built.dead_letters, built.metrics)
    built.routes[0].sink = sink
    return seen


async def _write_steadily(aws: AwsSettings, stream: str, rate: float, duration_s: float) -> int:
    """PutRecords 20 times a second at ``rate`` records/s in all, keys spread over the shards; returns how
    many were written (fewer than asked when the emulator cannot keep up: the table shows the rate reached)."""
    from streamkit.connectors.aws_clients import AwsClient

    per_call = max(1, round(rate / 20))
    interval = per_call / rate
    written = 0
    async with AwsClient(aws, "kinesis") as kinesis:
        start = time.monotonic()
        while time.monotonic() - start < duration_s:
            entries = [{"Data": b'{"n":%d}' % (written + i), "PartitionKey": str(written + i)} for i in range(per_call)]
            while entries:
                answer = await kinesis.put_records(StreamName=stream, Records=entries)
                entries = [e for e, r in zip(entries, answer["Records"], strict=True) if "ErrorCode" in r]
            written += per_call
            next_at = start + (written / per_call) * interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return written


async def _measure(
    run: LatencyRun, aws: AwsSettings, stream: str, shards: int, rate: float, duration_s: float
) -> LatencyFigures:
    from streamkit.build import build_pipeline
    from streamkit.config import parse_config
    from streamkit.runtime import Runtime

    async with _control(aws) as kinesis:
        await kinesis.create_stream(StreamName=stream, ShardCount=shards)
        await kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.1})
    config = {
        "name": f"latency-{stream}",
        "source": {"type": "kinesis", "stream": stream, "lease_table": f"{stream}-leases", **run.source},
        "sinks": [{"type": "memory", "name": "out"}],
        "checkpoint": {"interval_s": 1.0},
        "aws": {"region": REGION, "endpoints": aws.endpoints},
        "runtime": {"shutdown_grace_s": 10},
    }
    built = build_pipeline(parse_config(config))
    seen = _latency_sink(built)
    stop = asyncio.Event()
    runtime = Runtime(built)
    task = asyncio.create_task(runtime.run(stop))
    try:
        async with asyncio.timeout(60):
            while built.metrics.leases_held < shards:  # every shard read (and subscribed) before writing
                if task.done():
                    await task
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # past the first subscription's first event
        began = time.monotonic()
        written = await _write_steadily(aws, stream, rate, duration_s)
        written_per_s = written / (time.monotonic() - began)
        await _drained(seen, written, task)
    finally:
        stop.set()
        await task
    if len(seen) < written:
        raise RuntimeError(f"{run.name}: {len(seen)} of {written} records reached the sink")
    p50, p99, worst = percentiles(seen)
    return LatencyFigures(run.name, run.settings, len(seen), written_per_s, p50, p99, worst)


async def _drained(seen: list[float], written: int, task: asyncio.Task[Any]) -> None:
    """Wait until every written record reached the sink (or the pipeline stopped, or 30 s passed)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while len(seen) < written and not task.done():  # noqa: ASYNC110 (nothing to await: poll the count)
                await asyncio.sleep(0.1)


def _control(aws: AwsSettings) -> Any:
    from streamkit.connectors.aws_clients import AwsClient

    return AwsClient(aws, "kinesis")


def measure_latency(shards: int, rate: float, duration_s: float) -> list[LatencyFigures]:
    from streamkit.devtools.bench.local import use_dummy_credentials
    from streamkit.devtools.localstack import LocalStack
    from streamkit.devtools.localstack.efo_proxy import EventStreamProxy

    use_dummy_credentials()
    stack = LocalStack.start(moto=True, kinesalite=False, kinesis_local=True)
    try:
        assert stack.kinesis_local is not None and stack.moto is not None
        with EventStreamProxy.start(stack.kinesis_local.endpoint_url) as proxy:
            aws = AwsSettings(region=REGION, endpoints={**stack.aws_endpoints(), "kinesis": proxy.endpoint_url})
            figures = []
            for i, run in enumerate(runs()):
                print(f"  {run.name}: {rate:g} records/s for {duration_s:g} s", file=sys.stderr, flush=True)
                figures.append(asyncio.run(_measure(run, aws, f"latency-{i}", shards, rate, duration_s)))
            return figures
    finally:
        stack.stop()


def markdown(figures: Sequence[LatencyFigures], *, shards: int, rate: float, duration_s: float, command: str) -> str:
    lines = [
        f"# Put-to-sink latency: {shards} shards, {rate:g} records/s for {duration_s:g} s per consumer",
        "",
        f"`{command}` on kinesis-local (behind the event-stream proxy) and moto, {os.cpu_count()} cores.",
        "",
        "| consumer | settings | records | written/s | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        figures_ms = f"{f.p50_ms:,.0f} | {f.p99_ms:,.0f} | {f.max_ms:,.0f}"
        lines.append(f"| {f.name} | {f.settings} | {f.records:,} | {f.written_per_s:,.0f} | {figures_ms} |")
    lines += [
        "",
        "Latency: sink write minus the record's ApproximateArrivalTimestamp. kinesis-local pushes EFO events once "
        "a second (AWS: within ~70 ms), so on the emulator EFO's latency is about half a second by construction.",
    ]
    return "\n".join(lines) + "\n"


def run_latency(args: Any, command: str) -> int:
    """The ``--latency`` command: measure, print the table, write --json / --markdown if asked."""
    import orjson

    from streamkit.errors import ConfigError

    if args.rate <= 0:
        raise ConfigError("--rate", f"must be positive, got {args.rate}")
    shards = args.shards or 2
    duration_s = args.duration or 20.0
    print(f"starting kinesis-local, the event-stream proxy and moto; {shards} shards", file=sys.stderr, flush=True)
    figures = measure_latency(shards, args.rate, duration_s)
    text = markdown(figures, shards=shards, rate=args.rate, duration_s=duration_s, command=command)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    if args.json is not None:
        report = {"shards": shards, "rate": args.rate, "duration_s": duration_s, "command": command,
                  "runs": [f.as_json() for f in figures]}  # fmt: skip
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0
