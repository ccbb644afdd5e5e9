"""Enhanced fan-out (``consumer: efo``) end to end on kinesis-local, leases in moto's DynamoDB.

kinesis-local sends no ``initial-response`` event, which botocore requires: every test reaches it through
:class:`EventStreamProxy` (streamkit/devtools/localstack/efo_proxy.py), which adds that event (and the last event of a
closed shard, which kinesis-local never sends), records the calls it forwards, and injects subscription
faults (a clean end, a cut connection, a stream that stops forwarding).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, parse_config
from streamkit.connectors.kinesis.efo_consumer import ConsumerRegistrationError, ensure_consumer
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.devtools.localstack.efo_proxy import EventStreamProxy
from streamkit.runtime import Pipeline, Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import OrderLog, create_stream, kinesis_pipeline, log_in_order, put_json
from tests.integration.test_kinesis_faults import FaultHook

TABLE = "efo-leases"


@pytest.fixture
def efo_proxy(kinesis_local: Any) -> Iterator[EventStreamProxy]:
    with EventStreamProxy.start(kinesis_local.endpoint_url) as proxy:
        yield proxy


def pipeline(kinesis: str, dynamodb: str, stream: str, *, table: str = TABLE, **source: Any) -> Pipeline:
    source = {"consumer": "efo", **source}
    config = kinesis_pipeline("efo", stream, table, kinesis=kinesis, dynamodb=dynamodb, checkpoint_s=0.1, **source)
    built = build_pipeline(parse_config(config))
    log_in_order(built, max_records=500)
    return built


class Running:
    """A pipeline run in the background of the test's loop."""

    def __init__(self, built: Pipeline) -> None:
        self.built = built
        self.stop = asyncio.Event()
        self.runtime = Runtime(built)
        self.task = asyncio.create_task(self.runtime.run(self.stop))

    @property
    def source(self) -> KinesisSource:
        source = self.built.source
        assert isinstance(source, KinesisSource)
        return source

    async def ready(self) -> None:
        async with asyncio.timeout(30):
            await self.runtime.ready.wait()

    async def until(self, predicate: Any, timeout: float = 30) -> None:
        await wait_for(lambda: self.task.done() or predicate(), timeout=timeout)
        if self.task.done():
            await self.task  # the pipeline's own error, if it stopped by itself
            raise AssertionError("the pipeline stopped by itself")

    async def finish(self) -> Any:
        self.stop.set()
        async with asyncio.timeout(20):
            return await self.task


def values() -> list[dict[str, Any]]:
    return [value for _, _, value in OrderLog.log]


def keyed(start: int, count: int, keys: int = 10) -> list[dict[str, Any]]:
    return [{"id": i, "key": f"k{i % keys}"} for i in range(start, start + count)]


def assert_exactly_once_in_key_order(expected_ids: range) -> None:
    seen = Counter(v["id"] for v in values())
    assert set(seen) == set(expected_ids), f"missing {sorted(set(expected_ids) - set(seen))[:10]}"
    assert max(seen.values()) == 1, f"read twice: {[i for i, n in seen.items() if n > 1][:10]}"
    by_key: dict[str, list[int]] = defaultdict(list)
    for value in values():
        by_key[value["key"]].append(value["id"])
    assert all(ids == sorted(ids) for ids in by_key.values()), "per-key order broken"


