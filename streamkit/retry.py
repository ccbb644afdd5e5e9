"""Exponential back-off with full jitter, shared by every connector that retries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from streamkit.config import NonNegativeInt, PositiveSeconds

T = TypeVar("T")


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a connector retries transient errors. ``max_attempts`` 0 means retry until shutdown."""

    max_attempts: NonNegativeInt = 10
    base_delay_s: PositiveSeconds = 0.1
    max_delay_s: PositiveSeconds = 20.0

    def delay(self, attempt: int) -> float:
        """Full jitter (a random delay up to the exponential cap) spreads retries of many workers apart."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))
        return random.uniform(0, cap)

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts > 0 and attempt >= self.max_attempts


async def retry(
    operation: Callable[[], Awaitable[T]],
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, retrying errors ``is_retryable`` accepts, within ``policy``."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as exc:
            if not is_retryable(exc) or policy.exhausted(attempt):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            await asyncio.sleep(policy.delay(attempt))
