"""Several streams per source (KCL multi-stream lease keys), another account's stream through an assumed role.

Kinesis: kinesalite (by name) and kinesis-local (by ARN: kinesalite has no StreamARN parameters). DynamoDB and
STS: moto. Nothing is mocked: the assumed role's credentials come from moto's AssumeRole and the test checks
that the Kinesis requests were signed with them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import boto3
import orjson
import pytest

from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, parse_config
from streamkit.connectors.assume_role import assumed_role_session
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.errors import ConfigError
from streamkit.runtime import Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream, put_json

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("aws_env")]

TABLE = "multi-leases"
ROLE = "arn:aws:iam::111122223333:role/stream-reader"


def pipeline(kinesis: str, moto: str, source: dict[str, Any]) -> Any:
    config = {
        "name": "multi",
        "source": {
            "type": "kinesis",
            "lease_table": TABLE,
            "failover_time_s": 1.5,
            "idle_poll_s": 0.1,
            "shard_sync_interval_s": 0.5,
            **source,
        },
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "memory", "name": "out", "max_age_s": 0.1}],
        "dead_letter": {"type": "memory"},
        "checkpoint": {"interval_s": 0.2},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": moto, "sts": moto}},
        "runtime": {"shutdown_grace_s": 10},
    }
    return build_pipeline(parse_config(config))


def lease_items(moto: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
    return {i["leaseKey"]["S"]: i for i in client.scan(TableName=TABLE, ConsistentRead=True)["Items"]}


def sink_ids() -> list[tuple[str, int]]:
    sink = MemorySink.instances.get("out")
    return [] if sink is None else sorted((p["s"], p["id"]) for p in map(orjson.loads, sink.payloads()))


def prefix_of(client: Any, stream: str) -> str:
    summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    account = summary["StreamARN"].split(":")[4]
    created: dt.datetime = summary["StreamCreationTimestamp"]
    return f"{account}:{stream}:{int(created.timestamp())}:"


async def run_until(built: Any, done: Any) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(built).run(stop))
    try:
        await wait_for(done, timeout=40)
    finally:
        stop.set()
        summary = await asyncio.wait_for(task, 30)
    assert summary.drained
    return summary


async def test_two_streams_share_one_table_with_kcl_multi_stream_keys_and_a_removed_stream_is_left_alone(
    kinesalite: Any, moto_server: Any
) -> None:
    orders = create_stream(kinesalite.endpoint_url, "orders", shards=2)
    create_stream(kinesalite.endpoint_url, "payments", shards=1)
    put_json(orders, "orders", [{"s": "orders", "id": i} for i in range(300)])
    put_json(orders, "payments", [{"s": "payments", "id": i} for i in range(200)])
    both = {"streams": [{"stream": "orders"}, {"stream": "payments"}]}

    await run_until(pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, both), lambda: len(sink_ids()) >= 500)
    assert sink_ids() == sorted([("orders", i) for i in range(300)] + [("payments", i) for i in range(200)])
    orders_prefix, payments_prefix = prefix_of(orders, "orders"), prefix_of(orders, "payments")
    leases = lease_items(moto_server.endpoint_url)
    assert set(leases) == {
        f"{orders_prefix}shardId-000000000000",
        f"{orders_prefix}shardId-000000000001",
        f"{payments_prefix}shardId-000000000000",
    }
    assert all(item["checkpoint"]["S"].isdigit() for item in leases.values())

    # payments is removed from the configuration. Its lease stays in the table, and even once it looks
    # abandoned (a crashed worker's, expired) this source must neither read, take, renew nor delete it (KCL#1112).
    payments_key = f"{payments_prefix}shardId-000000000000"
    boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name="us-east-1").update_item(
        TableName=TABLE,
        Key={"leaseKey": {"S": payments_key}},
        UpdateExpression="SET leaseOwner = :dead",
        ExpressionAttributeValues={":dead": {"S": "crashed-worker"}},
    )
    before = lease_items(moto_server.endpoint_url)[payments_key]
    put_json(orders, "orders", [{"s": "orders", "id": i} for i in range(300, 350)])
    put_json(orders, "payments", [{"s": "payments", "id": i} for i in range(200, 250)])
    MemorySink.instances.clear()
    only_orders = pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, {"streams": [{"stream": "orders"}]})
    source = only_orders.source
    assert isinstance(source, KinesisSource)
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(only_orders).run(stop))
    try:
        await wait_for(lambda: len(sink_ids()) >= 50, timeout=40)
        await asyncio.sleep(3 * 1.5)  # two failover times: the payments lease looks expired to this worker
        held = source.coordinator.held() if source.coordinator else set()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sink_ids() == [("orders", i) for i in range(300, 350)]
    assert held == {f"{orders_prefix}shardId-000000000000", f"{orders_prefix}shardId-000000000001"}
    assert lease_items(moto_server.endpoint_url)[payments_key] == before


async def test_another_accounts_stream_by_arn_through_an_assumed_role(kinesis_local: Any, moto_server: Any) -> None:
    client = create_stream(kinesis_local.endpoint_url, "shared-orders", shards=1)
    create_stream(kinesis_local.endpoint_url, "local-events", shards=1)
    arn = client.describe_stream_summary(StreamName="shared-orders")["StreamDescriptionSummary"]["StreamARN"]
    put_json(client, "shared-orders", [{"s": "shared", "id": i} for i in range(100)])
    put_json(client, "local-events", [{"s": "local", "id": i} for i in range(50)])
    built = pipeline(
        kinesis_local.endpoint_url,
        moto_server.endpoint_url,
        {"streams": [{"stream": arn, "role_arn": ROLE}, {"stream": "local-events"}]},
    )
    source = built.source
    assert isinstance(source, KinesisSource)
    signed_with: dict[str, set[str]] = {"shared-orders": set(), "local-events": set()}

    start = source.start

    async def start_and_watch_signatures(store: Any) -> None:
        await start(store)
        for stream in source.streams:

            def capture(request: Any, name: str = stream.name, **_: Any) -> None:
                authorization = request.headers["Authorization"]
                authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
                signed_with[name].add(authorization.split("Credential=")[1].split("/")[0])

            stream.client.client.meta.events.register("before-send.kinesis", capture)

    source.start = start_and_watch_signatures  # type: ignore[method-assign]
    await run_until(built, lambda: len(sink_ids()) >= 150)
    assert sink_ids() == sorted([("local", i) for i in range(50)] + [("shared", i) for i in range(100)])

    # The shared stream was read with the role's temporary credentials, the local one with the worker's own.
    assert signed_with["local-events"] == {"testing"}
    (assumed_key,) = signed_with["shared-orders"]
    assert assumed_key != "testing"
    # moto's STS knows the keys it issued: the one the Kinesis calls carried belongs to the assumed role.
    sts = boto3.client(
        "sts",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=assumed_key,
        aws_secret_access_key="unused-by-moto",
    )
    assert sts.get_caller_identity()["Arn"].startswith("arn:aws:sts::111122223333:assumed-role/stream-reader/")
    prefix = f"{arn.split(':')[4]}:shared-orders:"
    assert any(key.startswith(prefix) for key in lease_items(moto_server.endpoint_url))


async def test_assumed_role_credentials_are_refreshed_before_they_expire(moto_server: Any) -> None:
    aws = AwsSettings(region="us-east-1", endpoints={"sts": moto_server.endpoint_url})
    # 15-minute sessions (the STS minimum): botocore refreshes 15 minutes ahead of expiry, so each session is
    # due for a refresh as soon as it is issued; credentials handed out must come from a new AssumeRole.
    session = assumed_role_session(aws, ROLE, session_name="refresh-test", duration_s=900)
    credentials = await session.get_credentials()
    first = await credentials.get_frozen_credentials()
    assert first.access_key != "testing" and first.token
    second = await credentials.get_frozen_credentials()
    assert second.access_key != first.access_key
    # An hour-long session is not refreshed while it is fresh.
    hour = await assumed_role_session(aws, ROLE, session_name="refresh-test").get_credentials()
    assert (await hour.get_frozen_credentials()).access_key == (await hour.get_frozen_credentials()).access_key
    async with session.create_client("sts", endpoint_url=moto_server.endpoint_url, region_name="us-east-1") as sts:
        identity = await sts.get_caller_identity()
    assert identity["Arn"] == "arn:aws:sts::111122223333:assumed-role/stream-reader/refresh-test"


async def test_bad_stream_settings_fail_at_start_up_naming_the_key(kinesalite: Any, moto_server: Any) -> None:
    create_stream(kinesalite.endpoint_url, "orders", shards=1)
    endpoint, moto = kinesalite.endpoint_url, moto_server.endpoint_url
    with pytest.raises(ConfigError, match=r"source\.streams\[1\]\.stream"):
        await pipeline(endpoint, moto, {"streams": [{"stream": "orders"}, {"stream": "missing"}]}).source.start(None)
    with pytest.raises(ConfigError, match=r"source\.streams\[0\]\.role_arn"):
        await pipeline(endpoint, moto, {"streams": [{"stream": "orders", "role_arn": "reader"}]}).source.start(None)
    with pytest.raises(ConfigError, match=r"source\.streams\[1\]\.stream.*twice"):
        pipeline(endpoint, moto, {"streams": [{"stream": "orders"}, {"stream": "orders"}]})
    with pytest.raises(ConfigError, match=r"source\.streams"):
        pipeline(endpoint, moto, {"stream": "orders", "streams": [{"stream": "orders"}]})
    # Enhanced fan-out reads several streams and assumed roles too (test_kinesis_efo_multi_stream.py).
    for efo in ({"streams": [{"stream": "orders"}]}, {"stream": "orders", "role_arn": ROLE}):
        source = pipeline(endpoint, moto, {**efo, "consumer": "efo"}).source
        assert isinstance(source, KinesisSource) and source.options.consumer == "efo"
    # A single-stream table cannot be read with multi-stream keys (each shard would get a second lease).
    await run_until(pipeline(endpoint, moto, {"stream": "orders"}), lambda: True)
    with pytest.raises(ConfigError, match=r"source\.lease_table.*single-stream"):
        await pipeline(endpoint, moto, {"streams": [{"stream": "orders"}]}).source.start(None)


async def test_one_stream_by_name_and_by_arn_is_refused(kinesis_local: Any, moto_server: Any) -> None:
    client = create_stream(kinesis_local.endpoint_url, "orders", shards=1)
    arn = client.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["StreamARN"]
    source = pipeline(
        kinesis_local.endpoint_url, moto_server.endpoint_url, {"streams": [{"stream": "orders"}, {"stream": arn}]}
    ).source
    with pytest.raises(ConfigError, match=r"source\.streams\[1\]\.stream.*by name and by ARN"):
        await source.start(None)
