"""Enhanced fan-out over several streams (``streams:`` with ``consumer: efo``), on kinesis-local behind the
event-stream proxy (see test_kinesis_efo.py), leases in moto's DynamoDB, roles from moto's STS.

One consumer is registered per stream, each through the stream's own client; every leased shard is subscribed
to with its stream's consumer ARN under the KCL multi-stream lease keys. Resharding of one stream and a stalled
subscription of the other are handled independently; a stream removed from the list is no longer subscribed to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from typing import Any

import boto3
import orjson
import pytest

from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, parse_config
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.efo import FanOut, FanOutOptions
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.connectors.kinesis.streams import describe_stream
from streamkit.devtools.localstack.efo_proxy import EventStreamProxy
from streamkit.devtools.localstack.kinesis import KinesisLocal
from streamkit.errors import ConfigError
from streamkit.runtime import Pipeline
from tests.integration.kinesis_helpers import OrderLog, create_stream, log_in_order, put_json
from tests.integration.test_kinesis_efo import Running, efo_proxy, lease_items
from tests.integration.test_kinesis_faults import modelled_error
from tests.integration.test_kinesis_multi_stream import prefix_of

__all__ = ["efo_proxy"]  # the proxy fixture, used by the tests below

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("aws_env")]

TABLE = "multi-efo-leases"
ROLE = "arn:aws:iam::111122223333:role/stream-reader"


def pipeline(kinesis: str, moto: str, streams: list[dict[str, Any]], **source: Any) -> Pipeline:
    config = {
        "name": "multi-efo",
        "source": {
            "type": "kinesis",
            "streams": streams,
            "consumer": "efo",
            "lease_table": TABLE,
            "failover_time_s": 3,
            "taker_interval_s": 0.5,
            "shard_sync_interval_s": 0.5,
            **source,
        },
        "sinks": [{"type": "memory", "name": "out"}],
        "checkpoint": {"interval_s": 0.1},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": moto, "sts": moto}},
        "runtime": {"shutdown_grace_s": 5},
    }
    built = build_pipeline(parse_config(config))
    log_in_order(built, max_records=500)
    return built


def tagged(stream: str, start: int, count: int, keys: int = 5) -> list[dict[str, Any]]:
    return [{"s": stream, "id": i, "key": f"{stream}-{i % keys}"} for i in range(start, start + count)]


def read_of(stream: str) -> list[dict[str, Any]]:
    return [value for _, _, value in OrderLog.log if value["s"] == stream]


def assert_read_once_in_key_order(stream: str, expected: range) -> None:
    seen = Counter(value["id"] for value in read_of(stream))
    assert set(seen) == set(expected), f"{stream}: missing {sorted(set(expected) - set(seen))[:10]}"
    assert max(seen.values()) == 1, f"{stream}: read twice: {[i for i, n in seen.items() if n > 1][:10]}"
    by_key: dict[str, list[int]] = defaultdict(list)
    for value in read_of(stream):
        by_key[value["key"]].append(value["id"])
    assert all(ids == sorted(ids) for ids in by_key.values()), f"{stream}: per-key order broken"


def stream_arn(client: Any, name: str) -> str:
    arn: str = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return arn


async def test_efo_reads_two_streams_with_a_consumer_each_through_a_split_of_one_and_a_stall_of_the_other(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    endpoint = efo_proxy.endpoint_url
    client = create_stream(endpoint, "orders", shards=1)
    create_stream(endpoint, "payments", shards=1)
    orders_arn, payments_arn = stream_arn(client, "orders"), stream_arn(client, "payments")
    put_json(client, "orders", tagged("orders", 0, 100), key="key")
    put_json(client, "payments", tagged("payments", 0, 100), key="key")
    OrderLog.log = []
    # payments by ARN, orders by name; a stall timeout long enough for the split below to be read meanwhile.
    streams = [{"stream": "orders"}, {"stream": payments_arn}]
    running = Running(pipeline(endpoint, moto_server.endpoint_url, streams, efo={"stall_timeout_s": 10}))
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 200)

    # payments' subscription stops delivering; orders goes on, through a split of its only shard.
    assert efo_proxy.hang_subscriptions("payments") == 1
    hung_at = time.monotonic()
    put_json(client, "payments", tagged("payments", 100, 100), key="key")
    put_json(client, "orders", tagged("orders", 100, 50), key="key")
    client.split_shard(StreamName="orders", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    deadline = time.monotonic() + 30
    while client.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    put_json(client, "orders", tagged("orders", 150, 100), key="key")
    at_stall: list[tuple[int, int]] = []

    def everything_read() -> bool:
        if running.source.read_counts["stalls"] >= 1 and not at_stall:
            at_stall.append((len(read_of("orders")), len(read_of("payments"))))
        return len(read_of("orders")) >= 250 and len(read_of("payments")) >= 200

    await running.until(everything_read, timeout=60)
    await asyncio.sleep(1.5)  # one more event per shard: nothing else may arrive
    assert (await running.finish()).drained
    assert_read_once_in_key_order("orders", range(250))
    assert_read_once_in_key_order("payments", range(200))

    # The watchdog renewed payments' subscription only; nothing came through the hung one, while orders' records
    # from before the split kept arriving.
    assert running.source.read_counts["stalls"] == 1
    ((orders_at_stall, payments_at_stall),) = at_stall
    assert payments_at_stall == 100
    assert orders_at_stall >= 150
    stalled_renewals = [c for c in efo_proxy.subscriptions if c.stream == "payments" and c.at > hung_at]
    assert stalled_renewals and stalled_renewals[0].starting_position["Type"] == "AFTER_SEQUENCE_NUMBER"

    # One consumer per stream, of the same name, registered once each and ACTIVE.
    fan_out = running.source.fan_out
    assert fan_out is not None
    consumer_arns = {consumer.stream.name: consumer.consumer_arn for consumer in fan_out.consumers}
    assert set(consumer_arns) == {"orders", "payments"}
    assert consumer_arns["orders"].startswith(orders_arn + f"/consumer/{TABLE}:")
    assert consumer_arns["payments"].startswith(payments_arn + f"/consumer/{TABLE}:")
    assert efo_proxy.requests.count("RegisterStreamConsumer") == 2
    for arn in (orders_arn, payments_arn):
        described = client.describe_stream_consumer(StreamARN=arn, ConsumerName=TABLE)["ConsumerDescription"]
        assert described["ConsumerStatus"] == "ACTIVE"
    # Each shard subscribed with its own stream's consumer; orders' children after the parent.
    assert {c.consumer_arn for c in efo_proxy.subscriptions} == set(consumer_arns.values())
    assert all(c.consumer_arn == consumer_arns[c.stream] for c in efo_proxy.subscriptions)
    subscribed = {(c.stream, c.shard_id) for c in efo_proxy.subscriptions}
    assert subscribed == {
        ("orders", "shardId-000000000000"),
        ("orders", "shardId-000000000001"),
        ("orders", "shardId-000000000002"),
        ("payments", "shardId-000000000000"),
    }
    assert "GetRecords" not in efo_proxy.requests

    # Multi-stream lease keys; the split parent finished (SHARD_END) before its children were read.
    orders_prefix, payments_prefix = prefix_of(client, "orders"), prefix_of(client, "payments")
    leases = lease_items(moto_server.endpoint_url, TABLE)
    parent = leases[f"{orders_prefix}shardId-000000000000"]
    assert parent["checkpoint"]["S"] == "SHARD_END"
    assert set(parent["childShardIds"]["SS"]) == {"shardId-000000000001", "shardId-000000000002"}
    for child in ("shardId-000000000001", "shardId-000000000002"):
        assert leases[f"{orders_prefix}{child}"]["checkpoint"]["S"].isdigit(), child
    assert leases[f"{payments_prefix}shardId-000000000000"]["checkpoint"]["S"].isdigit()
    order = [(key, value["s"]) for _, key, value in OrderLog.log]
    parent_key = f"{orders_prefix}shardId-000000000000"
    last_parent = max(i for i, (key, _) in enumerate(order) if key == parent_key)
    first_child = min(i for i, (key, s) in enumerate(order) if s == "orders" and key != parent_key)
    assert last_parent < first_child, "a child was read before its parent ended"
    # The runtime's partitions name each record's own stream (what S3 keys and metrics derive from).
    assert {batch_key.split(":")[1] for batch_key in {key for key, _ in order}} == {"orders", "payments"}
    sources = {str(p).split("/")[0] for p in running.built.metrics.partitions}
    assert sources == {"kinesis:orders", "kinesis:payments"}


async def test_efo_through_an_assumed_role_and_a_removed_stream_is_no_longer_subscribed(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    endpoint = efo_proxy.endpoint_url
    client = create_stream(endpoint, "shared", shards=1)
    create_stream(endpoint, "local", shards=1)
    shared_arn = stream_arn(client, "shared")
    put_json(client, "shared", tagged("shared", 0, 50), key="key")
    put_json(client, "local", tagged("local", 0, 50), key="key")
    OrderLog.log = []
    built = pipeline(
        endpoint, moto_server.endpoint_url, [{"stream": shared_arn, "role_arn": ROLE}, {"stream": "local"}]
    )
    source = built.source
    assert isinstance(source, KinesisSource)
    signed_with: dict[tuple[str, str], set[str]] = defaultdict(set)
    start = source.start

    async def start_and_watch_signatures(store: Any) -> None:
        await start(store)
        assert source.fan_out is not None
        for consumer in source.fan_out.consumers:
            for kind, kinesis in (("control", consumer.stream.client), ("subscribe", consumer.client)):

                def capture(request: Any, key: tuple[str, str] = (consumer.stream.name, kind), **_: Any) -> None:
                    authorization = request.headers["Authorization"]
                    authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
                    signed_with[key].add(authorization.split("Credential=")[1].split("/")[0])

                kinesis.client.meta.events.register("before-send.kinesis", capture)

    source.start = start_and_watch_signatures  # type: ignore[method-assign]
    running = Running(built)
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 100)
    await asyncio.sleep(1.5)
    await running.finish()
    assert_read_once_in_key_order("shared", range(50))
    assert_read_once_in_key_order("local", range(50))
    # The shared stream's subscriptions carry the assumed role's key, the local stream's the worker's own.
    assert signed_with[("local", "subscribe")] == {"testing"}
    (assumed,) = signed_with[("shared", "subscribe")]
    assert assumed != "testing"
    sts = boto3.client(
        "sts",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=assumed,
        aws_secret_access_key="unused-by-moto",
    )
    assert sts.get_caller_identity()["Arn"].startswith("arn:aws:sts::111122223333:assumed-role/stream-reader/")
    assert {c.stream for c in efo_proxy.subscriptions} == {"shared", "local"}

    # "shared" is removed from the list: its lease stays, it is neither subscribed to nor registered again.
    shared_key = f"{prefix_of(client, 'shared')}shardId-000000000000"
    before = lease_items(moto_server.endpoint_url, TABLE)[shared_key]
    put_json(client, "shared", tagged("shared", 50, 50), key="key")
    put_json(client, "local", tagged("local", 50, 50), key="key")
    efo_proxy.subscriptions.clear()
    efo_proxy.requests.clear()
    OrderLog.log = []
    running = Running(pipeline(endpoint, moto_server.endpoint_url, [{"stream": "local"}]))
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 50)
    await asyncio.sleep(3 * 3)  # three failover times: the shared lease looks expired to this worker
    held = running.source.coordinator.held() if running.source.coordinator else set()
    await running.finish()
    assert read_of("shared") == []
    assert_read_once_in_key_order("local", range(50, 100))
    assert {c.stream for c in efo_proxy.subscriptions} == {"local"}
    fan_out = running.source.fan_out
    assert fan_out is not None and [c.stream.name for c in fan_out.consumers] == ["local"]
    assert efo_proxy.requests.count("DescribeStreamConsumer") == 1  # local's; its consumer exists already
    assert "RegisterStreamConsumer" not in efo_proxy.requests
    assert held == {f"{prefix_of(client, 'local')}shardId-000000000000"}
    assert lease_items(moto_server.endpoint_url, TABLE)[shared_key] == before


async def test_one_streams_refused_registration_fails_start_up_naming_that_stream(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    endpoint = efo_proxy.endpoint_url
    client = create_stream(endpoint, "orders", shards=1)
    create_stream(endpoint, "payments", shards=1)
    payments_arn = stream_arn(client, "payments")
    source = pipeline(endpoint, moto_server.endpoint_url, [{"stream": "orders"}, {"stream": "payments"}]).source
    assert isinstance(source, KinesisSource)
    denied: list[str] = []

    def deny_payments(params: dict[str, Any], **_: Any) -> Any:
        if orjson.loads(params["body"])["StreamARN"] != payments_arn:
            return None
        denied.append(payments_arn)
        return modelled_error("AccessDeniedException", "not authorized to perform kinesis:RegisterStreamConsumer")

    open_streams = source._open_streams

    async def open_streams_then_deny() -> None:
        await open_streams()
        # Both streams are read as the worker itself: one control client; the hook picks payments' calls.
        (control,) = {id(s.client): s.client for s in source.streams}.values()
        control.client.meta.events.register("before-call.kinesis.RegisterStreamConsumer", deny_payments)

    source._open_streams = open_streams_then_deny  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match=r"source\.efo\.consumer_name") as failed:
        await source.start(None)  # type: ignore[arg-type]
    assert payments_arn in str(failed.value) and "AccessDeniedException" in str(failed.value)
    assert denied == [payments_arn]  # refused at once, not retried
    # Start-up closed every client it opened (the runtime does not close a source whose start failed).
    assert all(stream.client.client is None for stream in source.streams)


async def test_at_most_five_consumers_of_an_account_are_creating_at_once() -> None:
    # Its own kinesis-local, where a consumer becomes ACTIVE only 0.5 s after it was registered (as on AWS,
    # seconds), so that registrations overlap.
    with KinesisLocal.start(stream_transition_ms=500) as server:
        names = [f"s{i}" for i in range(7)]
        for name in names:  # one at a time: kinesis-local allows 5 streams CREATING, as AWS does
            create_stream(server.endpoint_url, name, shards=1)
        aws = AwsSettings(region="us-east-1", endpoints={"kinesis": server.endpoint_url})
        creating: set[str] = set()
        most_creating = 0
        registered: list[str] = []

        def on_register(params: dict[str, Any], **_: Any) -> None:
            nonlocal most_creating
            arn = orjson.loads(params["body"])["StreamARN"]
            registered.append(arn)
            creating.add(arn)
            most_creating = max(most_creating, len(creating))

        def on_describe(parsed: dict[str, Any], **_: Any) -> None:
            description = parsed.get("ConsumerDescription", {})
            if description.get("ConsumerStatus") == "ACTIVE":
                creating.discard(description["StreamARN"])

        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(KinesisClient(aws))
            client.client.meta.events.register("before-call.kinesis.RegisterStreamConsumer", on_register)
            client.client.meta.events.register("after-call.kinesis.DescribeStreamConsumer", on_describe)
            streams = [await describe_stream(client, name, multi_stream=True) for name in names]
            fan_out = await FanOut.start(stack, aws, streams, FanOutOptions(), "app")
        assert sorted(registered) == sorted(s.arn for s in streams)  # each registered once, never refused
        assert most_creating == 5  # concurrent, and never a 6th CREATING (AWS would refuse it)
        assert [c.stream.name for c in fan_out.consumers] == names


async def test_a_consumer_registered_beforehand_is_subscribed_with_by_its_arn_and_never_registered(
    efo_proxy: EventStreamProxy, moto_server: Any
) -> None:
    endpoint = efo_proxy.endpoint_url
    client = create_stream(endpoint, "orders", shards=1)
    create_stream(endpoint, "payments", shards=1)
    orders_arn, payments_arn = stream_arn(client, "orders"), stream_arn(client, "payments")
    # Registered by "infrastructure code", under a name of its own (as a KCL StreamConfig's consumerArn).
    infra_arn = client.register_stream_consumer(StreamARN=payments_arn, ConsumerName="infra-made")["Consumer"][
        "ConsumerARN"
    ]
    put_json(client, "orders", tagged("orders", 0, 30), key="key")
    put_json(client, "payments", tagged("payments", 0, 30), key="key")
    efo_proxy.requests.clear()
    OrderLog.log = []
    streams = [{"stream": "orders"}, {"stream": "payments", "consumer_arn": infra_arn}]
    running = Running(pipeline(endpoint, moto_server.endpoint_url, streams))
    await running.ready()
    await running.until(lambda: len(OrderLog.log) >= 60)
    await running.finish()
    assert_read_once_in_key_order("orders", range(30))
    assert_read_once_in_key_order("payments", range(30))
    assert {c.consumer_arn for c in efo_proxy.subscriptions if c.stream == "payments"} == {infra_arn}
    orders_consumers = {c.consumer_arn for c in efo_proxy.subscriptions if c.stream == "orders"}
    assert len(orders_consumers) == 1 and orders_consumers.pop().startswith(f"{orders_arn}/consumer/{TABLE}:")
    assert efo_proxy.requests.count("RegisterStreamConsumer") == 1  # orders' only
    listed = client.list_stream_consumers(StreamARN=payments_arn)["Consumers"]
    assert [c["ConsumerName"] for c in listed] == ["infra-made"]

    # Wrong settings fail naming streams[1].consumer_arn: not with polling, not an ARN, another stream's
    # consumer, a consumer that is not registered.
    moto = moto_server.endpoint_url
    key = r"source\.streams\[1\]\.consumer_arn"
    with pytest.raises(ConfigError, match=key + ".*consumer: efo"):
        pipeline(endpoint, moto, streams, consumer="polling")
    with pytest.raises(ConfigError, match=key + ".*expected a consumer ARN"):
        pipeline(endpoint, moto, [{"stream": "orders"}, {"stream": "payments", "consumer_arn": "infra-made"}])
    others = [{"stream": "orders"}, {"stream": "orders-too"}]
    create_stream(endpoint, "orders-too", shards=1)
    others[1]["consumer_arn"] = infra_arn
    with pytest.raises(ConfigError, match=key + ".*not a consumer of"):
        await pipeline(endpoint, moto, others).source.start(None)  # type: ignore[arg-type]
    ghost = [{"stream": "orders"}, {"stream": "payments", "consumer_arn": f"{payments_arn}/consumer/ghost:1700000000"}]
    with pytest.raises(ConfigError, match=key + ".*not registered"):
        await pipeline(endpoint, moto, ghost).source.start(None)  # type: ignore[arg-type]
