"""The retry budget is a time: an operation that keeps failing is given up ``max_elapsed_s`` after its first
attempt, whatever the jitter drew. Driven by a fake clock (the sleeps advance it), so nothing waits."""

from __future__ import annotations

import random

import msgspec
import pytest

from streamkit.config import convert
from streamkit.errors import ConfigError
from streamkit.retry import DEFAULT_MAX_ELAPSED_S, RetryPolicy, retry


class FakeClock:
    """time.monotonic and asyncio.sleep of a test: sleeping moves the clock, every call takes ``call_s``."""

    def __init__(self, call_s: float = 0.0) -> None:
        self.now = 1000.0
        self.call_s = call_s
        self.sleeps: list[float] = []
        self.attempts_at: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    async def failing_call(self) -> None:
        self.attempts_at.append(self.now)
        self.now += self.call_s
        raise ConnectionError("service unreachable")


async def run_out(policy: RetryPolicy, clock: FakeClock) -> float:
    """Seconds from the first attempt until ``retry`` gave up."""
    start = clock.now
    with pytest.raises(ConnectionError):
        await retry(clock.failing_call, lambda _: True, policy, clock=clock, sleep=clock.sleep)
    return clock.now - start


@pytest.mark.parametrize("seed", range(20))
async def test_an_outage_is_ridden_out_for_max_elapsed_s_whatever_the_jitter(seed: int) -> None:
    random.seed(seed)
    clock = FakeClock(call_s=0.05)
    policy = RetryPolicy(max_elapsed_s=30.0, base_delay_s=0.1, max_delay_s=20.0)
    elapsed = await run_out(policy, clock)
    # The last wait is cut at the deadline, so the last attempt starts exactly there.
    assert clock.attempts_at[-1] - clock.attempts_at[0] == pytest.approx(30.0)
    assert elapsed == pytest.approx(30.0 + clock.call_s)
    assert len(clock.attempts_at) > 2


async def test_the_wait_before_the_last_attempt_is_cut_at_the_deadline() -> None:
    clock = FakeClock()
    budget = RetryPolicy(max_elapsed_s=10.0, base_delay_s=100.0, max_delay_s=100.0).budget(clock)
    random.seed(1)
    clock.now += 9.5
    assert not budget.exhausted(1)
    assert budget.delay(1) <= 0.5
    clock.now += 0.5
    assert budget.exhausted(2)
    assert budget.describe(2) == "after 2 attempts in 10.0 s"


async def test_zero_retries_until_the_operation_succeeds() -> None:
    clock = FakeClock(call_s=1.0)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        clock.now += 1.0
        if calls < 500:
            raise ConnectionError("still down")
        return "up"

    policy = RetryPolicy(max_elapsed_s=0, base_delay_s=0.1, max_delay_s=5.0)
    assert await retry(flaky, lambda _: True, policy, clock=clock, sleep=clock.sleep) == "up"
    assert calls == 500 and clock.now - 1000.0 > DEFAULT_MAX_ELAPSED_S


async def test_max_attempts_still_caps_an_operation_within_the_time() -> None:
    clock = FakeClock(call_s=0.01)
    await run_out(RetryPolicy(max_elapsed_s=300, max_attempts=3, base_delay_s=0.1, max_delay_s=1.0), clock)
    assert len(clock.attempts_at) == 3


async def test_errors_that_are_not_retryable_are_raised_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(ConnectionError):
        await retry(clock.failing_call, lambda _: False, RetryPolicy(), clock=clock, sleep=clock.sleep)
    assert len(clock.attempts_at) == 1 and clock.sleeps == []


def test_the_default_budget_is_a_time_documented_in_one_place() -> None:
    policy = RetryPolicy()
    assert (policy.max_elapsed_s, policy.max_attempts) == (DEFAULT_MAX_ELAPSED_S, 0) == (300.0, 0)
    assert msgspec.convert({"max_elapsed_s": 60}, RetryPolicy).max_elapsed_s == 60


def test_a_negative_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.retry\.max_elapsed_s: expected zero or more, got -1"):
        convert({"max_elapsed_s": -1}, RetryPolicy, "sinks[0].retry")
