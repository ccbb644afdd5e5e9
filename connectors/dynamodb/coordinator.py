"""The lease coordinator: renews what this worker holds, takes what is free, balances, and hands over.

One coordinator runs per worker process. It talks to the runtime through three things:

* ``events``: an :class:`asyncio.Queue` of :class:`LeaseEvent` ("acquired" with the lease and its
  checkpoint: start a reader; "lost": stop it). A lease whose parent shards are not finished is held but
  not announced until they are (parent-before-child).
* ``on_handoff(lease_key)``: awaited when another worker asked for a lease this worker holds. The runtime
  stops the reader, waits for the sinks' acknowledgements and calls :meth:`LeaseCoordinator.checkpoint`;
  when it returns, the coordinator passes the lease on. The new owner starts from that checkpoint, so a
  rebalance does not replay what was already delivered.
* :meth:`LeaseCoordinator.checkpoint`: fenced by the lease counter; raises :class:`LeaseLostError` once
  the lease is gone.

The protocol, its timing bounds and how it coexists with KCL workers are in docs/leases.md.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from streamkit.connectors.dynamodb.leases import (
    AT_TIMESTAMP,
    LATEST,
    SHARD_END,
    TRIM_HORIZON,
    Lease,
    LeaseContendedError,
    LeaseLostError,
    LeaseTable,
    LeaseTableError,
    ShardInfo,
    has_started,
    is_ready,
    lease_key_for,
    lease_key_prefix_of,
    parent_lease_keys,
)

__all__ = [
    "DEFAULT_FAILOVER_TIME",
    "ExpiryTracker",
    "LeaseCoordinator",
    "LeaseEvent",
    "TakePlan",
    "default_worker_id",
    "plan_takes",
]

log = structlog.get_logger(__name__)

DEFAULT_FAILOVER_TIME = 10.0
# The KCL deletes a finished lease at its completed-lease clean-up pass, every 5 minutes by default
# (completedLeaseCleanupIntervalMillis); keeping a finished lease a while helps whoever inspects the table.
DEFAULT_FINISHED_LEASE_RETENTION = 300.0
_INITIAL_POSITIONS = frozenset({TRIM_HORIZON, LATEST, AT_TIMESTAMP})


def default_worker_id() -> str:
    """hostname-pid-random: unique per process even where every container is PID 1 on the same host name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


# --- expiry and balancing: pure logic, unit-tested without DynamoDB ------------------------------------------


class ExpiryTracker:
    """Counter-based expiry on this observer's own monotonic clock, as the KCL does it.

    A lease is expired when its counter has not changed for longer than ``failover_time`` as seen by this
    worker. No clocks are compared between machines; a lease seen for the first time counts as just renewed,
    so a new worker waits a full failover time before it calls anything expired.
    """

    def __init__(self, failover_time: float) -> None:
        self._failover_time = failover_time
        self._seen: dict[str, tuple[int, float]] = {}  # lease key -> (counter, when it last changed)

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        """Record a scan. Leases missing from it are forgotten (deleted leases)."""
        seen: dict[str, tuple[int, float]] = {}
        for lease in leases:
            previous = self._seen.get(lease.lease_key)
            unchanged = previous is not None and previous[0] == lease.lease_counter
            seen[lease.lease_key] = previous if unchanged and previous else (lease.lease_counter, now)
        self._seen = seen

    def last_change(self, lease_key: str) -> float | None:
        entry = self._seen.get(lease_key)
        return entry[1] if entry else None

    def expired(self, now: float) -> set[str]:
        return {key for key, (_, changed) in self._seen.items() if now - changed > self._failover_time}


@dataclass(frozen=True, slots=True)
class TakePlan:
    """What one taker pass should do. ``take``: conditional takes of free leases (unowned, expired, or already
    ours in the table). ``steal``: live leases of other workers to ask for (graceful hand-off) or take."""

    take: list[str]
    steal: list[str]
    target: int
    active_workers: int
    active: frozenset[str] = frozenset()
    """The active workers (me included); ``active_workers`` is its size."""
    candidates: int = 0
    """Leases that count in the balance (not finished)."""


