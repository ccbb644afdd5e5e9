from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamkit.batch import RecordBatch
from streamkit.chain import Chain
from streamkit.errors import ProcessingError
from streamkit.processor import PerRecord, as_processor, batch_processor
from streamkit.processors.json_codec import JsonDecode, JsonEncode
from tests.helpers import json_batch, ticketed


async def run(chain: Chain, batch: RecordBatch) -> tuple[list[Any], list[Any]]:
    outputs, failures = await chain.run(batch)
    return [v for b in outputs for v in b.values], failures


async def test_per_record_function_can_keep_drop_replace_and_multiply() -> None:
    def fn(value: dict[str, Any]) -> Any:
        n = value["n"]
        if n == 0:
            return None
        if n == 2:
            return [{"n": 2, "part": 1}, {"n": 2, "part": 2}]
        return {"n": n * 10}

    batch, _ = ticketed([{"n": 1}, {"n": 0}, {"n": 2}])
    values, failures = await run(Chain([JsonDecode(), as_processor(fn)]), batch)
    assert values == [{"n": 10}, {"n": 2, "part": 1}, {"n": 2, "part": 2}]
    assert failures == []


async def test_a_record_that_raises_is_dead_lettered_with_its_reason_and_the_batch_goes_on() -> None:
    def fn(value: dict[str, Any]) -> dict[str, Any]:
        return {"inverse": 1 / value["n"]}

    batch, _ = ticketed([{"n": 1}, {"n": 0}, {"n": 4}])
    values, failures = await run(Chain([JsonDecode(), as_processor(fn)]), batch)
    assert values == [{"inverse": 1.0}, {"inverse": 0.25}]
    assert len(failures) == 1
    assert "ZeroDivisionError" in failures[0].reason
    assert failures[0].batch.position(0) == 101  # the second record of the ticket
    assert (
        failures[0].stage
        == "test_a_record_that_raises_is_dead_lettered_with_its_reason_and_the_batch_goes_on.<locals>.fn"
    )


async def test_fail_fast_stops_at_the_first_failure_naming_the_position() -> None:
    batch, _ = ticketed([{"n": 1}, {"n": 0}])
    chain = Chain([JsonDecode(), as_processor(lambda v: 1 / v["n"])], fail_fast=True)
    with pytest.raises(ProcessingError, match="position 101"):
        await chain.run(batch)


async def test_async_functions_keep_record_order() -> None:
    async def slow_first(value: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.02 if value["n"] == 0 else 0)
        return value

    batch, _ = ticketed([{"n": i} for i in range(5)])
    values, _ = await run(Chain([JsonDecode(), PerRecord(slow_first)]), batch)
    assert [v["n"] for v in values] == [0, 1, 2, 3, 4]


async def test_chain_applies_processors_in_order() -> None:
    seen: list[str] = []

    @batch_processor
    def first(batch: RecordBatch, ctx: Any) -> RecordBatch:
        seen.append("first")
        return batch.with_values([{**v, "trail": "a"} for v in batch.values])

    @batch_processor
    async def second(batch: RecordBatch, ctx: Any) -> list[RecordBatch]:
        seen.append("second")
        return [batch.with_values([{**v, "trail": v["trail"] + "b"} for v in batch.values])]

    values, _ = await run(Chain([JsonDecode(), first, second, JsonEncode()]), json_batch([{"x": 1}]))
    assert seen == ["first", "second"]
    assert values == [{"x": 1, "trail": "ab"}]


async def test_invalid_json_goes_to_failures_and_valid_records_keep_their_bytes() -> None:
    batch = RecordBatch(json_batch([]).partition, payloads=[b'{"a":1}', b"{nope", b'{"a":3}'])
    outputs, failures = await Chain([JsonDecode()]).run(batch)
    assert outputs[0].payloads == [b'{"a":1}', b'{"a":3}']
    assert failures[0].batch.payloads == [b"{nope"]
    assert failures[0].reason.startswith("invalid JSON")
