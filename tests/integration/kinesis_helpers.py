"""Helpers for Kinesis tests: create streams and write records with boto3 against the local stand-ins, a
pipeline config with fast lease timings, and a sink that logs every record in write order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import boto3
import orjson

from streamkit.batch import RecordBatch
from streamkit.connectors.local.memory_sink import MemorySink, MemorySinkOptions
from streamkit.runtime import Pipeline
from streamkit.sink import Rejection

# Lease timings short enough for tests: a dead worker's shards are taken within seconds, new shards are
# found within half a second.
FAST_LEASES: dict[str, Any] = {
    "failover_time_s": 3,
    "taker_interval_s": 0.5,
    "idle_poll_s": 0.1,
    "shard_sync_interval_s": 0.5,
}


def kinesis_client(endpoint: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


def create_stream(endpoint: str, name: str, shards: int) -> Any:
    client = kinesis_client(endpoint)
    client.create_stream(StreamName=name, ShardCount=shards)
    wait_active(client, name)
    return client


def wait_active(client: Any, stream: str, timeout: float = 30.0) -> None:
    """Wait until the stream is ACTIVE again (after a create, split or merge)."""
    deadline = time.monotonic() + timeout
    while client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream} not ACTIVE after {timeout} s")
        time.sleep(0.02)


def kinesis_pipeline(
    name: str, stream: str, table: str, *, kinesis: str, dynamodb: str, checkpoint_s: float = 0.2, **source: Any
) -> dict[str, Any]:
    """A pipeline config: the Kinesis source (FAST_LEASES, then ``source``) into a memory sink ``out``."""
    return {
        "name": name,
        "source": {"type": "kinesis", "stream": stream, "lease_table": table, **FAST_LEASES, **source},
        "sinks": [{"type": "memory", "name": "out", "max_age_s": 0.05}],
        "checkpoint": {"interval_s": checkpoint_s},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 5},
    }


class OrderLog(MemorySink):
    """A memory sink that also appends every record it writes, with its shard, to one log in write order."""

    log: ClassVar[list[tuple[float, str, dict[str, Any]]]] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        now = time.monotonic()
        for batch in batches:
            OrderLog.log.extend((now, batch.partition.key, orjson.loads(p)) for p in batch.payloads)
        return await super().write(batches)


def log_in_order(built: Pipeline, max_records: int) -> OrderLog:
    """Replace the pipeline's sink ``out`` with an OrderLog (``OrderLog.log`` is shared by all of them: a
    test empties it where its count starts)."""
    order_log = OrderLog(MemorySinkOptions(max_age_s=0.05, max_records=max_records))
    order_log.bind("out", built.dead_letters, built.metrics)
    built.routes[0].sink = order_log
    return order_log


def put_json(client: Any, stream: str, records: list[dict[str, Any]], key: str = "id") -> None:
    """PutRecords in requests of 500, retrying failed entries (the emulator may throttle)."""
    for start in range(0, len(records), 500):
        entries = [{"Data": orjson.dumps(r), "PartitionKey": str(r[key])} for r in records[start : start + 500]]
        while entries:
            response = client.put_records(StreamName=stream, Records=entries)
            entries = [e for e, r in zip(entries, response["Records"], strict=True) if "ErrorCode" in r]
            if entries:
                time.sleep(0.1)
