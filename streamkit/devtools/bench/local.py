"""The local stack for a benchmark: kinesalite for Kinesis, moto for the lease table (and S3), on loopback.

The stream gets ``shards`` shards and the same number of records in each (PutRecords with each shard's
starting hash key as the explicit hash key), written before anyone reads: every reader then consumes the
same backlog from TRIM_HORIZON, as fast as the emulator serves it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from streamkit.config import AwsSettings
from streamkit.devtools.bench.data import record_payloads
from streamkit.devtools.bench.inputs import LocalInput
from streamkit.devtools.localstack import LocalStack

REGION = "us-east-1"
PUT_BATCH = 500  # the PutRecords maximum
DUMMY_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Empty files: ~/.aws/config and ~/.aws/credentials are never read.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class LocalBench:
    stack: LocalStack
    aws: AwsSettings
    data: LocalInput
    bucket: str | None = None


# Whatever could make botocore find real credentials, a profile or another endpoint.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_",
    "AWS_WEB_IDENTITY",
    "AWS_CONTAINER_",
    "AWS_CREDENTIAL",
    "AWS_ENDPOINT_URL",
)


def use_dummy_credentials() -> None:
    """Everything here talks to emulators on loopback: never look for, or sign with, real credentials, and
    never go through a proxy. (The process is a benchmark run; its environment is not used for anything else.)"""
    for name in list(os.environ):
        if name.startswith(_CLEARED):
            del os.environ[name]
    os.environ.update(DUMMY_ENVIRONMENT)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = no_proxy


def _client(aws: AwsSettings, service: str) -> Any:
    from streamkit.connectors.aws_clients import AwsClient

    return AwsClient(aws, service)


async def create_loaded_stream(aws: AwsSettings, stream: str, shards: int, records: int) -> LocalInput:
    per_shard = max(1, records // shards)
    payloads, keys = record_payloads(per_shard * shards)
    async with _client(aws, "kinesis") as kinesis:
        await kinesis.create_stream(StreamName=stream, ShardCount=shards)
        waiter = kinesis.get_waiter("stream_exists")
        await waiter.wait(StreamName=stream, WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})
        listed = (await kinesis.list_shards(StreamName=stream))["Shards"]
        shard_ids = [s["ShardId"] for s in listed]
        starts = [s["HashKeyRange"]["StartingHashKey"] for s in listed]

        async def load(i: int) -> None:
            mine = range(i * per_shard, (i + 1) * per_shard)
            for begin in range(mine.start, mine.stop, PUT_BATCH):
                entries = [
                    {"Data": payloads[j], "PartitionKey": keys[j], "ExplicitHashKey": starts[i]}
                    for j in range(begin, min(begin + PUT_BATCH, mine.stop))
                ]
                while entries:
                    response = await kinesis.put_records(StreamName=stream, Records=entries)
                    entries = [e for e, r in zip(entries, response["Records"], strict=True) if "ErrorCode" in r]
                    if entries:
                        await asyncio.sleep(0.1)

        await asyncio.gather(*(load(i) for i in range(len(shard_ids))))
    kept = sum(1 for p in payloads if b'"status":"err"' not in p)
    return LocalInput(
        endpoint_url=aws.endpoints["kinesis"],
        region=REGION,
        stream=stream,
        shard_ids=shard_ids,
        records=len(payloads),
        payload_bytes=sum(map(len, payloads)),
        expected_out=kept,
    )


async def warm_up(aws: AwsSettings, data: LocalInput) -> None:
    """Read the whole stream once, untimed: the emulator's first pass over fresh data is slower (its
    JavaScript is not optimized yet), and whoever read first would pay for it."""
    from streamkit.connectors.kinesis.client import KinesisClient

    async with KinesisClient(aws) as kinesis:
        for shard in data.shard_ids:
            iterator: str | None = await kinesis.shard_iterator(data.stream, shard, "TRIM_HORIZON")
            while iterator:
                decoded, _ = await kinesis.get_records(iterator, 10_000)
                iterator = decoded.next_shard_iterator if len(decoded) else None


async def create_bucket(aws: AwsSettings, bucket: str) -> None:
    async with _client(aws, "s3") as s3:
        await s3.create_bucket(Bucket=bucket)


def start_local(shards: int, records: int, *, with_bucket: bool) -> LocalBench:
    """Start kinesalite and moto and load a stream. Stop with ``bench.stack.stop()`` (by their PIDs)."""
    use_dummy_credentials()
    stack = LocalStack.start(moto=True, kinesalite=True)
    try:
        aws = AwsSettings(region=REGION, endpoints=stack.aws_endpoints())
        data = asyncio.run(create_loaded_stream(aws, "bench", shards, records))
        asyncio.run(warm_up(aws, data))
        bucket = None
        if with_bucket:
            bucket = "streamkit-bench"
            asyncio.run(create_bucket(aws, bucket))
    except BaseException:
        stack.stop()
        raise
    return LocalBench(stack, aws, data, bucket)


def kinesis_section(stream: str, lease_table: str) -> dict[str, Any]:
    """The kinesis source as a pipeline would configure it, with a fresh lease table per run."""
    return {
        "type": "kinesis",
        "stream": stream,
        "lease_table": lease_table,
        "initial_position": "TRIM_HORIZON",
        "idle_poll_s": 0.05,
        "failover_time_s": 10.0,
    }
