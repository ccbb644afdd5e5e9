"""``streamkit bench``: run a pipeline against a source and report shard throughput beside the baselines.

Sources:
- ``synthetic``: recorded GetRecords bodies replayed in process through the production shard reader. No
  network, no emulator: the framework alone, decoding included.
- ``local``: kinesalite and moto on loopback, a stream loaded first, read by the kinesis source (leases in
  moto's DynamoDB). Pacing is lifted: the emulator has no read limits and is the ceiling here.
- ``stream``: a real stream, read only (no leases, no checkpoints, nothing written), within its read limits.

Rounds alternate streamkit and the baselines; each side's best round is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamkit.devtools.bench.isolate import run_isolated
from streamkit.devtools.bench.measure import Figures
from streamkit.devtools.bench.pipelines import (
    WORK,
    BenchRuntime,
    Variant,
    build_with_section,
    build_with_source,
    from_file,
    memory_gzip_sink,
    representative,
    run_streamkit,
)
from streamkit.devtools.bench.report import Report, markdown
from streamkit.errors import ConfigError
from streamkit.runtime import Pipeline, tune_gc
from streamkit.source import Source

if TYPE_CHECKING:
    from streamkit.devtools.bench.baselines import Baseline

DEFAULT_RECORDS = {"synthetic": 200_000, "local": 40_000}
DEFAULT_ROUNDS = {"synthetic": 2, "local": 3, "stream": 1}
STREAM_DEFAULT_DURATION_S = 60.0


@dataclass
class BenchOptions:
    source: str = "synthetic"
    pipeline: Path | None = None
    shards: int | None = None
    records: int | None = None
    duration_s: float | None = None
    rounds: int | None = None
    json_path: Path | None = None
    markdown_path: Path | None = None
    stream: str | None = None
    region: str | None = None
    initial_position: str = "TRIM_HORIZON"
    baselines: bool = True
    sink: str = "auto"
    profile_path: Path | None = None
    command: str = "streamkit bench"


def say(text: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(text, file=sys.stderr, flush=True)


def _progress(label: str, expected: int | None) -> Callable[[BenchRuntime], None]:
    def show(runtime: BenchRuntime) -> None:
        read, done = runtime.metrics.total_in, runtime.total_finished
        elapsed = max(time.perf_counter() - (runtime.first_at or time.perf_counter()), 1e-9)
        of = f" of {expected:,}" if expected else ""
        # A sink writing large objects finishes records only when an object is written: show both counts.
        say(f"  {label}: {read:,}{of} records read ({read / elapsed:,.0f}/s), {done:,} finished")

    return show


class Bench:
    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        source = options.source
        self.rounds = options.rounds or DEFAULT_ROUNDS[source]
        self.records = options.records or DEFAULT_RECORDS.get(source, 0)
        self.shards = options.shards or 4
        self.best: dict[str, Figures] = {}
        self.order: list[str] = []
        self.ours: set[str] = set()
        """Names of the streamkit runs (the rest are baselines)."""
        self.stand_in_sink: dict[str, Any] | None = None
        """The sink section of ``--sink`` NAME from streamkit.devtools.bench.sinks, started for the whole run."""

    def keep(self, figures: Figures) -> None:
        """Keep each side's best round; memory comes from each side's first round. Every side runs in its
        own fork of this process (streamkit.devtools.bench.isolate), so each starts from the same memory; where it
        cannot, the first round is the one least affected by what earlier runs left behind."""
        first = self.best.get(figures.name)
        if first is None:
            self.order.append(figures.name)
            self.best[figures.name] = figures
        elif figures.records_per_s > first.records_per_s:
            figures.peak_rss_mib, figures.rss_before_mib = first.peak_rss_mib, first.rss_before_mib
            self.best[figures.name] = figures
        extra = f", {figures.records_out:,} written" if figures.records_out else ""
        rate = f"{figures.records_per_s:,.0f}/s"
        say(f"  {figures.name}: {figures.records:,} records in {figures.seconds:.2f} s = {rate}{extra}")

    def variants(self, sink: dict[str, Any]) -> list[Variant]:
        return from_file(self.o.pipeline) if self.o.pipeline else representative(sink)

    # -- the streamkit side ----------------------------------------------------------------------
    def run_variant(self, variant: Variant, make: Callable[[], Pipeline], target: int | None, profile: bool) -> None:
        from streamkit.devtools.bench.sinks import RESET_BEFORE_EACH_RUN

        reset = RESET_BEFORE_EACH_RUN.get(self.o.sink)
        if reset is not None and self.stand_in_sink is not None:
            reset(self.stand_in_sink)

        async def go() -> Figures:
            pipeline = make()
            return await run_streamkit(
                variant,
                pipeline,
                target=target,
                duration_s=self.o.duration_s,
                progress=_progress(variant.name, target),
            )

        def side() -> Figures:
            if not (profile and self.o.profile_path is not None):
                return asyncio.run(go())
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
            figures = asyncio.run(go())
            profiler.stop()
            with self.o.profile_path.open("a") as out:
                out.write(f"# {variant.name}: {variant.description}\n")
                out.write(profiler.output_text(unicode=False, color=False) + "\n")
            say(f"  profile of {variant.name} added to {self.o.profile_path}")
            return figures

        figures = run_isolated(side)
        self.ours.add(figures.name)
        self.keep(figures)

    # -- baselines -------------------------------------------------------------------------------
    def baselines(self, report: Report, kind: str) -> list[Baseline]:
        if not self.o.baselines:
            return []
        if self.o.pipeline is not None:
            report.notes.append("baselines do the built-in pipeline's work: they run without a pipeline file only")
            return []
        from streamkit.devtools.bench.baselines import local_baselines, synthetic_baselines

        found = synthetic_baselines() if kind == "synthetic" else local_baselines()
        runnable = []
        for baseline in found:
            missing = baseline.missing()
            if missing:
                report.skipped[baseline.name] = f"needs {', '.join(missing)}: pip install 'streamkit[bench]'"
            else:
                runnable.append(baseline)
        return runnable

    def run_baseline(self, baseline: Baseline, data: Any) -> None:
        say(f"  {baseline.name}: running")
        self.keep(run_isolated(partial(baseline.run, data)))

    # -- sources ---------------------------------------------------------------------------------
    def synthetic(self, report: Report) -> None:
        if self.o.sink == "s3":
            raise ConfigError("--sink", "the s3 sink runs on the local source only (on moto)")
        from streamkit.connectors.kinesis.synthetic import SyntheticKinesisSource
        from streamkit.devtools.bench.data import recorded_shard
        from streamkit.devtools.bench.inputs import SyntheticInput

        per_shard = max(1, self.records // self.shards)
        say(f"recording {per_shard:,} records per shard in 10,000-record GetRecords bodies")
        recorded = recorded_shard(per_shard)
        shards = {f"shardId-{i:012d}": recorded.bodies for i in range(self.shards)}
        data = SyntheticInput(
            shards, per_shard * self.shards, recorded.payload_bytes * self.shards, recorded.kept * self.shards
        )
        report.records = data.records
        variants = self.variants(self.stand_in_sink or memory_gzip_sink())
        baselines = self.baselines(report, "synthetic")
        for round_ in range(self.rounds):
            say(f"round {round_ + 1} of {self.rounds}")
            for variant in variants:
                make = partial(_replaying, variant, shards, SyntheticKinesisSource)
                self.run_variant(variant, make, None, profile=round_ == 0)
            for baseline in baselines:
                self.run_baseline(baseline, data)
        self.check_outputs(report, data.expected_out, data.records)

    def local(self, report: Report) -> None:
        from streamkit.connectors.kinesis.source import KinesisSource
        from streamkit.devtools.bench.local import kinesis_section, start_local
        from streamkit.plugins import available

        installed = any(info.name == "s3" for info in available("sink"))
        if self.o.sink == "s3" and not installed:
            raise ConfigError("--sink", "no sink of type s3 is installed")
        has_s3 = installed and self.o.sink in ("auto", "s3") and self.o.pipeline is None
        say(f"starting kinesalite and moto; loading {self.records:,} records into {self.shards} shards")
        bench = start_local(self.shards, self.records, with_bucket=has_s3)
        try:
            data = bench.data
            report.records = data.records
            sink = self.stand_in_sink or memory_gzip_sink()
            if has_s3:
                sink = {"type": "s3", "name": "out", "bucket": bench.bucket, "prefix": "bench/", "format": "ndjson",
                        "compression": "gzip"}  # fmt: skip
            variants = self.variants(sink)
            if has_s3:
                report.sink = "s3 on moto: gzip NDJSON objects written by the S3 sink"
            elif self.o.pipeline is None and not installed and self.stand_in_sink is None:
                report.sink += " (no `type: s3` sink is installed, so not S3 on moto)"
            data = dataclasses.replace(data, duration_s=self.o.duration_s)
            baselines = self.baselines(report, "local")
            for round_ in range(self.rounds):
                say(f"round {round_ + 1} of {self.rounds}")
                for i, variant in enumerate(variants):
                    table = f"bench-{round_}-{i}-leases"  # a fresh lease table: every run reads from the start

                    def make(v: Variant = variant, t: str = table) -> Pipeline:
                        pipeline = build_with_section(v.config, kinesis_section(data.stream, t), bench.aws)
                        source = pipeline.source
                        assert isinstance(source, KinesisSource)
                        # The emulator has no read limits: lift the per-shard pacing so it, not us, is the ceiling.
                        source.settings = dataclasses.replace(
                            source.settings, reads_per_second=1000.0, read_bytes_per_second=2**40
                        )
                        return pipeline

                    self.run_variant(variant, make, data.records, profile=round_ == 0)
                for baseline in baselines:
                    self.run_baseline(baseline, data)
            self.check_outputs(report, data.expected_out, data.records)
        finally:
            bench.stack.stop()

    def stream(self, report: Report) -> None:
        from streamkit.config import AwsSettings
        from streamkit.devtools.bench.stream import ReadOnlyStreamSource

        if self.o.sink == "s3":
            raise ConfigError("--sink", "the s3 sink runs on the local source only (a benchmark never writes to AWS)")
        if self.o.sink != "auto" and self.o.sink != "memory":
            raise ConfigError("--sink", f"the {self.o.sink} sink runs on the synthetic or local source only")
        if not self.o.stream or not self.o.region:
            raise ConfigError("--stream", "--source stream needs --stream NAME and --region REGION")
        aws = AwsSettings(region=self.o.region)
        variants = self.variants(memory_gzip_sink())
        if self.o.records is None and self.o.duration_s is None:
            self.o.duration_s = STREAM_DEFAULT_DURATION_S
        report.duration_s = self.o.duration_s
        report.notes.append(
            "a real stream: read only (no lease table, no checkpoints), within its read limits shared with its "
            "other consumers; baselines run on the synthetic and local sources"
        )
        target = self.o.records
        for round_ in range(self.rounds):
            say(f"round {round_ + 1} of {self.rounds}: reading {self.o.stream} in {self.o.region}")
            for variant in variants:
                source = ReadOnlyStreamSource(
                    self.o.stream, aws, shards=self.o.shards, initial_position=self.o.initial_position
                )
                make = partial(build_with_source, variant.config, source)
                self.run_variant(variant, make, target, profile=round_ == 0)
        first = self.best[self.order[0]]
        report.shards = len(first.shards)
        report.records = first.records

    def start_stand_in_sink(self, stack: contextlib.ExitStack, report: Report) -> dict[str, Any] | None:
        """Start the stand-in of a ``--sink`` from streamkit.devtools.bench.sinks (stopped when the run ends)."""
        from streamkit.devtools.bench.sinks import STAND_IN_SINKS

        make = STAND_IN_SINKS.get(self.o.sink)
        if make is None or self.o.pipeline is not None or self.o.source == "stream":
            return None
        say(f"starting the {self.o.sink} stand-in")
        section, report.sink = stack.enter_context(make())
        return section

    # -- checks and output -----------------------------------------------------------------------
    def check_outputs(self, report: Report, expected: int, records: int) -> None:
        """The same number of records written on every side that read everything: the same work was done."""
        if self.o.pipeline is not None:
            return
        for figures in self.best.values():
            if figures.records == records and figures.records_out not in (0, expected):
                report.notes.append(
                    f"CHECK FAILED: {figures.name} wrote {figures.records_out:,} records, expected {expected:,}"
                )

    def run(self) -> Report:
        o = self.o
        pipeline = str(o.pipeline) if o.pipeline else f"built-in: {WORK}"
        sink = "memory: NDJSON joined and gzipped in memory (ISA-L level 1), then dropped"
        if o.pipeline:
            sink = "as in the pipeline file"
        report = Report(o.source, pipeline, sink, self.shards, self.records, o.duration_s, self.rounds, o.command)
        if o.profile_path is not None:
            o.profile_path.write_text("")  # each streamkit run of the first round adds its profile
        if o.pipeline is None:
            # streamkit tunes the garbage collector when it starts (runtime.gc_tuning, on in the built-in
            # pipeline); do it first, so the baselines run under the same setting.
            tune_gc()
        with contextlib.ExitStack() as stack:
            self.stand_in_sink = self.start_stand_in_sink(stack, report)
            getattr(self, o.source)(report)
        report.streamkit = [self.best[n] for n in self.order if n in self.ours]
        report.baselines = [self.best[n] for n in self.order if n not in self.ours]
        return report


def _replaying(
    variant: Variant, shards: dict[str, list[bytes]], source_type: Callable[[dict[str, list[bytes]]], Source]
) -> Pipeline:
    """The variant's pipeline on a fresh synthetic source (a source is read once)."""
    return build_with_source(variant.config, source_type(shards))


def run_bench(options: BenchOptions) -> int:
    from streamkit.lifecycle import leaf_errors

    try:
        report = Bench(options).run()
    except ConfigError:
        raise  # the command reports it and exits 2
    except Exception as exc:
        for error in leaf_errors(exc):
            print(f"bench failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    text = markdown(report)
    print(text)
    if options.markdown_path is not None:
        options.markdown_path.write_text(text)
    if options.json_path is not None:
        options.json_path.write_bytes(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2))
    return 0


def command_line(argv: Sequence[str]) -> str:
    return "streamkit " + " ".join(shlex.quote(a) for a in argv)
