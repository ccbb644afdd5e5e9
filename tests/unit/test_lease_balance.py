"""The pure parts of the lease coordinator: balancing, expiry, readiness, item conversion, worker ids.

The convergence tests simulate taker passes against an in-memory table: a steal moves ``leaseOwner`` at
once, as a hand-off request does in DynamoDB, and a write made on a stale view fails like a conditional write.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from streamkit.connectors.dynamodb import (
    DEFAULT_FAILOVER_TIME,
    DEFAULT_LEASE_RETRY,
    SHARD_END,
    ExpiryTracker,
    Lease,
    ShardInfo,
    default_worker_id,
    is_ready,
    parent_lease_keys,
    plan_takes,
)

Table = dict[str, str | None]  # lease key -> leaseOwner


def _leases(table: Table) -> list[Lease]:
    return [Lease(lease_key=key, lease_owner=owner) for key, owner in sorted(table.items())]


def _table(**owners: int) -> Table:
    """``_table(a=3, b=1, none=2)``: a owns 3 leases, b owns 1, 2 are unowned. Keys are k00, k01, ..."""
    owner_list = [None if name == "none" else name for name, count in owners.items() for _ in range(count)]
    return {f"k{index:02d}": owner for index, owner in enumerate(owner_list)}


def _counts(table: Table, workers: Iterable[str]) -> list[int]:
    tally = Counter(table.values())
    return [tally[worker] for worker in workers]


def _balanced(table: Table, workers: Sequence[str]) -> bool:
    counts = _counts(table, workers)
    return None not in table.values() and max(counts) - min(counts) <= 1


def _held_by(table: Table, worker: str) -> set[str]:
    return {key for key, owner in table.items() if owner == worker}


def _sequential_round(table: Table, order: Sequence[str]) -> None:
    """Each worker runs one taker pass, seeing the passes before it."""
    for worker in order:
        plan = plan_takes(_leases(table), worker, held=_held_by(table, worker))
        for key in plan.take + plan.steal:
            table[key] = worker


def _overlapping_round(table: Table, order: Sequence[str], rng: random.Random) -> None:
    """Every worker plans on the same scan; their writes interleave and the stale ones fail."""
    snapshot = dict(table)
    queues = {
        worker: (lambda plan: plan.take + plan.steal)(
            plan_takes(_leases(snapshot), worker, held=_held_by(snapshot, worker), rng=random.Random(rng.random()))
        )
        for worker in order
    }
    while any(queues.values()):
        for worker in order:
            if queues[worker]:
                key = queues[worker].pop(0)
                if table[key] == snapshot[key]:  # the conditional write
                    table[key] = worker


# --- plan_takes: single decisions ---------------------------------------------------------------------------


def test_a_lone_worker_takes_every_unowned_lease() -> None:
    plan = plan_takes(_leases(_table(none=5)), "me")
    assert sorted(plan.take) == ["k00", "k01", "k02", "k03", "k04"]
    assert plan.steal == []
    assert (plan.target, plan.active_workers) == (5, 1)


def test_target_is_the_ceiling_of_the_share_among_live_owners_and_me() -> None:
    plan = plan_takes(_leases(_table(a=4, b=4, none=2)), "me")
    assert (plan.target, plan.active_workers) == (4, 3)  # ceil(10 / 3)
    assert sorted(plan.take) == ["k08", "k09"]  # the unowned ones first
    assert plan.steal == ["k00"]  # then one of a's: a (4) is two above me (2); afterwards 3 / 4 / 3


def test_unowned_before_expired_before_stealing() -> None:
    table = _table(a=4, dead=2, none=1)
    expired = {key for key, owner in table.items() if owner == "dead"}
    plan = plan_takes(_leases(table), "me", expired=expired)
    # live owners: a, me -> target ceil(7 / 2) = 4
    assert plan.take == ["k06", "k04", "k05"]
    assert plan.steal == []  # a (4) is not two above me (3) any more


def test_steal_never_leaves_the_victim_below_the_stealer() -> None:
    plan = plan_takes(_leases(_table(a=7)), "me")
    assert plan.target == 4
    assert len(plan.steal) == 3  # a keeps 4: stealing a fourth would make a (3) poorer than me (4)


def test_steals_come_from_the_most_loaded_worker() -> None:
    plan = plan_takes(_leases(_table(a=2, b=6, c=4)), "me")
    # target ceil(12 / 4) = 3: b 6->5->4, then b and c tie at 4: the smaller id wins, so that workers
    # planning at the same time pick the same victim
    victims = [_table(a=2, b=6, c=4)[key] for key in plan.steal]
    assert victims == ["b", "b", "b"]
    plan = plan_takes(_leases(_table(a=2, b=4, c=6)), "me")
    assert [_table(a=2, b=4, c=6)[key] for key in plan.steal] == ["c", "c", "b"]


def test_no_steal_within_one_lease_of_the_victim() -> None:
    table = _table(a=4, b=3, me=3)
    plan = plan_takes(_leases(table), "me", held=_held_by(table, "me"))
    assert plan.target == 4
    assert plan.take == plan.steal == []


def test_a_worker_at_or_above_target_takes_nothing() -> None:
    plan = plan_takes(_leases(_table(a=1, me=3, none=0)), "me", held=[f"k0{i}" for i in range(1, 4)])
    assert plan.take == plan.steal == []


def test_max_leases_caps_the_target() -> None:
    plan = plan_takes(_leases(_table(none=10)), "me", max_leases=3)
    assert (plan.target, len(plan.take)) == (3, 3)


def test_finished_leases_are_neither_counted_nor_taken() -> None:
    leases = [Lease("done", checkpoint=SHARD_END), Lease("open")]
    plan = plan_takes(leases, "me")
    assert plan.take == ["open"]
    assert plan.target == 1


def test_held_leases_are_never_planned_again() -> None:
    table = _table(none=3)
    plan = plan_takes(_leases(table), "me", held={"k00"})
    assert "k00" not in plan.take


def test_leases_owned_by_me_in_the_table_but_not_held_are_taken_back() -> None:
    plan = plan_takes([Lease("k0", lease_owner="me"), Lease("k1", lease_owner="a")], "me")
    assert plan.take == ["k0"]


def test_a_pending_handoff_counts_for_the_next_owner_and_cannot_be_stolen_again() -> None:
    leases = [
        Lease("k0", lease_owner="b", checkpoint_owner="a"),  # a is handing k0 to b
        Lease("k1", lease_owner="b"),
        Lease("k2", lease_owner="b"),
        Lease("k3", lease_owner="a"),
    ]
    plan = plan_takes(leases, "me")
    # b counts 3 (k0 included), a 1; workers a, b, me -> target 2; only k1/k2 are stealable from b
    assert plan.target == 2
    assert plan.steal == ["k1"]


def test_the_sender_of_a_handoff_counts_the_lease_for_its_next_owner() -> None:
    leases = [
        Lease("k0", lease_owner="b", checkpoint_owner="me"),  # I am handing k0 and k1 to b
        Lease("k1", lease_owner="b", checkpoint_owner="me"),
        Lease("k2", lease_owner="me"),
        Lease("k3", lease_owner="me"),
    ]
    plan = plan_takes(leases, "me", held={"k0", "k1", "k2", "k3"})
    assert (plan.target, plan.active_workers) == (2, 2)
    assert plan.take == plan.steal == []


def test_a_handoff_to_me_is_awaited_unless_the_sender_stopped_renewing() -> None:
    pending = [Lease("k0", lease_owner="me", checkpoint_owner="a"), Lease("k1", lease_owner="a")]
    assert plan_takes(pending, "me").take == []
    assert plan_takes(pending, "me", expired={"k0"}).take == ["k0"]


def test_free_leases_are_shuffled_with_an_rng_but_steals_stay_deterministic() -> None:
    table = _table(none=20)
    orders = {tuple(plan_takes(_leases(table), "me", rng=random.Random(seed)).take) for seed in range(5)}
    assert len(orders) > 1
    steals = {tuple(plan_takes(_leases(_table(a=20)), "me", rng=random.Random(seed)).steal) for seed in range(5)}
    assert len(steals) == 1


# --- plan_takes: convergence of a fleet -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("leases", [1, 2, 5, 7, 12, 16])
@pytest.mark.parametrize("start", ["one-holds-all", "all-unowned", "one-crashed", "mixed"])
def test_one_sequential_round_balances_any_fleet(workers: int, leases: int, start: str) -> None:
    """The bound in docs/leases.md: after every worker ran one taker pass (each seeing the ones before it), in
    any order, every lease is owned and every worker is within one lease of every other."""
    names = [f"w{index}" for index in range(workers)]
    rng = random.Random(f"{workers}-{leases}-{start}")
    owners: list[str | None]
    if start == "one-holds-all":
        owners = ["w0"] * leases
    elif start == "all-unowned":
        owners = [None] * leases
    elif start == "one-crashed":  # the crashed worker's leases show up as released (or expired)
        owners = [names[index % workers] if index % workers else None for index in range(leases)]
    else:
        owners = [rng.choice([*names[: rng.randint(1, workers)], None]) for _ in range(leases)]
    initial: Table = {f"k{index:02d}": owner for index, owner in enumerate(owners)}
    for order in itertools.permutations(names):
        table = dict(initial)
        _sequential_round(table, order)
        assert _balanced(table, names), (order, _counts(table, names))
        settled = dict(table)
        _sequential_round(table, order)
        assert table == settled, "a balanced fleet must not move leases (no ping-pong)"


def test_one_sequential_round_balances_random_fleets() -> None:
    rng = random.Random(7)
    for _ in range(300):
        workers = [f"w{index}" for index in range(rng.randint(1, 7))]
        pool = [*workers[: rng.randint(1, len(workers))], None]
        table: Table = {f"k{index:02d}": rng.choice(pool) for index in range(rng.randint(1, 40))}
        _sequential_round(table, rng.sample(workers, len(workers)))
        assert _balanced(table, workers), _counts(table, workers)


def test_overlapping_passes_cost_at_most_one_extra_round() -> None:
    """Workers started together scan the same table; one overlapping round, then sequential passes."""
    rng = random.Random(11)
    rounds_needed = Counter[int]()
    for _ in range(300):
        workers = [f"w{index}" for index in range(rng.randint(2, 7))]
        pool = [*workers[: rng.randint(1, len(workers))], None]
        table: Table = {f"k{index:02d}": rng.choice(pool) for index in range(rng.randint(1, 40))}
        _overlapping_round(table, rng.sample(workers, len(workers)), rng)
        rounds = 1
        while not _balanced(table, workers):
            _sequential_round(table, rng.sample(workers, len(workers)))
            rounds += 1
        rounds_needed[rounds] += 1
    assert max(rounds_needed) <= 2, rounds_needed


# --- expiry ----------------------------------------------------------------------------------------------------


def test_expiry_is_counted_from_the_last_counter_change_on_the_observers_clock() -> None:
    tracker = ExpiryTracker(failover_time=10.0)
    tracker.observe([Lease("a", "w", 1), Lease("b", "w", 5)], now=100.0)
    assert tracker.expired(now=110.0) == set()  # first sight counts as a change: a newcomer waits
    tracker.observe([Lease("a", "w", 2), Lease("b", "w", 5)], now=105.0)
    assert tracker.expired(now=110.5) == {"b"}
    assert tracker.expired(now=115.5) == {"a", "b"}
    tracker.observe([Lease("a", "w", 2)], now=116.0)  # b deleted: forgotten
    assert tracker.expired(now=116.0) == {"a"}
    assert tracker.last_change("b") is None


# --- parent before child -------------------------------------------------------------------------------------


def test_a_child_is_ready_only_when_every_parent_is_at_shard_end() -> None:
    child = Lease("shardId-2", parent_shard_ids=frozenset({"shardId-0", "shardId-1"}))
    parents = {"shardId-0": Lease("shardId-0", checkpoint=SHARD_END), "shardId-1": Lease("shardId-1", checkpoint="9")}
    assert not is_ready(child, parents)
    parents["shardId-1"] = Lease("shardId-1", checkpoint=SHARD_END)
    assert is_ready(child, parents)


def test_an_absent_parent_counts_as_done_only_when_known_finished() -> None:
    child = Lease("shardId-2", parent_shard_ids=frozenset({"shardId-0"}))
    assert not is_ready(child, {})
    assert is_ready(child, {}, finished={"shardId-0"})
    assert is_ready(Lease("shardId-0"), {})  # no parents


def test_multi_stream_lease_keys_find_their_parents_under_the_same_prefix() -> None:
    child = Lease("123:orders:1700000000:shardId-2", parent_shard_ids=frozenset({"shardId-0"}))
    assert parent_lease_keys(child) == {"123:orders:1700000000:shardId-0"}


# --- items the KCL wrote ----------------------------------------------------------------------------------------

KCL_ITEM: dict[str, dict[str, Any]] = {
    "leaseKey": {"S": "shardId-000000000001"},
    "leaseOwner": {"S": "kcl-worker-7"},
    "leaseCounter": {"N": "42"},
    "checkpoint": {"S": "49590338271490256608559692538361571095921575989136588898"},
    "checkpointSubSequenceNumber": {"N": "3"},
    "ownerSwitchesSinceCheckpoint": {"N": "1"},
    "parentShardId": {"SS": ["shardId-000000000000"]},
    "startingHashKey": {"S": "0"},
    "endingHashKey": {"S": "170141183460469231731687303715884105727"},
    "throughputKBps": {"N": "12.5"},
    "pendingCheckpointState": {"B": b"\x01\x02"},
    "streamName": {"S": "a-future-attribute"},
}


def test_a_kcl_item_is_read_with_its_exact_attribute_names() -> None:
    lease = Lease.from_item(KCL_ITEM)
    assert lease.lease_key == "shardId-000000000001"
    assert lease.lease_owner == "kcl-worker-7"
    assert lease.lease_counter == 42
    assert lease.checkpoint == "49590338271490256608559692538361571095921575989136588898"
    assert (lease.checkpoint_sub_sequence, lease.owner_switches_since_checkpoint) == (3, 1)
    assert lease.parent_shard_ids == {"shardId-000000000000"}
    assert lease.ending_hash_key == "170141183460469231731687303715884105727"
    assert lease.throughput_kbps == 12.5
    assert set(lease.extra) == {"pendingCheckpointState", "streamName"}
    assert lease.actual_owner == "kcl-worker-7" and not lease.handoff_pending


def test_a_new_lease_item_uses_kcl_names_and_types_and_omits_empty_sets() -> None:
    item = Lease("shardId-3", checkpoint="TRIM_HORIZON", parent_shard_ids=frozenset({"shardId-1"})).to_new_item()
    assert item == {
        "leaseKey": {"S": "shardId-3"},
        "leaseCounter": {"N": "0"},
        "checkpoint": {"S": "TRIM_HORIZON"},
        "checkpointSubSequenceNumber": {"N": "0"},
        "ownerSwitchesSinceCheckpoint": {"N": "0"},
        "parentShardId": {"SS": ["shardId-1"]},
    }
    assert Lease.from_item(item) == Lease(
        "shardId-3", checkpoint="TRIM_HORIZON", parent_shard_ids=frozenset({"shardId-1"})
    )


def test_shard_info_from_list_shards_and_child_shards() -> None:
    listed = ShardInfo.from_list_shards(
        {
            "ShardId": "shardId-2",
            "ParentShardId": "shardId-0",
            "AdjacentParentShardId": "shardId-1",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "99"},
            "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "5"},
        }
    )
    assert listed.parent_shard_ids == ("shardId-0", "shardId-1") and listed.is_closed
    child = ShardInfo.from_child_shard(
        {
            "ShardId": "shardId-3",
            "ParentShards": ["shardId-2"],
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "9"},
        }
    )
    assert (child.parent_shard_ids, child.ending_hash_key, child.is_closed) == (("shardId-2",), "9", False)


# --- worker identity and retries --------------------------------------------------------------------------------


def test_worker_ids_are_unique_per_process_even_with_the_same_host_and_pid() -> None:
    first, second = default_worker_id(), default_worker_id()
    assert first != second
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-")


def test_the_default_lease_retries_give_up_within_one_renewal_interval() -> None:
    """A throttled renewal must land or give up before the next one is due, long before the lease expires."""
    policy = DEFAULT_LEASE_RETRY
    worst_sleep = sum(
        min(policy.max_delay_s, policy.base_delay_s * 2 ** (n - 1)) for n in range(1, policy.max_attempts)
    )
    assert policy.max_attempts > 1
    assert worst_sleep < DEFAULT_FAILOVER_TIME / 3
