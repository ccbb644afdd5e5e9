"""The consumer thread against a scripted stand-in for confluent-kafka's Consumer.

What a broker cannot show on demand: messages of several partitions interleaved in one fetch, a revoke
arriving while records are in flight, commit failures, a feed filling up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamkit.connectors.kafka.consumer import ConsumerThread
from streamkit.connectors.kafka.feed import Chunk, PartitionFeed, to_batch
from streamkit.connectors.kafka.offsets import KafkaOffsetStore, partition_of
from streamkit.connectors.kafka.options import KafkaOptions
from streamkit.errors import CheckpointRejected
from tests.helpers import wait_for

TOPIC = "orders"


def message(partition: int, offset: int, value: bytes | None = b"x" * 10, topic: str = TOPIC) -> Message:
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=f"key-{offset}".encode(),
        value=value,
        headers=[("h", b"1")],
        timestamp=(1, 1_700_000_000_000 + offset),
    )


class FakeConsumer:
    """Plays a script: each consume() takes the next step (a message list, or a callable run first)."""

    def __init__(self) -> None:
        self.script: deque[list[Message] | Callable[[], list[Message]]] = deque()
        self.callbacks: dict[str, Any] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.failing_commits = 0
        self.paused: set[tuple[str, int]] = set()
        self.lock = threading.Lock()

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.calls.append(("consume", num_messages))
        if not self.script:
            time.sleep(min(timeout, 0.005))
            return []
        step = self.script.popleft()
        return step() if callable(step) else step

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.failing_commits:
            self.failing_commits -= 1
            raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.calls.append(("commit",))
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return 0, 100

    def close(self) -> None:
        self.calls.append(("close",))

    # script helpers
    def assign(self, *numbers: int) -> Callable[[], list[Message]]:
        return lambda: self._rebalance("on_assign", numbers)

    def revoke(self, *numbers: int) -> Callable[[], list[Message]]:
        return lambda: self._rebalance("on_revoke", numbers)

    def _rebalance(self, callback: str, numbers: Sequence[int]) -> list[Message]:
        self.callbacks[callback](self, [TopicPartition(TOPIC, n) for n in numbers])
        self.calls.append((callback, "returned"))
        return []


class Listener:
    """Stands in for the source: records assignments; a revoke checkpoints, as the runtime does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.feeds: dict[tuple[str, int], PartitionFeed] = {}
        self.thread: ConsumerThread | None = None
        self.checkpoint_on_revoke: dict[tuple[str, int], int] = {}
        self.revoked_partitions: list[tuple[str, int]] = []
        self.lag: dict[tuple[str, int], Any] = {}

    def assigned(self, feeds: Sequence[PartitionFeed]) -> concurrent.futures.Future[None]:
        async def assign() -> None:
            self.feeds.update({f.key: f for f in feeds})

        return asyncio.run_coroutine_threadsafe(assign(), self.loop)

    def revoked(self, feeds: Sequence[PartitionFeed], *, graceful: bool) -> concurrent.futures.Future[None]:
        async def revoke() -> None:
            await asyncio.sleep(0.05)  # draining to the sinks takes a moment
            for feed in feeds:
                feed.close()
                self.revoked_partitions.append(feed.key)
                if feed.key in self.checkpoint_on_revoke:
                    assert self.thread is not None
                    self.thread.commit(feed.key, self.checkpoint_on_revoke[feed.key])

        return asyncio.run_coroutine_threadsafe(revoke(), self.loop)

    def lag_sampled(self, lag: Any) -> None:
        self.lag = dict(lag)


async def started(consumer: FakeConsumer, **options: Any) -> tuple[ConsumerThread, Listener]:
    listener = Listener(asyncio.get_running_loop())
    opts = KafkaOptions(bootstrap_servers="127.0.0.1:1", topics=[TOPIC], group_id="g", poll_timeout_s=0.01, **options)
    thread = ConsumerThread(consumer, [TOPIC], opts, listener.loop, listener, partition_of)  # type: ignore[arg-type,unused-ignore]
    listener.thread = thread
    thread.start()
    return thread, listener


async def stopped(thread: ConsumerThread) -> None:
    thread.close()
    await asyncio.wait_for(asyncio.wrap_future(thread.done), 5)


