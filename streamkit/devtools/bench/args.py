"""The ``streamkit bench`` command line (kept light: the CLI builds every parser on each start)."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", type=Path, nargs="?", help="a pipeline file (default: the built-in one)")
    parser.add_argument("--source", choices=("synthetic", "local", "stream"), default="synthetic",
                        help="synthetic: recorded GetRecords bodies in process; local: kinesalite + moto; "
                             "stream: a real stream, read only")  # fmt: skip
    parser.add_argument("--shards", type=int, default=None, help="shards (default 4; stream: every open shard)")
    parser.add_argument("--records", type=int, default=None,
                        help="records in all (default synthetic 200000, local 40000; stream: --duration)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (stream default 60)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="rounds; the best of each side is reported")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="write the tables as Markdown")
    parser.add_argument("--stream", default=None, help="--source stream: the stream's name")
    parser.add_argument("--region", default=None, help="--source stream: its region")
    parser.add_argument("--initial-position", choices=("TRIM_HORIZON", "LATEST"), default="TRIM_HORIZON",
                        help="--source stream: read the backlog, or only what arrives from now on")  # fmt: skip
    from streamkit.devtools.bench.sinks import STAND_IN_SINKS

    parser.add_argument("--sink", choices=("auto", "memory", "s3", *STAND_IN_SINKS), default="auto",
                        help="built-in pipeline's sink: memory (gzip NDJSON in memory) or s3 (the S3 sink; local "
                             "source only, on moto); auto: s3 on the local source when installed; "
                             f"{', '.join(STAND_IN_SINKS)}: that sink against its loopback stand-in")  # fmt: skip
    parser.add_argument("--latency", action="store_true",
                        help="--source local: put-to-sink latency p50/p99 of enhanced fan-out and polling on "
                             "kinesis-local, records written at --rate for --duration (default 20 s) each")  # fmt: skip
    parser.add_argument("--rate", type=float, default=200.0, help="--latency: records/s written (default 200)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", help="measure streamkit only")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="write pyinstrument profiles of the first round's streamkit runs (dev extra)")  # fmt: skip


def run_from_args(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from streamkit import log as logsetup
    from streamkit.devtools.bench.runner import BenchOptions, command_line, run_bench

    if args.log_level == "INFO":
        # Partition and lease events at INFO would bury the progress lines; warnings still show.
        logsetup.configure(args.log_format, "WARNING")
    from streamkit.errors import ConfigError

    for name in ("shards", "records", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name}", f"must be at least 1, got {value}")
    if args.profile is not None and importlib.util.find_spec("pyinstrument") is None:
        raise ConfigError("--profile", "needs pyinstrument (pip install -e '.[dev]')")
    if args.latency:
        if args.source != "local":
            raise ConfigError("--latency", "runs on the local source only (--source local)")
        from streamkit.devtools.bench.latency import run_latency

        return run_latency(args, command_line(argv))
    options = BenchOptions(
        source=args.source,
        pipeline=args.pipeline,
        shards=args.shards,
        records=args.records,
        duration_s=args.duration,
        rounds=args.rounds,
        json_path=args.json,
        markdown_path=args.markdown,
        stream=args.stream,
        region=args.region,
        initial_position=args.initial_position,
        baselines=args.baselines,
        sink=args.sink,
        profile_path=args.profile,
        command=command_line(argv),
    )
    return run_bench(options)
