"""The S3 sink against moto's S3 over HTTP, with faults injected at the SDK boundary.

moto enforces what matters here: ``If-None-Match: *`` on PutObject and CompleteMultipartUpload (412),
``EntityTooSmall`` for multipart parts under 5 MiB. It never throttles, so 503 SlowDown and AccessDenied
are injected by :class:`Faults`, a ``before-call`` hook on the sink's own aiobotocore client that answers
the modelled error instead of sending the request. Successful writes always go to moto, and every test
reads the objects back from it.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import io
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import boto3
import duckdb
import fastavro
import numpy as np
import orjson
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from botocore.awsrequest import AWSResponse

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.build import build_pipeline
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.config import AwsSettings, convert, parse_config
from streamkit.connectors.local.memory_sink import MemoryDeadLetter
from streamkit.connectors.s3.sink import S3Sink, S3SinkOptions, marker_key
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Pipeline, Route, RunSummary, Runtime
from streamkit.sink import BufferedSink, BufferOptions, Rejection
from tests.helpers import injected_error, wait_for

pytestmark = pytest.mark.timeout(90)

REGION = "us-east-1"
BUCKET = "sink-bucket"
FAST_RETRY = {"max_attempts": 30, "base_delay_s": 0.001, "max_delay_s": 0.02}
P = Partition("kinesis:orders", "shardId-000000000000")
MIB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------------
def s3(moto: MotoServer) -> Any:
    return boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION)


def create_bucket(moto: MotoServer) -> None:
    s3(moto).create_bucket(Bucket=BUCKET)


def object_keys(moto: MotoServer, *, markers: bool = False) -> list[str]:
    client = s3(moto)
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    return sorted(k for k in keys if markers or not k.rsplit("/", 1)[-1].startswith("_"))


def body(moto: MotoServer, key: str) -> bytes:
    data: bytes = s3(moto).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return gzip.decompress(data) if key.endswith(".gz") else data


def ndjson_ids(moto: MotoServer, keys: Sequence[str]) -> dict[str, list[Any]]:
    def ids(key: str) -> list[Any]:
        return [orjson.loads(line)["id"] for line in body(moto, key).splitlines()]

    with ThreadPoolExecutor(8) as pool:  # hundreds of objects: read them side by side
        return dict(zip(keys, pool.map(ids, keys), strict=True))


def download(moto: MotoServer, directory: Path) -> list[Path]:
    client = s3(moto)
    files = []
    for key in object_keys(moto):
        target = directory / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        files.append(target)
    return files


def avro_rows(data: bytes) -> list[dict[str, Any]]:
    return [cast(dict[str, Any], r) for r in fastavro.reader(io.BytesIO(data))]


def query(sql: str) -> list[tuple[Any, ...]]:
    relation = duckdb.sql(sql)
    assert relation is not None
    return relation.fetchall()


def pipeline_config(moto: MotoServer, sink: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "name": "s3-test",
        "source": {"type": "generator", "count": 2000, "partitions": 2, "batch_size": 250, "record_bytes": 200},
        "processors": [{"type": "json.decode"}, {"type": "timestamp", "field": "ts"}],
        "sinks": [{"type": "s3", "bucket": BUCKET, "window_s": 0, "retry": FAST_RETRY, **sink}],
        "aws": {"region": REGION, "endpoints": {"s3": moto.endpoint_url}},
        "runtime": {"shutdown_grace_s": 30},
        **sections,
    }


def build(config: dict[str, Any], base_dir: Path) -> Pipeline:
    return build_pipeline(parse_config(config, base_dir=base_dir))


async def run(pipeline: Pipeline) -> RunSummary:
    async with asyncio.timeout(60):
        return await Runtime(pipeline).run(asyncio.Event())


def make_sink(endpoint_url: str, **options: Any) -> S3Sink:
    section = {"bucket": BUCKET, "retry": FAST_RETRY, "window_s": 0, "partition_template": "", **options}
    aws = AwsSettings(region=REGION, endpoints={"s3": endpoint_url})
    sink = S3Sink(convert(section, S3SinkOptions, "sinks[0]"), PluginEnv("test", aws, Path.cwd(), "sinks[0]"))
    sink.bind("s3", MemoryDeadLetter(), None)
    return sink


def routed(payloads: Sequence[bytes], size: int, tracker: PartitionTracker) -> list[RecordBatch]:
    """Fetch batches as the runtime hands them to one sink: ticketed, the sink's delivery held."""
    out = []
    for start in range(0, len(payloads), size):
        chunk = list(payloads[start : start + size])
        batch = RecordBatch(tracker.partition, payloads=chunk, arrival_ms=np.zeros(len(chunk), dtype=np.int64))
        batch.ticket = tracker.open(list(range(start, start + len(chunk))), batch.total_bytes())
        batch.ticket.hold(batch.origin)
        batch.ticket.release_processing()
        out.append(batch)
    return out


