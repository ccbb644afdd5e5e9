"""Exponential back-off with full jitter, within a time budget, shared by every connector that retries.

The budget is a time (``max_elapsed_s``), not a number of attempts: with full jitter, ten attempts last
anywhere from a few seconds to a minute, so nobody could say how long an outage a worker rides out. An
operation that keeps failing is retried until ``max_elapsed_s`` after its first attempt; the wait before the
last attempt is cut so that attempt happens at the deadline, not after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import msgspec

from streamkit.config import NonNegativeInt

T = TypeVar("T")

Clock = Callable[[], float]

DEFAULT_MAX_ELAPSED_S = 300.0
"""Five minutes: long enough to ride out a throttling burst, a failover or a short regional blip without a
restart; short enough that a worker whose destination is really gone stops (exit 1) and says so while the
on-call engineer still looks at the deploy. Records stay unacknowledged meanwhile: a restart replays them."""


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a connector retries transient errors (see the module docstring)."""

    max_elapsed_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 24 * 3600)] = DEFAULT_MAX_ELAPSED_S
    """Give up an operation this long after its first attempt; 0 retries until shutdown."""
    max_attempts: NonNegativeInt = 0
    """An additional cap on attempts per operation; 0 (the default) means only the time budget counts."""
    base_delay_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 0.1
    max_delay_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 20.0

    def delay(self, attempt: int) -> float:
        """Full jitter (a random delay up to the exponential cap) spreads retries of many workers apart."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))
        return random.uniform(0, cap)

    def budget(self, clock: Clock = time.monotonic) -> RetryBudget:
        """The budget of one operation, starting now (call it before the first attempt)."""
        return RetryBudget(self, clock)


class RetryBudget:
    """What is left of one operation's retries: checked after each failed attempt."""

    def __init__(self, policy: RetryPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.started = clock()

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def exhausted(self, attempt: int) -> bool:
        """Whether to give up after ``attempt`` failed attempts."""
        policy = self.policy
        if policy.max_attempts > 0 and attempt >= policy.max_attempts:
            return True
        return policy.max_elapsed_s > 0 and self.elapsed_s >= policy.max_elapsed_s

    def delay(self, attempt: int) -> float:
        """The wait before the next attempt: full jitter, but never past the deadline."""
        wait = self.policy.delay(attempt)
        if self.policy.max_elapsed_s > 0:
            wait = min(wait, max(0.0, self.policy.max_elapsed_s - self.elapsed_s))
        return wait

    def describe(self, attempt: int) -> str:
        """``"after 12 attempts in 301.2 s"``, for the error that ends the retries."""
        return f"after {attempt} attempt{'s' if attempt != 1 else ''} in {self.elapsed_s:.1f} s"


async def retry(
    operation: Callable[[], Awaitable[T]],
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy,
    on_retry: Callable[[BaseException, int], None] | None = None,
    *,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``operation`` until it succeeds, retrying errors ``is_retryable`` accepts, within ``policy``."""
    budget = policy.budget(clock)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as exc:
            if not is_retryable(exc) or budget.exhausted(attempt):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            await sleep(budget.delay(attempt))
