"""Resharding under load on kinesis-local (faithful lineage: ChildShards at a closed parent's end).

"Order in the sink" here is the order in which the sink wrote records: one worker, one in-process memory
sink whose every write appends to one log, so the log is the order records were written (and
acknowledged) across all shards. Per-key order holds when, for every key, the key's counters appear in
that log in increasing order; parents drained first means every record of a parent is in the log before
any record of its children, and the children are read only after the parent's SHARD_END checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import boto3
import orjson
import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.connectors.dynamodb import ShardInfo
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.runtime import Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import OrderLog, create_stream, kinesis_pipeline, log_in_order, wait_active

TABLE = "reshard-leases"
KEYS = [f"key-{k:02d}" for k in range(30)]
PER_KEY = 100


def write_and_reshard(client: Any, stream: str) -> dict[str, float]:
    """3,000 records (30 keys x 100 counters, interleaved), PutRecords of 100; split shard 0 after the first
    third, merge the upper half of the split with shard 1 after the second. Returns when each step ended."""
    records = [{"key": key, "n": n} for n in range(PER_KEY) for key in KEYS]
    steps: dict[str, float] = {}
    third = len(records) // 3
    for start in range(0, len(records), 100):
        if start == third:
            client.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126))
            wait_active(client, stream)
            steps["split"] = time.monotonic()
        if start == 2 * third:
            client.merge_shards(
                StreamName=stream, ShardToMerge="shardId-000000000003", AdjacentShardToMerge="shardId-000000000001"
            )
            wait_active(client, stream)
            steps["merge"] = time.monotonic()
        pending = [{"Data": orjson.dumps(r), "PartitionKey": r["key"]} for r in records[start : start + 100]]
        while pending:
            answer = client.put_records(StreamName=stream, Records=pending)
            pending = [e for e, r in zip(pending, answer["Records"], strict=True) if "ErrorCode" in r]
    steps["written"] = time.monotonic()
    return steps


def lease_items(dynamodb: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    return {i["leaseKey"]["S"]: i for i in client.scan(TableName=TABLE, ConsistentRead=True)["Items"]}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_split_and_merge_under_load_keep_per_key_order_and_drain_parents_first(
    kinesis_local: Any, moto_server: Any
) -> None:
    client = create_stream(kinesis_local.endpoint_url, "reshard", shards=2)
    config = kinesis_pipeline(
        "reshard",
        "reshard",
        TABLE,
        kinesis=kinesis_local.endpoint_url,
        dynamodb=moto_server.endpoint_url,
        # Read slower than the writer writes (200 records/s per shard), so the parents still hold unread
        # records when their children appear: the parent-before-child gate has something to hold back.
        reads_per_second=2,
        max_records_per_call=100,
    )
    built = build_pipeline(parse_config(config))
    OrderLog.log = []
    log_in_order(built, max_records=200)
    source = built.source
    assert isinstance(source, KinesisSource)

    # When each parent's SHARD_END checkpoint was written (the source's end-of-shard step returned), and
    # every periodic shard discovery.
    ended_at: dict[str, float] = {}
    shard_ended = source._shard_ended

    async def recording_shard_ended(lease_key: str, children: Any) -> None:
        await shard_ended(lease_key, children)
        ended_at[lease_key] = time.monotonic()

    source._shard_ended = recording_shard_ended  # type: ignore[method-assign]
    assert source.coordinator is None  # created by start(); wrap its discovery once it exists
    discovered: dict[str, float] = {}

    async def start_and_record_discovery(store: Any) -> None:
        await start(store)
        coordinator = source.coordinator
        assert coordinator is not None
        sync_shards = coordinator.sync_shards

        async def recording(shards: Sequence[ShardInfo], *, prefix: str | None = None) -> list[str]:
            created = await sync_shards(shards, prefix=prefix)
            discovered.update({key: time.monotonic() for key in created})
            return created

        coordinator.sync_shards = recording  # type: ignore[method-assign]

    start = source.start
    source.start = start_and_record_discovery  # type: ignore[method-assign]

    stop = asyncio.Event()
    runtime = Runtime(built)
    task = asyncio.create_task(runtime.run(stop))
    async with asyncio.timeout(20):
        await runtime.ready.wait()
    steps = await asyncio.to_thread(write_and_reshard, client, "reshard")
    total = len(KEYS) * PER_KEY
    try:
        await wait_for(lambda: len(OrderLog.log) >= total and len(ended_at) == 3, timeout=60)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            summary = await task
    assert summary.drained

    # -- no record lost, none twice --------------------------------------------------------------------------
    seen = Counter((value["key"], value["n"]) for _, _, value in OrderLog.log)
    assert set(seen) == {(key, n) for key in KEYS for n in range(PER_KEY)}
    assert max(seen.values()) == 1

    # -- per-key order in the sink ---------------------------------------------------------------------------
    by_key: dict[str, list[int]] = defaultdict(list)
    for _, _, value in OrderLog.log:
        by_key[value["key"]].append(value["n"])
    out_of_order = {key: ns for key, ns in by_key.items() if ns != sorted(ns)}
    assert not out_of_order, f"per-key order broken for {sorted(out_of_order)}"

    # -- parents drained and checkpointed SHARD_END before any child record ---------------------------------
    leases = lease_items(moto_server.endpoint_url)
    parents_of = {key: set(item.get("parentShardId", {}).get("SS", [])) for key, item in leases.items()}
    assert parents_of == {
        "shardId-000000000000": set(),
        "shardId-000000000001": set(),
        "shardId-000000000002": {"shardId-000000000000"},
        "shardId-000000000003": {"shardId-000000000000"},
        "shardId-000000000004": {"shardId-000000000003", "shardId-000000000001"},
    }
    for parent, children in {
        "shardId-000000000000": {"shardId-000000000002", "shardId-000000000003"},
        "shardId-000000000001": {"shardId-000000000004"},
        "shardId-000000000003": {"shardId-000000000004"},
    }.items():
        assert leases[parent]["checkpoint"]["S"] == "SHARD_END", parent
        assert set(leases[parent]["childShardIds"]["SS"]) == children
    for open_shard in ("shardId-000000000002", "shardId-000000000004"):
        assert leases[open_shard]["checkpoint"]["S"].isdigit(), "the open children were read and checkpointed"

    position: dict[str, list[int]] = defaultdict(list)
    written_at: dict[str, list[float]] = defaultdict(list)
    for index, (at, shard, _) in enumerate(OrderLog.log):
        position[shard].append(index)
        written_at[shard].append(at)
    for child, parents in parents_of.items():
        if not parents or not position[child]:
            continue
        for parent in parents:
            assert max(position[parent], default=-1) < min(position[child]), f"{child} written before {parent} ended"
            assert ended_at[parent] < min(written_at[child]), f"{child} read before {parent}'s SHARD_END"
    assert position["shardId-000000000004"], "the merged shard received records"

    # -- under load, with periodic discovery ---------------------------------------------------------------
    # Periodic discovery created child leases while their parents still had records to deliver: the
    # children waited for the parents' SHARD_END (checked above) instead of being read at once.
    early = [c for c, at in discovered.items() if any(at < ended_at[p] for p in parents_of[c])]
    assert early, f"no child lease was discovered before its parent ended: {discovered}, {ended_at}"
    # The split and the merge happened while their parents were still being read.
    assert max(written_at["shardId-000000000000"]) > steps["split"]
    assert max(written_at["shardId-000000000001"]) > steps["merge"]
    metrics = built.metrics
    assert metrics.leases["taken"] == 5 and metrics.leases["lost"] == 0
