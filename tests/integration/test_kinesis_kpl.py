"""KPL aggregation end to end: records aggregated by the PyPI package aws-kinesis-agg, put into kinesalite,
read by the kinesis source; checkpoints with sub-sequence precision in the lease table."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import boto3
import orjson
import pytest
from aws_kinesis_agg.aggregator import AggRecord, RecordAggregator

from streamkit.batch import Partition, RecordBatch
from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.runtime import Pipeline, Runtime
from streamkit.sink import Sink
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream

TABLE = "kpl-leases"


def pipeline(kinesis: str, dynamodb: str, stream: str, **runtime: Any) -> Pipeline:
    config = {
        "name": "kpl",
        "source": {
            "type": "kinesis",
            "stream": stream,
            "lease_table": TABLE,
            "failover_time_s": 3,
            "taker_interval_s": 0.5,
            "idle_poll_s": 0.1,
        },
        "sinks": [{"type": "memory", "name": "out", "max_age_s": 0.05}],
        "checkpoint": {"interval_s": 0.1},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 5, **runtime},
    }
    return build_pipeline(parse_config(config))


def hash_of(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def put_aggregate(client: Any, stream: str, aggregate: AggRecord) -> str:
    partition_key, explicit_hash_key, data = aggregate.get_contents()
    entry: dict[str, Any] = {"StreamName": stream, "PartitionKey": partition_key, "Data": data}
    if explicit_hash_key:
        entry["ExplicitHashKey"] = explicit_hash_key
    return str(client.put_record(**entry)["ShardId"])


def aggregate(users: Sequence[tuple[str, bytes, str | None]]) -> AggRecord:
    aggregator = RecordAggregator()
    for key, data, explicit_hash_key in users:
        assert aggregator.add_user_record(key, data, explicit_hash_key) is None, "one aggregate per call here"
    record = aggregator.clear_and_get()
    assert record is not None
    return record


def lease_items(dynamodb: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    try:
        items = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    except client.exceptions.ResourceNotFoundException:
        return {}
    return {i["leaseKey"]["S"]: i for i in items}


def written(name: str = "out") -> int:
    memory = MemorySink.instances.get(name)
    return memory.written_records if memory is not None else 0


async def run_until(built: Pipeline, done: Any, timeout: float = 30) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(built).run(stop))
    try:
        # Fails fast (with the pipeline's own error) if the pipeline stops by itself.
        await wait_for(lambda: task.done() or done(), timeout=timeout)
        if task.done():
            await task
            pytest.fail("the pipeline stopped by itself")
    finally:
        stop.set()
    async with asyncio.timeout(20):
        return await task


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_aggregated_records_come_out_as_the_original_user_records_in_order(
    kinesalite: Any, moto_server: Any
) -> None:
    """Two shards. User records are aggregated per destination shard (as the KPL does), 40 keys, with plain
    records in between; one aggregate also carries a user record whose explicit hash key belongs to the
    other shard, which the reader must drop (after a reshard it is a duplicate the KPL re-sent)."""
    client = create_stream(kinesalite.endpoint_url, "agg", shards=2)
    shards = client.list_shards(StreamName="agg")["Shards"]
    ranges: dict[str, tuple[int, int]] = {
        s["ShardId"]: (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
        for s in shards
    }

    def shard_of(hash_key: int) -> str:
        return next(shard for shard, (lo, hi) in ranges.items() if lo <= hash_key <= hi)

    expected: dict[str, list[dict[str, Any]]] = {shard: [] for shard in ranges}
    counter = 0
    for round_ in range(6):
        by_shard: dict[str, list[tuple[str, bytes, str | None]]] = {shard: [] for shard in ranges}
        for k in range(40):
            key = f"user-{k}"
            value = {"key": key, "n": counter}
            counter += 1
            by_shard[shard_of(hash_of(key))].append((key, orjson.dumps(value), None))
            expected[shard_of(hash_of(key))].append(value)
        for shard, users in by_shard.items():
            assert put_aggregate(client, "agg", aggregate(users)) == shard
            # A plain record between aggregates, keyed to the same shard.
            plain_key = users[0][0]
            plain = {"key": plain_key, "n": counter, "plain": True}
            counter += 1
            put = client.put_record(StreamName="agg", PartitionKey=plain_key, Data=orjson.dumps(plain))
            assert put["ShardId"] == shard
            expected[shard].append(plain)
        if round_ == 3:
            # An aggregate routed to the first shard holding a record whose explicit hash key is the other's.
            first, second = sorted(ranges)
            stray_hash = str(ranges[second][0] + 7)
            kept_key = next(f"user-{k}" for k in range(40) if shard_of(hash_of(f"user-{k}")) == first)
            kept = {"key": kept_key, "n": counter}
            stray = {"key": "stray", "n": counter + 1}
            counter += 2
            record = aggregate([(kept_key, orjson.dumps(kept), None), ("stray", orjson.dumps(stray), stray_hash)])
            assert put_aggregate(client, "agg", record) == first
            expected[first].append(kept)
    total = sum(len(v) for v in expected.values())

    built = pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "agg")
    first, second = sorted(ranges)
    source = built.source
    assert isinstance(source, KinesisSource)

    lone_sent: list[bool] = []

    def caught_up_then_all_dropped() -> bool:
        # Once everything is read, an aggregate whose only user record belongs to the other shard arrives
        # alone in a response: every user record of that response is dropped, and reading goes on.
        if written() < total:
            return False
        if source.read_counts["kpl_dropped"] == 1 and not lone_sent:
            lone_sent.append(True)
            stray = {"key": "stray-alone", "n": -1}
            lone = aggregate([("stray-alone", orjson.dumps(stray), str(ranges[second][0] + 11))])
            _, _, data = lone.get_contents()
            client.put_record(StreamName="agg", PartitionKey="x", ExplicitHashKey=str(ranges[first][0]), Data=data)
        return source.read_counts["kpl_dropped"] == 2

    summary = await run_until(built, caught_up_then_all_dropped)
    assert summary.drained
    memory = MemorySink.instances.get("out")
    assert memory is not None
    for shard, values in expected.items():
        got = memory.records[Partition(source.name, shard)]
        assert [orjson.loads(payload) for _, payload in got] == values, f"{shard}: the user records, in order"
        positions = [(int(p.sequence), p.sub_sequence) for p, _ in got]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert any(sub > 0 for _, sub in positions), "user records of an aggregate carry their sub-sequence"
    assert source.read_counts["kpl_dropped"] == 2
    assert memory.written_records == total


class PartialSink(Sink):
    """Acknowledges the first ``limit`` records it is given and never the rest (a write that hangs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.acknowledged: list[tuple[Any, bytes]] = []

    async def submit(self, batch: RecordBatch) -> None:
        room = self.limit - len(self.acknowledged)
        if room <= 0:
            return
        part = batch.slice(0, min(room, len(batch)))
        self.acknowledged.extend((part.position(i), part.payloads[i]) for i in range(len(part)))
        self.acknowledge(part)

    async def flush(self) -> None:
        return None


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_a_stop_in_the_middle_of_an_aggregate_resumes_at_the_next_user_record(
    kinesalite: Any, moto_server: Any
) -> None:
    """Four aggregates of 50 user records on one shard. The first run's sink acknowledges only the first 75
    user records (the middle of the second aggregate), so the lease table checkpoint is that aggregate's
    sequence number with checkpointSubSequenceNumber 24. The next run starts at user record 75: nothing is
    lost, and with sub-sequence precision nothing is read twice either."""
    client = create_stream(kinesalite.endpoint_url, "agg1", shards=1)
    values = [{"n": i} for i in range(200)]
    for first in range(0, 200, 50):
        put_aggregate(
            client, "agg1", aggregate([(f"k{i % 7}", orjson.dumps(values[i]), None) for i in range(first, first + 50)])
        )

    built = pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "agg1", shutdown_grace_s=1)
    partial = PartialSink(limit=75)
    partial.bind("out", None, built.metrics)
    built.routes[0].sink = partial
    seen_subs: list[int] = []

    def checkpointed_mid_aggregate() -> bool:
        items = lease_items(moto_server.endpoint_url)
        subs = [int(i["checkpointSubSequenceNumber"]["N"]) for i in items.values()]
        seen_subs.extend(subs)
        return len(partial.acknowledged) == 75 and 24 in subs

    summary = await run_until(built, checkpointed_mid_aggregate)
    assert not summary.drained, "the rest was never acknowledged"
    [item] = lease_items(moto_server.endpoint_url).values()
    second_aggregate = partial.acknowledged[50][0].sequence
    assert item["checkpoint"]["S"] == second_aggregate
    assert item["checkpointSubSequenceNumber"]["N"] == "24"
    assert max(seen_subs) > 0

    resumed = pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "agg1")
    await run_until(resumed, lambda: written() >= 125)
    await asyncio.sleep(0)
    memory = MemorySink.instances.get("out")
    assert memory is not None
    first_run = [orjson.loads(p) for _, p in partial.acknowledged]
    second_run = [orjson.loads(p) for p in memory.payloads()]
    assert first_run == values[:75]
    assert second_run == values[75:], "resumed at the user record after the checkpoint, in order"
    [item] = lease_items(moto_server.endpoint_url).values()
    assert item["checkpointSubSequenceNumber"]["N"] == "49", "the last user record of the last aggregate"
