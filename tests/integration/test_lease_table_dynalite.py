"""The lease table on dynalite (the fleet simulation's stand-in), and what a failed condition tells a worker.

dynalite serves every call the coordinator makes but ignores ``ReturnValuesOnConditionCheckFailure``: a failed
condition comes back without the item. The lease table then reads the item, so a worker still learns who holds
a lease it could not take (the take budget depends on it). On moto, as on DynamoDB, the item comes with the
failure and no read is made. Also here: a cold table (nobody owns anything) is taken in bounded steps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.session import get_session

from benchmarks.lease_fleet import create_leases
from streamkit.connectors.dynamodb import (
    SHARD_END,
    Lease,
    LeaseContendedError,
    LeaseCoordinator,
    LeaseLostError,
    LeaseTable,
)
from streamkit.devtools.localstack import Dynalite, MotoServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aws_env")]


class Calls:
    """DynamoDB calls by operation (botocore ``before-call``: once per API call)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1


async def _client(endpoint_url: str) -> Any:
    return get_session().create_client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")


@pytest.fixture(params=["dynalite", "moto"])
async def stand_in(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Any, Calls]]:
    server: Dynalite | MotoServer = request.getfixturevalue(
        "dynalite" if request.param == "dynalite" else "moto_server"
    )
    calls = Calls()
    async with await _client(server.endpoint_url) as client:
        client.meta.events.register("before-call.dynamodb", calls)
        yield request.param, client, calls


async def test_every_lease_table_operation_works_and_a_failed_take_names_the_holder(
    stand_in: tuple[str, Any, Calls],
) -> None:
    name, client, calls = stand_in
    table = LeaseTable(client, f"leases-{uuid.uuid4().hex[:8]}")
    assert await table.ensure_exists(poll_interval=0.05)
    keys = await create_leases(client, table.name, 3)

    leases = {lease.lease_key: lease for lease in await table.list_leases()}
    assert sorted(leases) == keys
    mine = await table.take(leases[keys[0]], "w1")
    assert (mine.lease_owner, mine.lease_counter) == ("w1", 1)

    # A second worker's take, planned on the same (now stale) scan, fails and names the holder.
    calls.counts.clear()
    with pytest.raises(LeaseContendedError) as contended:
        await table.take(leases[keys[0]], "w2")
    assert contended.value.current is not None and contended.value.current.lease_owner == "w1"
    assert "w1" in str(contended.value)
    # dynalite needs one read for that; DynamoDB (and moto) return the item with the failure.
    assert calls.counts == Counter({"UpdateItem": 1, "GetItem": 1 if name == "dynalite" else 0}) - Counter()

    renewed = await table.renew(mine, "w1")
    assert renewed.lease_counter == 2
    with pytest.raises(LeaseLostError, match="w1"):
        await table.renew(mine, "w1")  # stale counter: the fence holds

    # Graceful hand-off (KCL 3.x marker), then its completion by the holder and the take by the next owner.
    asked = await table.request_handoff(renewed, "w2")
    assert (asked.lease_owner, asked.checkpoint_owner) == ("w2", "w1")
    renewed_during = await table.renew(asked, "w1")
    released = await table.release(renewed_during, "w1")
    assert (released.lease_owner, released.checkpoint_owner) == ("w2", None)
    taken = await table.take(released, "w2")
    assert taken.lease_owner == "w2" and taken.owner_switches_since_checkpoint == 1

    assert await table.lease_keys_of("w2") == [keys[0]]  # the owner index (KEYS_ONLY GSI)

    # Checkpoint SHARD_END, release, and the conditional delete of a finished lease.
    other = await table.take(leases[keys[1]], "w1")
    finished = await table.checkpoint(other, "w1", SHARD_END, 0, child_shard_ids=["shardId-child"])
    assert finished.is_finished and finished.child_shard_ids == frozenset({"shardId-child"})
    done = await table.release(finished, "w1")
    assert await table.delete_finished(done)
    assert await table.get_lease(keys[1]) is None


class StepTable(LeaseTable):
    """A lease table that records, for every take, how many scans its worker had made before it."""

    def __init__(self, client: Any, name: str) -> None:
        super().__init__(client, name)
        self.scans = 0
        self.takes_after_scan: Counter[int] = Counter()
        self.first_scan_cold: bool | None = None

    async def list_leases(self) -> list[Lease]:
        leases = await super().list_leases()
        self.scans += 1
        if self.first_scan_cold is None:
            self.first_scan_cold = not any(lease.lease_owner for lease in leases)
        return leases

    async def take(self, seen: Lease, worker_id: str) -> Lease:
        self.takes_after_scan[self.scans] += 1
        return await super().take(seen, worker_id)


async def test_a_fleet_starting_on_a_cold_table_takes_it_in_bounded_steps(dynalite: Dynalite) -> None:
    """Eight workers start at once on 200 unowned leases: each first takes one round of parallel writes
    (max_concurrent_writes = 4 here), re-plans on a scan that shows the others, and the fleet ends even
    with far fewer conditional writes than workers x leases."""
    workers, shards, step = 8, 200, 4
    name = f"leases-{uuid.uuid4().hex[:8]}"
    async with await _client(dynalite.endpoint_url) as client:
        await LeaseTable(client, name).ensure_exists(poll_interval=0.05)
        await create_leases(client, name, shards)
        tables = [StepTable(client, name) for _ in range(workers)]
        fleet = [
            LeaseCoordinator(table, f"w{i}", failover_time=3.0, taker_interval=1.5, max_concurrent_writes=step)
            for i, table in enumerate(tables)
        ]
        tasks = [asyncio.create_task(c.run()) for c in fleet]
        try:
            async with asyncio.timeout(45):
                while True:
                    await asyncio.sleep(0.05)
                    counts = [len(c.held()) for c in fleet]
                    if sum(counts) == shards and max(counts) - min(counts) <= 1:
                        break
            held = [c.held() for c in fleet]
        finally:
            await asyncio.gather(*(c.stop() for c in fleet))
            await asyncio.gather(*tasks)
    # Nothing held twice; every worker holds its share.
    assert len(set().union(*held)) == shards and sorted(map(len, held)) == [shards // workers] * workers
    # A worker whose first scan showed a cold table took one step (one round of parallel writes) in its
    # first pass, not the 200 leases its plan had. Every take follows a scan, so the first scan DynamoDB
    # serves is always cold.
    cold = [table for table in tables if table.first_scan_cold]
    assert cold
    assert [table.takes_after_scan[1] for table in cold] == [step] * len(cold)
    # Without steps the cold workers would start by racing for every lease; with them the fleet needs about
    # one take per lease, plus the races of the second pass.
    takes = sum(sum(table.takes_after_scan.values()) for table in tables)
    print(f"\n{workers} workers, {shards} leases: {takes} takes, {len(cold)} cold first passes")
    assert shards <= takes < 2 * shards, takes
