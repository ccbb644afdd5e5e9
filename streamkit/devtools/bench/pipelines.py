"""The pipelines a benchmark runs, and running one on a source of the benchmark's choosing.

The built-in pipeline is the representative one: decode JSON, drop records whose status is "err", keep
four fields, write gzip NDJSON. It runs in two spellings on the same data: ``json.decode -> filter -> map``
(what most pipelines look like) and the fused ``json.project`` (decodes only the fields it keeps). A pipeline
file runs as written except for its source, which the benchmark replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamkit.acks import AckTicket
from streamkit.batch import Partition
from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, PipelineConfig, load_config, parse_config
from streamkit.devtools.bench.data import PROJECTED_FIELDS
from streamkit.devtools.bench.measure import Figures, ShardFigures, peak_rss_mib, reset_peak_rss, rss_mib
from streamkit.metrics import percentiles
from streamkit.runtime import Pipeline, Runtime
from streamkit.source import PartitionReader, Source

KEEP = {"field": "status", "not_equals": "err"}
WORK = 'JSON decode, drop status == "err", keep 4 fields (id, event, user, amount), NDJSON + gzip'


def memory_gzip_sink(name: str = "out") -> dict[str, Any]:
    """The sink that measures the framework alone: NDJSON joined and gzipped in memory, then dropped."""
    return {
        "type": "memory",
        "name": name,
        "compression": "gzip",
        "keep": False,
        "max_records": 10_000,
        "max_bytes": "16MiB",
        "max_age_s": 1.0,
    }


@dataclass(frozen=True)
class Variant:
    """One pipeline to measure."""

    name: str
    description: str
    config: PipelineConfig


def representative(sink: dict[str, Any]) -> list[Variant]:
    chains = [
        (
            "streamkit",
            "json.decode -> filter -> map",
            [
                {"type": "json.decode"},
                {"type": "filter", "where": KEEP},
                {"type": "map", "fields": list(PROJECTED_FIELDS)},
            ],
        ),
        (
            "streamkit json.project",
            "json.project (decodes only the kept fields)",
            [{"type": "json.project", "fields": list(PROJECTED_FIELDS), "where": KEEP}],
        ),
    ]
    variants = []
    for name, chain, processors in chains:
        data = {
            "name": "bench",
            "source": {"type": "generator"},  # replaced by the benchmark's source
            "processors": processors,
            "sinks": [sink],
            "dead_letter": {"type": "memory"},
        }
        written = " (NDJSON, gzip)" if sink["type"] in ("memory", "s3") else ""  # others: see the report's sink line
        variants.append(Variant(name, f"{chain} -> {sink['type']}{written}", parse_config(data)))
    return variants


def from_file(path: Path) -> list[Variant]:
    config = load_config(path)
    return [Variant("streamkit", f"{path} (source replaced)", config)]


def build_with_source(config: PipelineConfig, source: Source) -> Pipeline:
    """The pipeline of ``config`` reading from ``source`` instead of its own."""
    # A generator section always builds without connecting anywhere; the real source is swapped in after.
    pipeline = build_pipeline(dataclasses.replace(config, source={"type": "generator"}))
    source.metrics = pipeline.metrics
    pipeline.source = source
    return pipeline


def build_with_section(config: PipelineConfig, section: dict[str, Any], aws: AwsSettings) -> Pipeline:
    """The pipeline of ``config`` with another source section and AWS settings (the local stack's)."""
    return build_pipeline(dataclasses.replace(config, source=section, aws=aws))


class BenchRuntime(Runtime):
    """A runtime that notes when each partition started and when its records were finished.

    A record is finished when every sink confirmed it (or it was filtered out): that is the end of its
    trip, so rates count records all the way through, not records fetched.
    """

    def __init__(self, pipeline: Pipeline, *, target: int | None = None) -> None:
        super().__init__(pipeline)
        self.target = target
        self.started: dict[Partition, float] = {}
        self.last_done: dict[Partition, float] = {}
        self.finished: Counter[Partition] = Counter()
        self.first_at: float | None = None
        self.cpu_first = 0.0
        self.last_at = 0.0
        self.cpu_last = 0.0

    @property
    def total_finished(self) -> int:
        return sum(self.finished.values())

    async def assign(self, reader: PartitionReader) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at, self.cpu_first = now, time.process_time()
            self.last_at, self.cpu_last = now, self.cpu_first
        self.started.setdefault(reader.partition, now)
        await super().assign(reader)

    def _on_ticket_done(self, ticket: AckTicket) -> None:
        super()._on_ticket_done(ticket)
        now = time.perf_counter()
        partition = ticket.tracker.partition
        self.finished[partition] += len(ticket)
        self.last_done[partition] = now
        self.last_at, self.cpu_last = now, time.process_time()


async def run_streamkit(
    variant: Variant,
    pipeline: Pipeline,
    *,
    target: int | None,
    duration_s: float | None,
    progress: Callable[[BenchRuntime], None] | None = None,
) -> Figures:
    """Run ``pipeline`` until its source ends, ``target`` records were read, or ``duration_s`` passed since
    the first partition was assigned; then drain (finishing what was read) and measure."""
    runtime = BenchRuntime(pipeline, target=target)
    stop = asyncio.Event()
    reset_peak_rss()
    rss_before = rss_mib()
    watcher = asyncio.create_task(_stop_when_done(runtime, stop, duration_s, progress))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C ends a long run (a real stream) the way SIGTERM ends a worker: drain, then report.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await runtime.run(stop)
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
    return figures_of(variant, runtime, rss_before, peak_rss_mib())


async def _stop_when_done(
    runtime: BenchRuntime,
    stop: asyncio.Event,
    duration_s: float | None,
    progress: Callable[[BenchRuntime], None] | None,
) -> None:
    next_report = time.perf_counter() + 1.0
    while not stop.is_set():
        await asyncio.sleep(0.02)
        now = time.perf_counter()
        # Stop fetching once the target was read; draining then finishes those records (a sink that writes
        # large objects acknowledges only when it flushes, which the stop triggers).
        if (runtime.target is not None and runtime.metrics.total_in >= runtime.target) or (
            duration_s is not None and runtime.first_at is not None and now - runtime.first_at >= duration_s
        ):
            stop.set()
        if progress is not None and now >= next_report:
            progress(runtime)
            next_report = now + 1.0


def figures_of(variant: Variant, runtime: BenchRuntime, rss_before: float | None, peak: float) -> Figures:
    metrics = runtime.metrics
    first = runtime.first_at or 0.0
    shards = []
    samples: list[float] = []
    for partition, stats in sorted(metrics.partitions.items()):
        records = runtime.finished.get(partition, 0)
        seconds = runtime.last_done.get(partition, first) - runtime.started.get(partition, first)
        p = percentiles(stats.processing_ms)
        samples.extend(stats.processing_ms)
        # Bytes of the finished records only: a stop can leave fetched records unfinished.
        nbytes = round(stats.bytes_in * records / stats.records_in) if stats.records_in else 0
        shards.append(
            ShardFigures(
                shard=partition.key,
                records=records,
                bytes=nbytes,
                seconds=seconds,
                records_per_s=records / seconds if seconds > 0 else 0.0,
                mib_per_s=nbytes / 2**20 / seconds if seconds > 0 else 0.0,
                latency_p50_ms=p[0] if p else None,
                latency_p99_ms=p[1] if p else None,
                millis_behind_latest=stats.millis_behind,
            )
        )
    total_latency = np.percentile(np.asarray(samples, dtype=np.float64), [50, 99]).tolist() if samples else [None, None]
    behind = [s.millis_behind_latest for s in shards if s.millis_behind_latest is not None]
    return Figures(
        name=variant.name,
        description=variant.description,
        records=runtime.total_finished,
        records_out=sum(metrics.sink_out.values()),
        bytes=sum(s.bytes for s in shards),
        seconds=runtime.last_at - first,
        cpu_s=runtime.cpu_last - runtime.cpu_first,
        peak_rss_mib=peak,
        rss_before_mib=rss_before,
        latency_p50_ms=total_latency[0],
        latency_p99_ms=total_latency[1],
        millis_behind_latest=max(behind) if behind else None,
        shards=shards,
    )
