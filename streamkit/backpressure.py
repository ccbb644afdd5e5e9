"""Backpressure by bytes in flight.

A queue length says nothing about memory when records range from 100 bytes to 1 MiB, so the runtime
bounds the bytes of records taken from sources but not yet finished (written by every sink or
dead-lettered). Fetch loops wait here; acknowledgements release.
"""

from __future__ import annotations

import asyncio


class ByteBudget:
    """An asyncio semaphore counted in bytes.

    A single request larger than the whole budget is admitted when nothing else is in flight, so one huge
    batch cannot deadlock the pipeline; it only runs alone.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the byte budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    def _fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit or self.used == 0

    async def acquire(self, nbytes: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(nbytes))
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def try_acquire(self, nbytes: int) -> bool:
        if not self._fits(nbytes):
            return False
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        return True

    def release(self, nbytes: int) -> None:
        """Give bytes back. Safe to call from callbacks: the wake-up is scheduled, not awaited."""
        self.used -= nbytes
        if self.used < 0:
            raise RuntimeError("byte budget released more than acquired")
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