async def test_a_fetch_is_split_into_ordered_runs_per_partition_and_tombstones_are_skipped() -> None:
    consumer = FakeConsumer()
    fetch = [message(0, 0), message(0, 1), message(1, 7), message(1, 8, value=None), message(0, 2), message(1, 9)]
    consumer.script.extend([consumer.assign(0, 1), fetch])
    thread, listener = await started(consumer)
    await wait_for(lambda: len(listener.feeds) == 2 and all(len(f.chunks) == 2 for f in listener.feeds.values()))
    feed_0, feed_1 = listener.feeds[(TOPIC, 0)], listener.feeds[(TOPIC, 1)]
    batch, offsets, nbytes = to_batch(feed_0.partition, feed_0.take(1000))
    assert list(offsets) == [0, 1, 2] and nbytes == 30
    assert batch.keys == [b"key-0", b"key-1", b"key-2"]
    assert batch.headers == [[("h", b"1")]] * 3
    assert batch.arrival_ms.tolist() == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]
    batch, offsets, _ = to_batch(feed_1.partition, feed_1.take(1000))
    assert list(offsets) == [7, 9] and str(batch.partition) == "kafka:orders/1"  # the tombstone at 8 is skipped
    await stopped(thread)


async def test_tombstones_can_be_kept_as_empty_payloads() -> None:
    consumer = FakeConsumer()
    consumer.script.extend([consumer.assign(0), [message(0, 0, value=None), message(0, 1)]])
    thread, listener = await started(consumer, tombstones="keep")
    await wait_for(lambda: (TOPIC, 0) in listener.feeds and listener.feeds[(TOPIC, 0)].chunks)
    batch, offsets, _ = to_batch(listener.feeds[(TOPIC, 0)].partition, listener.feeds[(TOPIC, 0)].take(10))
    assert batch.payloads == [b"", b"x" * 10] and list(offsets) == [0, 1]
    await stopped(thread)


async def test_a_revoke_waits_for_the_drain_and_commits_its_checkpoint_before_returning() -> None:
    consumer = FakeConsumer()
    consumer.script.extend([consumer.assign(0, 1), [message(0, 0), message(1, 0)], consumer.revoke(1)])
    thread, listener = await started(consumer)
    listener.checkpoint_on_revoke[(TOPIC, 1)] = 41
    store = KafkaOffsetStore(lambda: thread)
    await wait_for(lambda: ("on_revoke", "returned") in consumer.calls)
    # The checkpoint taken during the drain was committed inside the callback, before it returned.
    revoke_returned = consumer.calls.index(("on_revoke", "returned"))
    assert ("commit",) in consumer.calls[:revoke_returned]
    assert consumer.commits[-1] == {(TOPIC, 1): 41}
    assert thread.owned == {(TOPIC, 0)}
    with pytest.raises(CheckpointRejected):
        await store.save(partition_of(TOPIC, 1), "50")  # another member owns it now
    await store.save(partition_of(TOPIC, 0), "0")
    await wait_for(lambda: consumer.commits[-1] == {(TOPIC, 0): 1})
    await stopped(thread)


async def test_failed_commits_are_retried_and_saves_are_coalesced() -> None:
    consumer = FakeConsumer()
    consumer.failing_commits = 1
    consumer.script.append(consumer.assign(0))
    thread, _ = await started(consumer)
    store = KafkaOffsetStore(lambda: thread)
    await wait_for(lambda: thread.owned)
    for checkpoint in ("4", "9"):
        await store.save(partition_of(TOPIC, 0), checkpoint)
    await wait_for(lambda: store.committed() == {partition_of(TOPIC, 0): 10}, timeout=5)
    assert {(TOPIC, 0): 5} not in consumer.commits[1:]  # the later checkpoint replaced the earlier one
    await stopped(thread)


