"""Fleet simulation: many workers and shards against the real lease coordinator on a local DynamoDB.

    .venv/bin/python benchmarks/lease_fleet.py [--workers 50] [--shards 1000] [--failover 10] [--stand-in dynalite]

Runs the production ``LeaseCoordinator`` / ``LeaseTable`` code (connectors/dynamodb/), one coordinator per
simulated worker, in one process and one event loop, against a DynamoDB stand-in on 127.0.0.1 (dynalite by
default, or moto) started for the run and stopped by PID afterwards. Nothing is mocked: every take, renewal,
steal and scan is a DynamoDB call over HTTP. No shard is read: the workers only hold leases (``on_handoff``
returns at once).

Phases, each bounded by ``--phase-timeout``:

1. start: every worker starts at once on a table of unowned leases; time until every lease is held by
   exactly one live worker and every worker holds ``shards / workers`` (within one);
2. steady state: DynamoDB calls per shard per minute over ``--measure`` seconds, by operation, counted with a
   botocore ``before-call`` event hook on the shared client;
3. crash: ``--die`` workers stop renewing without releasing anything (as a killed task would); time until
   the survivors hold every lease evenly;
4. join: ``--join`` new workers start; time until the grown fleet is even again (graceful hand-offs).

The figures and how they compare with the KCL's published behaviour are in docs/leases.md ("Fleet scale").
A smaller configuration runs in CI: tests/integration/test_lease_fleet.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config

from streamkit.connectors.dynamodb import TRIM_HORIZON, Lease, LeaseCoordinator, LeaseTable
from streamkit.devtools.localstack import Dynalite, MotoServer
from streamkit.log import configure as configure_logs


@dataclass
class FleetSettings:
    workers: int = 50
    shards: int = 1000
    die: int = 10
    join: int = 10
    failover: float = 10.0  # the KCL's default failoverTimeMillis
    taker: float | None = None  # default: failover_time, as in production
    renew: float | None = None  # default: failover_time / 3
    measure: float = 30.0
    phase_timeout: float = 120.0
    seed: int = 7


@dataclass
class FleetFigures:
    settings: FleetSettings
    start_s: float = math.nan
    after_die_s: float = math.nan
    after_join_s: float = math.nan
    calls_per_shard_minute: float = math.nan
    calls_by_operation: dict[str, float] = field(default_factory=dict)
    """Steady state, per shard per minute."""
    calls_total: dict[str, int] = field(default_factory=dict)
    """The whole run, every phase."""
    leases_taken_after_die: int = 0
    stand_in: str = "DynamoDB"
    lost_events: int = 0
    """"lost" events other than hand-offs (a lease dropped unrenewed, or taken away) in the whole run: churn."""
    double_held: int = 0
    """Leases seen held by two live workers at once (sampled every 50 ms), over the whole run."""
    longest_double_hold_s: float = 0.0
    """The longest such overlap (a forced take is noticed by the old owner at its next renewal)."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds used by the simulating process (every coordinator) and the stand-in, by phase."""
    calls_by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    """DynamoDB calls by phase and operation."""

    def report(self) -> str:
        s = self.settings
        taker = s.taker if s.taker is not None else s.failover
        renew = s.renew if s.renew is not None else s.failover / 3
        lines = [
            f"fleet: {s.workers} workers, {s.shards} shards, failover {s.failover:g} s, renew {renew:g} s, "
            f"taker {taker:g} s ({self.stand_in} on 127.0.0.1)",
            f"  even share after start:          {self.start_s:6.1f} s",
            f"  even share after {s.die} workers died: {self.after_die_s:6.1f} s  (from the crash)",
            f"  even share after {s.join} joined:       {self.after_join_s:6.1f} s",
            f"  steady-state DynamoDB calls per shard per minute: {self.calls_per_shard_minute:.2f}",
        ]
        lines += [f"    {op:<12} {rate:7.2f}" for op, rate in sorted(self.calls_by_operation.items())]
        lines.append(f"  calls over the whole run: {dict(sorted(self.calls_total.items()))}")
        lines.append(
            f"  churn: {self.lost_events} lost events; {self.double_held} leases seen held twice, longest "
            f"{self.longest_double_hold_s:.2f} s"
        )
        lines.append("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.cpu_s.items()))
        for phase, calls in self.calls_by_phase.items():
            lines.append(f"  calls in {phase}: {dict(sorted(calls.items()))}")
        return "\n".join(lines)


class CallCounter:
    """Counts DynamoDB API calls by operation (a botocore ``before-call`` hook: once per call, before retries
    by the SDK, which moto never triggers)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1


def even(alive: Sequence[LeaseCoordinator], shards: int) -> bool:
    """Every lease held by exactly one live worker, and every live worker within one lease of every other."""
    counts = [len(c.held()) for c in alive]
    if sum(counts) != shards or max(counts) - min(counts) > 1:
        return False
    return len(set().union(*(c.held() for c in alive))) == shards


async def wait_even(alive: Sequence[LeaseCoordinator], shards: int, limit: float, what: str) -> float:
    started = last_trace = time.monotonic()
    while not even(alive, shards):
        now = time.monotonic()
        if now - started > limit:
            counts = sorted(len(c.held()) for c in alive)
            raise TimeoutError(f"{what}: not even after {limit:.0f} s (held per worker: {counts})")
        if TRACE and now - last_trace > 1:
            last_trace = now
            counts = sorted(len(c.held()) for c in alive)
            print(f"  {what} +{now - started:.1f}s held {sum(counts)} min {counts[0]} max {counts[-1]}", flush=True)
        await asyncio.sleep(0.05)
    return time.monotonic() - started


TRACE = bool(os.environ.get("FLEET_TRACE"))


class DoubleHoldWatch:
    """Samples every worker's ``held()`` and records leases that two live workers hold at the same moment.

    The protocol allows one such window: a lease taken by force (a hand-off not completed within
    failover_time) stays in its old owner's ``held()`` until that owner's next renewal fails. Everything else
    (two takes of one lease both succeeding) would be a bug.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.alive: list[LeaseCoordinator] = []
        self.overlapping_since: dict[str, float] = {}
        self.seen: set[str] = set()
        self.longest = 0.0

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            owners: Counter[str] = Counter()
            for coordinator in self.alive:
                owners.update(coordinator.held())
            twice = {key for key, n in owners.items() if n > 1}
            for key in twice:
                since = self.overlapping_since.setdefault(key, now)
                self.longest = max(self.longest, now - since)
            self.seen |= twice
            self.overlapping_since = {k: v for k, v in self.overlapping_since.items() if k in twice}
            await asyncio.sleep(self.interval)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU (user + system) seconds of this process, or of another one from /proc (Linux)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def create_leases(client: Any, table_name: str, shards: int) -> list[str]:
    """Unowned leases at TRIM_HORIZON, written in batches (set-up, not measured)."""
    keys = [f"shardId-{index:012d}" for index in range(shards)]
    for start in range(0, len(keys), 25):
        requests = [
            {"PutRequest": {"Item": Lease(k, checkpoint=TRIM_HORIZON).to_new_item()}} for k in keys[start : start + 25]
        ]
        pending: dict[str, Any] = {table_name: requests}
        while pending:
            answer = await client.batch_write_item(RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
    return keys


async def simulate(
    endpoint_url: str,
    settings: FleetSettings,
    *,
    log: Any = print,
    stand_in: str = "DynamoDB",
    server_pid: int | None = None,
) -> FleetFigures:
    """Run the phases; ``server_pid``: the stand-in's process, for its CPU seconds."""
    figures = FleetFigures(settings, stand_in=stand_in)
    watch = DoubleHoldWatch()
    counter = CallCounter()
    cpu_mark = (cpu_seconds(), cpu_seconds(server_pid))
    calls_mark: Counter[str] = Counter()

    def end_phase(name: str) -> None:
        nonlocal cpu_mark, calls_mark
        now = (cpu_seconds(), cpu_seconds(server_pid))
        figures.cpu_s[f"{name} (sim)"] = now[0] - cpu_mark[0]
        if server_pid is not None:
            figures.cpu_s[f"{name} ({stand_in})"] = now[1] - cpu_mark[1]
        cpu_mark = now
        figures.calls_by_phase[name] = dict(counter.counts - calls_mark)
        calls_mark = Counter(counter.counts)

    config = Config(max_pool_connections=128, retries={"mode": "standard", "max_attempts": 3})
    async with get_session().create_client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    ) as client:
        table = LeaseTable(client, f"fleet-{uuid.uuid4().hex[:8]}")
        await table.ensure_exists(poll_interval=0.1)
        await create_leases(client, table.name, settings.shards)
        client.meta.events.register("before-call.dynamodb", counter)

        def worker(name: str) -> LeaseCoordinator:
            return LeaseCoordinator(
                table,
                name,
                failover_time=settings.failover,
                renew_interval=settings.renew,
                taker_interval=settings.taker,
                rng=random.Random(f"{settings.seed}-{name}"),
            )

        fleet = [worker(f"worker-{i:03d}") for i in range(settings.workers)]
        joined: list[LeaseCoordinator] = []
        tasks: dict[str, asyncio.Task[None]] = {}
        watch.alive = list(fleet)
        watcher = asyncio.create_task(watch.run(), name="double-hold-watch")
        end_phase("set-up")
        try:
            for c in fleet:
                tasks[c.worker_id] = asyncio.create_task(c.run(), name=c.worker_id)
            figures.start_s = await wait_even(fleet, settings.shards, settings.phase_timeout, "start")
            log(f"start: even after {figures.start_s:.1f} s")
            end_phase("start")

            before = Counter(counter.counts)
            await asyncio.sleep(settings.measure)
            per_minute = 60.0 / settings.measure / settings.shards
            figures.calls_by_operation = {op: n * per_minute for op, n in (counter.counts - before).items()}
            figures.calls_per_shard_minute = sum(figures.calls_by_operation.values())
            log(f"steady: {figures.calls_per_shard_minute:.2f} calls per shard per minute")
            end_phase("steady")

            rng = random.Random(settings.seed)
            dead = rng.sample(fleet, settings.die)
            orphaned = set().union(*(c.held() for c in dead))
            # A crash: renewals stop and nothing is released; the stopped workers' leases stay owned in the table.
            await asyncio.gather(*(c.stop(release=False) for c in dead))
            alive = [c for c in fleet if c not in dead]
            watch.alive = list(alive)
            figures.after_die_s = await wait_even(alive, settings.shards, settings.phase_timeout, "after the crash")
            figures.leases_taken_after_die = len(orphaned)
            log(f"crash of {settings.die}: even after {figures.after_die_s:.1f} s ({len(orphaned)} leases orphaned)")
            end_phase("crash")

            joined += [worker(f"joiner-{i:03d}") for i in range(settings.join)]
            for c in joined:
                tasks[c.worker_id] = asyncio.create_task(c.run(), name=c.worker_id)
            alive += joined
            watch.alive = list(alive)
            figures.after_join_s = await wait_even(alive, settings.shards, settings.phase_timeout, "after the join")
            log(f"join of {settings.join}: even after {figures.after_join_s:.1f} s")
            end_phase("join")
        finally:
            watcher.cancel()
            figures.double_held, figures.longest_double_hold_s = len(watch.seen), watch.longest
            figures.lost_events = sum(
                1
                for c in fleet + joined
                for event in _drain(c)
                if event.kind == "lost" and not event.reason.startswith("handed off")
            )
            await asyncio.gather(*(c.stop(release=True) for c in fleet), return_exceptions=True)
            for task in tasks.values():
                if not task.done():
                    task.cancel()
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            figures.calls_total = dict(counter.counts)
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failures:
            raise failures[0]
    return figures


async def stand_in_cost(endpoint_url: str, server_pid: int, shards: int, *, in_flight: int = 64) -> str:
    """What one lease-table call costs a stand-in and this process: a full Scan of ``shards`` leases, and a
    renewal (conditional UpdateItem), in CPU milliseconds (averages over 5 scans and ``shards`` renewals)."""
    async with get_session().create_client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=128),
    ) as client:
        table = LeaseTable(client, f"cost-{uuid.uuid4().hex[:8]}")
        await table.ensure_exists(poll_interval=0.1)
        await create_leases(client, table.name, shards)
        held = await asyncio.gather(*(table.take(lease, "w") for lease in await table.list_leases()))

        def clocks() -> tuple[float, float, float]:
            return time.perf_counter(), cpu_seconds(), cpu_seconds(server_pid)

        mark = clocks()
        for _ in range(5):
            await table.list_leases()
        scan = [(now - then) * 1000 / 5 for now, then in zip(clocks(), mark, strict=True)]
        slots = asyncio.Semaphore(in_flight)

        async def renew(lease: Lease) -> Lease:
            async with slots:
                return await table.renew(lease, "w")

        mark = clocks()
        await asyncio.gather(*(renew(lease) for lease in held))
        wall, client_cpu, server_cpu = (now - then for now, then in zip(clocks(), mark, strict=True))
    return (
        f"Scan of {shards} leases: {scan[0]:.0f} ms wall, {scan[1]:.0f} ms CPU here, {scan[2]:.0f} ms CPU in the "
        f"stand-in; renewals ({in_flight} in flight): {shards / wall:.0f}/s, {client_cpu * 1000 / shards:.2f} ms "
        f"CPU here and {server_cpu * 1000 / shards:.2f} ms in the stand-in per call"
    )


