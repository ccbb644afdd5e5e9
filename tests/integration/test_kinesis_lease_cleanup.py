"""Finished leases are deleted after a split and a merge on kinesis-local, and nothing is read twice.

The same split-then-merge under load as test_kinesis_resharding.py, with ``finished_lease_retention_s: 0``:
once every child has started, the parents' SHARD_END leases go (oldest first), periodic shard discovery
does not bring them back although ListShards still lists the closed parents, and every record arrives once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.runtime import Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream, kinesis_pipeline
from tests.integration.test_kinesis_resharding import KEYS, PER_KEY, TABLE, lease_items, write_and_reshard


@pytest.mark.timeout(150)
@pytest.mark.usefixtures("aws_env")
async def test_parents_leases_are_deleted_once_their_children_started_and_never_come_back(
    kinesis_local: Any, moto_server: Any
) -> None:
    client = create_stream(kinesis_local.endpoint_url, "reshard", shards=2)
    config = kinesis_pipeline(
        "cleanup",
        "reshard",
        TABLE,
        kinesis=kinesis_local.endpoint_url,
        dynamodb=moto_server.endpoint_url,
        finished_lease_retention_s=0,
        max_records_per_call=200,
    )
    built = build_pipeline(parse_config(config))
    source = built.source
    assert isinstance(source, KinesisSource)
    stop = asyncio.Event()
    runtime = Runtime(built)
    task = asyncio.create_task(runtime.run(stop))
    async with asyncio.timeout(20):
        await runtime.ready.wait()
    await asyncio.to_thread(write_and_reshard, client, "reshard")
    total = len(KEYS) * PER_KEY

    def delivered() -> list[dict[str, Any]]:
        sink = MemorySink.instances.get("out")
        return [] if sink is None else [orjson.loads(p) for p in sink.payloads()]

    open_shards = {"shardId-000000000002", "shardId-000000000004"}
    try:
        await wait_for(lambda: len(delivered()) >= total, timeout=90)
        await wait_for(lambda: set(lease_items(moto_server.endpoint_url)) == open_shards, timeout=20)
        await asyncio.sleep(2.0)  # four more discovery passes: the closed parents are still listed
        assert set(lease_items(moto_server.endpoint_url)) == open_shards
        coordinator = source.coordinator
        assert coordinator is not None and coordinator.deleted_finished == 3
    finally:
        stop.set()
        async with asyncio.timeout(20):
            summary = await task
    assert summary.drained
    seen = Counter((value["key"], value["n"]) for value in delivered())
    assert set(seen) == {(key, n) for key in KEYS for n in range(PER_KEY)}
    assert max(seen.values()) == 1
    leases = lease_items(moto_server.endpoint_url)
    assert all(leases[key]["checkpoint"]["S"].isdigit() for key in open_shards)
