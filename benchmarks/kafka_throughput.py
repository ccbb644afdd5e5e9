"""Kafka source throughput: streamkit against a hand-written confluent-kafka loop, same topic, same run.

Starts its own Tansu broker (streamkit.devtools.localstack.TansuBroker), produces ``--records`` ~1 KB JSON records
(the generator's click events, 10% with status "err") into a topic of ``--partitions`` partitions, then
consumes the whole topic with both, each with a fresh consumer group, alternating for ``--rounds`` rounds:

- hand loop: ``Consumer.consume(10000)``; per message: orjson decode, drop status "err", keep four fields,
  orjson encode; every 10,000 outputs joined as NDJSON and gzipped (ISA-L level 1). Manual commits are
  left out: it is the ceiling, not a correct consumer.
- streamkit: the same consumer settings and ``json.decode -> filter -> map -> json.encode -> memory sink
  (gzip, 10,000 records per write)``, with per-partition ordering, acknowledgements and offset commits.
- streamkit with ``json.project`` (if installed): the same output in one step that parses only the fields
  it keeps. Not the same work as the hand loop: it shows what the pipeline offers beyond it.

Both use fetch.queue.backoff.ms=10 (librdkafka's 1000 ms default costs 10x, PERF_FACTS.md) and are timed
from their first record to their last output (the group join, ~3 s on Tansu, is left out of both).

Usage: python benchmarks/kafka_throughput.py [--records N] [--partitions P] [--rounds R] [--json]
       [--profile FILE]  (cProfile of one extra streamkit round, sorted by own time)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
import uuid
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from isal import igzip

from streamkit.build import build_pipeline
from streamkit.chain import Chain
from streamkit.config import parse_config
from streamkit.connectors.local.generator import GeneratorOptions, make_payload
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.devtools.localstack import TansuBroker
from streamkit.plugins import available
from streamkit.processor import batch_processor
from streamkit.runtime import Runtime, tune_gc

FIELDS = ["id", "event", "user", "amount"]
SINK_RECORDS = 10_000
TOPIC = "bench"


def produce(bootstrap: str, records: int, partitions: int) -> int:
    """Fill the topic; return how many records pass the filter (the expected output count)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, partitions, 1)]).values():
        future.result()
    options = GeneratorOptions(record_bytes=1000, error_ratio=0.1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    passing = 0
    for i in range(records):
        partition = i % partitions
        payload = make_payload(options, partition, i // partitions)
        passing += b'"status":"err"' not in payload
        while True:
            try:
                producer.produce(TOPIC, payload, key=str(i).encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    producer.flush()
    return passing


def consumer_settings(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"hand-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,  # as streamkit sets it: neither side stores offsets per message
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 6000,
        "fetch.queue.backoff.ms": 10,
    }


def hand_loop(bootstrap: str, records: int) -> tuple[float, int]:
    consumer = Consumer(consumer_settings(bootstrap))
    consumer.subscribe([TOPIC])
    loads, dumps = orjson.loads, orjson.dumps
    seen = 0
    out = 0
    pending: list[bytes] = []
    started = 0.0
    while seen < records:
        messages = consumer.consume(10_000, 1.0)
        if not messages:
            continue
        if not started:
            started = time.perf_counter()
        for message in messages:
            if message.error():
                continue
            seen += 1
            value = loads(message.value())  # type: ignore[arg-type]
            if value.get("status") == "err":
                continue
            pending.append(dumps({k: value[k] for k in FIELDS if k in value}))
            if len(pending) >= SINK_RECORDS:
                igzip.compress(b"\n".join(pending), compresslevel=1)
                out += len(pending)
                pending = []
    if pending:
        igzip.compress(b"\n".join(pending), compresslevel=1)
        out += len(pending)
    elapsed = time.perf_counter() - started
    consumer.close()
    return records / elapsed, out


class FirstRecord:
    """A no-op first stage that notes when the first batch arrived."""

    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self, batch: Any, ctx: Any) -> Any:
        if not self.at:
            self.at = time.perf_counter()
        return batch


SAME_WORK: list[dict[str, Any]] = [
    {"type": "json.decode"},
    {"type": "filter", "where": {"field": "status", "not_equals": "err"}},
    {"type": "map", "fields": FIELDS},
    {"type": "json.encode"},
]
# The same output in one step that parses only the fields it keeps (when the processor is installed).
PROJECT_STEP: list[dict[str, Any]] = [
    {"type": "json.project", "fields": FIELDS, "where": {"field": "status", "not_equals": "err"}}
]


def streamkit_round(
    bootstrap: str,
    records: int,
    expected: int,
    profile: cProfile.Profile | None,
    processors: list[dict[str, Any]] = SAME_WORK,
) -> float:
    sink_name = f"bench-{uuid.uuid4().hex[:8]}"
    config = {
        "name": "kafka-bench",
        "source": {
            "type": "kafka",
            "bootstrap_servers": bootstrap,
            "topics": [TOPIC],
            "group_id": f"streamkit-{uuid.uuid4().hex}",
            "session_timeout_ms": 6000,
            "lag_interval_s": 0,
        },
        "processors": processors,
        "sinks": [
            {
                "type": "memory",
                "name": sink_name,
                "compression": "gzip",
                "keep": False,
                "max_records": SINK_RECORDS,
                "max_bytes": "1GiB",
                "max_age_s": 0.01,
            }
        ],
        "checkpoint": {"interval_s": 1.0},
    }
    pipeline = build_pipeline(parse_config(config))
    first = FirstRecord()
    pipeline.chain = Chain([batch_processor(first), *pipeline.chain.processors])

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(Runtime(pipeline).run(stop))
        # Polling the sink's counter (every 2 ms) keeps the measured pipeline free of test hooks.
        while sink_name not in MemorySink.instances:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        sink = MemorySink.instances[sink_name]
        while sink.written_records < expected:
            if task.done():
                task.result()
                raise RuntimeError(f"pipeline ended after {sink.written_records} of {expected} records")
            await asyncio.sleep(0.002)
        finished = time.perf_counter()
        stop.set()
        await task
        del MemorySink.instances[sink_name]
        return records / (finished - first.at)

    if profile is not None:
        profile.enable()
    try:
        return asyncio.run(run())
    finally:
        if profile is not None:
            profile.disable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", help="write a cProfile report of one more streamkit round to this file")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tune_gc()  # the runtime does this process-wide; the hand loop runs under the same setting
    with TansuBroker.start() as broker:
        expected = produce(broker.bootstrap_servers, args.records, args.partitions)
        hand_rates: list[float] = []
        kit_rates: list[float] = []
        project_rates: list[float] = []
        with_project = "json.project" in {p.name for p in available("processor")}
        for _ in range(args.rounds):
            rate, out = hand_loop(broker.bootstrap_servers, args.records)
            assert out == expected, f"hand loop wrote {out} records, expected {expected}"
            hand_rates.append(rate)
            kit_rates.append(streamkit_round(broker.bootstrap_servers, args.records, expected, None))
            if with_project:
                project_rates.append(
                    streamkit_round(broker.bootstrap_servers, args.records, expected, None, PROJECT_STEP)
                )
        if args.profile:
            profile = cProfile.Profile()
            streamkit_round(broker.bootstrap_servers, args.records, expected, profile)
            with open(args.profile, "w") as fh:
                pstats.Stats(profile, stream=fh).sort_stats("tottime").print_stats(40)
    hand, kit = max(hand_rates), max(kit_rates)
    result = {
        "records": args.records,
        "partitions": args.partitions,
        "hand_loop_rps": round(hand),
        "streamkit_rps": round(kit),
        "ratio": round(kit / hand, 3),
        # Rounds run back to back; on a shared machine the median of their ratios is the steadier figure.
        "median_round_ratio": round(statistics.median(k / h for k, h in zip(kit_rates, hand_rates, strict=True)), 3),
        "rounds": {"hand_loop": [round(r) for r in hand_rates], "streamkit": [round(r) for r in kit_rates]},
    }
    if project_rates:
        result["streamkit_json_project_rps"] = round(max(project_rates))
        result["json_project_ratio"] = round(max(project_rates) / hand, 3)
        result["rounds"]["streamkit_json_project"] = [round(r) for r in project_rates]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{args.records:,} records of ~1 KB JSON on Tansu, {args.partitions} partitions, best of {args.rounds}")
    print("work: decode, filter status != err, project 4 fields, encode, gzip NDJSON per 10,000")
    rounds = result["rounds"]
    print(f"{'hand-written confluent-kafka loop':<36} {hand:>12,.0f} records/s   rounds {rounds['hand_loop']}")
    print(f"{'streamkit kafka source + pipeline':<36} {kit:>12,.0f} records/s   rounds {rounds['streamkit']}")
    print(f"{'ratio (streamkit / hand loop)':<36} {kit / hand:>12.2f}   median of the rounds' ratios "
          f"{result['median_round_ratio']:.2f}")  # fmt: skip
    if project_rates:
        best = max(project_rates)
        print(
            f"{'streamkit with json.project':<36} {best:>12,.0f} records/s   rounds {rounds['streamkit_json_project']}"
        )
        print(f"{'ratio (json.project / hand loop)':<36} {best / hand:>12.2f}")


if __name__ == "__main__":
    main()
