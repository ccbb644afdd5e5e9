"""``streamkit bench`` as users run it: the command, its JSON and Markdown, on small bounded runs.

No timing thresholds here: figures go to docs/performance.md, not into assertions. What is checked is that
every documented field is there, that the numbers are sane, and that every side did the same work.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamkit.config import AwsSettings
from streamkit.devtools.bench.data import record_payloads
from streamkit.devtools.bench.pipelines import build_with_source, memory_gzip_sink, representative, run_streamkit
from streamkit.devtools.bench.stream import ReadOnlyStreamSource
from tests.integration.kinesis_helpers import create_stream

CLI = [sys.executable, "-m", "streamkit"]

TOP_LEVEL = {
    "streamkit_version", "command", "source", "pipeline", "sink", "settings", "machine",
    "streamkit", "baselines", "skipped", "notes",
}  # fmt: skip
SETTINGS = {"shards", "records", "duration_s", "rounds", "read_limit_mib_per_s"}
FIGURES = {
    "name", "description", "records", "records_out", "bytes", "seconds", "cpu_s", "records_per_s", "mib_per_s",
    "cpu_s_per_million", "mib_per_cpu_s", "shards_per_core", "peak_rss_mib", "rss_before_mib", "peak_added_mib",
    "latency_p50_ms", "latency_p99_ms", "millis_behind_latest", "shards", "note",
}  # fmt: skip
SHARD = {
    "shard", "records", "bytes", "seconds", "records_per_s", "mib_per_s", "latency_p50_ms", "latency_p99_ms",
    "millis_behind_latest",
}  # fmt: skip


def bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str, str]:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    done = subprocess.run(
        [*CLI, "bench", *args, "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert out_md.read_text() in done.stdout  # the table is printed and written
    return orjson.loads(out_json.read_bytes()), done.stdout, done.stderr


def check_figures(figures: dict[str, Any], *, records: int, shards: int | None) -> None:
    assert set(figures) >= FIGURES, FIGURES - set(figures)
    assert figures["records"] == records
    if figures["name"] != "raw GetRecords loop":  # that one only counts records
        assert 0 < figures["records_out"] < records  # the filter dropped some, kept most
    assert figures["seconds"] > 0 and figures["cpu_s"] > 0
    assert figures["records_per_s"] > 0 and figures["mib_per_s"] > 0
    assert figures["bytes"] > 800 * records  # ~1 KB records
    assert figures["cpu_s_per_million"] > 0 and figures["shards_per_core"] > 0
    assert figures["peak_rss_mib"] > 10 and figures["peak_added_mib"] >= 0
    if shards is not None:
        assert len(figures["shards"]) == shards
        assert sum(s["records"] for s in figures["shards"]) == records
        for shard in figures["shards"]:
            assert set(shard) >= SHARD, SHARD - set(shard)
            assert shard["shard"].startswith("shardId-") and shard["records_per_s"] > 0
            assert 0 <= shard["latency_p50_ms"] <= shard["latency_p99_ms"]
            assert shard["millis_behind_latest"] is not None
        assert 0 <= figures["latency_p50_ms"] <= figures["latency_p99_ms"]


def check_report(report: dict[str, Any], source: str, records: int, shards: int) -> None:
    assert set(report) >= TOP_LEVEL, TOP_LEVEL - set(report)
    assert set(report["settings"]) >= SETTINGS
    assert report["source"] == source and report["settings"]["shards"] == shards
    assert report["settings"]["records"] == records
    assert report["machine"]["cpus"] >= 1
    assert [f["name"] for f in report["streamkit"]] == ["streamkit", "streamkit json.project"]
    for figures in report["streamkit"]:
        check_figures(figures, records=records, shards=shards)
    outputs = {f["name"]: f["records_out"] for f in report["streamkit"] + report["baselines"] if f["records_out"]}
    assert len(set(outputs.values())) == 1, outputs  # every side did the same work
    assert not [n for n in report["notes"] if "CHECK FAILED" in n]
    for baseline in report["baselines"]:
        check_figures(baseline, records=records, shards=None)
        assert set(baseline["streamkit_ratio"]) == {"streamkit", "streamkit json.project"}
        assert all(r > 0 for r in baseline["streamkit_ratio"].values())


def test_synthetic_source_reports_every_field_beside_the_baselines(tmp_path: Path) -> None:
    report, stdout, stderr = bench(
        tmp_path, "--source", "synthetic", "--shards", "2", "--records", "6000", "--rounds", "1"
    )
    check_report(report, "synthetic", 6000, 2)
    assert [b["name"] for b in report["baselines"]] == ["boto3 loop", "Powertools BatchProcessor"]
    assert report["skipped"] == []
    assert "| shard | records | records/s |" in stdout and "Powertools BatchProcessor" in stdout
    assert "round 1 of 1" in stderr and "records in" in stderr  # progress on stderr


@pytest.mark.slow
def test_local_source_reads_the_emulator_beside_the_baselines(tmp_path: Path) -> None:
    report, stdout, _ = bench(tmp_path, "--source", "local", "--shards", "2", "--records", "3000", "--rounds", "1")
    check_report(report, "local", 3000, 2)
    assert report["sink"].startswith("s3 on moto")  # the S3 sink is installed: --sink auto uses it
    names = [b["name"] for b in report["baselines"]]
    assert names == ["raw GetRecords loop", "boto3 loop", "async-kinesis"]
    raw = report["baselines"][0]
    assert raw["records_out"] == 0  # it only counts: the emulator's ceiling
    assert "async-kinesis" in stdout and "as shipped" in stdout


def test_the_influxdb_sink_writes_to_its_stand_in_the_same_records_as_the_baselines(tmp_path: Path) -> None:
    report, _, stderr = bench(
        tmp_path, "--source", "synthetic", "--sink", "influxdb", "--shards", "2", "--records", "4000", "--rounds", "1"
    )
    check_report(report, "synthetic", 4000, 2)  # the boto3 and Powertools baselines wrote as many records
    assert report["sink"].startswith("influxdb: line protocol, gzip, POST /api/v3/write_lp to the loopback stand-in")
    assert all(f["description"].endswith("-> influxdb") for f in report["streamkit"])
    assert "starting the influxdb stand-in" in stderr


def test_a_pipeline_file_runs_with_its_own_processors_and_without_baselines(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: mine\nsource: {type: generator}\nprocessors:\n  - {type: json.decode}\n"
        "sinks:\n  - {type: memory, name: out, keep: false}\n"
    )
    report, _, _ = bench(tmp_path, str(pipeline), "--shards", "1", "--records", "2000", "--rounds", "1")
    assert [f["name"] for f in report["streamkit"]] == ["streamkit"]
    assert report["streamkit"][0]["records"] == report["streamkit"][0]["records_out"] == 2000
    assert report["baselines"] == [] and report["pipeline"] == str(pipeline)


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "bench", "--source", "stream"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--stream" in done.stderr
    done = subprocess.run([*CLI, "bench", "--records", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--records" in done.stderr


@pytest.mark.usefixtures("aws_env")
async def test_the_real_stream_reader_reads_every_open_shard_without_leases(kinesalite: Any) -> None:
    """``--source stream`` against kinesalite: the read-only source, with the production pacing."""
    client = create_stream(kinesalite.endpoint_url, "live", shards=2)
    payloads, keys = record_payloads(1000)
    for start in range(0, 1000, 500):
        entries = [{"Data": payloads[i], "PartitionKey": keys[i]} for i in range(start, start + 500)]
        assert not client.put_records(StreamName="live", Records=entries).get("FailedRecordCount")
    aws = AwsSettings(region="us-east-1", endpoints={"kinesis": kinesalite.endpoint_url})
    source = ReadOnlyStreamSource("live", aws)
    variant = representative(memory_gzip_sink())[1]
    figures = await asyncio.wait_for(
        run_streamkit(variant, build_with_source(variant.config, source), target=1000, duration_s=30), 60
    )
    assert figures.records == 1000 and len(figures.shards) == 2
    kept = [p for p in payloads if orjson.loads(p)["status"] != "err"]
    assert figures.records_out == len(kept)
    assert source.shard_ids == ["shardId-000000000000", "shardId-000000000001"]


@pytest.mark.slow
def test_latency_compares_enhanced_fan_out_with_polling_on_kinesis_local(tmp_path: Path) -> None:
    args = ("--source", "local", "--latency", "--shards", "1", "--rate", "40", "--duration", "3")
    report, stdout, _ = bench(tmp_path, *args)
    assert (report["shards"], report["rate"], report["duration_s"]) == (1, 40, 3)
    assert [r["name"] for r in report["runs"]] == ["polling (defaults)", "polling (fast)", "efo (defaults)"]
    for run in report["runs"]:
        # Every record written reached the sink (the command fails otherwise), and the percentiles are ordered.
        assert run["records"] > 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run
    assert "| efo (defaults) |" in stdout


def test_latency_runs_on_the_local_source_only() -> None:
    done = subprocess.run([*CLI, "bench", "--latency"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--latency" in done.stderr
