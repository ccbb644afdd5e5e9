"""The Timestream sink against moto's timestream-write (over HTTP), with rejections and throttling injected.

Reading back: moto runs as a server in its own process, so ``moto.backends`` of the test process is empty.
The server's ``GET /moto-api/data.json`` serializes every tracked model instance, and moto's
``TimestreamTable.records`` holds each written record exactly as it arrived, so the test reads the
table's contents from there: no second, in-process moto, and the sink talks to the same server a local
run would. (moto keeps ``Records`` but drops ``CommonAttributes``; the checks use per-record measures,
and the hoisted attributes are checked on the request itself.)

moto never rejects a record and never throttles, so :class:`TimestreamFaults` (a ``before-call`` hook on
the sink's client) injects them: for a rejected call it writes the accepted records to moto through a
second, hook-free client and answers with the ``RejectedRecordsException`` Timestream would send
(HTTP 419, RejectedRecords with RecordIndex, Reason, ExistingVersion), which is what the service does:
the other records of the call are written.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, convert, parse_config
from streamkit.connectors.local.memory_sink import MemoryDeadLetter
from streamkit.connectors.timestream import TimestreamOptions, TimestreamSink
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Runtime
from tests.helpers import ForwardingFaults, injected_error, modelled_response, started, ticketed, wait_for

pytestmark = pytest.mark.timeout(60)

REGION = "us-east-1"
DB, TABLE = "metrics", "clicks"
FAST_RETRY = {"base_delay_s": 0.001, "max_delay_s": 0.01}
EVENT = "before-call.timestream-write.WriteRecords"
SECTION: dict[str, Any] = {
    "database": DB,
    "table": TABLE,
    "time": {"field": "ts"},
    "dimensions": ["site", {"name": "country", "field": "user.country"}],
    "measures": [{"name": "seq", "type": "BIGINT"}, {"name": "amount"}],
    "measure_name": "click",
    "retry": FAST_RETRY,
}


def create_table(moto: MotoServer) -> None:
    ts = boto3.client("timestream-write", endpoint_url=moto.endpoint_url, region_name=REGION)
    ts.create_database(DatabaseName=DB)
    ts.create_table(DatabaseName=DB, TableName=TABLE)


def stored(moto: MotoServer) -> list[dict[str, Any]]:
    """The records moto's Timestream holds for the table (from the server's model data)."""
    with urllib.request.urlopen(f"{moto.endpoint_url}/moto-api/data.json", timeout=10) as answer:
        data = json.load(answer)
    tables = [t for t in data["timestreamwrite"]["TimestreamTable"] if (t["db_name"], t["name"]) == (DB, TABLE)]
    assert len(tables) == 1
    records: list[dict[str, Any]] = tables[0]["records"]
    return records


def measure(record: dict[str, Any], name: str) -> str:
    return str(next(m["Value"] for m in record["MeasureValues"] if m["Name"] == name))


def make_sink(moto: MotoServer, **overrides: Any) -> tuple[TimestreamSink, MemoryDeadLetter]:
    aws = AwsSettings(region=REGION, endpoints={"timestream-write": moto.endpoint_url})
    options = convert({**SECTION, **overrides}, TimestreamOptions, "sinks[1]")
    sink = TimestreamSink(options, PluginEnv("test", aws, Path.cwd(), "sinks[1]"))
    dlq = MemoryDeadLetter()
    sink.bind("timestream", dlq, None)
    return sink, dlq


class TimestreamFaults(ForwardingFaults):
    """A before-call hook: rejected records and whole-call errors; everything else goes to moto."""

    def __init__(self, endpoint_url: str, reject: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        super().__init__("timestream-write", endpoint_url, REGION)
        self.reject = reject or (lambda record: None)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, params: dict[str, Any], **_: Any) -> Any:
        await self.held()
        body = json.loads(params["body"])
        self.calls.append(body)
        if self.call_errors:
            return injected_error(*self.call_errors.pop(0))
        reasons = {i: reason for i, r in enumerate(body["Records"]) if (reason := self.reject(r))}
        if not reasons:
            return None  # the real call goes to moto
        accepted = [r for i, r in enumerate(body["Records"]) if i not in reasons]
        if accepted:
            extra = {"CommonAttributes": body["CommonAttributes"]} if "CommonAttributes" in body else {}
            await self.forward.write_records(DatabaseName=DB, TableName=TABLE, Records=accepted, **extra)
        rejected: list[dict[str, Any]] = [{"RecordIndex": i, "Reason": reason} for i, reason in reasons.items()]
        for item in rejected:
            if "version" in item["Reason"]:
                item["ExistingVersion"] = 7
        error = {"Code": "RejectedRecordsException", "Message": "One or more records have been rejected."}
        return modelled_response(419, {"Error": error, "Message": error["Message"], "RejectedRecords": rejected})


def clicks(n: int) -> list[dict[str, Any]]:
    return [
        {"seq": i, "ts": 1_795_000_000_000 + i, "site": "shop", "user": {"country": "DE"}, "amount": i / 4}
        for i in range(n)
    ]


async def test_rejected_records_are_dead_lettered_and_the_rest_is_written(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_table(moto_server)

    def reject(record: dict[str, Any]) -> str | None:
        seq = int(measure(record, "seq"))
        if seq % 10 == 3:
            return "The record timestamp is outside the time range of the data ingestion window."
        if seq % 10 == 7:
            return "A record with the same dimensions, time and measure name has a different value and version."
        return None

    sink, dlq = make_sink(moto_server)
    values = clicks(150)
    values[42] = {**values[42], "amount": None}  # fails the mapping: never sent
    batch, tracker = ticketed(values)
    async with TimestreamFaults(moto_server.endpoint_url, reject) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()

    # Two requests (100 + 49 records), none retried: a rejected record would be rejected again.
    assert [len(c["Records"]) for c in faults.calls] == [100, 49]
    rejected = {i for i in range(150) if i % 10 in (3, 7)}
    written = sorted(int(measure(r, "seq")) for r in stored(moto_server))
    assert written == [i for i in range(150) if i not in rejected and i != 42]
    by_position = {int(e["position"]) - 100: e for e in dlq.entries}
    assert set(by_position) == rejected | {42}
    assert by_position[3]["reason"].startswith("Timestream rejected the record: The record timestamp is outside")
    assert by_position[7]["reason"].endswith("different value and version. (existing version 7)")
    assert by_position[42]["reason"] == "measure 'amount': field 'amount' is missing"
    assert by_position[42]["attempts"] == 0 and by_position[3]["attempts"] == 1
    assert tracker.checkpoint_position() == 249  # written or dead-lettered: all finished


async def test_requests_hold_at_most_100_records_and_hoist_shared_attributes(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_table(moto_server)
    sink, _ = make_sink(moto_server, max_records=1000)
    batch, tracker = ticketed(clicks(250))
    async with TimestreamFaults(moto_server.endpoint_url) as faults:
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert [len(c["Records"]) for c in faults.calls] == [100, 100, 50]
    for call in faults.calls:
        assert call["CommonAttributes"] == {
            "MeasureName": "click",
            "MeasureValueType": "MULTI",
            "TimeUnit": "MILLISECONDS",
            "Dimensions": [{"Name": "site", "Value": "shop"}, {"Name": "country", "Value": "DE"}],
        }
        assert all(set(r) == {"Time", "MeasureValues"} for r in call["Records"])
    assert len(stored(moto_server)) == 250
    assert tracker.checkpoint_position() == 349


async def test_throttling_and_internal_errors_are_retried(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    create_table(moto_server)
    sink, dlq = make_sink(moto_server)
    batch, tracker = ticketed(clicks(30))
    async with TimestreamFaults(moto_server.endpoint_url) as faults:
        faults.call_errors = [
            (400, "ThrottlingException"),
            (400, "ThrottlingException"),
            (500, "InternalServerException"),
        ]
        sink.aws.register(EVENT, faults)
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert len(faults.calls) == 4 and sink.retries == 3
    assert sorted(int(measure(r, "seq")) for r in stored(moto_server)) == list(range(30))
    assert dlq.written == 0 and tracker.checkpoint_position() == 129


async def test_exhausted_retries_and_whole_call_errors_stop_without_acknowledging(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_table(moto_server)
    for errors, match in (
        (
            [(400, "ThrottlingException")] * 3,
            "still ThrottlingException: injected ThrottlingException after 3 attempts",
        ),
        ([(400, "ValidationException")], "ValidationException"),
        ([(403, "AccessDeniedException")], "AccessDeniedException"),
    ):
        sink, dlq = make_sink(moto_server, retry={**FAST_RETRY, "max_attempts": 3})
        batch, tracker = ticketed(clicks(5))
        async with TimestreamFaults(moto_server.endpoint_url) as faults:
            faults.call_errors = list(errors)
            sink.aws.register(EVENT, faults)
            async with started(sink):
                await sink.submit(batch)
                with pytest.raises(SinkError, match=match):
                    await sink.flush()
        assert dlq.written == 0 and tracker.checkpoint_position() is None
    assert stored(moto_server) == []


async def test_a_missing_table_fails_start_naming_the_key_and_the_endpoint(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    sink, _ = make_sink(moto_server)
    with pytest.raises(ConfigError) as info:
        await sink.start()
    assert info.value.path == "sinks[1].table"
    assert f"Timestream table {DB}.{TABLE} at {moto_server.endpoint_url} not found" in info.value.message


async def test_pipeline_writes_mapped_records_and_checkpoints_after_acknowledgement(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    create_table(moto_server)
    config = {
        "source": {"type": "generator", "count": 400, "partitions": 2, "batch_size": 40, "record_bytes": 200},
        "processors": [{"type": "json.decode"}, {"type": "timestamp", "field": "ts", "unit": "ms"}],
        "sinks": [
            {
                "type": "timestream",
                "name": "ts",
                "database": DB,
                "table": TABLE,
                "dimensions": ["event", {"name": "country", "field": "user.country"}, "id"],
                "measures": [
                    {"name": "seq", "type": "BIGINT"},
                    {"name": "amount", "type": "DOUBLE"},
                    {"name": "status", "type": "VARCHAR"},
                ],
                "measure_name": "click",
                "version": "position",
                "max_age_s": 0.05,
                "retry": FAST_RETRY,
            }
        ],
        "dead_letter": {"type": "memory"},
        "checkpoint": {"type": "memory", "interval_s": 0.05},
        "aws": {"region": REGION, "endpoints": {"timestream-write": moto_server.endpoint_url}},
        "runtime": {"gc_tuning": False},
    }
    pipeline = build_pipeline(parse_config(config))
    sink = pipeline.routes[0].sink
    assert isinstance(sink, TimestreamSink)
    # The mapping's fields are decoded in the fused pass and the sink maps those views, never whole records.
    assert pipeline.chain.steps[-1].sink_fields == ["event", "user.country", "id", "seq", "amount", "status"]
    async with TimestreamFaults(moto_server.endpoint_url) as faults:
        faults.gate = asyncio.Event()
        faults.call_errors = [(400, "ThrottlingException")]
        sink.aws.register(EVENT, faults)
        task = asyncio.create_task(Runtime(pipeline).run(asyncio.Event()))
        await wait_for(lambda: sink.requests > 0)
        await asyncio.sleep(0.3)  # several checkpoint intervals while Timestream holds every write
        assert pipeline.store.saved == {}  # type: ignore[attr-defined]
        faults.gate.set()
        summary = await task
    assert set(summary.checkpoints.values()) == {"399"}
    records = stored(moto_server)
    assert len(records) == 800
    ids = {next(d["Value"] for d in r["Dimensions"] if d["Name"] == "id") for r in records}
    assert len(ids) == 800  # every record once: per-record dimensions are never hoisted away
    # Version = position + 1 (generator positions are record indexes), time = the event time in ms.
    assert all(int(r["Version"]) == int(measure(r, "seq")) + 1 for r in records)
    assert all(int(r["Time"]) >= 1_795_000_000_000 for r in records)
    assert pipeline.dead_letters is not None and pipeline.dead_letters.written == 0
