"""Free leases are taken up to an exact share, and a pass's take budget shrinks as it meets unseen workers."""

from __future__ import annotations

from collections import Counter

from streamkit.connectors.dynamodb import Lease, plan_takes
from streamkit.connectors.dynamodb.coordinator import _TakeBudget


def test_survivors_of_a_crash_take_its_leases_up_to_exact_shares_without_a_round_of_steals() -> None:
    # 8 survivors hold 10 leases each; a crashed worker's 20 leases are expired. Shares: 100 / 8 = 12.5, so
    # the first 4 survivors by id aim at 13, the others at 12. With the ceiling for all, the first passes
    # would reach 13 each and leave the last survivors at 11, two short: another round of steals.
    survivors = [f"w{i}" for i in range(8)]
    owners = [w for w in survivors for _ in range(10)] + ["dead"] * 20
    table = {f"k{index:03d}": owner for index, owner in enumerate(owners)}
    for worker in reversed(survivors):  # the floor-share workers pass first: the worst order for the ceiling
        expired = {key for key, owner in table.items() if owner == "dead"}
        leases = [Lease(key, lease_owner=owner) for key, owner in sorted(table.items())]
        held = {key for key, owner in table.items() if owner == worker}
        plan = plan_takes(leases, worker, expired=expired, held=held)
        assert plan.steal == []
        for key in plan.take:
            table[key] = worker
    counts = Counter(table.values())
    assert "dead" not in counts
    assert sorted(counts[w] for w in survivors) == [12, 12, 12, 12, 13, 13, 13, 13]
    assert [counts[w] for w in survivors[:4]] == [13] * 4  # the first by id take the ceiling


def test_the_take_budget_shrinks_with_every_worker_a_lost_race_reveals() -> None:
    leases = [Lease(f"k{i:02d}") for i in range(12)]
    plan = plan_takes(leases, "me")
    assert (plan.active_workers, len(plan.take)) == (1, 12)  # alone on an unowned table: plans them all
    budget = _TakeBudget(plan, max_leases=None)
    assert budget.room(11)
    budget.saw("a")
    budget.saw("a")  # the same worker counts once
    budget.saw("me")  # already counted
    assert budget.room(5) and not budget.room(6)  # 12 leases / 2 workers
    budget.saw("b")
    budget.saw(None)
    assert budget.room(3) and not budget.room(4)  # 12 / 3
    assert not _TakeBudget(plan, max_leases=2).room(2)
