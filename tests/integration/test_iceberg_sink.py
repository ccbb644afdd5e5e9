"""The iceberg sink: pyiceberg's SQL catalog (a sqlite file) with the warehouse on moto's S3 (s3://).

Tables are read back two ways: with pyiceberg's own scan, and with DuckDB reading the Parquet data files
that pyiceberg's scan plans (fetched through the table's FileIO into a temp dir: DuckDB's iceberg and
httpfs extensions are downloads, which are impossible here).

Crash tests run the worker as a subprocess and SIGKILL it (a) after commits its checkpoints never saw and
(b) between writing data files and the catalog commit (the test holds the sqlite catalog's write lock, so
the worker's commit waits, with its data files already in S3). The restart must add every record once.
"""

from __future__ import annotations

import asyncio
import collections
import http.server
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import boto3
import duckdb
import numpy as np
import orjson
import pytest
import yaml
from pyiceberg.catalog import load_catalog
from pyiceberg.table import Table

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, convert, load_config, parse_config
from streamkit.connectors.iceberg import orphans
from streamkit.connectors.iceberg.settings import IcebergOptions
from streamkit.connectors.iceberg.sink import IcebergSink
from streamkit.connectors.local.memory_sink import MemoryDeadLetter
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Pipeline, RunSummary, Runtime

pytestmark = pytest.mark.timeout(120)

REGION = "us-east-1"
BUCKET = "lake"
TABLE = "lake.events"
LEDGER = "streamkit.positions.iceberg-test"
FAST_RETRY = {"max_attempts": 5, "base_delay_s": 0.01, "max_delay_s": 0.05}
ROOT = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------------------
def create_bucket(moto: MotoServer) -> None:
    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION).create_bucket(Bucket=BUCKET)


