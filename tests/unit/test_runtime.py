"""The runtime against in-memory sources and sinks: routing, acks, checkpoints, backpressure, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from streamkit.batch import Partition, RecordBatch
from streamkit.build import build_pipeline
from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.config import parse_config
from streamkit.connectors.local.memory_sink import MemoryDeadLetter, MemorySink, MemorySinkOptions
from streamkit.errors import CheckpointDeferred, SinkError
from streamkit.processors.json_codec import JsonDecode
from streamkit.runtime import Pipeline, Route, Runtime
from streamkit.sink import BufferedSink, BufferOptions, Rejection, Sink
from streamkit.source import PartitionReader, Source, SourceBatch
from tests.helpers import wait_for


def pipeline(sinks: list[dict[str, Any]], **extra: Any) -> Pipeline:
    data: dict[str, Any] = {
        "source": {
            "type": "generator",
            "count": 2000,
            "partitions": 2,
            "batch_size": 100,
            "error_ratio": 0.2,
        },
        "processors": [{"type": "json.decode"}],
        "sinks": sinks,
        "dead_letter": {"type": "memory"},
        "checkpoint": {"type": "memory", "interval_s": 0.05},
    }
    data.update(extra)
    return build_pipeline(parse_config(data))


def ids(sink: MemorySink) -> list[Any]:
    """The records' ids: strings from the generator, ints from the hand-made payloads."""
    return [orjson.loads(p)["id"] for p in sink.payloads()]


async def test_fan_out_routes_by_predicate_and_checkpoints_everything() -> None:
    p = pipeline(
        [
            {"type": "memory", "name": "all"},
            {"type": "memory", "name": "errors", "when": {"field": "status", "equals": "err"}},
            {"type": "memory", "name": "none", "when": {"field": "status", "equals": "nope"}},
        ]
    )
    summary = await Runtime(p).run(asyncio.Event())
    everything, errors = MemorySink.instances["all"], MemorySink.instances["errors"]
    assert len(ids(everything)) == 4000
    assert sorted(ids(errors)) == sorted(i for i, v in zip(ids(everything), everything.payloads(), strict=True)
                                         if orjson.loads(v)["status"] == "err")  # fmt: skip
    assert 0 < len(ids(errors)) < 4000
    assert MemorySink.instances["none"].written_records == 0
    assert summary.checkpoints == {
        Partition("generator:generator", "0"): "1999",
        Partition("generator:generator", "1"): "1999",
    }
    assert summary.drained


class ReverseAckSink(Sink):
    """Holds every batch and acknowledges them newest first, in small steps: out-of-order confirmation."""

    def __init__(self) -> None:
        self.held: list[RecordBatch] = []
        self.release = asyncio.Event()

    async def submit(self, batch: RecordBatch) -> None:
        self.held.append(batch)

    async def flush(self) -> None:
        await self.release.wait()
        while self.held:
            batch = self.held.pop()
            self.acknowledge(batch)
            await asyncio.sleep(0)


async def test_checkpoint_waits_for_the_oldest_unacknowledged_record() -> None:
    p = pipeline([{"type": "memory", "name": "unused"}])
    sink = ReverseAckSink()
    sink.bind("reverse", p.dead_letters, p.metrics)
    p.routes[0].sink = sink
    runtime = Runtime(p)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await wait_for(lambda: len(sink.held) == 40)  # 2 partitions x 20 batches, nothing acknowledged
    await asyncio.sleep(0.2)  # several checkpoint intervals pass
    assert p.store.saved == {}  # type: ignore[attr-defined]
    # Acknowledge only the newest batch of partition 0: still nothing contiguous from the start.
    newest = next(b for b in reversed(sink.held) if b.partition.key == "0")
    sink.held.remove(newest)
    sink.acknowledge(newest)
    await asyncio.sleep(0.2)
    assert p.store.saved == {}  # type: ignore[attr-defined]
    sink.release.set()
    summary = await task
    assert set(summary.checkpoints.values()) == {"1999"}


class FailingSink(BufferedSink):
    """Writes the first ``good`` requests, then fails for good."""

    def __init__(self, good: int) -> None:
        super().__init__(BufferOptions(max_records=100, max_age_s=0.01))
        self.good = good
        self.written: list[bytes] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        if self.good <= 0:
            raise SinkError("destination is gone")
        self.good -= 1
        for b in batches:
            self.written.extend(b.payloads)
        return []


