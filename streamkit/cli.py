"""The ``streamkit`` command: run, validate, plan, demo, plugins, bench.

Exit codes: 0 success (including a clean stop on SIGTERM/SIGINT), 1 the pipeline failed while running,
2 the configuration is invalid (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from streamkit import log as logsetup
from streamkit.config import env_overrides
from streamkit.errors import ConfigError, StreamkitError
from streamkit.lifecycle import install_stop_signals, leaf_errors, report_progress

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamkit", description="Streaming ingestion for AWS, in Python.")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=logsetup.LEVELS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline until stopped (SIGTERM/SIGINT drain and checkpoint)")
    run.add_argument("pipeline", type=Path, help="the pipeline YAML file")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="print a progress line (default: when stderr is a terminal)")  # fmt: skip
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a setting (repeatable; also STREAMKIT_SET='a=1;b=2')")  # fmt: skip
    run.add_argument("--health-port", type=int, default=None, help="serve /health/live and /health/ready")
    run.add_argument("--processes", default=None, metavar="N|auto",
                     help="worker processes on this host (default: runtime.processes); auto: one per CPU")  # fmt: skip

    validate = sub.add_parser("validate", help="check a pipeline file completely without connecting anywhere")
    validate.add_argument("pipeline", type=Path)
    validate.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    validate.add_argument("--explain", action="store_true", help="also print the physical plan (as `plan`)")

    plan = sub.add_parser("plan", help="print the physical plan: fused steps, decoded fields, what sinks read")
    plan.add_argument("pipeline", type=Path)
    plan.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")

    demo = sub.add_parser("demo", help="run a realistic pipeline on local stand-ins, no AWS account needed")
    demo.add_argument("--records", type=int, default=10_000, help="events to produce")
    demo.add_argument("--partitions", type=int, default=4, help="Kinesis shards")
    demo.add_argument("--output", type=Path, default=Path("demo-output"))

    sub.add_parser("plugins", help="list installed sources, sinks, processors and stores")

    from streamkit.devtools.bench.args import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="shard throughput of a pipeline, beside boto3, Powertools, ..."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logsetup.configure(args.log_format, args.log_level)
    try:
        if args.command == "run":
            overrides = [*env_overrides(), *args.set]
            if args.health_port is not None:
                overrides.append(f"runtime.health_port={args.health_port}")
            if args.processes is not None:
                overrides.append(f"runtime.processes={args.processes}")
            global_args = ["--log-format", args.log_format, "--log-level", args.log_level]
            return asyncio.run(
                run_pipeline(
                    args.pipeline,
                    progress=args.progress,
                    overrides=overrides,
                    child_args=[arg for value in args.set for arg in ("--set", value)],
                    global_args=global_args,
                )
            )
        if args.command == "validate":
            return validate(args.pipeline, [*env_overrides(), *args.set], explain=args.explain)
        if args.command == "plan":
            return plan(args.pipeline, [*env_overrides(), *args.set])
        if args.command == "demo":
            from streamkit.devtools.demo import DemoUnavailable, run_demo

            try:
                return asyncio.run(run_demo(args.output, records=args.records, partitions=args.partitions))
            except DemoUnavailable as exc:
                print(f"demo: {exc}", file=sys.stderr)
                return EXIT_FAILED
        if args.command == "plugins":
            return list_plugins()
        if args.command == "bench":
            from streamkit.devtools.bench.args import run_from_args

            return run_from_args(args, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StreamkitError as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED


def validate(path: Path, overrides: list[str], *, explain: bool = False) -> int:
    from streamkit.build import build_pipeline
    from streamkit.config import load_config

    config = load_config(path, overrides)
    pipeline = build_pipeline(config)
    print(f"{path}: valid pipeline {pipeline.name!r}")
    print(f"  source     {config.source['type']}")
    for i, section in enumerate(config.processors):
        print(f"  processor  [{i}] {section.get('type') or section.get('callable')}")
    for route in pipeline.routes:
        print(f"  sink       {route.name} ({type(route.sink).__name__}){' when ...' if route.predicate else ''}")
    if pipeline.dead_letters is None:
        print("  warning    no dead_letter configured: a failed record stops the pipeline")
    if explain:
        from streamkit.explain import explain as explain_plan

        print("\n".join(explain_plan(config, pipeline)))
    return EXIT_OK


def plan(path: Path, overrides: list[str]) -> int:
    """Build the pipeline (connecting nowhere) and print its physical plan."""
    from streamkit.build import build_pipeline
    from streamkit.config import load_config
    from streamkit.explain import explain

    config = load_config(path, overrides)
    print("\n".join(explain(config, build_pipeline(config))))
    return EXIT_OK


def list_plugins() -> int:
    from streamkit.plugins import GROUPS, available

    for kind in GROUPS:
        print(f"{kind.replace('_', ' ')}s:")
        for info in available(kind):
            print(f"  {info.name:<16} {info.target}  ({info.distribution})")
    return EXIT_OK


async def run_pipeline(
    path: Path,
    *,
    progress: bool | None = None,
    overrides: list[str] | None = None,
    child_args: Sequence[str] = (),
    global_args: Sequence[str] = (),
) -> int:
    from streamkit.build import build_pipeline
    from streamkit.config import load_config
    from streamkit.observe import Observability
    from streamkit.runtime import Runtime
    from streamkit.share import process_share
    from streamkit.supervisor import Supervisor, resolve_processes, watch_supervisor

    stop = asyncio.Event()
    log = structlog.get_logger("streamkit")
    # First: a SIGTERM/SIGINT while the pipeline is being built (imports, connections) is then a clean stop
    # that starts nothing, instead of a traceback or a kill.
    install_stop_signals(stop, log)
    config = load_config(path, overrides)
    pipeline = build_pipeline(config)  # every configuration mistake is found here, before any process starts
    processes = resolve_processes(config.runtime.processes)
    if processes > 1 and process_share().count == 1:
        supervisor = Supervisor(path, processes, config.runtime, child_args=child_args, global_args=global_args)
        return await supervisor.run(stop)
    runtime = Runtime(pipeline)
    orphan_watch = asyncio.create_task(watch_supervisor(stop))
    show = sys.stderr.isatty() if progress is None else progress
    reporter = asyncio.create_task(report_progress(runtime, config.runtime.progress_interval_s)) if show else None
    observability = Observability(runtime, config.runtime)
    await observability.start()
    try:
        summary = await runtime.run(stop)
    except Exception as exc:
        errors = leaf_errors(exc)
        for error in errors:
            if isinstance(error, StreamkitError):
                log.error("pipeline failed", error=str(error))
            else:
                log.error("pipeline failed", error=repr(error), exc_info=error)
        # A configuration problem found while connecting (a missing stream or bucket) is still exit 2.
        return EXIT_CONFIG if any(isinstance(e, ConfigError) for e in errors) else EXIT_FAILED
    finally:
        if reporter is not None:
            reporter.cancel()
        orphan_watch.cancel()
        await observability.stop()
    log.info(
        "pipeline stopped",
        records_in=summary.records_in,
        dead_lettered=summary.dead_lettered,
        drained=summary.drained,
        elapsed_s=round(summary.elapsed_s, 2),
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