async def test_a_full_buffer_stops_taking_messages_until_the_reader_takes_some() -> None:
    consumer = FakeConsumer()
    consumer.script.extend([consumer.assign(0), [message(0, i, value=b"y" * 100) for i in range(20)]])
    thread, listener = await started(consumer, buffer=1000)
    await wait_for(lambda: (TOPIC, 0) in listener.feeds and listener.feeds[(TOPIC, 0)].chunks)
    consumer.script.append([message(0, 20)])
    await asyncio.sleep(0.3)
    # Over the buffer: only one-message keepalive consumes (which serve rebalances), no full fetches.
    fetches = [i for i, call in enumerate(consumer.calls) if call == ("consume", 10_000)]
    later = consumer.calls[fetches[1] + 1 :]  # after the assignment and the fetch that filled the buffer
    assert {c for c in later if c[0] == "consume"} <= {("consume", 1)}
    assert not consumer.paused, "one partition over the buffer is backpressure, not a stuck partition"
    feed = listener.feeds[(TOPIC, 0)]
    thread.taken(feed, sum(c.nbytes for c in feed.take(100)))
    await wait_for(lambda: consumer.calls[-1] == ("consume", 10_000))
    await stopped(thread)


async def test_a_stuck_partition_is_paused_and_resumed_once_its_reader_catches_up() -> None:
    consumer = FakeConsumer()
    stuck = [message(3, i, value=b"z" * 100) for i in range(6)]
    consumer.script.extend([consumer.assign(0, 1, 2, 3), stuck])
    thread, listener = await started(consumer, buffer=1000)  # fair share x2 of 4 partitions: 500 bytes
    await wait_for(lambda: (TOPIC, 3) in consumer.paused)
    feed = listener.feeds[(TOPIC, 3)]
    thread.taken(feed, sum(c.nbytes for c in feed.take(100)))
    await wait_for(lambda: not consumer.paused)
    await stopped(thread)
    assert consumer.calls[-1] == ("close",)


async def test_a_stalled_pipeline_pauses_every_partition_until_the_backlog_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamkit.connectors.kafka import consumer as consumer_module

    monkeypatch.setattr(consumer_module, "_STALL_S", 0.2)
    consumer = FakeConsumer()
    consumer.script.extend([consumer.assign(0, 1), [message(0, i, value=b"y" * 100) for i in range(20)]])
    thread, listener = await started(consumer, buffer=1000)
    # Nothing is taken (a sink is down): after the stall time both partitions are paused at the broker.
    await wait_for(lambda: consumer.paused == {(TOPIC, 0), (TOPIC, 1)}, timeout=5)
    feed = listener.feeds[(TOPIC, 0)]
    thread.taken(feed, sum(c.nbytes for c in feed.take(100)))
    await wait_for(lambda: not consumer.paused)
    await stopped(thread)


async def test_lag_is_sampled_from_cached_watermarks_and_published_on_the_loop() -> None:
    consumer = FakeConsumer()  # its high watermark is 100
    consumer.script.extend([consumer.assign(0), [message(0, i) for i in range(10)]])
    thread, listener = await started(consumer, lag_interval_s=0.05)
    await wait_for(lambda: (TOPIC, 0) in listener.lag and listener.lag[(TOPIC, 0)].position == 10)
    sample = listener.lag[(TOPIC, 0)]
    assert (sample.high_watermark, sample.lag, sample.committed, sample.commit_lag) == (100, 90, None, None)
    assert sample.millis_behind > 0  # the last record's timestamp is long past, and records remain
    await stopped(thread)


def test_a_big_chunk_is_taken_in_slices_whose_bytes_add_up() -> None:
    feed = PartitionFeed((TOPIC, 0), partition_of(TOPIC, 0))
    n = 2500
    payloads = [b"p" * (i % 7 + 1) for i in range(n)]
    feed.push(
        Chunk(
            payloads, range(100, 100 + n), [None] * n, [None] * n, [(1, i) for i in range(n)], sum(map(len, payloads))
        )
    )
    feed.push(Chunk([b"q"], [100 + n], [b"k"], [None], [(1, 0)], 1))
    batches = [to_batch(feed.partition, feed.take(1000)) for _ in range(3)]
    assert [len(b) for b, _, _ in batches] == [1000, 1000, 501]
    assert [o[0] for _, o, _ in batches] == [100, 1100, 2100]
    assert list(batches[2][1])[-2:] == [2599, 2600]  # the tail of the big chunk, then the next chunk
    assert batches[2][0].keys == [None] * 500 + [b"k"]
    assert sum(nbytes for _, _, nbytes in batches) == sum(map(len, payloads)) + 1
    assert not feed.chunks
