"""Backpressure by bytes in flight.

A queue length says nothing about memory when records range from 100 bytes to 1 MiB, so the runtime
bounds the bytes of records taken from sources but not yet finished (written by every sink or
dead-lettered). Fetch loops wait here; acknowledgements release.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """An asyncio semaphore counted in bytes, first come first served.

    A single request larger than the whole budget is admitted when nothing else is in flight, so one huge
    batch cannot deadlock the pipeline; it only runs alone. Waiters are served in arrival order, so a
    partition with large batches is not starved by partitions with small ones.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the byte budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit or self.used == 0

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    async def acquire(self, nbytes: int) -> None:
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # granted just as we were cancelled: give it back
            raise

    def release(self, nbytes: int) -> None:
        """Give bytes back and admit waiters that now fit. Safe to call from plain callbacks."""
        self.used -= nbytes
        if self.used < 0:
            raise RuntimeError("byte budget released more than acquired")
        waiters = self._waiters
        while waiters:
            size, future = waiters[0]
            if future.done():
                waiters.popleft()
                continue
            if not self._fits(size):
                break
            waiters.popleft()
            self._take(size)
            future.set_result(None)
