"""The S3 dead-letter queue against moto: entries readable with standard tools, replays not duplicated."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import boto3
import duckdb
import orjson
import pytest
from botocore.awsrequest import AWSResponse

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, convert, parse_config
from streamkit.connectors.s3.dead_letter import S3DeadLetter, S3DeadLetterOptions
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Failure
from streamkit.runtime import Runtime
from tests.helpers import modelled_response

pytestmark = pytest.mark.timeout(60)

REGION = "us-east-1"
BUCKET = "dead-letters"
FAST_RETRY = {"max_attempts": 20, "base_delay_s": 0.001, "max_delay_s": 0.02}


def s3(moto: MotoServer) -> Any:
    return boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION)


def keys(moto: MotoServer, prefix: str) -> list[str]:
    listed = s3(moto).list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def make_dlq(moto: MotoServer, **options: Any) -> S3DeadLetter:
    section = {"bucket": BUCKET, "retry": FAST_RETRY, **options}
    aws = AwsSettings(region=REGION, endpoints={"s3": moto.endpoint_url})
    dlq = S3DeadLetter(
        convert(section, S3DeadLetterOptions, "dead_letter"), PluginEnv("p", aws, Path.cwd(), "dead_letter")
    )
    dlq.pipeline = "orders-pipeline"
    return dlq


def failure(tracker: PartitionTracker, payloads: list[bytes], reason: str = "invalid JSON") -> Failure:
    batch = RecordBatch(tracker.partition, payloads=payloads)
    batch.ticket = tracker.open([f"4959{i:052d}" for i in range(len(payloads))], batch.total_bytes())
    batch.ticket.hold(batch.origin)  # owed to the dead-letter queue
    batch.ticket.release_processing()
    return Failure(batch, reason, "json.decode")


def query(sql: str) -> list[tuple[Any, ...]]:
    relation = duckdb.sql(sql)
    assert relation is not None
    return relation.fetchall()


async def test_dead_letters_are_ndjson_gzip_that_duckdb_and_json_read(
    moto_server: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    s3(moto_server).create_bucket(Bucket=BUCKET)
    config = {
        "name": "clicks",
        "source": {"type": "generator", "count": 1000, "partitions": 2, "batch_size": 200, "invalid_ratio": 0.1},
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "s3", "bucket": BUCKET, "prefix": "data/", "window_s": 0, "partition_template": ""}],
        "dead_letter": {"type": "s3", "bucket": BUCKET, "prefix": "dlq/", "max_age_s": 0.1, "retry": FAST_RETRY},
        "aws": {"region": REGION, "endpoints": {"s3": moto_server.endpoint_url}},
    }
    pipeline = build_pipeline(parse_config(config, base_dir=tmp_path))
    async with asyncio.timeout(30):
        summary = await Runtime(pipeline).run(asyncio.Event())
    assert summary.dead_lettered > 50
    assert set(summary.checkpoints.values()) == {"999"}

    day = dt.datetime.now(dt.UTC).date().isoformat()
    dead = keys(moto_server, "dlq/")
    assert dead and all(k.startswith(f"dlq/dt={day}/clicks-") and k.endswith(".ndjson.gz") for k in dead)
    local = tmp_path / "dlq"
    local.mkdir()
    entries: list[dict[str, Any]] = []
    for number, key in enumerate(dead):
        data = s3(moto_server).get_object(Bucket=BUCKET, Key=key)["Body"].read()
        (local / f"{number}.ndjson.gz").write_bytes(data)
        entries.extend(json.loads(line) for line in gzip.decompress(data).splitlines())  # what `zcat | jq` sees

    ((count,),) = query(f"select count(*) from read_json_auto('{local}/*.ndjson.gz')")
    assert count == len(entries) == summary.dead_lettered
    stages = query(f"select distinct stage, source from read_json_auto('{local}/*.ndjson.gz')")
    assert stages == [("json.decode", "generator:generator")]
    for entry in entries:
        assert entry["pipeline"] == "clicks" and "JSON" in entry["reason"] and entry["attempts"] == 1
        assert entry["payload_text"].startswith('{"id": "' + f"{entry['partition']}-{entry['position']}")
    written = sum(
        len(gzip.decompress(s3(moto_server).get_object(Bucket=BUCKET, Key=k)["Body"].read()).splitlines())
        for k in keys(moto_server, "data/")
    )
    assert written + len(entries) == 2000, "every record is in the data or in the dead letters"


async def test_a_replayed_dead_letter_write_is_not_duplicated(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    s3(moto_server).create_bucket(Bucket=BUCKET)
    payloads = [b'{"id": 1, oops', b"\xff\xfe binary"]
    first_tracker = PartitionTracker(Partition("kinesis:orders", "shardId-000000000002"))
    first = make_dlq(moto_server, compression="none")
    await first.start()
    await first.submit(failure(first_tracker, payloads))
    await first.flush()
    await first.close()
    (key,) = keys(moto_server, "dead-letter/")
    assert key.endswith("-2.ndjson")
    lines = [
        orjson.loads(line) for line in s3(moto_server).get_object(Bucket=BUCKET, Key=key)["Body"].read().splitlines()
    ]
    assert [e["payload_text"] for e in lines] == ['{"id": 1, oops', None]  # not UTF-8: base64 only
    assert lines[1]["payload_base64"] == "//4gYmluYXJ5"
    assert first_tracker.checkpoint_position() == "4959" + "1".zfill(52)

    # The same records dead-lettered again after a restart: same key, 412, counted as written.
    tracker = PartitionTracker(first_tracker.partition)
    replay = make_dlq(moto_server, compression="none")
    throttle = SlowDownTwice()
    replay.aws.register("before-call.s3.PutObject", throttle)
    await replay.start()
    await replay.submit(failure(tracker, payloads))
    await replay.flush()
    await replay.close()
    assert (replay.objects_written, replay.objects_existing, replay.requests.throttled) == (0, 1, 2)
    assert keys(moto_server, "dead-letter/") == [key]
    assert tracker.checkpoint_position() == "4959" + "1".zfill(52)


class SlowDownTwice:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        self.calls += 1
        if self.calls > 2:
            return None
        return modelled_response(503, {"Error": {"Code": "SlowDown"}})


async def test_sse_kms_parameters_and_a_missing_bucket(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    missing = make_dlq(moto_server)
    with pytest.raises(ConfigError, match=r"dead_letter\.bucket: bucket 'dead-letters' not found"):
        await missing.start()

    s3(moto_server).create_bucket(Bucket=BUCKET)
    dlq = make_dlq(moto_server, sse={"kms_key_id": "alias/streamkit-dlq"})
    seen: list[dict[str, Any]] = []
    dlq.aws.register("before-parameter-build.s3.PutObject", lambda params, **_: seen.append(dict(params)))
    await dlq.start()
    await dlq.submit(failure(PartitionTracker(Partition("kafka:clicks", "3")), [b"x"]))
    await dlq.flush()
    await dlq.close()
    assert [(p["ServerSideEncryption"], p["SSEKMSKeyId"], p["IfNoneMatch"]) for p in seen] == [
        ("aws:kms", "alias/streamkit-dlq", "*")
    ]
    (key,) = keys(moto_server, "dead-letter/")
    assert s3(moto_server).head_object(Bucket=BUCKET, Key=key)["SSEKMSKeyId"] == "alias/streamkit-dlq"
