"""The Kafka source against a real broker (Tansu): metadata, commits after acknowledgement, rebalances, Avro.

Tansu reports a wrong high watermark, so nothing here asserts lag figures.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamkit.batch import RecordBatch
from streamkit.build import build_pipeline
from streamkit.config import Size, parse_config
from streamkit.connectors.kafka.source import KafkaSource
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.devtools.localstack import TansuBroker
from streamkit.processors.avro_codec import AvroDecode
from streamkit.runtime import Pipeline, Runtime
from streamkit.sink import BufferedSink, BufferOptions, Rejection
from tests.helpers import wait_for

PARTITIONS = 3


def create_topic(bootstrap: str, partitions: int = PARTITIONS) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the futures
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=10)
    return topic


def produce(bootstrap: str, topic: str, values: Sequence[bytes], **extra: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, value in enumerate(values):
        producer.produce(topic, value, key=f"k{i}".encode(), partition=i % PARTITIONS, **extra)
    assert producer.flush(30) == 0


def kafka_pipeline(bootstrap: str, topic: str, group: str, **source: Any) -> Pipeline:
    return build_pipeline(
        parse_config(
            {
                "source": {
                    "type": "kafka",
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": group,
                    "session_timeout_ms": 6000,
                    "lag_interval_s": 0.5,
                    **source,
                },
                "processors": [{"type": "json.decode"}],
                "sinks": [{"type": "memory", "name": f"sink-{group}", "max_records": 200, "max_age_s": 0.05}],
                "dead_letter": {"type": "memory"},
                "checkpoint": {"interval_s": 0.1},
            }
        )
    )


def committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = reader.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


async def test_records_carry_keys_headers_timestamps_and_offsets_are_committed_after_the_sink(
    tansu: TansuBroker,
) -> None:
    bootstrap = tansu.bootstrap_servers
    topic, group = create_topic(bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    sent_at = int(time.time() * 1000)
    produce(bootstrap, topic, [orjson.dumps({"n": i}) for i in range(300)], headers=[("trace", b"abc")])
    pipeline = kafka_pipeline(bootstrap, topic, group, topics=[f"^{topic}$"])  # a pattern subscription
    sink = PacedSink(delay=0.0)
    sink.bind("capture", pipeline.dead_letters, pipeline.metrics)
    pipeline.routes[0].sink = sink
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(pipeline).run(stop))
    await wait_for(lambda: sink.count == 300, timeout=20)
    await wait_for(lambda: sum(committed(bootstrap, topic, group).values()) == 300, timeout=10)
    source = pipeline.source
    assert isinstance(source, KafkaSource)
    await wait_for(lambda: len(source.lag()) == PARTITIONS, timeout=5)
    assert {str(p) for p in source.lag()} == {f"kafka:{topic}/{p}" for p in range(PARTITIONS)}
    # Published as the partitions' millis_behind metric (Tansu's watermark is wrong: no exact value).
    await wait_for(lambda: all(pipeline.metrics.partitions[p].millis_behind is not None for p in source.lag()))
    stop.set()
    summary = await task
    assert summary.checkpoints == {p: str(o - 1) for p, o in source.offsets.committed().items()}
    assert sorted(summary.checkpoints.values()) == ["99", "99", "99"]
    for batch in sink.batches:
        for record in batch.records():
            assert record.key == f"k{record.value['n']}".encode()
            assert record.headers == [("trace", b"abc")]
            assert sent_at - 5000 <= record.arrival_ms <= int(time.time() * 1000)
            assert record.position == record.value["n"] // PARTITIONS  # offsets, in order per partition


class FlakySink(BufferedSink):
    """Writes the first requests, then keeps failing (and retrying inside, as real sinks do) until
    ``recover`` is set. Records which offsets it confirmed."""

    def __init__(self, good_requests: int) -> None:
        super().__init__(BufferOptions(max_records=100, max_age_s=0.02, max_concurrent_writes=2))
        self.good_requests = good_requests
        self.recover = asyncio.Event()
        self.failures = 0
        self.written: dict[int, set[int]] = {}

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        if self.good_requests <= 0:
            while not self.recover.is_set():
                self.failures += 1  # a transient error and a back-off, until the destination is back
                await asyncio.sleep(0.05)
        self.good_requests -= 1
        for batch in batches:
            offsets = self.written.setdefault(int(batch.partition.key), set())
            offsets.update(int(batch.position(i)) for i in range(len(batch)))
        return []


@pytest.mark.slow
async def test_committed_offsets_never_pass_records_a_failing_sink_has_not_confirmed(tansu: TansuBroker) -> None:
    bootstrap = tansu.bootstrap_servers
    topic, group = create_topic(bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    total = 3000
    produce(bootstrap, topic, [orjson.dumps({"n": i}) for i in range(total)])
    pipeline = kafka_pipeline(bootstrap, topic, group, batch_size=50)
    sink = FlakySink(good_requests=5)
    sink.bind("flaky", pipeline.dead_letters, pipeline.metrics)
    pipeline.routes[0].sink = sink
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(pipeline).run(stop))

    def check_commits() -> dict[int, int]:
        offsets = committed(bootstrap, topic, group)
        for partition, offset in offsets.items():
            # Everything before the committed offset was confirmed by the sink, with no gap.
            assert set(range(offset)) <= sink.written.get(partition, set()), (partition, offset)
        return offsets

    await wait_for(lambda: sink.failures > 20, timeout=30)
    for _ in range(5):  # the sink is down: commits stop at what it confirmed
        during = await asyncio.to_thread(check_commits)
        await asyncio.sleep(0.2)
    assert sum(during.values()) < total
    sink.recover.set()
    await wait_for(lambda: sum(len(v) for v in sink.written.values()) == total, timeout=30)
    await wait_for(lambda: sum(check_commits().values()) == total, timeout=10)
    stop.set()
    await task


@pytest.mark.slow
async def test_a_second_member_takes_partitions_after_a_graceful_hand_off(tansu: TansuBroker) -> None:
    bootstrap = tansu.bootstrap_servers
    topic, group = create_topic(bootstrap, PARTITIONS), f"g-{uuid.uuid4().hex[:8]}"
    total = 3000
    produce(bootstrap, topic, [orjson.dumps({"n": i}) for i in range(total)])
    first = kafka_pipeline(bootstrap, topic, group, batch_size=20)
    # Little in flight, so the hand-off drains quickly through the slow sink.
    first.settings = msgspec.structs.replace(first.settings, max_bytes_in_flight=Size(4096))
    slow = PacedSink(delay=0.05)
    slow.bind("paced-1", first.dead_letters, first.metrics)
    first.routes[0].sink = slow
    stop = asyncio.Event()
    task_1 = asyncio.create_task(Runtime(first).run(stop))
    await wait_for(lambda: slow.count > 200, timeout=30)

    second = kafka_pipeline(bootstrap, topic, group, batch_size=20)
    fast = PacedSink(delay=0.0)
    fast.bind("paced-2", second.dead_letters, second.metrics)
    second.routes[0].sink = fast
    task_2 = asyncio.create_task(Runtime(second).run(stop))
    await wait_for(lambda: len(slow.values | fast.values) == total, timeout=60)
    stop.set()
    await asyncio.gather(task_1, task_2)
    assert fast.count > 0, "the second member got partitions"
    # A graceful hand-off commits exactly what the first member's sink confirmed: nothing is read twice.
    assert slow.count + fast.count == total
    assert sum(committed(bootstrap, topic, group).values()) == total


class PacedSink(BufferedSink):
    def __init__(self, delay: float = 0.01) -> None:
        super().__init__(BufferOptions(max_records=20, max_age_s=0.01, max_concurrent_writes=1))
        self.delay = delay
        self.values: set[int] = set()
        self.count = 0
        self.batches: list[RecordBatch] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        await asyncio.sleep(self.delay)
        for batch in batches:
            self.values.update(v["n"] for v in batch.values)
            self.count += len(batch)
            self.batches.append(batch)
        return []


AVRO_SCHEMA = """{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "item", "type": "string"},
    {"name": "price", "type": ["null", "double"], "default": null}
  ]
}"""


async def test_avro_records_from_the_confluent_serializer_decode_into_the_original_values(tansu: TansuBroker) -> None:
    bootstrap = tansu.bootstrap_servers
    topic, group = create_topic(bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    pipeline = build_pipeline(
        parse_config(
            {
                "source": {
                    "type": "kafka",
                    "bootstrap_servers": bootstrap,
                    "topics": [topic],
                    "group_id": group,
                    "session_timeout_ms": 6000,
                },
                "processors": [{"type": "avro.decode", "registry": {"url": "mock://orders"}}],
                "sinks": [{"type": "memory", "name": f"avro-{group}", "max_age_s": 0.05}],
                "dead_letter": {"type": "memory"},
            }
        )
    )
    decoder = pipeline.chain.processors[0]
    assert isinstance(decoder, AvroDecode)
    # mock:// registries live in the process: serialize with the decoder's own client.
    serializer = AvroSerializer(decoder.registry, AVRO_SCHEMA)
    originals = [{"id": i, "item": f"item-{i}", "price": None if i % 3 == 0 else i * 1.5} for i in range(90)]
    context = SerializationContext(topic, MessageField.VALUE)
    frames = [serializer(value, context) for value in originals]
    assert all(frame[0] == 0 for frame in frames)  # the Confluent wire format's magic byte
    produce(bootstrap, topic, [*frames, b"\x00\x00\x00\x03\x99garbage"])
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(pipeline).run(stop))
    await wait_for(lambda: f"avro-{group}" in MemorySink.instances, timeout=20)
    sink = MemorySink.instances[f"avro-{group}"]
    await wait_for(lambda: sink.written_records == len(originals), timeout=20)
    await wait_for(lambda: pipeline.metrics.total_dead_lettered == 1, timeout=5)
    stop.set()
    await task
    decoded = sorted((orjson.loads(p) for p in sink.payloads()), key=lambda v: v["id"])
    assert decoded == originals
