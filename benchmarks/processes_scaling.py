"""Every core of a host: ``streamkit run --processes N`` against one process, same pipeline, same run.

A CPU-bound pipeline (generated JSON events -> json.decode -> filter -> map -> json.encode -> gzip NDJSON
files) reads the same records with 1 process and with N processes (the supervisor splits the generator's
partitions between its children). Each side is a real ``streamkit run`` in a subprocess, timed from start
to exit, so start-up costs are in both; the rounds alternate so drift on a noisy machine hits both sides.
The figure that matters is the ratio: records/s with N processes over records/s with one.

Usage: python benchmarks/processes_scaling.py [--processes N] [--records-per-partition R] [--rounds K] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

PARTITIONS = 8


def pipeline(directory: Path, records_per_partition: int) -> Path:
    config = {
        "name": "processes-bench",
        "source": {"type": "generator", "count": records_per_partition, "partitions": PARTITIONS, "batch_size": 500},
        "processors": [
            {"type": "json.decode"},
            {"type": "filter", "where": {"field": "status", "not_equals": "err"}},
            {"type": "map", "fields": ["id", "event", "user", "amount"]},
            {"type": "json.encode"},
        ],
        "sinks": [{"type": "file", "path": "out", "compression": "gzip", "max_records": 50_000, "max_age_s": 5}],
        "dead_letter": {"type": "file", "path": "dlq"},
        "checkpoint": {"type": "file", "path": "checkpoints.json", "interval_s": 5},
        "runtime": {"metrics": {"emf": False}},
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_once(processes: int, records_per_partition: int) -> tuple[float, float, int]:
    """(seconds from start to exit, seconds from the first partition assigned to the last pipeline stopped,
    records written) of one `streamkit run --processes N`.

    The second figure leaves out interpreter start-up and imports (about a second per process, paid once per
    host and in parallel by the children), which a long-running worker never pays again."""
    directory = Path(tempfile.mkdtemp(prefix="streamkit-processes-"))
    try:
        path = pipeline(directory, records_per_partition)
        command = [sys.executable, "-m", "streamkit", "--log-format", "json", "run", str(path)]
        started = time.perf_counter()
        result = subprocess.run(
            [*command, "--processes", str(processes)], cwd=directory, capture_output=True, timeout=600
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"streamkit run failed:\n{result.stderr.decode()[-3000:]}")
        written = sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in (directory / "out").glob("*.gz"))
        return elapsed, _processing_seconds(result.stderr), written
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _processing_seconds(stderr: bytes) -> float:
    assigned: list[datetime] = []
    stopped: list[datetime] = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "partition assigned":
            assigned.append(datetime.fromisoformat(event["timestamp"]))
        elif event.get("event") == "pipeline stopped":
            stopped.append(datetime.fromisoformat(event["timestamp"]))
    if not assigned or not stopped:
        raise SystemExit("CHECK FAILED: no 'partition assigned' / 'pipeline stopped' log lines to time")
    return (max(stopped) - min(assigned)).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--records-per-partition", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    total = PARTITIONS * args.records_per_partition
    best: dict[int, float] = {}
    steady: dict[int, float] = {}
    written: dict[int, int] = {}
    for _ in range(args.rounds):
        for processes in (1, args.processes):
            elapsed, processing, count = run_once(processes, args.records_per_partition)
            best[processes] = max(best.get(processes, 0.0), total / elapsed)
            steady[processes] = max(steady.get(processes, 0.0), total / processing)
            written[processes] = count
    if written[1] != written[args.processes]:
        many = written[args.processes]
        raise SystemExit(f"CHECK FAILED: 1 process wrote {written[1]}, {args.processes} wrote {many}")
    n = args.processes
    ratio, steady_ratio = best[n] / best[1], steady[n] / steady[1]
    figures = {
        "records": total,
        "cpus": len(os.sched_getaffinity(0)),
        "one_process_rps": round(best[1]),
        f"{n}_processes_rps": round(best[n]),
        "ratio_start_to_exit": round(ratio, 2),
        "one_process_processing_rps": round(steady[1]),
        f"{n}_processes_processing_rps": round(steady[n]),
        "ratio_processing": round(steady_ratio, 2),
        "written_each": written[1],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{total:,} generated records, {written[1]:,} written by each side, {figures['cpus']} CPUs")
        print(f"{'':14}{'start to exit':>16}{'first partition to last stop':>32}   (best of {args.rounds})")
        print(f"  1 process   {best[1]:>12,.0f} rec/s {steady[1]:>26,.0f} rec/s")
        print(f"  {n} processes {best[n]:>12,.0f} rec/s {steady[n]:>26,.0f} rec/s")
        print(f"  ratio       {ratio:>12.2f}x {steady_ratio:>26.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
