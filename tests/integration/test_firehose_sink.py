"""The Firehose sink against moto's Firehose (over HTTP), with faults injected at the SDK boundary.

moto never fails a record (FailedPutCount is always 0) and never throttles, so the failures are injected
by :class:`FirehoseFaults`, a ``before-call`` hook on the sink's own aiobotocore client. For a call it
decides to fail partly, it forwards the *other* records to moto through a second, hook-free client and
answers with the response Firehose would give: HTTP 200, FailedPutCount, and RequestResponses aligned
with the request (RecordId for the forwarded records, ErrorCode/ErrorMessage for the failed ones). Calls
it leaves alone go to moto unchanged. So every record that ends up "delivered" really went through moto's
Firehose, which writes one S3 object per PutRecordBatch: reading the bucket back shows what a consumer
of the stream would see, and proves each record arrived exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import orjson
import pytest

from streamkit.acks import PartitionTracker
from streamkit.batch import RecordBatch
from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, convert, parse_config
from streamkit.connectors.firehose import FirehoseOptions, FirehoseSink
from streamkit.connectors.local.memory_sink import MemoryDeadLetter
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Runtime
from tests.helpers import ForwardingFaults, P, injected_error, modelled_response, started, ticketed, wait_for

pytestmark = pytest.mark.timeout(60)

REGION = "us-east-1"
STREAM = "events"
BUCKET = "firehose-out"
FAST_RETRY = {"base_delay_s": 0.001, "max_delay_s": 0.01}
EVENT = "before-call.firehose.PutRecordBatch"


def create_stream(moto: MotoServer) -> None:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    firehose = boto3.client("firehose", endpoint_url=moto.endpoint_url, region_name=REGION)
    firehose.create_delivery_stream(
        DeliveryStreamName=STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
        },
    )


def delivered(moto: MotoServer) -> list[bytes]:
    """Every record in the destination bucket (newline-delimited), in no particular order."""
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION)
    lines: list[bytes] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            assert body.endswith(b"\n"), "every record carries its delimiter"
            lines.extend(body[:-1].split(b"\n"))
    return lines


def make_sink(moto: MotoServer, **options: Any) -> tuple[FirehoseSink, MemoryDeadLetter]:
    section = {"stream": STREAM, "retry": FAST_RETRY, **options}
    aws = AwsSettings(region=REGION, endpoints={"firehose": moto.endpoint_url})
    sink = FirehoseSink(convert(section, FirehoseOptions, "sinks[0]"), PluginEnv("test", aws, Path.cwd(), "sinks[0]"))
    dlq = MemoryDeadLetter()
    sink.bind("firehose", dlq, None)
    return sink, dlq


class FirehoseFaults(ForwardingFaults):
    """A before-call hook: per-record failures and whole-call errors, everything else goes to moto."""

    def __init__(self, endpoint_url: str, plan: Callable[[int, bytes], str | None] | None = None) -> None:
        super().__init__("firehose", endpoint_url, REGION)
        self.plan = plan or (lambda index, data: None)
        self.call_fault: Callable[[list[bytes]], tuple[int, str] | None] = lambda records: None
        self.calls: list[list[bytes]] = []

    async def __call__(self, params: dict[str, Any], **_: Any) -> Any:
        await self.held()
        body = json.loads(params["body"])
        records = [base64.b64decode(r["Data"]) for r in body["Records"]]
        self.calls.append(records)
        fault = self.call_errors.pop(0) if self.call_errors else self.call_fault(records)
        if fault is not None:
            return injected_error(*fault)
        failures = {i: error for i, data in enumerate(records) if (error := self.plan(i, data))}
        if not failures:
            return None  # the real call goes to moto
        good = [data for i, data in enumerate(records) if i not in failures]
        ids: list[dict[str, Any]] = []
        if good:
            answer = await self.forward.put_record_batch(
                DeliveryStreamName=body["DeliveryStreamName"], Records=[{"Data": d} for d in good]
            )
            ids = answer["RequestResponses"]
        forwarded = iter(ids)
        results = [
            {"ErrorCode": failures[i], "ErrorMessage": f"injected {failures[i]}"} if i in failures else next(forwarded)
            for i in range(len(records))
        ]
        return modelled_response(
            200, {"FailedPutCount": len(failures), "Encrypted": False, "RequestResponses": results}
        )


def events(n: int, pad: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "pad": "x" * pad} for i in range(n)]


async def test_only_failed_entries_are_resent_and_every_record_arrives_once(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    failed_once: set[bytes] = set()

    def every_third_fails_once(index: int, data: bytes) -> str | None:
        if index % 3 == 0 and data not in failed_once:
            failed_once.add(data)
            return "ServiceUnavailableException"
        return None

    sink, dlq = make_sink(moto_server, max_records=2000)
    batch, tracker = ticketed(events(1000))
    async with FirehoseFaults(moto_server.endpoint_url, every_third_fails_once) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()

    # Two chunks of 500; each first attempt failed every 3rd entry; each retry carried exactly those.
    assert [len(c) for c in faults.calls] == [500, 167, 500, 167]
    assert set(faults.calls[1]) == {faults.calls[0][i] for i in range(0, 500, 3)}
    assert set(faults.calls[3]) == {faults.calls[2][i] for i in range(0, 500, 3)}
    assert sink.records_resent == 334
    lines = delivered(moto_server)
    assert len(lines) == 1000
    assert sorted(orjson.loads(x)["id"] for x in lines) == list(range(1000))
    assert dlq.written == 0
    assert tracker.checkpoint_position() == 1099  # every record acknowledged


async def test_permanent_per_record_errors_are_dead_lettered_not_resent(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    bad = {orjson.dumps({"id": 7, "pad": ""}), orjson.dumps({"id": 8, "pad": ""})}

    def plan(index: int, data: bytes) -> str | None:
        return "InvalidArgumentException" if data.rstrip(b"\n") in bad else None

    sink, dlq = make_sink(moto_server)
    batch, tracker = ticketed(events(20))
    async with FirehoseFaults(moto_server.endpoint_url, plan) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()
    assert len(faults.calls) == 1  # nothing resent
    assert sorted(orjson.loads(x)["id"] for x in delivered(moto_server)) == [i for i in range(20) if i not in (7, 8)]
    assert sorted(e["position"] for e in dlq.entries) == ["107", "108"]
    assert {e["reason"] for e in dlq.entries} == {
        "Firehose InvalidArgumentException: injected InvalidArgumentException"
    }
    assert tracker.checkpoint_position() == 119


async def test_a_request_refused_as_a_whole_is_halved_until_the_bad_record_is_alone(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    poison = orjson.dumps({"id": 5, "pad": ""}) + b"\n"
    sink, dlq = make_sink(moto_server)
    batch, tracker = ticketed(events(8))
    async with FirehoseFaults(moto_server.endpoint_url) as faults:
        faults.call_fault = lambda records: (400, "InvalidArgumentException") if poison in records else None
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()
    assert [len(c) for c in faults.calls] == [8, 4, 4, 2, 1, 1, 2]  # depth-first halving
    assert sorted(orjson.loads(x)["id"] for x in delivered(moto_server)) == [0, 1, 2, 3, 4, 6, 7]
    [entry] = dlq.entries
    assert entry["position"] == "105"
    assert entry["reason"] == "Firehose InvalidArgumentException: injected InvalidArgumentException"
    assert tracker.checkpoint_position() == 107


async def test_a_request_whose_every_record_is_refused_stops_instead_of_dead_lettering_all(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    sink, dlq = make_sink(moto_server)
    batch, tracker = ticketed(events(4))
    async with FirehoseFaults(moto_server.endpoint_url) as faults:
        faults.call_fault = lambda records: (400, "InvalidArgumentException")
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            with pytest.raises(SinkError, match="refused each of 4 records"):
                await sink.flush()
    await dlq.flush()
    assert dlq.written == 0 and tracker.checkpoint_position() is None


async def test_oversized_record_is_dead_lettered_before_sending(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    fits = b"a" * 1_023_999  # + newline = 1,024,000: exactly the limit
    too_big = b"b" * 1_024_000  # + newline = 1,024,001
    batch = RecordBatch(P, payloads=[b'{"id":0}', fits, too_big, b'{"id":3}'])
    tracker = PartitionTracker(P)
    batch.ticket = tracker.open([10, 11, 12, 13], batch.total_bytes())
    sink, dlq = make_sink(moto_server)
    async with FirehoseFaults(moto_server.endpoint_url) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()
    assert all(too_big not in call for call in faults.calls)
    assert sorted(delivered(moto_server), key=len) == [b'{"id":0}', b'{"id":3}', fits]
    [entry] = dlq.entries
    assert entry["position"] == "12"
    assert "1,024,001 bytes" in entry["reason"] and "1,024,000" in entry["reason"]
    assert entry["attempts"] == 0
    assert tracker.checkpoint_position() == 13


async def test_requests_stay_within_500_records_and_4_mib(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_stream(moto_server)
    # 600 records of ~8.7 KB: 5 MiB in one buffer, which must go out as at least two requests.
    sink, _ = make_sink(moto_server, max_records=1000, max_bytes="16MiB")
    batch, tracker = ticketed(events(600, pad=8720))
    assert 5 * 1024**2 <= batch.total_bytes() + 600 < 5.1 * 1024**2
    async with FirehoseFaults(moto_server.endpoint_url) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert len(faults.calls) >= 2
    for call in faults.calls:
        assert len(call) <= 500
        assert sum(map(len, call)) <= 4 * 1024**2
    assert sum(map(len, faults.calls)) == 600
    assert len(delivered(moto_server)) == 600
    assert tracker.checkpoint_position() == 699


async def test_whole_call_throttling_is_retried(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_stream(moto_server)
    sink, dlq = make_sink(moto_server)
    batch, tracker = ticketed(events(50))
    async with FirehoseFaults(moto_server.endpoint_url) as faults:
        faults.call_errors = [(503, "ServiceUnavailableException"), (400, "LimitExceededException")]
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert [len(c) for c in faults.calls] == [50, 50, 50]
    assert len(delivered(moto_server)) == 50
    assert tracker.checkpoint_position() == 149 and dlq.written == 0


async def test_exhausted_retries_stop_the_sink_without_acknowledging(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    sink, dlq = make_sink(moto_server, retry={**FAST_RETRY, "max_attempts": 3})
    batch, tracker = ticketed(events(10))
    async with FirehoseFaults(moto_server.endpoint_url, lambda i, d: "InternalFailure" if i == 0 else None) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            with pytest.raises(SinkError, match="still failing after 3 attempts"):
                await sink.flush()
    assert [len(c) for c in faults.calls] == [10, 1, 1]
    assert tracker.checkpoint_position() is None  # the 9 delivered records wait for the failed one
    assert dlq.written == 0


async def test_missing_stream_fails_start_and_a_deleted_stream_stops_the_sink(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    sink, _ = make_sink(moto_server)
    with pytest.raises(ConfigError) as info:
        await sink.start()
    assert info.value.path == "sinks[0].stream"
    assert "'events' not found" in str(info.value) and moto_server.endpoint_url in str(info.value)

    create_stream(moto_server)
    sink, dlq = make_sink(moto_server)
    async with started(sink):
        firehose = boto3.client("firehose", endpoint_url=moto_server.endpoint_url, region_name=REGION)
        firehose.delete_delivery_stream(DeliveryStreamName=STREAM)
        batch, tracker = ticketed(events(5))
        await sink.submit(batch)
        with pytest.raises(SinkError, match="ResourceNotFoundException"):
            await sink.flush()
    assert dlq.written == 0 and tracker.checkpoint_position() is None


async def test_record_ids_name_the_origin_and_split_records_get_a_suffix(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    sink, _ = make_sink(moto_server, record_id_field="_sk_id")
    batch, _tracker = ticketed(events(3))
    decoded = batch.with_values([orjson.loads(p) for p in batch.payloads], keep_payloads=True)
    # Record 1 split in two (as a per-record function returning a list would), record 2 kept as is.
    split = RecordBatch.expand(decoded, [{"id": 0}, {"id": "1a"}, {"id": "1b"}, [2]], np.array([0, 1, 1, 2]))
    assert split.ticket is not None
    split.ticket.hold(split.origin, unique=False)  # what the runtime does when it routes the batch
    split.ticket.release_processing()
    async with started(sink):
        await sink.submit(split)
        await sink.flush()
    assert _tracker.checkpoint_position() == 102
    got = sorted(delivered(moto_server))
    assert got == sorted(
        [
            b'{"id":0,"_sk_id":"test:stream/0/100"}',
            b'{"id":"1a","_sk_id":"test:stream/0/101#0"}',
            b'{"id":"1b","_sk_id":"test:stream/0/101#1"}',
            b"[2]",  # not an object: sent unchanged
        ]
    )


async def test_pipeline_checkpoints_only_what_firehose_confirmed(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_stream(moto_server)
    config = {
        "source": {"type": "generator", "count": 300, "partitions": 2, "batch_size": 50, "record_bytes": 200},
        "processors": [{"type": "json.decode"}],
        "sinks": [
            {
                "type": "firehose",
                "name": "fh",
                "stream": STREAM,
                "record_id_field": "_sk_id",
                "max_age_s": 0.05,
                "retry": FAST_RETRY,
            }
        ],
        "dead_letter": {"type": "memory"},
        "checkpoint": {"type": "memory", "interval_s": 0.05},
        "aws": {"region": REGION, "endpoints": {"firehose": moto_server.endpoint_url}},
        "runtime": {"gc_tuning": False},
    }
    pipeline = build_pipeline(parse_config(config))
    sink = pipeline.routes[0].sink
    assert isinstance(sink, FirehoseSink)
    failed_once: set[bytes] = set()

    def plan(index: int, data: bytes) -> str | None:
        if index % 4 == 1 and data not in failed_once:
            failed_once.add(data)
            return "ServiceUnavailableException"
        return None

    async with FirehoseFaults(moto_server.endpoint_url, plan) as faults:
        faults.gate = asyncio.Event()
        sink.aws.register(EVENT, faults)
        task = asyncio.create_task(Runtime(pipeline).run(asyncio.Event()))
        await wait_for(lambda: sink.requests > 0)
        await asyncio.sleep(0.3)  # several checkpoint intervals with every write held at the service
        assert pipeline.store.saved == {}  # type: ignore[attr-defined]
        faults.gate.set()
        summary = await task
    assert set(summary.checkpoints.values()) == {"299"}
    records = [orjson.loads(x) for x in delivered(moto_server)]
    assert len(records) == 600
    assert len({r["_sk_id"] for r in records}) == 600
    assert {r["_sk_id"].rsplit("/", 1)[0] for r in records} == {"generator:generator/0", "generator:generator/1"}
    assert sink.records_resent > 0
