"""Two `streamkit run` workers in one consumer group on Tansu; one is SIGKILLed mid-stream.

Every record must reach a sink at least once, and the survivor must take the dead worker's partitions
over (after the session timeout) from the offsets the dead worker had committed.

How many records come twice depends on when the kill lands: exactly the records the dead worker had
written at or past its last committed offset (its files are renamed before they are acknowledged, and
acknowledged records are committed every checkpoint interval). The test reads the group's committed
offsets from the broker right after the kill and checks that count, instead of a bound that a loaded
machine (slower commits) can exceed; and it kills only once the worker has committed something.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamkit.batch import RecordBatch
from streamkit.devtools.localstack import TansuBroker
from streamkit.processor import ProcessContext, batch_processor

REPO = Path(__file__).resolve().parents[2]
RECORDS = 30_000
PARTITIONS = 6


@batch_processor
async def slow_batches(batch: RecordBatch, ctx: ProcessContext) -> RecordBatch:
    """Pace the workers (used by the subprocesses) so that the kill lands mid-stream."""
    await asyncio.sleep(0.1)
    return batch


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    # Tansu has no CreatePartitions: the topic gets all its partitions up front.
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the futures
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=10)


def produce(bootstrap: str, topic: str, count: int) -> dict[int, tuple[int, int]]:
    """Records ``{"id": i}``; returns id -> (partition, offset), from the delivery reports."""
    placed: dict[int, tuple[int, int]] = {}

    def delivered(error: KafkaError | None, message: Message) -> None:
        value, partition, offset = message.value(), message.partition(), message.offset()
        assert error is None and value is not None and partition is not None and offset is not None, error
        placed[orjson.loads(value)["id"]] = (partition, offset)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    for i in range(count):
        producer.produce(topic, orjson.dumps({"id": i, "pad": "x" * 100}), key=str(i).encode(), on_delivery=delivered)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert len(placed) == count
    return placed


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (next offset to read; 0 where none) as the broker has them. The
    consumer only asks (OffsetFetch): it never subscribes, so it does not join the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        answer = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in answer}


def held_by(log: Path, topic: str) -> set[int]:
    """The partitions a worker holds, from its assigned and revoked log lines."""
    held: set[int] = set()
    for entry in events(log, "kafka partitions assigned") + events(log, "kafka partitions revoked"):
        numbers = {int(p.rsplit("/", 1)[1]) for p in entry["partitions"] if p.startswith(f"{topic}/")}
        held = held | numbers if entry["event"] == "kafka partitions assigned" else held - numbers
    return held


def write_pipeline(directory: Path, name: str, bootstrap: str, topic: str, group: str) -> Path:
    config: dict[str, Any] = {
        "name": f"kafka-failover-{name}",
        "source": {
            "type": "kafka",
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": group,
            "session_timeout_ms": 6000,  # Tansu: a longer one makes the first join wait ~23 s
            "batch_size": 100,
            "lag_interval_s": 1,
        },
        "processors": [{"callable": "tests.integration.test_kafka_failover:slow_batches"}, {"type": "json.decode"}],
        "sinks": [{"type": "file", "path": f"out-{name}", "max_records": 500, "max_age_s": 0.2}],
        "checkpoint": {"interval_s": 0.2},
        "runtime": {"shutdown_grace_s": 10},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ids_in(directory: Path) -> list[int]:
    ids: list[int] = []
    for file in sorted(directory.glob("*.ndjson")) if directory.exists() else []:
        ids.extend(orjson.loads(line)["id"] for line in file.read_bytes().splitlines())
    return ids


def start_worker(pipeline: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "streamkit", "--log-format", "json", "run", str(pipeline)],
            cwd=pipeline.parent,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env=env,
        )


def events(log: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            entry = orjson.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def wait_until(predicate: Any, timeout: float, what: str, workers: dict[str, tuple[Any, Path]]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for name, (proc, log) in workers.items():
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited ({proc.returncode}): {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_of_one_worker_loses_nothing_and_the_survivor_takes_over(tansu: TansuBroker, tmp_path: Path) -> None:
    bootstrap = tansu.bootstrap_servers
    topic, group = f"failover-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS)
    placed = produce(bootstrap, topic, RECORDS)
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(write_pipeline(tmp_path, "a", bootstrap, topic, group), a_log)
    b = start_worker(write_pipeline(tmp_path, "b", bootstrap, topic, group), b_log)
    try:
        # Both hold partitions (cooperative rebalance after the second joined), both are writing, and A's
        # commits have reached the broker: the takeover then resumes from them, not from the start.
        def a_committed() -> bool:
            held = held_by(a_log, topic)
            return bool(held) and any(committed_offsets(bootstrap, group, topic)[p] > 0 for p in held)

        wait_until(lambda: len(ids_in(tmp_path / "out-a")) > 1000 and len(ids_in(tmp_path / "out-b")) > 1000
                   and a_committed(), 45, "both workers to write and A to commit",
                   {"a": (a, a_log), "b": (b, b_log)})  # fmt: skip
        assert a.poll() is None and b.poll() is None
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        # A can commit no more, and B takes A's partitions only after the session timeout (6 s).
        committed_at_kill = committed_offsets(bootstrap, group, topic)
        written_by_a = len(ids_in(tmp_path / "out-a"))
        assert written_by_a < RECORDS, "the kill must land mid-stream"
        # The survivor gets the dead worker's partitions after the session timeout and reads them from
        # the dead worker's last committed offsets.
        wait_until(lambda: set(ids_in(tmp_path / "out-a")) | set(ids_in(tmp_path / "out-b")) >= set(range(RECORDS)),
                   60, "every record in a sink", {"b": (b, b_log)})  # fmt: skip
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=20) == 0
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    from_a, from_b = ids_in(tmp_path / "out-a"), ids_in(tmp_path / "out-b")
    assert set(from_a) | set(from_b) == set(range(RECORDS))
    held_by_b = {p for e in events(b_log, "kafka partitions assigned") for p in e["partitions"]}
    assert held_by_b == {f"{topic}/{p}" for p in range(PARTITIONS)}, "the survivor took every partition over"
    assert events(b_log, "kafka partitions revoked"), "the survivor released its partitions on SIGTERM"
    # At-least-once, not at-least-twice: exactly what A had written at or past its last committed offset is
    # read again (by B, from that offset); nothing A had committed is.
    duplicates = len(from_a) + len(from_b) - RECORDS
    uncommitted = [i for i in from_a if placed[i][1] >= committed_at_kill[placed[i][0]]]
    print(f"\nA wrote {len(from_a)} records, {len(uncommitted)} past its last commit; {duplicates} came twice")
    assert duplicates == len(uncommitted) < len(from_a)