def lease_items(dynamodb: str, table: str = TABLE) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    return {i["leaseKey"]["S"]: i for i in client.scan(TableName=table, ConsistentRead=True)["Items"]}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_efo_reads_every_shard_in_order_checkpoints_as_polling_does_and_resumes(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "clicks", shards=2)
    put_json(client, "clicks", keyed(0, 300), key="key")
    OrderLog.log = []
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "clicks"))
    await running.ready()
    await asyncio.to_thread(put_json, client, "clicks", keyed(300, 200), "key")  # and some while it runs
    await running.until(lambda: len(OrderLog.log) >= 500)
    assert (await running.finish()).drained
    assert_exactly_once_in_key_order(range(500))

    # Described first, registered once, then subscribed: each shard from TRIM_HORIZON.
    ops = efo_proxy.requests
    assert ops.index("DescribeStreamConsumer") < ops.index("RegisterStreamConsumer")
    assert ops.count("RegisterStreamConsumer") == 1
    assert "GetRecords" not in ops
    first: dict[str, dict[str, Any]] = {}
    for call in efo_proxy.subscriptions:
        first.setdefault(call.shard_id, call.starting_position)
    assert first == {
        "shardId-000000000000": {"Type": "TRIM_HORIZON"},
        "shardId-000000000001": {"Type": "TRIM_HORIZON"},
    }
    consumer = client.describe_stream_consumer(
        StreamARN=client.describe_stream_summary(StreamName="clicks")["StreamDescriptionSummary"]["StreamARN"],
        ConsumerName=TABLE,  # the default consumer name: the lease table's
    )["ConsumerDescription"]
    assert consumer["ConsumerStatus"] == "ACTIVE"

    # The lease table holds what a polling reader of the same records writes: the last record's position.
    efo_leases = lease_items(moto_server.endpoint_url)
    OrderLog.log = []
    polling = Running(
        pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "clicks", table="polling-leases", consumer="polling")
    )
    await polling.ready()
    await polling.until(lambda: len(OrderLog.log) >= 500)
    await polling.finish()
    polling_leases = lease_items(moto_server.endpoint_url, "polling-leases")
    for shard, item in efo_leases.items():
        assert item["checkpoint"]["S"].isdigit(), shard
        assert item["checkpoint"] == polling_leases[shard]["checkpoint"], shard
        assert item["checkpointSubSequenceNumber"] == polling_leases[shard]["checkpointSubSequenceNumber"]
        assert "leaseOwner" not in item or item["leaseOwner"].get("NULL"), "released on clean shutdown"

    # A second run resumes at its checkpoints (AT the sequence number, skipping it) and reuses the consumer.
    put_json(client, "clicks", keyed(500, 100), key="key")
    OrderLog.log = []
    efo_proxy.requests.clear()
    efo_proxy.subscriptions.clear()
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "clicks"))
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 100)
    await asyncio.sleep(1.5)  # one more event per shard: nothing else may arrive
    await running.finish()
    assert_exactly_once_in_key_order(range(500, 600))
    assert "RegisterStreamConsumer" not in efo_proxy.requests
    resumed = {c.shard_id: c.starting_position for c in efo_proxy.subscriptions[:2]}
    for shard, item in efo_leases.items():
        assert resumed[shard] == {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": item["checkpoint"]["S"]}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_efo_resubscribes_after_the_subscription_ends_is_cut_or_refused(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "ends", shards=1)
    OrderLog.log = []
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "ends"))
    await running.ready()
    fan_out = running.source.fan_out
    assert fan_out is not None
    # The next two subscribe calls are refused as the service refuses a subscription still open.
    refusals = FaultHook("ResourceInUseException", times=0)
    fan_out.consumers[0].client.client.meta.events.register("before-call.kinesis.SubscribeToShard", refusals)

    put_json(client, "ends", keyed(0, 100), key="key")
    await running.until(lambda: len(OrderLog.log) >= 100)
    assert efo_proxy.end_subscriptions() == 1  # what the service does after 5 minutes
    await running.until(lambda: len(efo_proxy.subscriptions) >= 2)
    put_json(client, "ends", keyed(100, 100), key="key")
    await running.until(lambda: len(OrderLog.log) >= 200)
    refusals.remaining = 2
    assert efo_proxy.cut_subscriptions() == 1  # a dropped connection
    put_json(client, "ends", keyed(200, 100), key="key")
    await running.until(lambda: len(OrderLog.log) >= 300)
    await asyncio.sleep(1.5)
    await running.finish()
    assert_exactly_once_in_key_order(range(300))

    calls = efo_proxy.subscriptions
    assert len(calls) >= 3
    assert calls[0].starting_position == {"Type": "TRIM_HORIZON"}
    for call in calls[1:]:  # every renewal continues after the last event's ContinuationSequenceNumber
        assert call.starting_position["Type"] == "AFTER_SEQUENCE_NUMBER"
    # The renewal after the cut was refused twice (backed off, counted) before one got through.
    assert [refused for _, refused in refusals.calls][-3:] == [True, True, False]
    assert running.source.read_counts["throttled"] >= 2
    # At most one SubscribeToShard per second per shard, refused calls included.
    times = sorted([c.at for c in calls] + [at for at, refused in refusals.calls if refused])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.95, gaps


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_the_watchdog_renews_a_subscription_that_stops_delivering(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "hung", shards=1)
    OrderLog.log = []
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "hung", efo={"stall_timeout_s": 5}))
    await running.ready()
    put_json(client, "hung", keyed(0, 50), key="key")
    await running.until(lambda: len(OrderLog.log) >= 50)
    assert efo_proxy.hang_subscriptions() == 1
    put_json(client, "hung", keyed(50, 50), key="key")
    # Nothing arrives until the watchdog drops the hung subscription and a new one continues after it.
    delivered_before_the_stall: list[int] = []

    def stalled() -> bool:
        if running.source.read_counts["stalls"] >= 1 and not delivered_before_the_stall:
            delivered_before_the_stall.append(len(OrderLog.log))
        return len(OrderLog.log) >= 100

    await running.until(stalled, timeout=30)
    await running.finish()
    assert delivered_before_the_stall == [50]
    assert running.source.read_counts["stalls"] == 1
    assert_exactly_once_in_key_order(range(100))
    assert efo_proxy.subscriptions[-1].starting_position["Type"] == "AFTER_SEQUENCE_NUMBER"


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_efo_reads_a_split_parent_to_its_end_before_its_children(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "split", shards=1)
    OrderLog.log = []
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "split"))
    await running.ready()
    put_json(client, "split", keyed(0, 200), key="key")
    client.split_shard(StreamName="split", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    deadline = time.monotonic() + 30
    while client.describe_stream_summary(StreamName="split")["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    put_json(client, "split", keyed(200, 200), key="key")
    await running.until(lambda: len(OrderLog.log) >= 400, timeout=60)
    await asyncio.sleep(3)  # several empty events on the open children: they must stay open
    await running.finish()
    assert_exactly_once_in_key_order(range(400))

    leases = lease_items(moto_server.endpoint_url)
    parent = leases["shardId-000000000000"]
    assert parent["checkpoint"]["S"] == "SHARD_END"
    children = set(parent["childShardIds"]["SS"])
    assert children == {"shardId-000000000001", "shardId-000000000002"}
    order = [shard for _, shard, _ in OrderLog.log]
    last_parent = max(i for i, shard in enumerate(order) if shard == "shardId-000000000000")
    first_child = min(i for i, shard in enumerate(order) if shard in children)
    assert last_parent < first_child, "a child was read before its parent ended"
    for child in children:
        assert leases[child]["checkpoint"]["S"].isdigit(), f"{child} read and checkpointed"
        assert set(leases[child]["parentShardId"]["SS"]) == {"shardId-000000000000"}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_efo_expands_kpl_aggregates_and_checkpoints_their_sub_sequence(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "kpl", shards=1)
    for a in range(4):
        aggregator = RecordAggregator()
        for u in range(10):
            user = {"id": a * 10 + u, "key": "same"}
            assert aggregator.add_user_record("same", orjson.dumps(user)) is None
        aggregate = aggregator.clear_and_get()
        assert aggregate is not None
        key, _, data = aggregate.get_contents()
        last_sequence = client.put_record(StreamName="kpl", PartitionKey=key, Data=data)["SequenceNumber"]
    OrderLog.log = []
    running = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "kpl"))
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 40)
    await running.finish()
    assert [v["id"] for v in values()] == list(range(40))
    lease = lease_items(moto_server.endpoint_url)["shardId-000000000000"]
    assert lease["checkpoint"]["S"] == last_sequence
    assert lease["checkpointSubSequenceNumber"]["N"] == "9"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_consumer_registration_is_shared_backs_off_and_fails_with_the_reason(
    efo_proxy: EventStreamProxy,
) -> None:
    from aiobotocore.session import get_session

    client = create_stream(efo_proxy.endpoint_url, "reg", shards=1)
    arn = client.describe_stream_summary(StreamName="reg")["StreamDescriptionSummary"]["StreamARN"]
    aws = AwsSettings(region="us-east-1", endpoints={"kinesis": efo_proxy.endpoint_url})
    async with get_session().create_client("kinesis", **aws.client_kwargs("kinesis")) as kinesis:
        # Throttled describes are waited out.
        throttled = FaultHook("LimitExceededException", times=2)
        kinesis.meta.events.register("before-call.kinesis.DescribeStreamConsumer", throttled)
        # Five workers starting at once: one registration, one consumer, every worker gets its ARN.
        arns = await asyncio.gather(*(ensure_consumer(kinesis, arn, "app", timeout_s=30) for _ in range(5)))
        assert len(set(arns)) == 1 and arns[0].startswith(arn + "/consumer/app:")
        assert efo_proxy.requests.count("RegisterStreamConsumer") >= 1
        assert sum(refused for _, refused in throttled.calls) == 2

        # A stream already holding its 20 consumers refuses for good: start-up fails, naming the limit.
        full = FaultHook("LimitExceededException", times=1000)
        kinesis.meta.events.register("before-call.kinesis.RegisterStreamConsumer", full)
        with pytest.raises(ConsumerRegistrationError, match="at most 20 consumers"):
            await ensure_consumer(kinesis, arn, "another", timeout_s=3)
        # Any other refusal is reported at once.
        kinesis.meta.events.unregister("before-call.kinesis.RegisterStreamConsumer", full)
        denied = FaultHook("AccessDeniedException", times=1)
        kinesis.meta.events.register("before-call.kinesis.RegisterStreamConsumer", denied)
        with pytest.raises(ConsumerRegistrationError, match="AccessDeniedException"):
            await ensure_consumer(kinesis, arn, "third", timeout_s=30)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_a_joining_efo_worker_takes_its_share_by_graceful_hand_off_without_replays(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    client = create_stream(efo_proxy.endpoint_url, "share", shards=4)
    put_json(client, "share", keyed(0, 400), key="key")
    OrderLog.log = []
    first = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "share", worker_id="worker-a"))
    await first.ready()
    await first.until(lambda: len(OrderLog.log) >= 400 and first.built.metrics.leases_held == 4)
    second = Running(pipeline(efo_proxy.endpoint_url, moto_server.endpoint_url, "share", worker_id="worker-b"))
    await second.ready()
    await second.until(lambda: second.built.metrics.leases_held == 2 and first.built.metrics.leases_held == 2)
    put_json(client, "share", keyed(400, 400), key="key")
    await second.until(lambda: len(OrderLog.log) >= 800)
    await asyncio.sleep(1.5)  # one more event per shard: nothing else may arrive
    await second.finish()
    await first.finish()

    # The owner drained and checkpointed before each lease moved: nothing lost, nothing read twice.
    seen = Counter(v["id"] for v in values())
    assert set(seen) == set(range(800)) and max(seen.values()) == 1
    # The new owner subscribed at the hand-off checkpoint of each shard it took, not from the start.
    taken: dict[str, dict[str, Any]] = {}
    for call in efo_proxy.subscriptions[4:]:  # the first four are the first worker's
        taken.setdefault(call.shard_id, call.starting_position)
    assert len(taken) == 2
    for position in taken.values():
        assert position["Type"] == "AT_SEQUENCE_NUMBER"
    assert first.built.metrics.leases["lost"] == 2 and second.built.metrics.leases["taken"] == 2