def s3_keys(moto: MotoServer, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def catalog_section(tmp_path: Path) -> dict[str, Any]:
    return {"type": "sql", "path": str(tmp_path / "catalog.db"), "warehouse": f"s3://{BUCKET}/wh"}


def pipeline_config(moto: MotoServer, tmp_path: Path, sink: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "name": "iceberg-test",
        "source": {"type": "generator", "count": 2000, "partitions": 2, "batch_size": 250, "record_bytes": 200},
        "processors": [{"type": "json.decode"}, {"type": "map", "fields": ["id", "seq", "event", "amount", "user"]}],
        "sinks": [
            {"type": "iceberg", "catalog": catalog_section(tmp_path), "table": TABLE, "retry": FAST_RETRY, **sink}
        ],
        "aws": {"region": REGION, "endpoints": {"s3": moto.endpoint_url}},
        "dead_letter": {"type": "memory"},
        "runtime": {"shutdown_grace_s": 30},
        **sections,
    }


def table_of(moto: MotoServer, tmp_path: Path) -> Table:
    catalog = load_catalog(
        "streamkit",
        type="sql",
        uri=f"sqlite:///{tmp_path / 'catalog.db'}",
        warehouse=f"s3://{BUCKET}/wh",
        **{"s3.endpoint": moto.endpoint_url, "s3.region": REGION},
    )
    return catalog.load_table(TABLE)


def duckdb_ids(table: Table, tmp_path: Path) -> list[str]:
    """The ids in the data files pyiceberg's scan plans, read by DuckDB from local copies."""
    local = tmp_path / "duck"
    local.mkdir(exist_ok=True)
    files = []
    for i, task in enumerate(table.scan().plan_files()):
        assert not task.delete_files
        path = local / f"{i}.parquet"
        with table.io.new_input(task.file.file_path).open() as stream:
            path.write_bytes(stream.read())
        files.append(str(path))
    if not files:
        return []
    rows = duckdb.connect().execute("SELECT id FROM read_parquet(?, union_by_name = true)", [files]).fetchall()
    return [r[0] for r in rows]


def ledger(table: Table) -> dict[str, str]:
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    text = snapshot.summary.get(LEDGER)
    assert text is not None
    loaded: dict[str, str] = orjson.loads(text)
    return loaded


def expected_ids(count: int, partitions: int = 2) -> list[str]:
    return sorted(f"{p}-{i}" for p in range(partitions) for i in range(count))


def build(config: dict[str, Any], base_dir: Path) -> Pipeline:
    return build_pipeline(parse_config(config, base_dir=base_dir))


async def run(pipeline: Pipeline) -> RunSummary:
    async with asyncio.timeout(90):
        return await Runtime(pipeline).run(asyncio.Event())


def make_sink(moto: MotoServer, tmp_path: Path, **options: Any) -> IcebergSink:
    section = {"catalog": catalog_section(tmp_path), "table": TABLE, "retry": FAST_RETRY, **options}
    aws = AwsSettings(region=REGION, endpoints={"s3": moto.endpoint_url})
    env = PluginEnv("iceberg-test", aws, tmp_path, "sinks[0]")
    sink = IcebergSink(convert(section, IcebergOptions, "sinks[0]"), env)
    sink.bind("iceberg", MemoryDeadLetter(), None)
    return sink


def routed(values: list[Any], tracker: PartitionTracker, first: int = 0, *, raw: bool = False) -> RecordBatch:
    """A batch as the runtime hands it to one sink: ticketed, the sink's delivery held."""
    if raw:
        batch = RecordBatch(tracker.partition, payloads=[orjson.dumps(v) for v in values])
    else:
        batch = RecordBatch(tracker.partition, payloads=None, values=values)
    batch.arrival_ms = np.zeros(len(values), dtype=np.int64)
    batch.ticket = tracker.open(list(range(first, first + len(values))), 100 * len(values))
    batch.ticket.hold(batch.origin)
    batch.ticket.release_processing()
    return batch


# -- tests --------------------------------------------------------------------------------------------
def test_records_are_appended_once_per_commit_and_read_back_by_pyiceberg_and_duckdb(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    config = pipeline_config(moto_server, tmp_path, {"max_records": 1000, "max_age_s": 600})
    summary = asyncio.run(run(build(config, tmp_path)))
    assert set(summary.checkpoints.values()) == {"1999"}

    table = table_of(moto_server, tmp_path)
    rows = table.scan().to_arrow()
    assert sorted(rows["id"].to_pylist()) == expected_ids(2000)
    assert sorted(duckdb_ids(table, tmp_path)) == expected_ids(2000)
    # 4,000 records in 16 batches of 250, committed every 1,000 records: 4 snapshots, not 16.
    assert len(table.snapshots()) == 4
    assert ledger(table) == {"generator:generator/0": "1999", "generator:generator/1": "1999"}
    assert {f.name for f in table.schema().fields} == {"id", "seq", "event", "amount", "user"}
    keys = s3_keys(moto_server, "wh/")
    assert keys and all(k.startswith("wh/lake/events/") for k in keys), keys[:3]
    assert len([k for k in keys if k.endswith(".parquet")]) >= 4


def test_a_replay_without_checkpoints_appends_nothing_twice(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    config = pipeline_config(moto_server, tmp_path, {"max_records": 1500, "max_age_s": 600})
    asyncio.run(run(build(config, tmp_path)))
    snapshots = len(table_of(moto_server, tmp_path).snapshots())
    # The checkpoint store is in memory: the second run reads everything again, with more records.
    config["source"] = {**config["source"], "count": 2600, "batch_size": 333}
    config["sinks"][0]["max_records"] = 10_000  # one commit, at the end
    pipeline = build(config, tmp_path)
    asyncio.run(run(pipeline))
    sink = pipeline.routes[0].sink
    assert isinstance(sink, IcebergSink)
    assert sink.skipped == 4000, "the first run's records were acknowledged without writing"
    table = table_of(moto_server, tmp_path)
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == expected_ids(2600)
    assert len(table.snapshots()) == snapshots + 1
    assert ledger(table) == {"generator:generator/0": "2599", "generator:generator/1": "2599"}


async def test_schema_from_config_evolves_with_new_fields_and_dead_letters_what_does_not_fit(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    columns = [
        {"name": "id", "type": "string", "required": True},
        {"name": "n", "type": "int"},
        {"name": "at", "type": "timestamptz"},
    ]
    sink = make_sink(moto_server, tmp_path, columns=columns, max_age_s=600)
    tracker = PartitionTracker(Partition("kafka:clicks", "3"))
    await sink.start()
    try:
        good = [{"id": "a", "n": 1, "at": "2026-12-01T10:00:00Z"}, {"id": "b", "n": 2}]
        newcol = [{"id": "c", "n": 3, "country": "DE"}, {"id": "d", "n": 4, "country": None}]
        wide = [{"id": "e", "n": 2**40}]
        bad = [{"id": "f", "n": "three"}, {"n": 5}, {"id": "g", "n": 1.5}]
        await sink.submit(routed(good, tracker, 0, raw=True))
        await sink.submit(routed(newcol, tracker, 2))
        await sink.submit(routed(wide, tracker, 4))
        await sink.submit(routed(bad, tracker, 5))
        await sink.flush()
    finally:
        await sink.close()
    assert tracker.checkpoint_position() == 7, "written and dead-lettered records are all acknowledged"
    table = table_of(moto_server, tmp_path)
    schema = {f.name: (str(f.field_type), f.required) for f in table.schema().fields}
    assert schema == {
        "id": ("string", True),
        "n": ("long", False),
        "at": ("timestamptz", False),
        "country": ("string", False),
    }
    rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["n"], r["country"]) for r in rows] == [
        ("a", 1, None),
        ("b", 2, None),
        ("c", 3, "DE"),
        ("d", 4, None),
        ("e", 2**40, None),
    ]
    assert rows[0]["at"].isoformat() == "2026-12-01T10:00:00+00:00"
    assert len(table.snapshots()) == 1, "one commit for the whole flush"
    dead = sink.dead_letters
    assert isinstance(dead, MemoryDeadLetter)
    reasons = {str(e["position"]): e["reason"] for e in dead.entries}
    assert set(reasons) == {"5", "6", "7"}
    assert "column 'n'" in reasons["5"] and "'three'" in reasons["5"]
    assert reasons["6"] == "required column 'id' is missing or null"
    assert "column 'n'" in reasons["7"] and "1.5" in reasons["7"]


async def test_pyiceberg_runs_off_the_event_loop_and_records_are_acknowledged_after_the_commit(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    sink = make_sink(moto_server, tmp_path, columns=[{"name": "id", "type": "string"}], max_age_s=600)
    tracker = PartitionTracker(Partition("kafka:clicks", "0"))
    threads: list[str] = []
    seen_before_commit: list[object] = []
    writer = sink.writer
    prepare, commit = writer.prepare, writer.commit

    def prepare_here(batches: Any) -> Any:
        threads.append(threading.current_thread().name)
        return prepare(batches)

    def commit_here(prepared: Any) -> int:
        threads.append(threading.current_thread().name)
        seen_before_commit.append(tracker.checkpoint_position())
        return commit(prepared)

    writer.prepare, writer.commit = prepare_here, commit_here  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        await sink.start()
        await sink.submit(routed([{"id": str(i)} for i in range(50)], tracker))
        await sink.flush()
        await sink.close()
    assert threads and all(t.startswith("iceberg") for t in threads), threads
    assert threading.current_thread().name not in threads
    assert seen_before_commit == [None], "nothing was acknowledged before the commit"
    assert tracker.checkpoint_position() == 49


async def test_a_commit_that_cannot_reach_the_warehouse_acknowledges_nothing(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    sink = make_sink(moto_server, tmp_path, columns=[{"name": "id", "type": "string"}], max_age_s=600)
    tracker = PartitionTracker(Partition("kafka:clicks", "0"))
    async with asyncio.timeout(60):
        await sink.start()
        # The fault: the warehouse bucket disappears, so neither metadata nor data files can be read or written.
        client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
        for key in s3_keys(moto_server, ""):
            client.delete_object(Bucket=BUCKET, Key=key)
        client.delete_bucket(Bucket=BUCKET)
        await sink.submit(routed([{"id": str(i)} for i in range(20)], tracker))
        with pytest.raises(SinkError) as caught:
            await sink.flush()
        await sink.close()
    assert caught.value.retryable, str(caught.value)
    assert "lake.events" in str(caught.value)
    assert tracker.checkpoint_position() is None, "nothing acknowledged: a restart replays the records"


async def test_new_fields_are_rejected_when_asked(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    columns = [{"name": "id", "type": "string"}]
    sink = make_sink(moto_server, tmp_path, columns=columns, new_columns="reject", max_age_s=600)
    tracker = PartitionTracker(Partition("kafka:clicks", "0"))
    async with asyncio.timeout(30):
        await sink.start()
        await sink.submit(routed([{"id": "a"}, {"id": "b", "extra": 1}], tracker, raw=True))
        await sink.flush()
        await sink.close()
    assert tracker.checkpoint_position() == 1
    table = table_of(moto_server, tmp_path)
    assert [f.name for f in table.schema().fields] == ["id"]
    assert table.scan().to_arrow()["id"].to_pylist() == ["a"]
    dead = sink.dead_letters
    assert isinstance(dead, MemoryDeadLetter)
    assert [e["reason"] for e in dead.entries] == [
        "fields ['extra'] are not columns of the table (new_columns: reject)"
    ]


async def test_two_writers_racing_on_one_table_keep_every_partition_in_the_ledger(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    columns = [{"name": "id", "type": "string"}]
    first = make_sink(moto_server, tmp_path, columns=columns, max_age_s=600)
    second = make_sink(moto_server, tmp_path, columns=columns, max_age_s=600)
    a, b = PartitionTracker(Partition("kafka:t", "0")), PartitionTracker(Partition("kafka:t", "1"))
    await first.start()
    await second.start()
    try:
        batch_a = routed([{"id": f"a{i}"} for i in range(10)], a)
        prepared = await first._call(first.writer.prepare, [batch_a])
        # The second writer commits in between: the first one's commit now conflicts and must retry.
        await second.submit(routed([{"id": f"b{i}"} for i in range(5)], b))
        await second.flush()
        await first._call(first.writer.commit, prepared)
        # A replay of partition 1 through the first writer: the refreshed ledger skips what the second wrote.
        await first.submit(routed([{"id": f"b{i}"} for i in range(7)], PartitionTracker(b.partition)))
        await first.flush()
    finally:
        await first.close()
        await second.close()
    assert first.writer.conflicts == 1
    assert first.skipped == 5
    table = table_of(moto_server, tmp_path)
    ids = collections.Counter(table.scan().to_arrow()["id"].to_pylist())
    assert set(ids.values()) == {1}
    assert sorted(ids) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(7)])
    assert ledger(table) == {"kafka:t/0": "9", "kafka:t/1": "6"}
    assert unreferenced_files(moto_server, table) == [], "the conflicting attempt's data files were deleted"


async def test_the_start_up_sweep_deletes_only_this_scopes_old_unreferenced_files(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    columns = [{"name": "id", "type": "string"}]
    sink = make_sink(moto_server, tmp_path, columns=columns, max_age_s=600)
    await sink.start()
    try:
        await sink.submit(routed([{"id": f"a{i}"} for i in range(5)], PartitionTracker(Partition("kafka:t", "0"))))
        await sink.flush()
    finally:
        await sink.close()
    table = table_of(moto_server, tmp_path)
    data_dir = table.location_provider().data_path.removeprefix(f"s3://{BUCKET}/")
    ours = f"{data_dir}/00000-0-{orphans.commit_uuid(orphans.scope_tag('iceberg-test'))}.parquet"
    other_scope = f"{data_dir}/00000-0-{orphans.commit_uuid(orphans.scope_tag('other-pipeline'))}.parquet"
    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    for key in (ours, other_scope):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1")

    young = make_sink(moto_server, tmp_path, columns=columns)  # default age guard: an hour
    await young.start()
    await young.close()
    assert young.writer.swept == [] and unreferenced_files(moto_server, table) == sorted([ours, other_scope])

    old = make_sink(moto_server, tmp_path, columns=columns, orphan_min_age_s=0)
    await old.start()
    await old.close()
    assert old.writer.swept == [f"s3://{BUCKET}/{ours}"]
    assert unreferenced_files(moto_server, table) == [other_scope]
    assert sorted(table_of(moto_server, tmp_path).scan().to_arrow()["id"].to_pylist()) == [f"a{i}" for i in range(5)]


def test_bad_settings_fail_at_start_up_with_the_key_path(tmp_path: Path) -> None:
    env = PluginEnv("p", AwsSettings(region=REGION), tmp_path, "sinks[0]")
    catalog = {"type": "sql", "path": "catalog.db", "warehouse": "wh"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_concurrent_writes": 2}, "sinks[0].max_concurrent_writes"),
        ({"table": "nonamespace"}, "sinks[0].table"),
        (
            {"catalog": {**catalog, "properties": {"s3.secret-access-key": "x"}}},
            "sinks[0].catalog.properties.s3.secret-access-key",
        ),
        ({"catalog": {"type": "sql", "path": "catalog.db"}}, "sinks[0].catalog.warehouse"),
        ({"catalog": {"type": "sql", "warehouse": "wh"}}, "sinks[0].catalog.path"),
        ({"catalog": {"type": "rest", "uri": "https://example.com/iceberg"}}, "sinks[0].catalog.signing_name"),
        ({"max_bytes": "64MiB"}, "sinks[0].max_bytes"),
        ({"partition_by": ["days(ts"]}, "sinks[0].partition_by[0]"),
    ]
    for override, path in cases:
        section = {"catalog": catalog, "table": TABLE, **override}
        with pytest.raises(ConfigError) as caught:
            IcebergSink(convert(section, IcebergOptions, "sinks[0]"), env)
        assert caught.value.path == path, (override, str(caught.value))


def test_the_demo_pipeline_validates_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = ROOT / "examples" / "pipelines" / "generator-to-iceberg.yaml"
    checked = subprocess.run(
        [sys.executable, "-m", "streamkit", "validate", str(demo)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    output = tmp_path / "out"
    monkeypatch.setenv("OUTPUT", str(output))
    monkeypatch.setenv("RECORDS", "1500")
    config = load_config(demo)
    config.source["rate"] = 0
    summary = asyncio.run(run(build_pipeline(config)))
    assert summary.records_in == 3000
    catalog = load_catalog("streamkit", type="sql", uri=f"sqlite:///{output / 'iceberg-catalog.db'}")
    table = catalog.load_table("demo.events")
    kept = table.scan().to_arrow()
    assert 2000 < kept.num_rows < 3000, "the demo's filter drops the err records"
    assert set(kept["status"].to_pylist()) == {"ok"}
    assert [f.name for f in table.spec().fields] == ["event"]


# -- crashes ------------------------------------------------------------------------------------------
def crash_config(moto: MotoServer, tmp_path: Path, count: int) -> dict[str, Any]:
    source = {
        "type": "generator",
        "count": count,
        "partitions": 2,
        "batch_size": 100,
        "record_bytes": 200,
        "rate": 1500,
    }
    return pipeline_config(
        moto,
        tmp_path,
        {"max_records": 600, "max_age_s": 600},
        source=source,
        # Longer than the run: the worker dies with commits its checkpoints never covered.
        checkpoint={"type": "file", "path": "checkpoints.json", "interval_s": 3600},
    )


def start_worker(config: dict[str, Any], tmp_path: Path) -> subprocess.Popen[bytes]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - the worker writes it until it dies
    return subprocess.Popen([sys.executable, "-m", "streamkit", "run", str(path)], cwd=tmp_path, stdout=log, stderr=log)


def snapshot_count(tmp_path: Path, moto: MotoServer) -> int:
    try:
        return len(table_of(moto, tmp_path).snapshots())
    except Exception:
        return 0  # not created yet


def wait_for_snapshots(
    worker: subprocess.Popen[bytes], tmp_path: Path, moto: MotoServer, n: int, deadline: float
) -> None:
    """Until the table has ``n`` snapshots (or the deadline passes, or the worker exits: the caller asserts)."""
    while snapshot_count(tmp_path, moto) < n and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)


def kill(worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    assert worker.returncode == -signal.SIGKILL, (tmp_path / "worker.log").read_text()[-3000:]


def finish_and_check(moto: MotoServer, tmp_path: Path, config: dict[str, Any], count: int) -> None:
    """Restart from the (absent) checkpoint, read to the end: every record exactly once."""
    config["source"] = {**config["source"], "rate": 0, "batch_size": 170}
    pipeline = build(config, tmp_path)
    summary = asyncio.run(run(pipeline))
    sink = pipeline.routes[0].sink
    assert isinstance(sink, IcebergSink) and sink.skipped > 0
    table = table_of(moto, tmp_path)
    ids = table.scan().to_arrow()["id"].to_pylist()
    assert collections.Counter(ids).most_common(1)[0][1] == 1, "no record twice"
    assert sorted(ids) == expected_ids(count)
    assert sorted(duckdb_ids(table, tmp_path)) == expected_ids(count)
    assert set(summary.checkpoints.values()) == {str(count - 1)}


def test_sigkill_between_commit_and_checkpoint_replays_nothing_twice(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    count = 6000
    config = crash_config(moto_server, tmp_path, count)
    worker = start_worker(config, tmp_path)
    try:
        wait_for_snapshots(worker, tmp_path, moto_server, 2, time.monotonic() + 60)
    finally:
        kill(worker, tmp_path)
    table = table_of(moto_server, tmp_path)
    assert len(table.snapshots()) >= 2
    held = ledger(table)
    assert all(int(p) < count - 1 for p in held.values()), "killed mid-run"
    assert not (tmp_path / "checkpoints.json").exists(), "no checkpoint covered the commits"
    finish_and_check(moto_server, tmp_path, config, count)


def test_sigkill_between_data_files_and_commit_leaves_nothing_visible_and_replays_once(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    count = 6000
    config = crash_config(moto_server, tmp_path, count)
    worker = start_worker(config, tmp_path)
    lock: sqlite3.Connection | None = None
    try:
        deadline = time.monotonic() + 60
        wait_for_snapshots(worker, tmp_path, moto_server, 1, deadline)
        committed = table_of(moto_server, tmp_path)
        files_before = len([k for k in s3_keys(moto_server, "wh/") if k.endswith(".parquet")])
        # Hold the catalog's write lock: the worker's next commit writes its files, then waits on sqlite.
        lock = sqlite3.connect(tmp_path / "catalog.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        while time.monotonic() < deadline and worker.poll() is None:
            parquet = [k for k in s3_keys(moto_server, "wh/") if k.endswith(".parquet")]
            metadata = [k for k in s3_keys(moto_server, "wh/") if k.endswith(".metadata.json")]
            if len(parquet) > files_before and len(metadata) > len(committed.metadata.snapshots) + 1:
                break
            time.sleep(0.05)
        kill(worker, tmp_path)
    finally:
        if worker.poll() is None:
            kill(worker, tmp_path)
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
    table = table_of(moto_server, tmp_path)
    assert table.current_snapshot() == committed.current_snapshot(), "the interrupted commit is not visible"
    orphans = unreferenced_files(moto_server, table)
    assert [k for k in orphans if k.endswith(".parquet")], "the killed worker had written data files no snapshot has"
    # Files of another writer (its commit in flight, or its own orphans) are not this sink's to delete.
    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    data_dir = orphans[0].rsplit("/data/", 1)[0] + "/data"
    foreign = [f"{data_dir}/00000-0-{uuid.uuid4()}.parquet", f"{data_dir}/part-00000-spark.parquet"]
    for key in foreign:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1")
    config["sinks"][0]["orphan_min_age_s"] = 0
    finish_and_check(moto_server, tmp_path, config, count)
    left = unreferenced_files(moto_server, table_of(moto_server, tmp_path))
    assert left == sorted(foreign), "the restart swept the killed worker's files, and only them"


def unreferenced_files(moto: MotoServer, table: Table) -> list[str]:
    """Data files, manifests and manifest lists in the table location that no snapshot references."""
    referenced: set[str] = set()
    for snapshot in table.snapshots():
        referenced.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            referenced.add(manifest.manifest_path)
            referenced.update(
                e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False)
            )
    keys = {f"s3://{BUCKET}/{k}" for k in s3_keys(moto, "wh/") if k.endswith((".parquet", ".avro"))}
    return sorted(k.removeprefix(f"s3://{BUCKET}/") for k in keys - referenced)


# -- REST catalog with SigV4 --------------------------------------------------------------------------
class _RestCatalog(http.server.BaseHTTPRequestHandler):
    """The two Iceberg REST endpoints a start-up calls, recording each request's headers."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/iceberg/v1/config"):
            self._answer(200, {"defaults": {}, "overrides": {}})
        else:
            error = {"message": "Table does not exist: lake.events", "type": "NoSuchTableException", "code": 404}
            self._answer(404, {"error": error})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_rest_catalog_is_signed_with_sigv4_from_the_standard_chain(
    aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "never-logged-" + "x" * 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RestCatalog)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RestCatalog.seen.clear()
    try:
        catalog = {
            "type": "rest",
            "uri": f"http://127.0.0.1:{server.server_address[1]}/iceberg",
            "warehouse": "arn:aws:s3tables:us-east-1:123456789012:bucket/lake",
            "signing_name": "s3tables",
        }
        section = {"catalog": catalog, "table": TABLE, "create": False}
        env = PluginEnv("iceberg-test", AwsSettings(region=REGION), tmp_path, "sinks[0]")
        sink = IcebergSink(convert(section, IcebergOptions, "sinks[0]"), env)
        with pytest.raises(ConfigError) as caught:
            asyncio.run(sink.start())
        asyncio.run(sink.close())
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.path == "sinks[0].table"
    assert "does not exist" in str(caught.value)
    paths = [p for p, _ in _RestCatalog.seen]
    assert paths[0].startswith("/iceberg/v1/config?warehouse=arn")
    assert any(p.startswith("/iceberg/v1/namespaces/lake/tables/events") for p in paths)
    for _, headers in _RestCatalog.seen:
        authorization = headers["Authorization"]
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=testing/")
        assert "/us-east-1/s3tables/aws4_request" in authorization
        assert headers["X-Amz-Date"]
    out = capsys.readouterr()
    assert secret not in out.out + out.err + str(caught.value)


def test_bench_writes_the_built_in_pipeline_through_the_iceberg_sink(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "streamkit", "bench", "--sink", "iceberg", "--records", "6000", "--shards", "2",
         "--rounds", "1", "--no-baselines", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = orjson.loads(out.read_bytes())
    assert report["sink"].startswith("iceberg: Parquet data files appended to a table in a local SQL catalog")
    figures = report["streamkit"]
    assert [f["description"].endswith("-> iceberg") for f in figures] == [True, True]
    written = {f["records_out"] for f in figures}
    assert len(written) == 1 and 0 < written.pop() < 6000, "both spellings wrote the records the filter kept"
    assert not [n for n in report["notes"] if "CHECK FAILED" in n]


def test_every_bench_run_writes_a_fresh_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs replay the same shards: into the last run's table they would all be skipped by the ledger."""
    from streamkit.devtools.bench import sinks
    from streamkit.devtools.bench.runner import Bench, BenchOptions

    rows_before_reset: list[int] = []
    empty = sinks.RESET_BEFORE_EACH_RUN["iceberg"]

    def count_then_empty(section: dict[str, Any]) -> None:
        catalog = section["catalog"]
        if Path(catalog["path"]).exists():
            table = load_catalog("streamkit", type="sql", uri=f"sqlite:///{catalog['path']}").load_table("bench.events")
            rows_before_reset.append(table.scan().to_arrow().num_rows)
        empty(section)

    monkeypatch.setitem(sinks.RESET_BEFORE_EACH_RUN, "iceberg", count_then_empty)
    options = BenchOptions(source="synthetic", records=3000, shards=2, rounds=2, sink="iceberg", baselines=False)
    report = Bench(options).run()
    written = {f.records_out for f in report.streamkit}
    assert len(written) == 1
    kept = written.pop()
    assert 0 < kept < 3000
    # Four runs (two spellings, two rounds): the three resets after a run each found that run's rows.
    assert rows_before_reset == [kept, kept, kept]