def plan_takes(
    leases: Iterable[Lease],
    me: str,
    *,
    expired: Collection[str] = (),
    held: Collection[str] = (),
    max_leases: int | None = None,
    rng: random.Random | None = None,
) -> TakePlan:
    """Decide which leases ``me`` should take or steal, from one scan of the table.

    * Finished leases (SHARD_END) are ignored: nothing is left to process.
    * A lease counts for its ``leaseOwner``; during a hand-off that is already the next owner.
    * Active workers are the owners (and hand-off senders) of live leases, plus ``me``; the target share is
      ceil(leases / active workers), capped by ``max_leases``.
    * Leases the table says are ours but we do not hold (a restart with a fixed worker id, a completed
      hand-off) are always taken back. Then unowned leases, then expired ones, up to an exact share: the
      ceiling for the first (leases mod workers) active workers by id, the floor for the others.
    * Still short: steal from the most loaded worker, one lease at a time, only while that worker holds at
      least two more than we do. A steal never leaves the victim with fewer leases than the stealer, so each
      one strictly lowers the sum of squared lease counts: no ping-pong, and the fleet settles with every
      worker within one lease of every other.

    ``expired`` holds the keys whose counter this worker has seen unchanged for failover_time (see
    :class:`ExpiryTracker`); ``held`` the keys this worker holds or is taking (never planned again). With
    ``rng`` free leases are taken in random order so workers starting together spread out; steals are always
    deterministic so that simultaneous stealers collide on the same leases instead of over-draining a victim.
    """
    expired_keys, held_keys = set(expired), set(held)
    candidates = [lease for lease in leases if not lease.is_finished]
    active = {me}
    mine = 0
    reclaim: list[str] = []
    unowned: list[str] = []
    orphaned: list[str] = []
    load: Counter[str] = Counter()
    stealable: dict[str, list[str]] = {}
    for lease in candidates:
        key, owner, live = lease.lease_key, lease.lease_owner, lease.lease_key not in expired_keys
        if live and lease.checkpoint_owner is not None:
            active.add(lease.checkpoint_owner)  # the sender of a hand-off is alive while it renews
        if owner == me:
            mine += 1
            # Ours in the table but not held: take it back, unless a hand-off to us is still running.
            if key not in held_keys and (lease.checkpoint_owner is None or not live):
                reclaim.append(key)
        elif owner is None:
            if key not in held_keys:  # held but unowned in the table: the renewer will settle it
                unowned.append(key)
        elif not live:
            if key not in held_keys:
                orphaned.append(key)
        else:
            active.add(owner)
            load[owner] += 1
            # A lease we are handing over (we are its checkpointOwner) counts for its next owner already.
            if lease.checkpoint_owner is None and key not in held_keys:
                stealable.setdefault(owner, []).append(key)

    target = math.ceil(len(candidates) / len(active)) if candidates else 0
    # Free leases are taken up to an exact share: the first (leases mod workers) workers by id take the
    # ceiling, the others the floor. With the ceiling for everyone, early takers would overshoot and leave the
    # last ones two short, and that gap costs a round of steals (and hand-offs) after every crash.
    base, extra = divmod(len(candidates), len(active))
    fair = base + (1 if sorted(active).index(me) < extra else 0)
    if max_leases is not None:
        target = min(target, max_leases)
        fair = min(fair, max_leases)
    take = list(reclaim)
    need = fair - mine
    for free in (unowned, orphaned):
        chosen = _ordered(free, rng)[: max(need, 0)]
        take.extend(chosen)
        need -= len(chosen)
        mine += len(chosen)
    need = target - mine
    steal: list[str] = []
    while need > 0:
        victim = _most_loaded(load, stealable)
        if victim is None or load[victim] < mine + 2:
            break
        steal.append(stealable[victim].pop(0))
        load[victim] -= 1
        mine += 1
        need -= 1
    return TakePlan(
        take=take,
        steal=steal,
        target=target,
        active_workers=len(active),
        active=frozenset(active),
        candidates=len(candidates),
    )


def _ancestors_of_started(shards: Sequence[ShardInfo], leases: dict[str, Lease], prefix: str) -> set[str]:
    """Shard ids of the listed ancestors of every shard whose lease has started (see has_started).

    Such ancestors were finished before their descendant started; a missing lease means it was cleaned up.
    """
    parents_of = {shard.shard_id: shard.parent_shard_ids for shard in shards}
    pending = [
        parent
        for shard in shards
        if (lease := leases.get(lease_key_for(shard.shard_id, prefix))) is not None and has_started(lease)
        for parent in shard.parent_shard_ids
    ]
    ancestors: set[str] = set()
    while pending:
        shard_id = pending.pop()
        if shard_id in ancestors or shard_id not in parents_of:
            continue
        ancestors.add(shard_id)
        pending.extend(parents_of[shard_id])
    return ancestors


def _ordered(keys: list[str], rng: random.Random | None) -> list[str]:
    ordered = sorted(keys)
    if rng is not None:
        rng.shuffle(ordered)
    return ordered


def _most_loaded(load: Counter[str], stealable: dict[str, list[str]]) -> str | None:
    candidates = [worker for worker, keys in stealable.items() if keys]
    if not candidates:
        return None
    for keys in stealable.values():
        keys.sort()
    # Ties go to the smallest worker id, so concurrent stealers pick the same victim and the same leases.
    return min(candidates, key=lambda worker: (-load[worker], worker))


