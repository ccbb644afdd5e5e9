"""Finished leases are cleaned up, and rows that are not leases are left alone (moto DynamoDB).

* Clean-up (the KCL's LeaseCleanupManager rules): a SHARD_END lease is deleted, conditionally, once every
  child lease has started, oldest first; it never comes back through shard discovery, and a child whose
  parents were deleted is still read when it changes hands.
* A lease table that KCL 3.x also uses may hold rows that are not leases (``entityType``): they are never
  taken, counted, renewed, changed or deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest

from streamkit.connectors.dynamodb import SHARD_END, TRIM_HORIZON, Lease, LeaseTable, ShardInfo
from streamkit.devtools.localstack import MotoServer
from tests.integration.test_leases import FAILOVER, SLACK, TAKER, Client, coordinator, running, wait_for

pytestmark = pytest.mark.timeout(60)


P, C1, C2, G = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002", "shardId-000000000003"
LISTING = [
    ShardInfo(P, (), "0", "99", ending_sequence_number="900"),
    ShardInfo(C1, (P,), "0", "49", ending_sequence_number="950"),
    ShardInfo(C2, (P,), "50", "99"),
    ShardInfo(G, (C1,), "0", "49"),
]


async def keys_in(table: LeaseTable) -> set[str]:
    return {lease.lease_key for lease in await table.list_leases()}


async def test_finished_leases_are_deleted_once_every_child_started_oldest_first(lease_table: LeaseTable) -> None:
    """P split into C1/C2; C1 later split into G (only G listed as its child here). The table keeps P until
    both C1 and C2 have a checkpoint past TRIM_HORIZON, and C1 until P is gone and G has started."""
    cleaner = coordinator(lease_table, "cleaner", finished_lease_retention=0.0)
    assert await cleaner.sync_shards(LISTING[:1]) == [P]
    async with running(cleaner):
        await wait_for(lambda: P in cleaner.held(), SLACK, "the take of P")
        await cleaner.checkpoint(P, "900")
        await cleaner.finish_shard(P, LISTING[1:3])
        await wait_for(lambda: cleaner.held() == {C1, C2}, SLACK + TAKER, "the takes of the children")
        await asyncio.sleep(3 * TAKER)  # several passes: the children have not started, P stays
        assert await keys_in(lease_table) == {P, C1, C2}
        assert cleaner.deleted_finished == 0

        await cleaner.checkpoint(C1, "910")
        await asyncio.sleep(3 * TAKER)  # C2 has not started: P still stays
        assert P in await keys_in(lease_table)

        await cleaner.checkpoint(C1, "950")
        await cleaner.finish_shard(C1, LISTING[3:])  # C1 finished before P was deleted: C1 waits for P
        await cleaner.checkpoint(C2, "920")
        await wait_for(lambda: cleaner.deleted_finished == 1, 2 * TAKER + SLACK, "P's deletion")
        assert await keys_in(lease_table) == {C1, C2, G}  # C1 stays: G has not started

        await wait_for(lambda: G in cleaner.held(), SLACK + TAKER, "the take of G")
        await cleaner.checkpoint(G, "960")
        await wait_for(lambda: cleaner.deleted_finished == 2, 2 * TAKER + SLACK, "C1's deletion")
    assert await keys_in(lease_table) == {C2, G}

    # Shard discovery still lists P and C1 (within retention): their leases must not come back, and they
    # count as finished, so nothing waits for them.
    fresh = coordinator(lease_table, "fresh")
    assert await fresh.sync_shards(LISTING) == []
    assert await keys_in(lease_table) == {C2, G}


async def test_a_started_child_whose_parents_were_deleted_is_read_by_its_next_owner(lease_table: LeaseTable) -> None:
    """G's parents are gone; a worker that never saw them (and ran no discovery) takes and reads G."""
    assert await lease_table.create_lease(Lease(G, checkpoint="960", parent_shard_ids=frozenset({C1})))
    worker = coordinator(lease_table, "worker")
    async with running(worker):
        event = await asyncio.wait_for(worker.events.get(), SLACK + TAKER)
    assert (event.kind, event.lease.lease_key, event.lease.checkpoint) == ("acquired", G, "960")


