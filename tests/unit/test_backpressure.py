from __future__ import annotations

import asyncio

import pytest

from streamkit.backpressure import ByteBudget


async def test_waiters_are_admitted_in_order_as_bytes_are_released() -> None:
    budget = ByteBudget(100)
    await budget.acquire(80)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        order.append(name)

    big = asyncio.create_task(take("big", 60))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10))  # would fit now, but must not overtake "big"
    await asyncio.sleep(0)
    assert order == []
    budget.release(80)
    await asyncio.gather(big, small)
    assert order == ["big", "small"]
    assert budget.used == 70 and budget.peak == 80


async def test_a_request_larger_than_the_budget_runs_alone() -> None:
    budget = ByteBudget(10)
    await budget.acquire(500)
    assert budget.used == 500
    waiter = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.release(500)
    await waiter
    assert budget.used == 1


async def test_cancelled_waiter_does_not_leak_bytes() -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(10)
    assert budget.used == 0


def test_over_release_is_an_error() -> None:
    budget = ByteBudget(10)
    with pytest.raises(RuntimeError):
        budget.release(1)