async def write_all(sink: S3Sink, batches: Sequence[RecordBatch]) -> None:
    await sink.start()
    try:
        for batch in batches:
            await sink.submit(batch)
        await sink.flush()
    finally:
        await sink.close()


class Faults:
    """A before-call hook answering a modelled S3 error for calls ``first`` .. ``first + count - 1``."""

    def __init__(self, code: str, status: int, *, count: int, first: int = 0) -> None:
        self.code, self.status, self.count, self.first = code, status, count, first
        self.calls = 0
        self.injected = 0

    def __call__(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        self.calls += 1
        if not self.first < self.calls <= self.first + self.count:
            return None  # the real call goes to moto
        self.injected += 1
        return injected_error(self.status, self.code)


def records(n: int, pad: int = 80) -> list[bytes]:
    return [orjson.dumps({"id": i, "ts": 1_795_000_000_000 + i, "pad": f"{i:08d}" * (pad // 8)}) for i in range(n)]


# -- faults and replays ----------------------------------------------------------------------------
async def test_slowdown_is_retried_and_nothing_is_lost(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_bucket(moto_server)
    pipeline = build(pipeline_config(moto_server, {"prefix": "raw/", "max_records": 500}), Path.cwd())
    sink = pipeline.routes[0].sink
    assert isinstance(sink, S3Sink)
    faults = Faults("SlowDown", 503, count=12, first=2)
    sink.aws.register("before-call.s3.PutObject", faults)
    summary = await run(pipeline)

    assert faults.injected == 12
    assert sink.requests.throttled == 12
    assert pipeline.metrics.sinks["s3-0"].throttles == 12
    ids = [i for found in ndjson_ids(moto_server, object_keys(moto_server)).values() for i in found]
    expected = [f"{p}-{i}" for p in range(2) for i in range(2000)]
    assert sorted(ids) == sorted(expected), "every record once, none lost"
    assert set(summary.checkpoints.values()) == {"1999"}


def test_a_killed_pipeline_restarted_from_its_checkpoint_duplicates_no_object(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    count = 12_000
    source = {"type": "generator", "count": count, "partitions": 2, "batch_size": 250, "rate": 2500}
    config = pipeline_config(
        moto_server,
        {"prefix": "raw/", "max_records": 1000, "max_age_s": 600},
        source=source,
        # Longer than the run: the worker dies before any checkpoint covers what it wrote.
        checkpoint={"type": "file", "path": "checkpoints.json", "interval_s": 3600},
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streamkit", "run", str(path)], cwd=tmp_path, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while len(object_keys(moto_server)) < 6 and time.monotonic() < deadline and worker.poll() is None:
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
    assert worker.returncode == -signal.SIGKILL, (tmp_path / "worker.log").read_text()[-2000:]
    time.sleep(0.3)  # a PutObject the worker sent just before dying may still be landing in moto
    before = set(object_keys(moto_server))
    assert len(before) >= 6
    assert not (tmp_path / "checkpoints.json").exists(), "killed before its first checkpoint"

    # The restart reads from the checkpoint (none: from the start), with other fetch sizes and no pacing.
    config["source"] = {**source, "rate": 0, "batch_size": 700}
    pipeline = build(config, tmp_path)
    summary = asyncio.run(run(pipeline))
    sink = pipeline.routes[0].sink
    assert isinstance(sink, S3Sink)

    assert sink.stats.objects_existing == len(before), "every object of the first run answered 412"
    after = set(object_keys(moto_server))
    assert before <= after
    holders = collections.Counter(i for ids in ndjson_ids(moto_server, sorted(after)).values() for i in ids)
    assert len(holders) == 2 * count
    assert set(holders.values()) == {1}, "no record is in two objects"
    assert set(summary.checkpoints.values()) == {str(count - 1)}


async def test_a_conflicting_write_is_sent_again(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_bucket(moto_server)
    sink = make_sink(moto_server.endpoint_url)
    faults = Faults("ConditionalRequestConflict", 409, count=2)
    sink.aws.register("before-call.s3.PutObject", faults)
    tracker = PartitionTracker(P)
    await write_all(sink, routed(records(30), 30, tracker))
    assert (faults.injected, sink.requests.conflicts, sink.stats.objects_written) == (2, 2, 1)
    assert tracker.checkpoint_position() == 29


async def test_a_quiet_partition_is_written_after_max_age(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_bucket(moto_server)
    sink = make_sink(moto_server.endpoint_url, max_age_s=0.3)
    tracker = PartitionTracker(P)
    stop = asyncio.Event()
    await sink.start()
    timer = asyncio.create_task(sink.run(stop))
    try:
        began = time.monotonic()
        for batch in routed(records(10), 5, tracker):
            await sink.submit(batch)
        await wait_for(lambda: tracker.checkpoint_position() == 9, timeout=5)
        assert 0.3 <= time.monotonic() - began < 3
        assert (sink.stats.objects_written, sink.stats.forced_segments) == (1, 1)
    finally:
        stop.set()
        await timer
        await sink.close()
    assert len(object_keys(moto_server)) == 1


# -- formats and partitions ------------------------------------------------------------------------
AVRO_SCHEMA = {
    "type": "record",
    "name": "event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "event", "type": "string"},
        {"name": "country", "type": ["null", "string"]},
        {"name": "amount", "type": "double"},
    ],
}


@pytest.mark.parametrize("fmt", ["ndjson", "avro", "parquet"])
async def test_objects_read_back_with_their_hive_partitions(
    fmt: str, moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    sink = {
        "prefix": "events/",
        "format": fmt,
        "partition_template": "dt={event_time:%Y-%m-%d}/kind={field.event}/",
        "max_records": 1500,
        **({"avro_schema": AVRO_SCHEMA} if fmt != "ndjson" else {}),
    }
    config = pipeline_config(moto_server, sink)
    fields = {"id": "id", "seq": "seq", "ts": "ts", "event": "event", "country": "user.country", "amount": "amount"}
    config["processors"].append({"type": "map", "fields": fields})
    await run(build(config, tmp_path))
    files = download(moto_server, tmp_path / "s3")
    root = tmp_path / "s3" / "events"
    assert files and all(
        f.name.endswith({"ndjson": ".ndjson.gz", "avro": ".avro", "parquet": ".parquet"}[fmt]) for f in files
    )

    if fmt == "ndjson":
        rows = query(
            f"select id, event, kind, dt, epoch_ms(ts::bigint)::date::varchar as day "
            f"from read_json_auto('{root}/**/*.ndjson.gz', hive_partitioning = true)"
        )
    elif fmt == "parquet":
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
        days = [str(t.date()) for t in table["ts"].to_pylist()]
        rows = list(zip(*(table[c].to_pylist() for c in ("id", "event", "kind", "dt")), days, strict=True))
    else:
        rows = []
        for file in files:
            hive = dict(unquote(p).split("=", 1) for p in file.relative_to(root).parts if "=" in p)
            for r in avro_rows(file.read_bytes()):
                rows.append((r["id"], r["event"], hive["kind"], hive["dt"], str(r["ts"].date())))
    assert len(rows) == 4000
    assert len({r[0] for r in rows}) == 4000
    assert all(event == kind for _, event, kind, _, _ in rows), "each record sits in its own partition"
    assert all(str(dt) == day for _, _, _, dt, day in rows)


async def test_many_open_partitions_stay_under_the_memory_budget(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    # JSON-like text (gzip ratio ~0.24, the writers' prior before their first measurement).
    rng = np.random.default_rng(7)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, 7)) for _ in range(256)]
    text = [" ".join(words[j] for j in rng.integers(0, 256, 30)) for _ in range(997)]
    lines = [orjson.dumps({"id": i, "g": i % 200, "text": text[i % 997]}) for i in range(80_000)]
    (tmp_path / "in.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    budget = 14 * MIB  # 200 open gzip objects take 12.5 MiB of compressor state alone
    sink = {"partition_template": "g={field.g}/", "memory_budget": budget, "max_age_s": 600}
    config = pipeline_config(moto_server, sink, source={"type": "file", "path": "in.ndjson", "batch_size": 1000})
    config["processors"] = [{"type": "json.decode"}]
    pipeline = build(config, tmp_path)
    # The partition field is decoded in the fused pass: the sink groups by views of {"g": ...}, never whole records.
    assert pipeline.chain.steps[-1].sink_fields == ["g"]
    await run(pipeline)
    s3_sink = pipeline.routes[0].sink
    assert isinstance(s3_sink, S3Sink)

    stats = s3_sink.stats
    assert stats.forced_segments >= 2, "the budget, not the end of the input, closed the objects"
    # Measured before each cut, so the peak may pass the budget by the slice that crossed it.
    assert stats.peak_buffered_bytes <= budget * 1.05, stats
    keys = object_keys(moto_server)
    by_key = ndjson_ids(moto_server, keys)
    assert len({k.split("/")[0] for k in keys}) == 200
    ids = sorted(i for found in by_key.values() for i in found)
    assert ids == list(range(80_000)), "nothing lost, nothing twice"
    assert all(i % 200 == int(k.split("/")[0][2:]) for k, found in by_key.items() for i in found)


async def test_a_source_batch_in_slices_stays_under_the_memory_budget(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    """The chain hands a large source batch on in slices (``SLICE_RECORDS``): one ticket, several submits.

    A part-filled sink slice is then pending whenever the budget forces a cut. The cut feeds it to the
    writers, which counts it at its encoded size instead of its raw size: that must not pass for relief
    while the cut segment is still being written, or the next slice opens a new segment (50 objects,
    50 x 64 KiB of compressor state) next to it."""
    create_bucket(moto_server)
    rng = np.random.default_rng(7)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, 7)) for _ in range(256)]
    text = [" ".join(words[j] for j in rng.integers(0, 256, 30)) for _ in range(997)]
    values = [{"id": i, "g": i % 50, "text": text[i % 997]} for i in range(40_000)]
    payloads = [orjson.dumps(v) for v in values]
    budget = int(3.8 * MIB)  # 50 open gzip objects take 3.1 MiB of compressor state alone
    sink = make_sink(moto_server.endpoint_url, partition_template="g={field.g}/", memory_budget=budget)
    tracker = PartitionTracker(P)
    size, slice_records = 1000, 512  # a 1000-record source batch as the chain slices it (SLICE_RECORDS): 512 + 488
    await sink.start()
    try:
        for start in range(0, len(payloads), size):
            end = min(start + size, len(payloads))
            batch = RecordBatch(P, payloads=payloads[start:end], values=values[start:end])
            batch.ticket = ticket = tracker.open(list(range(start, end)), batch.total_bytes())
            for first in range(0, len(batch), slice_records):
                piece = batch.slice(first, first + slice_records)
                assert piece.ticket is ticket
                ticket.hold(piece.origin)
                await sink.submit(piece)
            ticket.release_processing()
        await sink.flush()
    finally:
        await sink.close()

    stats = sink.stats
    assert stats.forced_segments >= 2, "the budget, not the end of the input, closed the objects"
    assert stats.peak_buffered_bytes <= budget * 1.05, stats
    assert tracker.checkpoint_position() == len(payloads) - 1
    by_key = ndjson_ids(moto_server, object_keys(moto_server))
    assert sorted(i for found in by_key.values() for i in found) == list(range(len(payloads)))


# -- multipart ---------------------------------------------------------------------------------------
STREAMING = {"format": "ndjson", "compression": "none", "multipart_threshold": "5MiB", "part_size": "5MiB"}


async def test_a_large_object_streams_as_multipart_and_a_replay_finds_it(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    payloads = records(14_000, pad=1000)  # 14 MiB uncompressed: one object, three parts
    tracker = PartitionTracker(P)
    sink = make_sink(moto_server.endpoint_url, **STREAMING)
    await write_all(sink, routed(payloads, 500, tracker))

    assert (sink.stats.multipart_objects, sink.stats.parts, sink.stats.objects_written) == (1, 3, 1)
    (key,) = object_keys(moto_server)
    assert key.endswith(".ndjson") and "/00000000000000000000-" in key
    assert body(moto_server, key) == b"\n".join(payloads) + b"\n"
    assert s3(moto_server).head_object(Bucket=BUCKET, Key=key)["ETag"].endswith('-3"')
    assert tracker.checkpoint_position() == 13_999
    assert sink.stats.peak_buffered_bytes < 2 * 5 * MIB + 256 * 1024, "an open object holds about one part"

    # A replay of the same records: the anchored key exists and its end marker proves the same records.
    replay_tracker = PartitionTracker(P)
    replay = make_sink(moto_server.endpoint_url, **STREAMING)
    await write_all(replay, routed(payloads, 777, replay_tracker))
    assert (replay.stats.fallbacks, replay.stats.objects_existing, replay.stats.objects_written) == (1, 1, 0)
    assert object_keys(moto_server) == [key]
    assert replay_tracker.checkpoint_position() == 13_999


async def test_a_streamed_object_cut_short_is_written_again_on_replay_never_skipped(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    payloads = records(14_000, pad=1000)
    first = make_sink(moto_server.endpoint_url, **STREAMING)
    await write_all(first, routed(payloads[:9000], 500, PartitionTracker(P)))  # flushed at 8999: forced
    (streamed,) = object_keys(moto_server)
    assert marker_key(streamed.replace(streamed.rsplit("-", 1)[1], "00000000000000008999.ndjson")) in set(
        object_keys(moto_server, markers=True)
    )

    tracker = PartitionTracker(P)
    replay = make_sink(moto_server.endpoint_url, **STREAMING)
    await write_all(replay, routed(payloads, 500, tracker))
    # Same anchored key, but no marker for 0..13999: the replay cannot prove those records are stored,
    # so it writes them under their own key (a duplicate of 0..8999, never a loss).
    assert (replay.stats.fallbacks, replay.stats.objects_existing, replay.stats.objects_written) == (1, 0, 1)
    keys = object_keys(moto_server)
    assert len(keys) == 2
    complete = [k for k in keys if k.endswith("-00000000000000013999.ndjson")]
    assert len(complete) == 1 and body(moto_server, complete[0]) == b"\n".join(payloads) + b"\n"
    assert tracker.checkpoint_position() == 13_999


async def test_an_anchored_object_keeps_its_key_whatever_the_fetch_sizes(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    payloads = records(7000, pad=1000)
    options = {**STREAMING, "max_records": 7000}
    # One 7000-record batch: the object passes the threshold and the segment closes inside one submit,
    # before streaming could start. It is still written under its anchored key, with its end marker.
    first = make_sink(moto_server.endpoint_url, **options)
    await write_all(first, routed(payloads, 7000, PartitionTracker(P)))
    assert (first.stats.multipart_objects, first.stats.objects_written, first.stats.markers) == (0, 1, 1)
    (key,) = object_keys(moto_server)
    anchor = int(key.rsplit("-", 1)[1].split(".")[0])
    assert 4000 < anchor < 6999, "named after the anchor, not the last record"

    # Small fetches would stream it: the anchored key exists, and the end marker proves the records.
    tracker = PartitionTracker(P)
    replay = make_sink(moto_server.endpoint_url, **options)
    await write_all(replay, routed(payloads, 300, tracker))
    assert (replay.stats.fallbacks, replay.stats.objects_existing, replay.stats.objects_written) == (1, 1, 0)
    assert object_keys(moto_server) == [key]
    assert tracker.checkpoint_position() == 6999


async def test_sse_kms_sets_the_encryption_parameters(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_bucket(moto_server)
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    sink = make_sink(moto_server.endpoint_url, **STREAMING, sse={"kms_key_id": key_id, "bucket_key": True})
    seen: list[tuple[str, dict[str, Any]]] = []
    for operation in ("PutObject", "CreateMultipartUpload", "CompleteMultipartUpload", "UploadPart"):
        sink.aws.register(
            f"before-parameter-build.s3.{operation}",
            lambda params, operation=operation, **_: seen.append((operation, dict(params))),
        )
    payloads = records(7000, pad=1000)  # one streamed object (parts) plus small ones below
    await write_all(sink, routed(payloads, 500, PartitionTracker(P)))
    small = make_sink(moto_server.endpoint_url, sse={"kms_key_id": key_id})
    small.aws.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: seen.append(("PutObject", dict(params)))
    )
    await write_all(small, routed(records(10), 10, PartitionTracker(Partition("kinesis:orders", "other"))))

    creates = [p for op, p in seen if op in ("PutObject", "CreateMultipartUpload")]
    assert {op for op, _ in seen} >= {"PutObject", "CreateMultipartUpload", "UploadPart"}
    assert creates and all(p["ServerSideEncryption"] == "aws:kms" and p["SSEKMSKeyId"] == key_id for p in creates)
    assert all(p.get("BucketKeyEnabled") is True for op, p in seen if op == "CreateMultipartUpload")
    for key in object_keys(moto_server):
        head = s3(moto_server).head_object(Bucket=BUCKET, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id)


# -- fan-out -----------------------------------------------------------------------------------------
class FlakySink(BufferedSink):
    """A second sink that fails (and retries inside) until ``healthy`` is set."""

    def __init__(self) -> None:
        # One write at a time, started by the age timer: while it fails, records pile up in the buffer
        # instead of blocking the partition, so the S3 sink keeps receiving and confirming.
        super().__init__(BufferOptions(max_records=100_000, max_age_s=0.05, max_concurrent_writes=1))
        self.healthy = asyncio.Event()
        self.failures = 0
        self.confirmed: set[int] = set()

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        while not self.healthy.is_set():
            self.failures += 1
            self.record_retry(throttled=False)
            await asyncio.sleep(0.02)
        for batch in batches:
            self.confirmed.update(int(batch.position(i)) for i in range(len(batch)))
        return []


class TrackingS3Sink(S3Sink):
    def __init__(self, options: S3SinkOptions, env: PluginEnv) -> None:
        super().__init__(options, env)
        self.confirmed: set[int] = set()

    def acknowledge(self, batch: RecordBatch) -> None:
        self.confirmed.update(int(batch.position(i)) for i in range(len(batch)))
        super().acknowledge(batch)


def contiguous(positions: set[int]) -> int:
    """The last position of the confirmed prefix 0..n (-1 if position 0 is not confirmed)."""
    n = -1
    while n + 1 in positions:
        n += 1
    return n


class RecordingStore(MemoryCheckpointStore):
    def __init__(self, sinks: Sequence[TrackingS3Sink | FlakySink]) -> None:
        super().__init__()
        self.sinks = sinks
        self.history: list[tuple[int, list[int]]] = []

    async def save(self, partition: Partition, checkpoint: str) -> None:
        self.history.append((int(checkpoint), [contiguous(s.confirmed) for s in self.sinks]))
        await super().save(partition, checkpoint)


async def test_fan_out_checkpoints_only_what_both_sinks_confirmed(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    create_bucket(moto_server)
    config = pipeline_config(
        moto_server,
        {"max_records": 400},
        source={
            "type": "generator",
            "count": 6000,
            "partitions": 1,
            "batch_size": 200,
            "record_bytes": 200,
            "rate": 6000,
        },
    )
    base = build(config, tmp_path)
    s3_section = {k: v for k, v in config["sinks"][0].items() if k != "type"}
    aws = AwsSettings(region=REGION, endpoints={"s3": moto_server.endpoint_url})
    s3_sink = TrackingS3Sink(convert(s3_section, S3SinkOptions, "sinks[0]"), PluginEnv("t", aws, tmp_path, "sinks[0]"))
    flaky = FlakySink()
    store = RecordingStore([s3_sink, flaky])
    routes = [Route("s3", s3_sink), Route("flaky", flaky)]
    for route in routes:
        route.sink.bind(route.name, None, base.metrics)
    pipeline = Pipeline("fan-out", base.source, base.chain, routes, None, store, base.settings, 0.05, base.metrics)

    task = asyncio.create_task(run(pipeline))
    # Wait on the acknowledgements themselves: an object is counted written before its segment is
    # acknowledged, and segments may finish out of order (a loaded machine widens both gaps).
    await wait_for(lambda: task.done() or contiguous(s3_sink.confirmed) >= 799, timeout=30)
    assert not task.done(), task.result()
    # S3 confirmed objects while the other sink kept failing: nothing may be checkpointed yet.
    assert s3_sink.stats.objects_written >= 2 and not flaky.confirmed
    assert store.history == []
    flaky.healthy.set()
    summary = await task

    assert flaky.failures > 0 and store.history
    for checkpoint, confirmed in store.history:
        assert checkpoint <= min(confirmed), (checkpoint, confirmed)
    assert set(summary.checkpoints.values()) == {"5999"}


# -- errors ------------------------------------------------------------------------------------------
async def test_a_missing_bucket_fails_start_up_naming_the_key(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    sink = make_sink(moto_server.endpoint_url)
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.bucket: bucket 'sink-bucket' not found"):
        await sink.start()


async def test_access_denied_stops_the_sink_and_acknowledges_nothing(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    sink = make_sink(moto_server.endpoint_url)
    faults = Faults("AccessDenied", 403, count=100)
    sink.aws.register("before-call.s3.PutObject", faults)
    tracker = PartitionTracker(P)
    with pytest.raises(SinkError, match="AccessDenied"):
        await write_all(sink, routed(records(50), 50, tracker))
    assert faults.injected == 1, "a permanent error is not retried"
    assert tracker.checkpoint_position() is None
    assert object_keys(moto_server) == []


async def test_records_that_do_not_fit_the_schema_go_to_the_dead_letter_queue(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    schema = {"type": "record", "name": "r", "fields": [{"name": "id", "type": "long"}, {"name": "ts", "type": "long"}]}
    sink = make_sink(moto_server.endpoint_url, format="avro", avro_schema=schema)
    payloads = records(100)
    payloads[3] = b'{"id": "three", "ts": 1}'
    payloads[50] = b"not json"
    tracker = PartitionTracker(P)
    await write_all(sink, routed(payloads, 40, tracker))
    dlq = sink.dead_letters
    assert isinstance(dlq, MemoryDeadLetter)
    await dlq.flush()
    assert sorted(e["position"] for e in dlq.entries) == ["3", "50"]
    assert any("Avro schema" in e["reason"] for e in dlq.entries) and any(
        "invalid JSON" in e["reason"] for e in dlq.entries
    )
    (key,) = object_keys(moto_server)
    rows = avro_rows(s3(moto_server).get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert [r["id"] for r in rows] == [i for i in range(100) if i not in (3, 50)]
    assert tracker.checkpoint_position() == 99


async def test_a_parquet_value_that_would_be_truncated_goes_to_the_dead_letter_queue(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_bucket(moto_server)
    schema = {"type": "record", "name": "r", "fields": [{"name": "id", "type": "long"}, {"name": "ts", "type": "long"}]}
    sink = make_sink(moto_server.endpoint_url, format="parquet", avro_schema=schema)
    payloads = records(60)
    payloads[7] = b'{"id": 7, "ts": 1.5}'  # pyarrow's typed conversion would have written ts=1
    tracker = PartitionTracker(P)
    await write_all(sink, routed(payloads, 20, tracker))
    dlq = sink.dead_letters
    assert isinstance(dlq, MemoryDeadLetter)
    await dlq.flush()
    (entry,) = dlq.entries
    assert entry["position"] == "7"
    assert "does not match the Parquet schema" in entry["reason"] and "'ts'" in entry["reason"], entry["reason"]
    (key,) = object_keys(moto_server)
    table = pq.read_table(io.BytesIO(body(moto_server, key)))
    assert table.column("id").to_pylist() == [i for i in range(60) if i != 7]
    assert table.column("ts").to_pylist() == [1_795_000_000_000 + i for i in range(60) if i != 7]
    assert tracker.checkpoint_position() == 59


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"partition_template": "dt={event_time}/"}, "sinks[0].partition_template"),
        ({"key_template": "{prefix}{stream}/{first_position}{extension}"}, "sinks[0].key_template"),
        ({"prefix": "/raw"}, "sinks[0].prefix"),
        ({"format": "avro"}, "sinks[0].avro_schema"),
        ({"compression": "brotli"}, "sinks[0].compression"),
        ({"part_size": "1MiB"}, "sinks[0].part_size"),
        ({"avro_schema": "missing.avsc", "format": "avro"}, "sinks[0].avro_schema"),
    ],
)
def test_configuration_mistakes_name_their_key(options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_sink("http://127.0.0.1:9", **options)  # validated before anything connects
    assert error.value.path == path, error.value


def test_the_unacknowledged_limit_fits_the_runtime_budget(moto_server: MotoServer, tmp_path: Path) -> None:
    """Derived from runtime.max_bytes_in_flight by default; a value at or above it fails at start-up,
    because fetching would stop at the runtime's budget before the sink ever cut a segment."""
    small = {"runtime": {"max_bytes_in_flight": "16MiB"}}
    sink = build(pipeline_config(moto_server, {}, **small), tmp_path).routes[0].sink
    assert isinstance(sink, S3Sink) and sink.max_unacked_bytes == 12 * MIB
    default = build(pipeline_config(moto_server, {}), tmp_path).routes[0].sink
    assert isinstance(default, S3Sink) and default.max_unacked_bytes == 48 * MIB
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.max_unacked_bytes: .* must be below runtime"):
        build(pipeline_config(moto_server, {"max_unacked_bytes": "16MiB"}, **small), tmp_path)