async def test_a_finished_lease_is_not_deleted_before_the_retention(lease_table: LeaseTable) -> None:
    assert await lease_table.create_lease(Lease(P, checkpoint=SHARD_END, child_shard_ids=frozenset({C1})))
    assert await lease_table.create_lease(Lease(C1, checkpoint="910", parent_shard_ids=frozenset({P})))
    keeper = coordinator(lease_table, "keeper", finished_lease_retention=3 * TAKER)
    async with running(keeper):
        await wait_for(lambda: keeper.held() == {C1}, SLACK, "the take of C1")
        await asyncio.sleep(2 * TAKER)
        assert P in await keys_in(lease_table)
        await wait_for(lambda: keeper.deleted_finished == 1, 3 * TAKER + SLACK, "P's deletion after retention")
    assert await keys_in(lease_table) == {C1}


async def test_the_delete_is_conditional_on_the_lease_seen(lease_table: LeaseTable) -> None:
    assert await lease_table.create_lease(Lease(P, checkpoint=SHARD_END))
    seen = await lease_table.get_lease(P)
    assert seen is not None
    stale = Lease(P, checkpoint=SHARD_END, lease_counter=seen.lease_counter + 7)
    assert not await lease_table.delete_finished(stale)  # the counter moved since: left alone
    assert P in await keys_in(lease_table)
    assert await lease_table.delete_finished(seen)
    assert not await lease_table.delete_finished(seen)  # already gone
    with pytest.raises(ValueError, match="not finished"):
        await lease_table.delete_finished(Lease(C1, checkpoint=TRIM_HORIZON))


# --- rows that are not leases -------------------------------------------------------------------------------------

# Shapes of the rows a KCL 3.x application keeps beside its leases; some even carry lease-like attributes, to
# prove that entityType alone decides. None of them may be parsed as a lease.
NOT_LEASES: list[dict[str, Any]] = [
    {"leaseKey": {"S": "WorkerMetricStats#worker-1"}, "entityType": {"S": "WORKER_METRICS"}, "cpu": {"N": "42"}},
    {
        "leaseKey": {"S": "Leader"},
        "entityType": {"S": "COORDINATOR_STATE"},
        "leaseOwner": {"S": "kcl-worker-3"},
        "leaseCounter": {"N": "17"},
    },
    {"leaseKey": {"S": "shardId-000000000099"}, "entityType": {"S": "MIGRATION"}, "checkpoint": {"S": SHARD_END}},
    {"leaseKey": {"S": "Unowned"}, "entityType": {"S": "STATE"}, "leaseCounter": {"N": "0"}},
]


def raw_items(moto: MotoServer, table_name: str) -> dict[str, dict[str, Any]]:
    dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    return {i["leaseKey"]["S"]: i for i in dynamodb.scan(TableName=table_name, ConsistentRead=True)["Items"]}


async def test_rows_that_are_not_leases_are_never_taken_counted_changed_or_deleted(
    lease_table: LeaseTable, dynamodb_client: Client, moto_server: MotoServer
) -> None:
    for item in NOT_LEASES:
        await dynamodb_client.put_item(TableName=lease_table.name, Item=item)
    # A lease that says it is one, as a KCL 3.x lease may, is a lease.
    await dynamodb_client.put_item(
        TableName=lease_table.name,
        Item={"leaseKey": {"S": "shardId-000000000007"}, "entityType": {"S": "LEASE"}, "leaseCounter": {"N": "0"}},
    )
    real = [f"shardId-00000000000{i}" for i in range(4)]
    for key in real:
        assert await lease_table.create_lease(Lease(key, checkpoint=TRIM_HORIZON))
    real.append("shardId-000000000007")
    before = {item["leaseKey"]["S"]: item for item in NOT_LEASES}

    assert {lease.lease_key for lease in await lease_table.list_leases()} == set(real)
    assert await lease_table.get_lease("Leader") is None
    one, two = coordinator(lease_table, "one", finished_lease_retention=0.0), coordinator(lease_table, "two")
    # Discovery of a shard whose id collides with a non-lease row does not overwrite the row.
    assert await one.sync_shards([ShardInfo("shardId-000000000099")]) == []
    async with running(one):
        await wait_for(lambda: len(one.held()) == 5, SLACK, "the real leases")
        async with running(two):
            # The non-lease "Leader" row names an owner: counting it would make three workers and a target of 2.
            await wait_for(lambda: {len(one.held()), len(two.held())} == {2, 3}, 3 * TAKER + SLACK, "the balance")
            await asyncio.sleep(3 * FAILOVER)  # passes, renewals, clean-up: nothing may touch the rows
            assert one.held() | two.held() == set(real)
    assert one.deleted_finished == 0
    after = raw_items(moto_server, lease_table.name)
    assert {key: after[key] for key in before} == before
