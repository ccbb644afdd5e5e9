"""The figures a benchmark derives, and how they are reported."""

from __future__ import annotations

from typing import Any

from streamkit.devtools.bench.measure import MIB, Figures, ShardFigures, clocked
from streamkit.devtools.bench.report import Report, markdown
from streamkit.devtools.bench.runner import Bench, BenchOptions


def figures(name: str, records: int, seconds: float, cpu_s: float, **extra: Any) -> Figures:
    return Figures(name, f"{name} does the work", records, records // 2, records * 1024, seconds, cpu_s, **extra)


def test_derived_figures() -> None:
    f = figures("streamkit", 1_000_000, 4.0, 2.0, peak_rss_mib=300.0, rss_before_mib=200.0)
    assert f.records_per_s == 250_000
    assert f.mib_per_s == 1_000_000 * 1024 / MIB / 4.0
    assert f.cpu_s_per_million == 2.0
    # One core processes 1,000,000 KiB in 2 CPU-seconds: ~488 MiB/s, ~244 shards at 2 MiB/s each.
    assert f.shards_per_core is not None and round(f.shards_per_core) == round(1_000_000 / 1024 / 2.0 / 2)
    assert f.peak_added_mib == 100.0
    empty = figures("none", 0, 0.0, 0.0)
    assert empty.records_per_s == 0 and empty.cpu_s_per_million is None and empty.shards_per_core is None


def test_clock_measures_wall_cpu_and_memory() -> None:
    with clocked() as clock:
        sum(range(200_000))
        block = bytearray(64 * MIB)
        block[::4096] = b"x" * len(block[::4096])
    assert clock.wall_s > 0 and clock.cpu_s > 0
    assert clock.peak_rss_mib is not None and clock.rss_before_mib is not None
    assert clock.peak_rss_mib >= clock.rss_before_mib + 32  # the block counted


def test_markdown_has_shards_totals_and_ratios() -> None:
    kit = figures("streamkit", 200_000, 1.0, 1.0, latency_p50_ms=5.0, latency_p99_ms=9.0, millis_behind_latest=0)
    kit.shards = [ShardFigures("shardId-000000000000", 200_000, 200_000 * 1024, 1.0, 200_000, 195.3, 5.0, 9.0, 0)]
    boto = figures("boto3 loop", 200_000, 4.0, 4.0, note="a note")
    report = Report("synthetic", "built-in", "memory", 1, 200_000, None, 1, "streamkit bench", [kit], [boto])
    report.skipped["async-kinesis"] = "needs kinesis"
    text = markdown(report)
    assert "| shardId-000000000000 | 200,000 | 200,000 | 195.3 | 5.0 | 9.0 | 0 |" in text
    assert "| **total** | 200,000 | 200,000 |" in text
    assert "| boto3 loop | 50,000 |" in text and "| 4.00x |" in text
    assert "- async-kinesis: skipped, needs kinesis" in text and "(a note)" in text
    data = report.as_json()
    assert data["baselines"][0]["streamkit_ratio"] == {"streamkit": 4.0}
    assert data["skipped"] == [{"name": "async-kinesis", "reason": "needs kinesis"}]


def test_best_round_is_kept_with_the_first_rounds_memory() -> None:
    bench = Bench(BenchOptions())
    bench.keep(figures("boto3 loop", 1000, 2.0, 2.0, peak_rss_mib=100.0, rss_before_mib=50.0))
    bench.keep(figures("boto3 loop", 1000, 1.0, 1.0, peak_rss_mib=900.0, rss_before_mib=890.0))
    bench.keep(figures("boto3 loop", 1000, 3.0, 3.0, peak_rss_mib=5.0, rss_before_mib=1.0))
    best = bench.best["boto3 loop"]
    assert best.seconds == 1.0
    assert (best.peak_rss_mib, best.rss_before_mib) == (100.0, 50.0)
