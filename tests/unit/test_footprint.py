"""Measuring what batches hold, right-sized JSON bytes, and the budget's growth accounting."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest

from streamkit.backpressure import ByteBudget, Expansion
from streamkit.batch import Partition, RecordBatch
from streamkit.devtools.bench.data import record_payloads
from streamkit.footprint import BYTES_HEADER, POINTER, batch_footprint, deep_size, footprint, sampled_size
from streamkit.json_bytes import dumps_all, dumps_tight
from tests.helpers import traced

P = Partition("test", "0")


def test_sampled_size_of_decoded_records_is_within_a_tenth_of_tracemalloc() -> None:
    payloads, _ = record_payloads(5000)
    values, measured = traced(lambda: [orjson.loads(p) for p in payloads])
    estimate = sampled_size(values)
    assert 0.9 < estimate / measured < 1.1, (estimate, measured)
    # ... and decoded values weigh far more than their payload: what counting payload bytes misses.
    assert estimate > 2 * sum(map(len, payloads))


def test_payload_size_is_exact_and_shared_columns_count_once() -> None:
    payloads = [b"x" * n for n in range(1, 101)]
    batch = RecordBatch(P, payloads=payloads)
    expected = sum(map(len, payloads)) + len(payloads) * (BYTES_HEADER + POINTER) + sys.getsizeof([])
    assert batch_footprint(batch) - batch.arrival_ms.nbytes - batch.origin.nbytes == expected
    decoded = batch.with_values([{"n": i} for i in range(100)], keep_payloads=True)
    assert footprint([batch, decoded]) == batch_footprint(decoded)  # payloads and arrays are shared
    assert batch_footprint(decoded) > batch_footprint(batch)


def test_deep_size_follows_containers_and_counts_shared_objects_once() -> None:
    shared = "s" * 1000
    assert deep_size([shared, shared]) == sys.getsizeof([shared, shared]) + sys.getsizeof(shared)
    nested = {"a": {"b": [1.5, "x" * 500]}}
    assert deep_size(nested) > 500 + sys.getsizeof(nested)


def test_encoded_batch_releases_values_and_keeps_records_and_origins() -> None:
    values = [{"id": i, "v": "x" * 20} for i in range(10)]
    batch = RecordBatch(P, payloads=None, values=values).select([i % 2 == 0 for i in range(10)])
    encoded = batch.encoded()
    assert encoded.values_held is None and not encoded.decoded
    assert [orjson.loads(p) for p in encoded.payloads] == values[::2]
    assert encoded.origin.tolist() == [0, 2, 4, 6, 8]


def test_dumps_all_gives_right_sized_bytes_equal_to_orjson() -> None:
    values = [
        {"id": f"evt-{i:09d}", "event": "click", "user": {"id": i, "country": "DE"}, "amount": 1.5} for i in range(2000)
    ]
    plain, plain_bytes = traced(lambda: [orjson.dumps(v) for v in values])
    tight, tight_bytes = traced(lambda: dumps_all(values))
    assert tight == plain
    assert dumps_all(values, orjson.OPT_SORT_KEYS) == [orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values]
    assert dumps_tight(values[0]) == plain[0]
    content = sum(map(len, tight))
    # Right-sized: the bytes objects, their headers and the list; orjson's own buffers are far larger.
    assert tight_bytes < content + len(values) * (BYTES_HEADER + 16) + sys.getsizeof(tight) + 4096
    assert plain_bytes > 4 * tight_bytes


def test_dumps_all_raises_like_orjson_on_unencodable_values() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        dumps_all([{"ok": 1}, {"bad": object()}])


async def test_growth_of_admitted_batches_goes_ahead_of_fetches() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    order: list[str] = []

    async def fetch() -> None:
        await budget.acquire(30)
        order.append("fetch")

    async def grow() -> None:
        await budget.grow(30, held=60)
        order.append("grow")

    fetching = asyncio.create_task(fetch())
    await asyncio.sleep(0)
    assert order == ["fetch"]  # it fitted
    await budget.acquire(10)
    waiting_fetch = asyncio.create_task(fetch())
    await asyncio.sleep(0)
    growing = asyncio.create_task(grow())
    await asyncio.sleep(0)
    assert order == ["fetch"]
    budget.release(40)  # 60 left in flight: room for one 30 and not two
    await asyncio.sleep(0)
    assert order == ["fetch", "grow"]
    assert not waiting_fetch.done()
    budget.release(60 + 30)
    await asyncio.gather(fetching, waiting_fetch, growing)
    assert order == ["fetch", "grow", "fetch"] and budget.peak <= 100


async def test_growth_is_admitted_over_the_limit_when_only_growing_batches_hold_the_budget() -> None:
    budget = ByteBudget(100)
    await budget.acquire(50)
    await budget.acquire(50)
    first = asyncio.create_task(budget.grow(40, held=50))
    await asyncio.sleep(0)
    assert not first.done()  # the other batch could still release
    second = asyncio.create_task(budget.grow(40, held=50))
    # Every byte in flight belongs to a batch waiting to grow: nothing could release, so one goes on.
    await asyncio.wait_for(first, 1.0)
    await asyncio.sleep(0)
    assert not second.done()
    assert budget.used == 140
    budget.release(90)
    await second
    assert budget.used == 90


async def test_a_cancelled_growth_waiter_leaves_no_trace() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)  # the growing batch
    await budget.acquire(40)  # another, in a sink
    waiter = asyncio.create_task(budget.grow(10, held=60))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(60)  # the cancelled batch gives back what it held
    # Nothing of the cancelled waiter is left: a fetch that does not fit waits as usual.
    fetch = asyncio.create_task(budget.acquire(70))
    await asyncio.sleep(0)
    assert not fetch.done() and budget.used == 40
    budget.release(40)
    await fetch
    assert budget.used == 70 and budget.peak == 100


async def test_expansion_lets_one_batch_probe_then_reserves_the_measured_factor() -> None:
    expansion = Expansion()
    assert await expansion.reserve(100) == 100  # the probe
    waiting = asyncio.create_task(expansion.reserve(100))
    await asyncio.sleep(0)
    assert not waiting.done()  # the others wait for the probe's measurement
    expansion.observe(100, 250)
    assert await waiting == 250
    expansion.observe(100, 50)
    assert expansion.factor == 2.5  # the largest recent growth, never below 1
    for _ in range(expansion.window):
        expansion.observe(100, 40)
    assert expansion.factor == 1.0