def _drain(coordinator: LeaseCoordinator) -> list[Any]:
    events = []
    while not coordinator.events.empty():
        events.append(coordinator.events.get_nowait())
    return events


def _parse(argv: Sequence[str]) -> tuple[FleetSettings, bool, str | None, str, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = FleetSettings()
    for name in ("workers", "shards", "die", "join", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("failover", "measure", "phase_timeout"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--taker", type=float, default=None, help="taker interval (default: failover)")
    parser.add_argument("--renew", type=float, default=None, help="renewal interval (default: failover / 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    parser.add_argument(
        "--cost",
        action="store_true",
        help="instead of a fleet: measure what a Scan of --shards leases and a renewal cost each stand-in",
    )
    parser.add_argument(
        "--stand-in",
        choices=sorted(STAND_INS),
        default="dynalite",
        help="the local DynamoDB to start (dynalite: ~10x faster scans than moto; see docs/leases.md)",
    )
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="a DynamoDB endpoint to use instead of starting a stand-in (a real table costs money)",
    )
    args = parser.parse_args(argv)
    settings = FleetSettings(**{name: getattr(args, name) for name in FleetSettings.__dataclass_fields__})
    return settings, args.json, args.endpoint_url, args.stand_in, args.cost


STAND_INS: dict[str, type[Dynalite] | type[MotoServer]] = {"dynalite": Dynalite, "moto": MotoServer}


async def _cancellable(
    endpoint_url: str, settings: FleetSettings, stand_in: str, server_pid: int | None
) -> FleetFigures:
    """The simulation, cancelled by SIGTERM/SIGINT so that it unwinds and the moto server is stopped."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await simulate(
        endpoint_url,
        settings,
        log=lambda line: print(line, flush=True),
        stand_in=stand_in,
        server_pid=server_pid,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings, as_json, endpoint_url, stand_in, cost = _parse(sys.argv[1:] if argv is None else argv)
    configure_logs("console", "WARNING")  # thousands of takes and hand-offs: keep only what went wrong
    if cost:
        for name, kind in sorted(STAND_INS.items()):
            with kind.start() as server:
                print(f"{name}: {asyncio.run(stand_in_cost(server.endpoint_url, server.pid, settings.shards))}")
        return 0
    started = time.monotonic()
    try:
        if endpoint_url:
            figures = asyncio.run(_cancellable(endpoint_url, settings, endpoint_url, None))
        else:
            with STAND_INS[stand_in].start() as server:
                figures = asyncio.run(_cancellable(server.endpoint_url, settings, stand_in, server.pid))
    except asyncio.CancelledError:
        print("interrupted", file=sys.stderr)
        return 130
    print(figures.report())
    print(f"  wall time {time.monotonic() - started:.0f} s on {os.cpu_count()} CPUs")
    if as_json:
        print(json.dumps(asdict(figures), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