async def test_a_sink_that_fails_stops_the_pipeline_without_checkpointing_unwritten_records() -> None:
    p = pipeline([{"type": "memory", "name": "unused"}], source={"type": "generator", "count": 5000, "batch_size": 100})
    sink = FailingSink(good=3)
    sink.bind("failing", p.dead_letters, p.metrics)
    p.routes[0].sink = sink
    with pytest.raises(ExceptionGroup) as info:
        await Runtime(p).run(asyncio.Event())
    assert info.group_contains(SinkError)
    saved = p.store.saved  # type: ignore[attr-defined]
    checkpoint = int(next(iter(saved.values()))) if saved else -1
    written = {orjson.loads(x)["seq"] for x in sink.written}
    # Everything at or below the checkpoint was really written; the checkpoint is not past a gap.
    assert set(range(checkpoint + 1)) <= written
    assert checkpoint < 5000 - 1


class SlowSink(BufferedSink):
    def __init__(self) -> None:
        super().__init__(BufferOptions(max_records=50, max_age_s=0.01, max_concurrent_writes=1))
        self.count = 0

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        await asyncio.sleep(0.005)
        self.count += sum(len(b) for b in batches)
        return []


async def test_bytes_in_flight_stay_under_the_budget() -> None:
    budget = 64 * 1024
    p = pipeline(
        [{"type": "memory", "name": "unused"}],
        source={"type": "generator", "count": 3000, "partitions": 4, "batch_size": 10, "record_bytes": 1000},
        runtime={"max_bytes_in_flight": budget},
    )
    sink = SlowSink()
    sink.bind("slow", p.dead_letters, p.metrics)
    p.routes[0].sink = sink
    runtime = Runtime(p)
    await runtime.run(asyncio.Event())
    assert sink.count == 12000
    assert 0 < runtime.budget.peak <= budget
    assert runtime.budget.used == 0


async def test_age_timer_flushes_a_quiet_partition_before_any_size_limit() -> None:
    p = pipeline(
        [
            {
                "type": "memory",
                "name": "timer",
                "max_records": 1_000_000,
                "max_bytes": "1GiB",
                "max_age_s": 0.1,
            }
        ],
        source={"type": "generator", "count": 0, "rate": 50, "batch_size": 5},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(p).run(stop))

    def sink_written() -> int:
        return MemorySink.instances["timer"].written_records

    await wait_for(lambda: "timer" in MemorySink.instances and sink_written() >= 5, timeout=5)
    written_before_stop = sink_written()
    stop.set()
    await task
    assert written_before_stop >= 5


async def test_poison_records_go_to_the_dead_letter_queue_and_are_checkpointed_past() -> None:
    p = pipeline(
        [{"type": "memory", "name": "good"}],
        source={"type": "generator", "count": 1000, "invalid_ratio": 0.05, "batch_size": 100},
    )
    summary = await Runtime(p).run(asyncio.Event())
    dlq = p.dead_letters
    assert isinstance(dlq, MemoryDeadLetter)
    assert summary.dead_lettered == len(dlq.entries) > 0
    assert len(dlq.entries) + MemorySink.instances["good"].written_records == 1000
    entry = dlq.entries[0]
    assert entry["stage"] == "json.decode" and entry["reason"].startswith("invalid JSON")
    assert entry["payload_text"].endswith("not json") and entry["partition"] == "0"
    assert summary.checkpoints[Partition("generator:generator", "0")] == "999"


async def test_without_a_dead_letter_queue_a_poison_record_stops_the_pipeline() -> None:
    p = pipeline(
        [{"type": "memory", "name": "good2"}],
        source={"type": "generator", "count": 1000, "invalid_ratio": 0.05, "batch_size": 100},
        dead_letter=None,
    )
    with pytest.raises(ExceptionGroup) as info:
        await Runtime(p).run(asyncio.Event())
    assert "configure dead_letter" in str(info.value.exceptions[0])


async def test_a_stop_during_start_up_ends_even_partitions_assigned_after_it() -> None:
    """SIGTERM just after launch: a source still assigning partitions must not keep the drain waiting."""
    from streamkit.connectors.local.generator import GeneratorSource

    class SlowToAssign(GeneratorSource):
        async def run(self, host: Any, stop: asyncio.Event) -> None:
            await stop.wait()  # the stop arrives before any partition is handed out
            await asyncio.sleep(0.05)
            await super().run(host, stop)

    p = pipeline([{"type": "memory", "name": "out"}], source={"type": "generator", "count": 0, "partitions": 2})
    p.source.__class__ = SlowToAssign
    stop = asyncio.Event()
    stop.set()
    summary = await asyncio.wait_for(Runtime(p).run(stop), timeout=10)
    assert summary.drained


