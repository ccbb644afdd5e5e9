"""Backpressure by bytes in flight.

A queue length says nothing about memory when records range from 100 bytes to 1 MiB, so the runtime
bounds the memory of records taken from sources but not yet finished (written by every sink or
dead-lettered): the measured footprint of their batches (streamkit.footprint), not their payload bytes.
Fetch loops wait here; a batch that grows on its way (decoded values a sink keeps) waits for the growth
ahead of every fetch; a batch that shrinks gives bytes back; acknowledgements release.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    nbytes: int
    future: asyncio.Future[None]
    held: int = 0
    """Bytes the waiter already holds (a batch growing mid-trip); 0 for a fetch."""
    growth: bool = False


class ByteBudget:
    """An asyncio semaphore counted in bytes, first come first served.

    A single request larger than the whole budget is admitted when nothing else is in flight, so one huge
    batch cannot deadlock the pipeline; it only runs alone. Waiters are served in arrival order, so a
    partition with large batches is not starved by partitions with small ones, except that growth of
    batches already admitted goes first: finishing them is what frees memory. Growth is admitted over the
    limit only when every byte in flight belongs to batches waiting to grow (nothing else could release).
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the byte budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: deque[_Waiter] = deque()
        self._growth_held = 0

    def _fits(self, waiter: _Waiter) -> bool:
        if self.used + waiter.nbytes <= self.limit or self.used == 0:
            return True
        return waiter.growth and self.used == self._growth_held

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` fit (a fetch)."""
        if not self._waiters and (self.used + nbytes <= self.limit or self.used == 0):
            self._take(nbytes)  # the common case, without a waiter and its future (once per batch)
            return
        await self._wait(_Waiter(nbytes, asyncio.get_running_loop().create_future()))

    async def grow(self, nbytes: int, held: int) -> None:
        """Wait until ``nbytes`` more fit for a batch that already holds ``held`` bytes."""
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future(), held, growth=True)
        await self._wait(waiter)

    async def _wait(self, waiter: _Waiter) -> None:
        if not self._waiters and self._fits(waiter):
            self._take(waiter.nbytes)
            return
        if waiter.growth:
            # Ahead of fetches, behind earlier growth.
            ahead = sum(1 for w in self._waiters if w.growth)
            self._waiters.insert(ahead, waiter)
            self._growth_held += waiter.held
        else:
            self._waiters.append(waiter)
        self._admit()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.nbytes)  # granted just as we were cancelled: give it back
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            if waiter.growth:
                self._growth_held -= waiter.held
            self._admit()

    def release(self, nbytes: int) -> None:
        """Give bytes back and admit waiters that now fit. Safe to call from plain callbacks."""
        self.used -= nbytes
        if self.used < 0:
            raise RuntimeError("byte budget released more than acquired")
        self._admit()

    def _admit(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.future.done():
                waiters.popleft()
                if waiter.growth:
                    self._growth_held -= waiter.held
                continue
            if not self._fits(waiter):
                break
            waiters.popleft()
            if waiter.growth:
                self._growth_held -= waiter.held
            self._take(waiter.nbytes)
            waiter.future.set_result(None)


@dataclass
class Expansion:
    """How much a batch's footprint grows from the source to the sinks, learned from the last batches.

    A fetch reserves its footprint times this factor, so the growth it will need is (nearly) reserved up
    front and batches rarely wait mid-trip. Until the first batch has been measured the factor is
    unknown: one batch goes first (``probe``) and the others wait for its measurement.
    """

    window: int = 16
    known: asyncio.Event = field(default_factory=asyncio.Event)
    _ratios: deque[float] = field(default_factory=deque)
    _probing: bool = False

    @property
    def factor(self) -> float:
        return max(1.0, max(self._ratios, default=1.0))

    async def reserve(self, footprint: int) -> int:
        """Bytes a fetch of ``footprint`` bytes should reserve."""
        if not self.known.is_set():
            if self._probing:
                await self.known.wait()
            else:
                self._probing = True
                return footprint
        return round(footprint * self.factor)

    def observe(self, before: int, after: int) -> None:
        if before > 0:
            self._ratios.append(after / before)
            if len(self._ratios) > self.window:
                self._ratios.popleft()
        self.known.set()

    def unblock(self) -> None:
        """The probing batch ended without a measurement (cancelled, failed): let the others go."""
        self.known.set()