class _TakeBudget:
    """The share one taker pass aims at, lowered as the pass discovers workers its scan did not show.

    Workers that start together all scan a table nobody owns yet: each sees itself alone, plans to take every
    lease, and without this they would send (workers x leases) conditional writes, nearly all failing. A
    failed take returns the lease's new owner; every new owner lowers the target, and takes beyond it are
    skipped. Steals are left to the next pass, which sees the real fleet.
    """

    def __init__(self, plan: TakePlan, max_leases: int | None) -> None:
        self._active = set(plan.active)
        self._count = max(len(plan.active), 1)
        self._candidates = plan.candidates
        self._max_leases = max_leases

    def saw(self, owner: str | None) -> None:
        if owner is not None and owner not in self._active:
            self._active.add(owner)
            self._count += 1

    def room(self, holding: int) -> bool:
        target = math.ceil(self._candidates / self._count)
        if self._max_leases is not None:
            target = min(target, self._max_leases)
        return holding < target


# --- the coordinator ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """``acquired``: start reading ``lease.lease_key`` from ``lease.checkpoint``. ``lost``: stop reading it."""

    kind: Literal["acquired", "lost"]
    lease: Lease
    reason: str = ""


@dataclass(slots=True)
class _Held:
    lease: Lease
    renewed_at: float  # monotonic time the last successful renewal (or take, or checkpoint) was sent
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write per lease at a time: same counter
    announced: bool = False
    handing_off: bool = False


HandoffCallback = Callable[[str], Awaitable[None]]


