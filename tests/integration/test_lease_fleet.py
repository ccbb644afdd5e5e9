"""A small fleet against the real coordinator on moto: it balances, survives a crash, absorbs newcomers.

The same simulation as benchmarks/lease_fleet.py (which runs 50 workers and 1,000 shards), at a size moto
serves on a shared 2-core machine: 10 workers, 100 shards, failover 3 s (renew 1 s, taker pass 3 s).
Bounds are protocol bounds in taker passes, generous for a loaded machine; the measured figures are
printed (``-s``) and discussed in docs/leases.md ("Fleet scale").
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.lease_fleet import FleetSettings, simulate
from streamkit.devtools.localstack import MotoServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.usefixtures("aws_env")]


async def test_a_fleet_balances_after_start_crash_and_join_with_bounded_dynamodb_calls(
    moto_server: MotoServer,
) -> None:
    settings = FleetSettings(
        workers=10, shards=100, die=2, join=2, failover=3.0, taker=3.0, measure=6.0, phase_timeout=75.0
    )
    lines: list[str] = []
    figures = await simulate(moto_server.endpoint_url, settings, log=lines.append)
    print("\n" + figures.report())
    taker, renew = 3.0, 1.0

    # Each phase ends with every lease held by exactly one live worker, every worker within one of the others
    # (simulate() raises if a phase does not get there within phase_timeout).
    assert figures.start_s <= 20 * taker
    # Nobody may take a live-looking lease before failover_time: the crashed workers' leases move after it.
    assert settings.failover <= figures.after_die_s <= settings.failover + 10 * taker
    assert figures.leases_taken_after_die >= 2 * (settings.shards // settings.workers) - 2
    assert figures.after_join_s <= 10 * taker

    # Steady state: one renewal per lease per renew interval and one scan per worker per taker pass (+-10%
    # jitter), nothing else. Upper bounds: a loaded machine can only make calls rarer.
    calls: dict[str, Any] = figures.calls_by_operation
    assert set(calls) <= {"UpdateItem", "Scan"}, calls
    assert calls["UpdateItem"] <= 60 / renew * 1.05
    assert calls["Scan"] <= settings.workers * 60 / (0.9 * taker) / settings.shards * 1.05
    assert figures.calls_per_shard_minute > 0
