"""The lease table and coordinator against DynamoDB (moto), with a short failover time so tests stay fast.

Timings are measured and printed (run with ``-s`` to see them) and asserted against the bounds stated in
docs/leases.md, plus slack for moto and a loaded machine. Faults DynamoDB never produces locally (throttling,
a lost conditional write) are injected with a botocore ``before-parameter-build`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from streamkit.connectors.dynamodb import (
    LATEST,
    OWNER_INDEX_NAME,
    SHARD_END,
    TRIM_HORIZON,
    Lease,
    LeaseCoordinator,
    LeaseEvent,
    LeaseLostError,
    LeaseTable,
    LeaseTableError,
    ShardInfo,
)

FAILOVER = 0.6  # renew every 0.2 s, scan every 0.6 s
RENEW = FAILOVER / 3
TAKER = FAILOVER
SLACK = 1.0  # moto answers in a few ms, but a loaded (shared, 2-core) machine can stall the loop for a while

pytestmark = pytest.mark.timeout(60)

Client = Any


# --- fixtures and helpers ---------------------------------------------------------------------------------------


def coordinator(table: LeaseTable, worker_id: str, **options: Any) -> LeaseCoordinator:
    return LeaseCoordinator(table, worker_id, failover_time=FAILOVER, **options)


@contextlib.asynccontextmanager
async def running(*coordinators: LeaseCoordinator, release: bool = True) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(c.run(), name=c.worker_id) for c in coordinators]
    try:
        yield tasks
    finally:
        await asyncio.gather(*(c.stop(release=release) for c in coordinators))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition`` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def create_leases(table: LeaseTable, count: int, **fields: Any) -> list[str]:
    keys = [f"shardId-{index:012d}" for index in range(count)]
    for key in keys:
        assert await table.create_lease(Lease(key, checkpoint=TRIM_HORIZON, **fields))
    return keys


def balanced(coordinators: list[LeaseCoordinator], total: int) -> bool:
    counts = [len(c.held()) for c in coordinators]
    union = set().union(*(c.held() for c in coordinators))
    return sum(counts) == total == len(union) and max(counts) - min(counts) <= 1


def drain(c: LeaseCoordinator) -> list[LeaseEvent]:
    events = []
    while not c.events.empty():
        events.append(c.events.get_nowait())
    return events


class FaultInjector:
    """Makes the next ``count`` matching DynamoDB calls fail with ``code`` before they reach the server.

    Hooked on ``before-parameter-build``, which sees the API parameters (``before-call`` sees the serialized
    HTTP request); an exception raised there skips botocore's own retries, so our retry policy is what runs.
    """

    def __init__(self, client: Client, operation: str, code: str, count: int, when: Callable[[dict[str, Any]], bool]):
        self.code, self.remaining, self.when, self.fired = code, count, when, 0
        client.meta.events.register(f"before-parameter-build.dynamodb.{operation}", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        if self.remaining > 0 and self.when(params):
            self.remaining -= 1
            self.fired += 1
            raise ClientError({"Error": {"Code": self.code, "Message": "injected by the test"}}, "UpdateItem")


def is_renewal(params: dict[str, Any]) -> bool:
    return bool(params.get("UpdateExpression") == "SET #leaseCounter = :next")


def is_checkpoint(params: dict[str, Any]) -> bool:
    return "#checkpoint = :checkpoint" in str(params.get("UpdateExpression"))


# --- the table ----------------------------------------------------------------------------------------------------


async def test_the_table_is_created_like_the_kcls_with_the_owner_index(
    lease_table: LeaseTable, dynamodb_client: Client
) -> None:
    description = (await dynamodb_client.describe_table(TableName=lease_table.name))["Table"]
    assert description["TableStatus"] == "ACTIVE"
    assert description["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert {"AttributeName": "leaseKey", "AttributeType": "S"} in description["AttributeDefinitions"]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    [index] = description["GlobalSecondaryIndexes"]
    assert index["IndexName"] == OWNER_INDEX_NAME == "LeaseOwnerToLeaseKeyIndex"
    assert index["KeySchema"] == [
        {"AttributeName": "leaseOwner", "KeyType": "HASH"},
        {"AttributeName": "leaseKey", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert not await lease_table.ensure_exists()  # exists: used as it is

    keys = await create_leases(lease_table, 3)
    taken = await lease_table.take(await _get(lease_table, keys[1]), "w1")
    assert taken.lease_owner == "w1" and taken.lease_counter == 1
    assert await lease_table.lease_keys_of("w1") == [keys[1]]
    assert not await lease_table.create_lease(Lease(keys[0], checkpoint=LATEST))  # conditional create: untouched
    assert (await _get(lease_table, keys[0])).checkpoint == TRIM_HORIZON


async def test_a_kcl_2_table_without_the_index_is_used_as_it_is(dynamodb_client: Client) -> None:
    name = f"kcl2-{uuid.uuid4().hex[:8]}"
    await dynamodb_client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        ProvisionedThroughput={"ReadCapacityUnits": 10, "WriteCapacityUnits": 10},
    )
    table = LeaseTable(dynamodb_client, name)
    assert not await table.ensure_exists(poll_interval=0.05)
    description = (await dynamodb_client.describe_table(TableName=name))["Table"]
    assert not description.get("GlobalSecondaryIndexes")  # not modified
    await create_leases(table, 2)
    await table.take(await _get(table, "shardId-000000000000"), "w1")
    assert await table.lease_keys_of("w1") == ["shardId-000000000000"]  # falls back to a scan


async def test_a_missing_table_is_an_error_that_names_it(dynamodb_client: Client) -> None:
    table = LeaseTable(dynamodb_client, "no-such-table")
    with pytest.raises(LeaseTableError, match="no-such-table") as raised:
        await table.list_leases()
    assert raised.value.code == "ResourceNotFoundException" and not raised.value.retryable


KCL_LEASE = {
    "leaseKey": {"S": "shardId-000000000001"},
    "leaseOwner": {"S": "kcl-worker-7"},
    "leaseCounter": {"N": "42"},
    "checkpoint": {"S": "49590338271490256608559692538361571095921575989136588898"},
    "checkpointSubSequenceNumber": {"N": "0"},
    "ownerSwitchesSinceCheckpoint": {"N": "0"},
    "parentShardId": {"SS": ["shardId-000000000000"]},
    "startingHashKey": {"S": "0"},
    "endingHashKey": {"S": "170141183460469231731687303715884105727"},
    "pendingCheckpoint": {"S": "49590338271490256608559692538361571095921575989136588999"},
    "pendingCheckpointSubSequenceNumber": {"N": "0"},
    "throughputKBps": {"N": "12.5"},
    "streamName": {"S": "an attribute this version does not know"},
}
KCL_PARENT = {
    "leaseKey": {"S": "shardId-000000000000"},
    "leaseCounter": {"N": "9"},
    "checkpoint": {"S": "SHARD_END"},
    "checkpointSubSequenceNumber": {"N": "0"},
    "ownerSwitchesSinceCheckpoint": {"N": "0"},
    "childShardIds": {"SS": ["shardId-000000000001"]},
}


async def test_a_lease_the_kcl_wrote_is_taken_over_honoured_and_checkpointed_without_loss(
    lease_table: LeaseTable, dynamodb_client: Client
) -> None:
    for item in (KCL_PARENT, KCL_LEASE):
        await dynamodb_client.put_item(TableName=lease_table.name, Item=item)
    worker = coordinator(lease_table, "streamkit-1")
    async with running(worker):
        # The KCL worker is gone: its counter stays at 42, so the lease expires on our clock.
        took = await wait_for(lambda: "shardId-000000000001" in worker.held(), 3 * FAILOVER + SLACK, "take-over")
        event = await asyncio.wait_for(worker.events.get(), 1)
        assert (event.kind, event.lease.lease_key) == ("acquired", "shardId-000000000001")
        assert event.lease.checkpoint == "49590338271490256608559692538361571095921575989136588898"
        assert "shardId-000000000000" not in worker.held()  # finished (SHARD_END): never taken
        await worker.checkpoint("shardId-000000000001", "49590338271490256608559692538361571095921575989136589000")
        item = (
            await dynamodb_client.get_item(TableName=lease_table.name, Key={"leaseKey": {"S": "shardId-000000000001"}})
        )["Item"]
    print(f"\nKCL lease expired and taken {took:.2f} s after the first scan (failover {FAILOVER} s)")
    assert item["checkpoint"] == {"S": "49590338271490256608559692538361571095921575989136589000"}
    assert item["checkpointSubSequenceNumber"] == {"N": "0"}
    assert item["ownerSwitchesSinceCheckpoint"] == {"N": "0"}
    assert item["leaseOwner"] == {"S": "streamkit-1"}
    assert int(item["leaseCounter"]["N"]) > 42
    for kept in ("parentShardId", "startingHashKey", "endingHashKey", "throughputKBps", "streamName"):
        assert item[kept] == KCL_LEASE[kept], kept
    # Like the KCL's own checkpoint, a committed checkpoint drops the prepared one.
    assert "pendingCheckpoint" not in item and "pendingCheckpointSubSequenceNumber" not in item


# --- taking, renewing, expiry -------------------------------------------------------------------------------------


async def test_unowned_leases_are_taken_at_the_first_pass(lease_table: LeaseTable) -> None:
    keys = await create_leases(lease_table, 5)
    worker = coordinator(lease_table, "w1")
    async with running(worker):
        took = await wait_for(lambda: worker.held() == set(keys), SLACK, "the first pass")
        acquired = {(await worker.events.get()).lease.lease_key for _ in keys}
    assert acquired == set(keys)
    print(f"\n5 unowned leases taken in {took:.2f} s")


async def test_renewals_keep_a_lease_and_a_crashed_owners_lease_is_taken_within_the_bound(
    lease_table: LeaseTable,
) -> None:
    [key] = await create_leases(lease_table, 1)
    owner, peer = coordinator(lease_table, "owner"), coordinator(lease_table, "peer")
    async with running(owner) as tasks:
        await wait_for(lambda: bool(owner.held()), SLACK, "the owner's take")
        async with running(peer):
            await asyncio.sleep(4 * FAILOVER)  # many failover times: renewals keep it
            assert owner.held() == {key} and peer.held() == set()
            counter_before = (await _get(lease_table, key)).lease_counter
            tasks[0].cancel()  # the owner crashes: no release, renewals stop
            crashed = time.monotonic()
            took = await wait_for(lambda: peer.held() == {key}, 3 * FAILOVER + SLACK, "the take-over")
    assert counter_before >= 4 * FAILOVER / RENEW - 2
    # Bound (docs/leases.md): failover_time + 1.1 x taker_interval after the owner's last renewal.
    print(f"\ncrashed owner's lease taken over after {took:.2f} s (bound {FAILOVER + 1.1 * TAKER:.2f} s + a scan)")
    assert took <= FAILOVER + 1.1 * TAKER + SLACK
    assert time.monotonic() - crashed >= FAILOVER  # not before it could have expired


async def test_a_worker_that_lost_its_lease_is_fenced(lease_table: LeaseTable) -> None:
    [key] = await create_leases(lease_table, 1)
    worker = coordinator(lease_table, "slow-worker", graceful_handoff=False)
    async with running(worker):
        await wait_for(lambda: worker.held() == {key}, SLACK, "the take")
        await worker.checkpoint(key, "100")
        # Another worker steals the lease the hard way (as a KCL 2.x worker would).
        await lease_table.take(await _get(lease_table, key), "thief")
        with pytest.raises(LeaseLostError) as raised:
            await worker.checkpoint(key, "200")
        assert key in str(raised.value) and "slow-worker" in str(raised.value)
        assert (raised.value.lease_key, raised.value.worker_id) == (key, "slow-worker")
        assert worker.held() == set()
        events = [e.kind for e in drain(worker)]
    assert events == ["acquired", "lost"]
    lease = await _get(lease_table, key)
    assert (lease.lease_owner, lease.checkpoint) == ("thief", "100")  # the fenced checkpoint never landed


# --- balancing ------------------------------------------------------------------------------------------------


async def test_workers_joining_converge_to_an_even_share_within_the_bound(lease_table: LeaseTable) -> None:
    keys = await create_leases(lease_table, 12)
    workers = [coordinator(lease_table, f"w{index}") for index in range(3)]
    bound = 2.2 * TAKER + 2 * RENEW + SLACK  # two rounds of passes, then the hand-offs complete
    async with running(workers[0]):
        await wait_for(lambda: workers[0].held() == set(keys), SLACK, "w0 alone taking everything")
        async with running(workers[1]):
            two = await wait_for(lambda: balanced(workers[:2], 12), bound, "6/6")
            async with running(workers[2]):
                three = await wait_for(lambda: balanced(workers, 12), bound, "4/4/4")
                await asyncio.sleep(2 * TAKER)  # and it stays there: no ping-pong
                assert [len(w.held()) for w in workers] == [4, 4, 4]
    print(f"\nconvergence: 12 leases, 2nd worker joins -> 6/6 in {two:.2f} s; 3rd -> 4/4/4 in {three:.2f} s")


async def test_a_clean_release_lets_a_peer_take_over_within_one_taker_interval(lease_table: LeaseTable) -> None:
    keys = await create_leases(lease_table, 6)
    leaving, staying = coordinator(lease_table, "leaving"), coordinator(lease_table, "staying")
    async with running(staying):
        async with running(leaving):
            await wait_for(lambda: balanced([leaving, staying], 6), 2.2 * TAKER + SLACK, "3/3")
            mine = leaving.held()
        released = time.monotonic()  # leaving.stop(release=True) has returned
        took = await wait_for(lambda: staying.held() == set(keys), 1.1 * TAKER + SLACK, "the take-over")
        for key in mine:
            assert (await _get(lease_table, key)).lease_owner == "staying"
    print(f"\nreleased leases taken by the peer {took:.2f} s after release (one taker interval = {TAKER} s)")
    assert took <= 1.1 * TAKER + SLACK
    assert time.monotonic() - released < FAILOVER + SLACK  # faster than waiting for expiry would allow


# --- graceful hand-off -------------------------------------------------------------------------------------------


async def test_a_steal_checkpoints_through_on_handoff_before_ownership_moves(lease_table: LeaseTable) -> None:
    keys = await create_leases(lease_table, 4)
    seen_during_callback: dict[str, Lease] = {}
    finished_at: dict[str, float] = {}

    async def on_handoff(lease_key: str) -> None:
        seen_during_callback[lease_key] = await _get(lease_table, lease_key)
        await asyncio.sleep(0.05)  # the runtime drains in-flight batches
        await owner.checkpoint(lease_key, f"1000{keys.index(lease_key)}")
        finished_at[lease_key] = time.monotonic()

    owner = coordinator(lease_table, "owner", on_handoff=on_handoff)
    joiner = coordinator(lease_table, "joiner")
    async with running(owner):
        await wait_for(lambda: owner.held() == set(keys), SLACK, "the owner taking everything")
        async with running(joiner):
            took = await wait_for(lambda: len(joiner.held()) == 2, 2 * TAKER + SLACK, "the hand-offs")
            acquired = [await asyncio.wait_for(joiner.events.get(), 1) for _ in range(2)]
            acquired_at = time.monotonic()
    print(f"\ntwo leases handed over (checkpoint first) {took:.2f} s after the second worker started")
    assert set(seen_during_callback) == {event.lease.lease_key for event in acquired}
    for event in acquired:
        key = event.lease.lease_key
        during = seen_during_callback[key]
        # During the callback the request is visible, and the owner still holds the lease.
        assert (during.lease_owner, during.checkpoint_owner) == ("joiner", "owner")
        # The new owner starts exactly where the old one checkpointed.
        assert event.lease.checkpoint == f"1000{keys.index(key)}"
        assert finished_at[key] <= acquired_at
    lost = [e for e in drain(owner) if e.kind == "lost"]
    assert {e.lease.lease_key for e in lost} == set(seen_during_callback)
    assert all("handed off to joiner" in e.reason for e in lost)


async def test_a_handoff_the_owner_ignores_is_forced_after_failover_time(
    lease_table: LeaseTable, dynamodb_client: Client
) -> None:
    """The owner behaves like a KCL 2.x worker: it renews by counter only and ignores checkpointOwner."""
    keys = await create_leases(lease_table, 2)
    for key in keys:
        await lease_table.take(await _get(lease_table, key), "kcl-2-worker")
    stop_kcl = asyncio.Event()

    async def kcl_2_renewer() -> None:
        counters = {key: 1 for key in keys}
        while not stop_kcl.is_set():
            for key in list(counters):
                try:
                    await dynamodb_client.update_item(
                        TableName=lease_table.name,
                        Key={"leaseKey": {"S": key}},
                        UpdateExpression="SET leaseCounter = :next",
                        ConditionExpression="leaseCounter = :seen",
                        ExpressionAttributeValues={
                            ":seen": {"N": str(counters[key])},
                            ":next": {"N": str(counters[key] + 1)},
                        },
                    )
                    counters[key] += 1
                except dynamodb_client.exceptions.ConditionalCheckFailedException:
                    del counters[key]  # lost: a KCL 2.x worker shuts that shard down
            await asyncio.sleep(RENEW)

    kcl = asyncio.create_task(kcl_2_renewer())
    stealer = coordinator(lease_table, "stealer")
    try:
        async with running(stealer):
            took = await wait_for(lambda: len(stealer.held()) == 1, FAILOVER + TAKER + SLACK, "the forced take")
            [key] = stealer.held()
    finally:
        stop_kcl.set()
        await kcl
    print(f"\nignored hand-off forced after {took:.2f} s (failover_time {FAILOVER} s)")
    assert took >= FAILOVER  # the owner was alive and renewing: it got the full failover time
    lease = await _get(lease_table, key)
    assert lease.checkpoint_owner is None and lease.owner_switches_since_checkpoint == 1


# --- injected faults ------------------------------------------------------------------------------------------------


async def test_throttled_renewals_and_checkpoints_are_retried(lease_table: LeaseTable, dynamodb_client: Client) -> None:
    [key] = await create_leases(lease_table, 1)
    worker = coordinator(lease_table, "w1")
    async with running(worker):
        await wait_for(lambda: worker.held() == {key}, SLACK, "the take")
        renewals = FaultInjector(dynamodb_client, "UpdateItem", "ProvisionedThroughputExceededException", 3, is_renewal)
        await wait_for(lambda: renewals.remaining == 0, 3 * RENEW + SLACK, "the throttled renewals")
        checkpoints = FaultInjector(dynamodb_client, "UpdateItem", "ThrottlingException", 2, is_checkpoint)
        await worker.checkpoint(key, "12345")
        await asyncio.sleep(2 * RENEW)
        assert worker.held() == {key}
        assert [e.kind for e in drain(worker)] == ["acquired"]
    assert (renewals.fired, checkpoints.fired) == (3, 2)
    assert (await _get(lease_table, key)).checkpoint == "12345"


async def test_throttling_beyond_the_retries_is_a_retryable_table_error(
    lease_table: LeaseTable, dynamodb_client: Client
) -> None:
    [key] = await create_leases(lease_table, 1)
    lease = await lease_table.take(await _get(lease_table, key), "w1")
    FaultInjector(dynamodb_client, "UpdateItem", "ThrottlingException", 100, is_checkpoint)
    with pytest.raises(LeaseTableError, match=key) as raised:
        await lease_table.checkpoint(lease, "w1", "5")
    assert raised.value.retryable and raised.value.code == "ThrottlingException"


async def test_a_conditional_failure_on_renewal_drops_the_lease_then_it_is_taken_back(
    lease_table: LeaseTable, dynamodb_client: Client
) -> None:
    [key] = await create_leases(lease_table, 1)
    worker = coordinator(lease_table, "w1")
    async with running(worker):
        await wait_for(lambda: worker.held() == {key}, SLACK, "the take")
        assert (await worker.events.get()).kind == "acquired"
        FaultInjector(dynamodb_client, "UpdateItem", "ConditionalCheckFailedException", 1, is_renewal)
        lost = await asyncio.wait_for(worker.events.get(), 2 * RENEW + SLACK)
        assert (lost.kind, lost.lease.lease_key) == ("lost", key)
        # The table still names w1 (the failure was injected), so the next pass takes it back.
        again = await asyncio.wait_for(worker.events.get(), 1.1 * TAKER + SLACK)
        assert (again.kind, again.lease.lease_key) == ("acquired", key)


# --- resharding ------------------------------------------------------------------------------------------------------


async def test_a_child_is_announced_only_after_its_parent_reached_shard_end(lease_table: LeaseTable) -> None:
    parent = ShardInfo("shardId-000000000000", starting_hash_key="0", ending_hash_key="99")
    children = [
        ShardInfo("shardId-000000000001", ("shardId-000000000000",), "0", "49"),
        ShardInfo("shardId-000000000002", ("shardId-000000000000",), "50", "99"),
    ]
    reader, child_reader = coordinator(lease_table, "reader"), coordinator(lease_table, "child-reader")
    assert await reader.sync_shards([parent, children[0]]) == ["shardId-000000000000", "shardId-000000000001"]
    # Fix who holds what: the table names them, each worker takes its own back at its first pass.
    await lease_table.take(await _get(lease_table, "shardId-000000000000"), "reader")
    await lease_table.take(await _get(lease_table, "shardId-000000000001"), "child-reader")
    async with running(reader, child_reader):
        await wait_for(lambda: "shardId-000000000001" in child_reader.held(), SLACK, "the child's take")
        await asyncio.sleep(1.7 * TAKER)  # not a multiple of the taker interval: a fair measurement below
        assert child_reader.events.empty()  # held, but its parent is still being read
        await reader.checkpoint("shardId-000000000000", "500")
        await reader.finish_shard("shardId-000000000000", children)
        finished = time.monotonic()
        event = await asyncio.wait_for(child_reader.events.get(), 1.1 * TAKER + SLACK)
        waited = time.monotonic() - finished
    print(f"\nchild announced {waited:.2f} s after its parent reached SHARD_END")
    assert (event.kind, event.lease.lease_key, event.lease.checkpoint) == (
        "acquired",
        "shardId-000000000001",
        TRIM_HORIZON,
    )
    done = await _get(lease_table, "shardId-000000000000")
    assert done.checkpoint == SHARD_END and done.lease_owner is None
    assert done.child_shard_ids == {"shardId-000000000001", "shardId-000000000002"}
    second = await _get(lease_table, "shardId-000000000002")  # created by finish_shard, idempotently
    assert second.checkpoint == TRIM_HORIZON and second.parent_shard_ids == {"shardId-000000000000"}


async def test_sync_shards_starts_roots_at_the_initial_position_and_descendants_at_trim_horizon(
    lease_table: LeaseTable,
) -> None:
    closed = ShardInfo("shardId-0", ending_sequence_number="99")
    open_children = [ShardInfo("shardId-1", ("shardId-0",)), ShardInfo("shardId-2", ("shardId-0",))]
    orphan = ShardInfo("shardId-3", ("shardId-trimmed",))  # its parent is past retention
    worker = coordinator(lease_table, "w1", initial_position=LATEST)
    assert await worker.sync_shards([closed, *open_children, orphan]) == ["shardId-1", "shardId-2", "shardId-3"]
    for key in ("shardId-1", "shardId-2", "shardId-3"):
        assert (await _get(lease_table, key)).checkpoint == LATEST
    assert await _get_or_none(lease_table, "shardId-0") is None  # closed, nothing after LATEST in it
    # A later split of a shard we already read: its children start at their beginning.
    split = [ShardInfo("shardId-4", ("shardId-1",)), ShardInfo("shardId-5", ("shardId-1",))]
    assert await worker.sync_shards([closed, *open_children, orphan, *split]) == ["shardId-4", "shardId-5"]
    assert (await _get(lease_table, "shardId-4")).checkpoint == TRIM_HORIZON
    assert await worker.sync_shards([closed, *open_children, orphan, *split]) == []  # idempotent
    async with running(worker):
        # shardId-1 and -2 (parent skipped) and shardId-3 (parent trimmed) are readable; -4/-5 wait for -1.
        await wait_for(lambda: len(worker.held()) == 5, SLACK, "the takes")
        await asyncio.sleep(0.1)
        announced = {e.lease.lease_key for e in drain(worker)}
    assert announced == {"shardId-1", "shardId-2", "shardId-3"}


async def _get(table: LeaseTable, key: str) -> Lease:
    lease = await table.get_lease(key)
    assert lease is not None, key
    return lease


async def _get_or_none(table: LeaseTable, key: str) -> Lease | None:
    return await table.get_lease(key)


async def test_a_paused_taker_keeps_renewing_but_takes_nothing(lease_table: LeaseTable) -> None:
    """A draining worker must not steal leases it would release moments later, yet keeps what it holds."""
    keys = await create_leases(lease_table, 4)
    holder, paused = coordinator(lease_table, "holder"), coordinator(lease_table, "paused")
    async with running(holder):
        await wait_for(lambda: len(holder.held()) == 4, 5, "the holder to take all leases")
        paused.pause_taking()
        async with running(paused):
            await asyncio.sleep(3 * FAILOVER)  # several taker passes that would otherwise steal two leases
            assert paused.held() == set()
            assert holder.held() == set(keys)