class LeaseCoordinator:
    """Takes, renews, balances and releases the leases of one worker (see the module docstring)."""

    def __init__(
        self,
        table: LeaseTable,
        worker_id: str | None = None,
        *,
        failover_time: float = DEFAULT_FAILOVER_TIME,
        renew_interval: float | None = None,
        taker_interval: float | None = None,
        max_leases: int | None = None,
        graceful_handoff: bool = True,
        handoff_timeout: float | None = None,
        on_handoff: HandoffCallback | None = None,
        initial_position: str = TRIM_HORIZON,
        lease_key_prefix: str = "",
        lease_key_prefixes: Collection[str] | None = None,
        finished_lease_retention: float | None = DEFAULT_FINISHED_LEASE_RETENTION,
        max_concurrent_writes: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        """
        Args:
            table: the lease table (created by :meth:`run` if missing).
            worker_id: unique per process; default :func:`default_worker_id`.
            failover_time: a lease whose counter has not moved for this long is expired (KCL default 10 s).
            renew_interval: default failover_time / 3, so two renewals can fail before the lease expires.
            taker_interval: how often to scan and take/balance; default failover_time.
            max_leases: never hold more than this many leases.
            graceful_handoff: steal by asking the owner to checkpoint and hand over (KCL 3.x protocol);
                False steals at once, as KCL 2.x does.
            handoff_timeout: how long ``on_handoff`` may take; default failover_time / 2, which leaves the
                next owner time before it takes the lease anyway (failover_time after its request).
            on_handoff: awaited before a lease this worker holds is passed on (see the module docstring).
            initial_position: checkpoint of leases :meth:`sync_shards` creates for shards with no read parent.
            lease_key_prefix: ``account:stream:creationEpoch:`` for KCL multi-stream tables, else empty: the
                default prefix of the leases :meth:`sync_shards` creates.
            lease_key_prefixes: with several streams, the prefixes of the configured streams. Leases with any
                other key are left untouched (never taken, renewed, counted in the balance, or deleted): they
                belong to a stream removed from the configuration, or to another application (KCL#1112).
                None: every lease of the table is ours.
            finished_lease_retention: delete a finished (SHARD_END) lease this many seconds after every child
                lease has started (the KCL's lease clean-up); None keeps finished leases forever.
            max_concurrent_writes: bound on parallel DynamoDB writes of one pass; renewals have a bound of
                their own of the same size, so takes never delay them.
            rng: randomness for jitter and for the order free leases are taken in.
        """
        if failover_time <= 0:
            raise ValueError(f"failover_time must be positive, got {failover_time}")
        self._renew_interval = renew_interval if renew_interval is not None else failover_time / 3
        if not 0 < self._renew_interval < failover_time:
            raise ValueError(
                f"renew_interval ({self._renew_interval}) must be positive and below failover_time "
                f"({failover_time}), or leases expire between renewals"
            )
        if initial_position not in _INITIAL_POSITIONS:
            raise ValueError(f"initial_position must be one of {sorted(_INITIAL_POSITIONS)}")
        if max_leases is not None and max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, got {max_leases}")
        if finished_lease_retention is not None and finished_lease_retention < 0:
            raise ValueError(f"finished_lease_retention must not be negative, got {finished_lease_retention}")
        self._table = table
        self._worker_id = worker_id or default_worker_id()
        self._failover_time = failover_time
        self._taker_interval = taker_interval if taker_interval is not None else failover_time
        self._max_leases = max_leases
        self._graceful = graceful_handoff
        self._handoff_timeout = handoff_timeout if handoff_timeout is not None else failover_time / 2
        self._on_handoff = on_handoff
        self._initial_position = initial_position
        self._prefix = lease_key_prefix
        self._prefixes = tuple(lease_key_prefixes) if lease_key_prefixes is not None else None
        self._retention = finished_lease_retention
        self._cleanable_since: dict[str, float] = {}  # finished lease key -> when it was first seen deletable
        self.deleted_finished = 0
        """Finished leases this worker deleted (the clean-up)."""
        self._rng = rng or random.Random()
        self._write_slots = asyncio.Semaphore(max_concurrent_writes)
        # Renewals get slots of their own (as the KCL's LeaseRenewer has its own threads): a taker pass with
        # hundreds of takes, as when a fleet starts on an unowned table, must not queue the renewals of leases
        # already held behind them, or they come late, expire, and are taken again (churn).
        self._renew_slots = asyncio.Semaphore(max_concurrent_writes)
        self._tracker = ExpiryTracker(failover_time)
        self._held: dict[str, _Held] = {}
        self._taking: set[str] = set()
        self._incoming: dict[str, float] = {}  # hand-offs we asked for -> monotonic time of the request
        self._view: dict[str, Lease] = {}  # the last scan, patched with our own writes
        self._finished: set[str] = set()  # lease keys of parents known finished although they have no lease
        self._last_scan_at = 0.0
        self._group: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._release_on_stop = True
        self.events: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        self._taking_paused = False
        self._lost_races = False  # a take or steal of the current pass failed its condition
        self._quick_pass = False  # the current pass was scheduled early because of a lost race
        self._replan_soon = False  # the current pass took only a first step on a cold table
        self._cold_step = max_concurrent_writes

    # --- public API ----------------------------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def failover_time(self) -> float:
        return self._failover_time

    @property
    def taker_interval(self) -> float:
        return self._taker_interval

    def held(self) -> set[str]:
        """Keys of the leases this worker holds (including ones waiting for their parents, or being handed
        off). The runtime should read only the ones announced by an "acquired" event."""
        return set(self._held)

    def lease(self, lease_key: str) -> Lease | None:
        """The latest known state of a held lease."""
        held = self._held.get(lease_key)
        return held.lease if held else None

    def mark_finished(self, lease_keys: Iterable[str]) -> None:
        """Declare parent leases finished although absent (e.g. shards trimmed past retention)."""
        self._finished.update(lease_keys)
        self._announce_ready()

    async def run(self) -> None:
        """Renew and take leases until :meth:`stop`; then release them if asked to."""
        if self._running or self._stopped.is_set():
            raise RuntimeError("a LeaseCoordinator runs once; create a new one to run again")
        self._running = True
        log.info("lease_coordinator.start", worker=self._worker_id, table=self._table.name)
        try:
            await self._table.ensure_exists()
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._renew_loop(), name=f"lease-renewer-{self._worker_id}")
                group.create_task(self._taker_loop(), name=f"lease-taker-{self._worker_id}")
        finally:
            self._group = None
            try:
                if self._stopping.is_set() and self._release_on_stop:
                    await self._release_all()
            finally:
                self._running = False
                self._stopped.set()

    async def stop(self, release: bool = True) -> None:
        """Stop renewing and taking. With ``release`` every held lease is released (after the runtime's final
        checkpoints) so peers take it at their next taker pass instead of waiting failover_time."""
        self._release_on_stop = release
        self._stopping.set()
        if self._running:
            await self._stopped.wait()
        elif not self._stopped.is_set():
            self._stopped.set()
            if release:
                await self._release_all()

    async def checkpoint(self, lease_key: str, checkpoint: str, sub_sequence: int = 0) -> None:
        """Record the position of a held lease. Raises :class:`LeaseLostError` if the lease is no longer held
        (taken, expired): the caller must stop processing that shard."""
        await self._checkpoint(lease_key, checkpoint, sub_sequence)

    async def finish_shard(self, lease_key: str, child_shards: Sequence[ShardInfo]) -> None:
        """A shard was read to its end: create its children's leases, checkpoint SHARD_END, release it.

        Children are created first, so that once the parent shows SHARD_END its children exist.
        """
        await self.create_child_leases(child_shards, prefix=lease_key_prefix_of(lease_key))
        children = [child.shard_id for child in child_shards]
        lease = await self._checkpoint(lease_key, SHARD_END, 0, child_shard_ids=children)
        held = self._held.get(lease_key)
        if held is not None:
            async with held.lock:
                if self._held.get(lease_key) is held:
                    del self._held[lease_key]
                    lease = await self._release_quietly(held.lease)
        self._view[lease_key] = lease
        self._announce_ready()

    async def create_child_leases(self, child_shards: Sequence[ShardInfo], *, prefix: str | None = None) -> list[str]:
        """Create the leases of a closed shard's children (from ChildShards) at TRIM_HORIZON: a child must be
        read from its start. Idempotent: existing leases are left alone. Returns the keys created.
        ``prefix``: the stream's lease key prefix (default: the coordinator's ``lease_key_prefix``)."""
        created = []
        for child in child_shards:
            lease = self._new_lease(child, TRIM_HORIZON, prefix)
            if await self._table.create_lease(lease):
                created.append(lease.lease_key)
        return created

    async def sync_shards(self, shards: Sequence[ShardInfo], *, prefix: str | None = None) -> list[str]:
        """Create leases for listed shards that have none. Returns the keys created.

        ``shards`` must be the stream's full listing (closed shards included); ``prefix`` its lease key prefix
        (default: the coordinator's ``lease_key_prefix``). A shard whose parent already had a lease is a
        descendant of data being read and starts at TRIM_HORIZON; others start at the configured initial
        position, except that with LATEST closed shards get no lease (there is nothing after "latest" in them)
        and count as finished. Parents no longer listed are past retention: finished. So are the ancestors of
        a shard whose lease has started: their leases were finished and cleaned up, and must not come back.
        """
        prefix = self._prefix if prefix is None else prefix
        leases = {lease.lease_key: lease for lease in await self._table.list_leases()}
        existing = set(leases)
        listed = {shard.shard_id for shard in shards}
        superseded = _ancestors_of_started(shards, leases, prefix)
        self.mark_finished(lease_key_for(shard_id, prefix) for shard_id in superseded)
        created: list[str] = []
        for shard in shards:
            key = lease_key_for(shard.shard_id, prefix)
            if key in existing or shard.shard_id in superseded:
                continue
            parents = {lease_key_for(parent, prefix) for parent in shard.parent_shard_ids}
            if parents & existing:
                position = TRIM_HORIZON
            elif self._initial_position == LATEST and shard.is_closed:
                self._finished.add(key)
                continue
            else:
                position = self._initial_position
            if await self._table.create_lease(self._new_lease(shard, position, prefix)):
                created.append(key)
        gone = {p for shard in shards for p in shard.parent_shard_ids if p not in listed}
        self.mark_finished(lease_key_for(parent, prefix) for parent in gone)
        return created

    # --- loops ---------------------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            await self._renew_all()
            self._expire_unrenewed(time.monotonic())
            await self._poll_incoming()
            if await self._sleep(self._renew_interval - (time.monotonic() - started)):
                return

    def pause_taking(self) -> None:
        """Stop taking and stealing leases while still renewing the held ones: a worker that is draining
        for shutdown would otherwise steal leases only to release them moments later."""
        self._taking_paused = True

    async def _taker_loop(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            if not self._taking_paused:
                await self._taker_pass()
            if await self._sleep(self._next_taker_delay(started)):
                return

    def _next_taker_delay(self, started: float) -> float:
        """The regular interval with +-10% jitter (workers started together drift apart), but no later than
        just after a suspicious lease (its counter did not move between our last two scans) could expire: a
        dead worker's leases are taken failover_time after its counter stopped, not a taker interval later.
        Leases that are being renewed do not shorten the interval.
        """
        now = time.monotonic()
        regular = started + self._taker_interval * self._rng.uniform(0.9, 1.1)
        expiries = [
            changed + self._failover_time
            for lease in self._view.values()
            if lease.lease_owner not in (None, self._worker_id) and not lease.is_finished
            if (changed := self._tracker.last_change(lease.lease_key)) is not None
            if changed < self._last_scan_at and changed + self._failover_time > now
        ]
        quick = (self._lost_races or self._replan_soon) and not self._quick_pass
        self._quick_pass = self._lost_races = self._replan_soon = False
        if quick:
            # A take or steal of the last pass lost a race: peers are moving leases right now, and the plan
            # was computed on a table that is already stale (or the pass took only a first step on a cold
            # table, see _taker_pass). Re-plan soon (random, so the racers spread out)
            # instead of a whole interval later: the winners' writes are visible to the next scan. This is
            # what makes a fleet that starts (or grows) at once converge in seconds rather than in one taker
            # interval per lost race. Never twice in a row: when the table is slow to answer, more races
            # must not mean more scans.
            self._quick_pass = True
            regular = min(regular, started + self._taker_interval * self._rng.uniform(0.1, 0.3))
        wake = min([regular, *(expiry + 0.01 for expiry in expiries)])
        # Never spin: at least a twentieth of the failover time between passes.
        return max(wake - now, self._failover_time / 20)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop. True if stopping."""
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True

    # --- renewing ------------------------------------------------------------------------------------------

    async def _renew_all(self) -> None:
        await self._bounded([functools.partial(self._renew, key) for key in list(self._held)], self._renew_slots)

    async def _renew(self, lease_key: str) -> None:
        held = self._held.get(lease_key)
        if held is None:
            return
        async with held.lock:
            if self._held.get(lease_key) is not held:
                return
            sent = time.monotonic()
            try:
                lease = await self._table.renew(held.lease, self._worker_id)
            except LeaseLostError as lost:
                self._drop(lease_key, str(lost))
                return
            except LeaseTableError as error:
                self._tolerate(error, "renew", lease_key)
                return
            if self._held.get(lease_key) is not held:
                return  # dropped as unrenewed while the call was retrying
            held.lease, held.renewed_at = lease, sent
            self._view[lease_key] = lease
        if lease.checkpoint_owner == self._worker_id and not held.handing_off:
            held.handing_off = True
            self._spawn(self._hand_off(lease_key, held), f"lease-handoff-{lease_key}")

    def _expire_unrenewed(self, now: float) -> None:
        """Stop processing leases we could not renew for failover_time: others may have taken them already.

        Measured from when the last successful renewal was sent, which is no later than when any other worker
        saw that counter, so this worker lets go before anyone else can call the lease expired.
        """
        for key, held in list(self._held.items()):
            if now - held.renewed_at > self._failover_time:
                self._drop(key, f"not renewed for {now - held.renewed_at:.2f} s (failover_time)")

    # --- taking and balancing ------------------------------------------------------------------------------

    async def _taker_pass(self) -> None:
        try:
            leases = await self._table.list_leases()
        except LeaseTableError as error:
            self._tolerate(error, "scan", None)
            return
        if self._prefixes is not None:
            prefixes = self._prefixes
            leases = [lease for lease in leases if lease.lease_key.startswith(prefixes)]
        now = self._last_scan_at = time.monotonic()
        self._tracker.observe(leases, now)
        self._view = {lease.lease_key: lease for lease in leases}
        self._announce_ready()
        expired = self._tracker.expired(now)
        # A hand-off we asked for that the owner did not complete in failover_time: take it as expired.
        expired |= {key for key, asked in self._incoming.items() if now - asked > self._failover_time}
        reclaims = {lease.lease_key for lease in leases if lease.lease_owner == self._worker_id}
        plan = plan_takes(
            leases,
            self._worker_id,
            expired=expired,
            held=self._held.keys() | self._taking,
            max_leases=self._max_leases,
            rng=self._rng,
        )
        if plan.take or plan.steal:
            log.info(
                "lease_coordinator.plan",
                worker=self._worker_id,
                take=plan.take,
                steal=plan.steal,
                target=plan.target,
                workers=plan.active_workers,
            )
        budget = _TakeBudget(plan, self._max_leases)
        take = plan.take
        if len(take) > self._cold_step and not any(lease.actual_owner for lease in leases if not lease.is_finished):
            # A cold table (nobody owns anything): a whole fleet may be starting at this very moment, each
            # worker seeing itself alone and planning to take every lease. Take one round of parallel writes
            # only, then re-plan soon: the next scan shows who else took leases meanwhile, so every worker
            # aims at its real share instead of racing the whole fleet for all of them (most of those
            # conditional writes would fail). A worker that is really alone loses one quick pass.
            take = take[: self._cold_step]
            self._replan_soon = True
        actions = [
            functools.partial(self._take, self._view[key], budget=None if key in reclaims else budget) for key in take
        ]
        actions += [functools.partial(self._steal, self._view[key]) for key in plan.steal]
        actions += [functools.partial(self._delete_finished, lease) for lease in self._finished_to_delete(leases, now)]
        await self._bounded(actions)

    # --- cleaning up finished leases -----------------------------------------------------------------------

    def _finished_to_delete(self, leases: Sequence[Lease], now: float) -> list[Lease]:
        """Finished leases whose deletion is due, from one scan (the KCL's LeaseCleanupManager rules).

        A finished lease may go once every child lease exists and has started (the children no longer need it
        to become ready), and once none of its own parents has a lease any more (oldest first, so a missing
        child always means "not created yet", never "already cleaned up"), ``finished_lease_retention`` after
        that was first seen. To spare the table, the owner of its first owned child deletes it; when no child
        has an owner (they finished too), every worker may try: the delete is conditional, one succeeds.
        """
        if self._retention is None:
            return []
        by_key = {lease.lease_key: lease for lease in leases}
        children_of: dict[str, set[str]] = {}
        for lease in leases:
            for parent in parent_lease_keys(lease):
                children_of.setdefault(parent, set()).add(lease.lease_key)
        due: list[Lease] = []
        cleanable: dict[str, float] = {}
        for lease in leases:
            if not lease.is_finished or parent_lease_keys(lease) & by_key.keys():
                continue
            prefix = lease_key_prefix_of(lease.lease_key)
            child_keys = {lease_key_for(c, prefix) for c in lease.child_shard_ids}
            child_keys |= children_of.get(lease.lease_key, set())
            children = [by_key.get(key) for key in sorted(child_keys)]
            if not children or not all(child is not None and has_started(child) for child in children):
                continue
            since = cleanable[lease.lease_key] = self._cleanable_since.get(lease.lease_key, now)
            owners = [child.lease_owner for child in children if child is not None and child.lease_owner]
            if now - since >= self._retention and (not owners or owners[0] == self._worker_id):
                due.append(lease)
        self._cleanable_since = cleanable
        return due

    async def _delete_finished(self, seen: Lease) -> None:
        try:
            deleted = await self._table.delete_finished(seen)
        except LeaseTableError as error:
            self._tolerate(error, "delete the finished lease", seen.lease_key)
            return
        if deleted:
            self.deleted_finished += 1
            self._view.pop(seen.lease_key, None)
            log.info("lease.deleted_finished", worker=self._worker_id, lease_key=seen.lease_key)

    async def _take(self, seen: Lease, budget: _TakeBudget | None = None) -> None:
        key = seen.lease_key
        if key in self._taking or key in self._held:
            return
        if budget is not None and not budget.room(len(self._held) + len(self._taking)):
            return
        self._taking.add(key)
        try:
            sent = time.monotonic()
            lease = await self._table.take(seen, self._worker_id)
        except LeaseContendedError as contended:
            log.debug("lease.take_contended", worker=self._worker_id, lease_key=key, detail=str(contended))
            self._lost_races = True
            if budget is not None and contended.current is not None:
                budget.saw(contended.current.actual_owner)
            return
        except LeaseTableError as error:
            self._tolerate(error, "take", key)
            return
        finally:
            self._taking.discard(key)
        self._incoming.pop(key, None)
        previous = "hand-off" if seen.actual_owner == self._worker_id else seen.actual_owner
        log.info("lease.taken", worker=self._worker_id, lease_key=key, previous=previous)
        self._held[key] = _Held(lease=lease, renewed_at=sent)
        self._view[key] = lease
        self._announce_ready()

    async def _steal(self, seen: Lease) -> None:
        if not self._graceful:
            await self._take(seen)
            return
        try:
            lease = await self._table.request_handoff(seen, self._worker_id)
        except LeaseContendedError:
            self._lost_races = True
            return
        except LeaseTableError as error:
            self._tolerate(error, "request a hand-off of", seen.lease_key)
            return
        log.info("lease.handoff_requested", worker=self._worker_id, lease_key=seen.lease_key, owner=seen.lease_owner)
        self._incoming[seen.lease_key] = time.monotonic()
        self._view[seen.lease_key] = lease

    async def _poll_incoming(self) -> None:
        """Check hand-offs we asked for at every renewal tick, so a completed one is picked up within
        renew_interval rather than at the next taker pass."""
        polls = [functools.partial(self._check_incoming, key) for key in list(self._incoming)]
        await self._bounded(polls, self._renew_slots)  # part of the renewal loop: must not wait behind takes

    async def _check_incoming(self, lease_key: str) -> None:
        asked = self._incoming.get(lease_key)
        if asked is None:
            return
        try:
            lease = await self._table.get_lease(lease_key)
        except LeaseTableError as error:
            self._tolerate(error, "poll", lease_key)
            return
        if lease is None or lease.lease_owner != self._worker_id:
            self._incoming.pop(lease_key, None)  # withdrawn by a peer or taken by a third worker
            return
        if lease.checkpoint_owner is None or time.monotonic() - asked > self._failover_time:
            await self._take(lease)

    # --- handing off ---------------------------------------------------------------------------------------

    async def _hand_off(self, lease_key: str, held: _Held) -> None:
        """Another worker asked for this lease: let the runtime checkpoint, then pass the lease on."""
        next_owner = held.lease.lease_owner
        log.info("lease.handoff_started", worker=self._worker_id, lease_key=lease_key, to=next_owner)
        if self._on_handoff is not None and held.announced:
            try:
                async with asyncio.timeout(self._handoff_timeout):
                    await self._on_handoff(lease_key)
            except TimeoutError:
                log.warning("lease.handoff_callback_timeout", lease_key=lease_key, timeout=self._handoff_timeout)
            except Exception:  # a runtime bug must not keep the lease from moving
                log.exception("lease.handoff_callback_failed", lease_key=lease_key)
        async with held.lock:
            if self._held.get(lease_key) is not held:
                return  # lost meanwhile: the next owner forced the take
            del self._held[lease_key]
            if held.announced:
                self._emit("lost", held.lease, f"handed off to {next_owner}")
            self._view[lease_key] = await self._release_quietly(held.lease)

    # --- checkpoints and release ---------------------------------------------------------------------------

    async def _checkpoint(
        self, lease_key: str, checkpoint: str, sub_sequence: int, *, child_shard_ids: Collection[str] = ()
    ) -> Lease:
        held = self._held.get(lease_key)
        if held is None:
            raise self._not_held(lease_key)
        async with held.lock:
            if self._held.get(lease_key) is not held:
                raise self._not_held(lease_key)
            sent = time.monotonic()
            if sent - held.renewed_at > self._failover_time:
                self._drop(lease_key, "not renewed within failover_time")
                raise self._not_held(lease_key, "it was not renewed within failover_time")
            try:
                lease = await self._table.checkpoint(
                    held.lease, self._worker_id, checkpoint, sub_sequence, child_shard_ids=child_shard_ids
                )
            except LeaseLostError as lost:
                self._drop(lease_key, str(lost))
                raise
            held.lease, held.renewed_at = lease, sent  # a checkpoint moves the counter: it renews too
            self._view[lease_key] = lease
            return lease

    async def _release_all(self) -> None:
        held = list(self._held.items())
        incoming = list(self._incoming)
        self._incoming.clear()
        await self._bounded([functools.partial(self._release_held, key, entry) for key, entry in held])
        await self._bounded([functools.partial(self._withdraw, key) for key in incoming])
        log.info("lease_coordinator.released", worker=self._worker_id, leases=[key for key, _ in held])

    async def _release_held(self, lease_key: str, held: _Held) -> None:
        async with held.lock:
            if self._held.get(lease_key) is not held:
                return
            del self._held[lease_key]
            self._view[lease_key] = await self._release_quietly(held.lease)

    async def _release_quietly(self, lease: Lease) -> Lease:
        """Release; failures are logged, not raised: the lease is gone or will expire on its own."""
        try:
            return await self._table.release(lease, self._worker_id)
        except (LeaseLostError, LeaseTableError) as error:
            log.info("lease.release_failed", worker=self._worker_id, lease_key=lease.lease_key, detail=str(error))
            return lease

    async def _withdraw(self, lease_key: str) -> None:
        """On stop, undo hand-offs we asked for so no lease is left waiting for a worker that is leaving."""
        try:
            lease = await self._table.get_lease(lease_key)
            if lease is None or lease.lease_owner != self._worker_id:
                return
            if lease.checkpoint_owner is not None:
                await self._table.withdraw_handoff(lease, self._worker_id)
            else:
                await self._table.release(lease, self._worker_id)  # already handed over: free it
        except (LeaseLostError, LeaseContendedError, LeaseTableError) as error:
            log.info("lease.withdraw_failed", worker=self._worker_id, lease_key=lease_key, detail=str(error))

    # --- helpers -------------------------------------------------------------------------------------------

    def _announce_ready(self) -> None:
        """Announce held leases whose parents are finished (parent-before-child)."""
        for key, held in self._held.items():
            if not held.announced and not held.handing_off and is_ready(held.lease, self._view, self._finished):
                held.announced = True
                self._emit("acquired", held.lease, "")
                log.debug("lease.announced", worker=self._worker_id, lease_key=key)

    def _drop(self, lease_key: str, reason: str) -> None:
        held = self._held.pop(lease_key, None)
        if held is None:
            return
        log.warning("lease.lost", worker=self._worker_id, lease_key=lease_key, reason=reason)
        if held.announced:
            self._emit("lost", held.lease, reason)

    def _emit(self, kind: Literal["acquired", "lost"], lease: Lease, reason: str) -> None:
        self.events.put_nowait(LeaseEvent(kind=kind, lease=lease, reason=reason))

    def _not_held(self, lease_key: str, why: str = "it is not held") -> LeaseLostError:
        return LeaseLostError(
            f"worker {self._worker_id!r} cannot checkpoint lease {lease_key!r}: {why}. "
            "Stop processing this shard; its new owner resumes from the last checkpoint.",
            lease_key=lease_key,
            worker_id=self._worker_id,
        )

    def _tolerate(self, error: LeaseTableError, action: str, lease_key: str | None) -> None:
        """Throttling and outages that outlast the retries are waited out until the next pass; anything else
        (access denied, a deleted table) stops the coordinator."""
        if not error.retryable:
            raise error
        log.warning(
            "lease_table.unavailable", worker=self._worker_id, action=action, lease_key=lease_key, error=str(error)
        )

    def _new_lease(self, shard: ShardInfo, checkpoint: str, prefix: str | None = None) -> Lease:
        return Lease(
            lease_key=lease_key_for(shard.shard_id, self._prefix if prefix is None else prefix),
            checkpoint=checkpoint,
            parent_shard_ids=frozenset(shard.parent_shard_ids),
            starting_hash_key=shard.starting_hash_key,
            ending_hash_key=shard.ending_hash_key,
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        if self._group is None:
            coroutine.close()
            raise RuntimeError("LeaseCoordinator.run() is not running")
        self._group.create_task(coroutine, name=name)

    async def _bounded(
        self, actions: Sequence[Callable[[], Awaitable[None]]], slots: asyncio.Semaphore | None = None
    ) -> None:
        """Run actions concurrently, at most max_concurrent_writes at a time (of ``slots``, default the taker's
        and releases' share), under structured concurrency."""
        if not actions:
            return
        bound = slots if slots is not None else self._write_slots

        async def guarded(action: Callable[[], Awaitable[None]]) -> None:
            async with bound:
                await action()

        async with asyncio.TaskGroup() as group:
            for action in actions:
                group.create_task(guarded(action))