# -- revoked partitions ------------------------------------------------------------------------------


class ListReader(PartitionReader):
    """Yields one batch of ``payloads`` (positions 0..n-1), then stays open until stopped."""

    def __init__(self, partition: Partition, payloads: list[bytes]) -> None:
        super().__init__(partition)
        self.payloads = payloads

    async def batches(self) -> AsyncIterator[SourceBatch]:
        batch = RecordBatch(self.partition, payloads=list(self.payloads))
        yield SourceBatch(batch, list(range(len(self.payloads))))
        await self.stopping.wait()


class HandOperatedSource(Source):
    """The test assigns and revokes partitions itself, through the host it is given."""

    name = "hand"

    def __init__(self) -> None:
        self.host: Any = None
        self.running = asyncio.Event()

    async def run(self, host: Any, stop: asyncio.Event) -> None:
        self.host = host
        self.running.set()
        await stop.wait()


async def test_a_lost_partitions_buffered_records_are_dropped_and_the_replay_written_once() -> None:
    """Issue 12.2: a lost partition's unacknowledged records stayed in the sinks' buffers and were written
    next to the replay of the partition's next reader. Revoked, they are dropped (sink and dead-letter queue)
    and their bytes go back to the budget at once."""
    partition = Partition("hand", "0")
    payloads = [orjson.dumps({"id": i}) for i in range(10)]
    payloads[4] = b"{not json"
    sink = MemorySink(MemorySinkOptions(max_records=1000, max_age_s=60))
    dead_letters = MemoryDeadLetter(BufferOptions(max_records=1000, max_age_s=60))
    source = HandOperatedSource()
    store = MemoryCheckpointStore()
    runtime = Runtime(
        Pipeline(
            name="revoke",
            source=source,
            chain=Chain([JsonDecode()]),
            routes=[Route("mem", sink)],
            dead_letters=dead_letters,
            store=store,
            checkpoint_interval_s=0.05,
        )
    )
    sink.bind("mem", dead_letters, runtime.metrics)
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    await asyncio.wait_for(source.running.wait(), 5)

    await source.host.assign(ListReader(partition, payloads))
    await wait_for(lambda: runtime.metrics.total_in == 10 and runtime.budget.used > 0)
    await asyncio.sleep(0.1)  # routed to the sink and the dead-letter queue, buffered there
    await source.host.revoke(partition, graceful=False)
    assert runtime.budget.used == 0, "a lost partition's bytes are released"
    assert store.saved == {}, "nothing of the lost partition was checkpointed"

    await source.host.assign(ListReader(partition, payloads))  # the next owner: a replay from the start
    await wait_for(lambda: runtime.metrics.total_in == 20)
    stop.set()
    summary = await asyncio.wait_for(running, 10)
    assert sorted(ids(sink)) == [i for i in range(10) if i != 4], "each record written once"
    assert [e["position"] for e in dead_letters.entries] == ["4"], "dead-lettered once"
    assert summary.checkpoints == {partition: "9"}


class UnavailableOnce(MemoryCheckpointStore):
    """The store cannot be written the first time (DynamoDB unreachable beyond its retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred = 0

    async def save(self, partition: Partition, checkpoint: str) -> None:
        if self.deferred == 0:
            self.deferred += 1
            raise CheckpointDeferred("lease table unreachable")
        await super().save(partition, checkpoint)


async def test_a_deferred_checkpoint_is_written_at_the_next_interval_even_if_nothing_moved() -> None:
    """A checkpoint the store could not write was remembered as written: a quiet partition's last position
    then never reached the store (its records were read again after a restart)."""
    partition = Partition("hand", "0")
    source, store = HandOperatedSource(), UnavailableOnce()
    sink = MemorySink(MemorySinkOptions(max_age_s=0.01))
    runtime = Runtime(
        Pipeline(
            name="deferred",
            source=source,
            chain=Chain([]),
            routes=[Route("mem", sink)],
            dead_letters=None,
            store=store,
            checkpoint_interval_s=0.05,
        )
    )
    sink.bind("mem", None, runtime.metrics)
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    await asyncio.wait_for(source.running.wait(), 5)
    await source.host.assign(ListReader(partition, [orjson.dumps({"id": i}) for i in range(5)]))
    try:
        await wait_for(lambda: store.saved == {partition: "4"}, timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert store.deferred == 1
