"""The kinesis source end to end: kinesalite for Kinesis, moto for the DynamoDB lease table."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import orjson
import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.runtime import Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream, put_json


def kinesis_pipeline(kinesis: str, dynamodb: str, stream: str, **source: Any) -> Any:
    config = {
        "name": "ktest",
        "source": {"type": "kinesis", "stream": stream, "failover_time_s": 3, "idle_poll_s": 0.1, **source},
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "memory", "name": "out", "max_age_s": 0.1}],
        "dead_letter": {"type": "memory"},
        "checkpoint": {"interval_s": 0.2},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 10},
    }
    return build_pipeline(parse_config(config))


def lease_items(dynamodb: str, table: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i for i in items}


@pytest.mark.usefixtures("aws_env")
async def test_reads_every_shard_checkpoints_in_the_lease_table_and_resumes(kinesalite: Any, moto_server: Any) -> None:
    client = create_stream(kinesalite.endpoint_url, "orders", shards=3)
    records = [{"id": i, "status": "ok"} for i in range(1500)]
    put_json(client, "orders", records)

    pipeline = kinesis_pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "orders")
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(pipeline).run(stop))

    def written() -> int:
        sink = MemorySink.instances.get("out")
        return sink.written_records if sink is not None else 0

    await wait_for(lambda: written() >= 1500, timeout=30)
    stop.set()
    summary = await task
    assert summary.drained
    got = sorted(orjson.loads(p)["id"] for p in MemorySink.instances["out"].payloads())
    assert got == list(range(1500))

    leases = lease_items(moto_server.endpoint_url, "ktest-leases")
    assert len(leases) == 3
    for key, item in leases.items():
        assert "leaseOwner" not in item or item["leaseOwner"].get("NULL"), "released on clean shutdown"
        assert item["checkpoint"]["S"].isdigit(), f"{key} checkpointed at a sequence number"
        assert item["checkpointSubSequenceNumber"]["N"] == "0"

    # A second run resumes after the checkpoints: only new records arrive.
    put_json(client, "orders", [{"id": i, "status": "ok"} for i in range(1500, 1600)])
    MemorySink.instances.clear()
    pipeline = kinesis_pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "orders")
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(pipeline).run(stop))
    await wait_for(lambda: written() >= 100, timeout=30)
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert sorted(orjson.loads(p)["id"] for p in MemorySink.instances["out"].payloads()) == list(range(1500, 1600))


@pytest.mark.usefixtures("aws_env")
def test_a_missing_stream_fails_at_start_up_with_exit_code_2(tmp_path: Any, kinesalite: Any, moto_server: Any) -> None:
    import subprocess
    import sys

    import yaml

    config = {
        "name": "missing",
        "source": {"type": "kinesis", "stream": "no-such-stream"},
        "sinks": [{"type": "memory"}],
        "aws": {
            "region": "us-east-1",
            "endpoints": {"kinesis": kinesalite.endpoint_url, "dynamodb": moto_server.endpoint_url},
        },
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "streamkit", "run", str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "source.stream: cannot read stream 'no-such-stream'" in result.stderr
    assert "Unclosed" not in result.stderr
