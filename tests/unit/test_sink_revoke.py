"""``revoke`` on every built-in sink and dead-letter store: a revoked partition's records are never written.

The sinks are built from their pipeline sections with every AWS endpoint pointing at a closed loopback
port and are never started: after ``revoke``, ``flush`` must have nothing left to send, so any write it
still tried would fail (no client) or leave a file behind. Nothing of the revoked partition is
acknowledged; another partition's records are kept and written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamkit.batch import Partition
from streamkit.build import build_plugin
from streamkit.config import AwsSettings
from streamkit.connectors.local.memory_sink import MemoryDeadLetter, MemorySink
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Failure
from tests.helpers import ticketed

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a request that is sent fails
LOST = Partition("kinesis:orders", "shardId-000000000001")
KEPT = Partition("kinesis:orders", "shardId-000000000002")
HOLD = {"max_records": 10_000, "max_age_s": 600}

SINKS: dict[str, dict[str, Any]] = {
    "memory": {"type": "memory", **HOLD},
    "file": {"type": "file", "path": "out", **HOLD},
    "firehose": {"type": "firehose", "stream": "events", **HOLD},
    "timestream": {"type": "timestream", "database": "db", "table": "t", "measures": ["cpu"], **HOLD},
    "s3": {"type": "s3", "bucket": "lake", "window_s": 0, "partition_template": "", **HOLD},
    "influxdb": {
        "type": "influxdb",
        "url": NOWHERE,
        "allow_plain_http": True,
        "database": "db",
        "measurement": "m",
        "fields": ["cpu"],
        "token_env": "INFLUX_TOKEN",  # read at start(), which this test never calls
        **HOLD,
    },
    "iceberg": {
        "type": "iceberg",
        "catalog": {"type": "sql", "path": "c.db", "warehouse": "wh"},
        "table": "a.b",
        **HOLD,
    },
}
DEAD_LETTERS: dict[str, dict[str, Any]] = {
    "memory": {"type": "memory", **HOLD},
    "file": {"type": "file", "path": "dlq", **HOLD},
    "s3": {"type": "s3", "bucket": "lake", **HOLD},
}


def written_files(directory: Path) -> list[Path]:
    return list(directory.rglob("*.ndjson*"))


def env(tmp_path: Path, where: str) -> PluginEnv:
    endpoints = {service: NOWHERE for service in ("s3", "firehose", "timestream-write")}
    return PluginEnv("revoke", AwsSettings(region="us-east-1", endpoints=endpoints), tmp_path, where)


@pytest.mark.parametrize("kind", sorted(SINKS))
async def test_a_revoked_partition_is_never_written_by_any_sink(kind: str, tmp_path: Path) -> None:
    sink = build_plugin("sink", SINKS[kind], "sinks[0]", env(tmp_path, "sinks[0]"), {"name", "when"})
    sink.bind(kind, MemoryDeadLetter(), None)
    batch, tracker = ticketed([{"id": i, "cpu": 1.0} for i in range(10)], LOST)
    assert batch.ticket is not None
    batch.ticket.hold(batch.origin)  # routed to this sink
    await sink.submit(batch)

    await sink.revoke([LOST])
    await sink.flush()  # nothing left: no request is sent (none could succeed), no file is written

    assert batch.ticket.outstanding == 20, "nothing of the revoked partition was acknowledged"
    assert tracker.checkpoint_position() is None
    assert not written_files(tmp_path)
    if isinstance(sink, MemorySink):
        assert sink.written_records == 0


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_other_partitions_are_kept_and_written(kind: str, tmp_path: Path) -> None:
    sink = build_plugin("sink", SINKS[kind], "sinks[0]", env(tmp_path, "sinks[0]"), {"name", "when"})
    sink.bind(kind, None, None)
    await sink.start()
    batches = []
    for partition in (LOST, KEPT):
        batch, _ = ticketed([{"id": f"{partition.key}-{i}"} for i in range(5)], partition)
        assert batch.ticket is not None
        batch.ticket.hold(batch.origin)
        batch.ticket.release_processing()
        await sink.submit(batch)
        batches.append(batch)
    await sink.revoke([LOST])
    await sink.flush()
    lost, kept = batches
    assert lost.ticket is not None and kept.ticket is not None
    assert not lost.ticket.done and kept.ticket.done
    if isinstance(sink, MemorySink):
        assert set(sink.records) == {KEPT}


@pytest.mark.parametrize("kind", sorted(DEAD_LETTERS))
async def test_a_revoked_partition_is_never_dead_lettered(kind: str, tmp_path: Path) -> None:
    dlq = build_plugin("dead_letter", DEAD_LETTERS[kind], "dead_letter", env(tmp_path, "dead_letter"), set())
    batch, _ = ticketed([{"id": 1}], LOST)
    assert batch.ticket is not None
    batch.ticket.hold(batch.origin)
    await dlq.submit(Failure(batch, "invalid JSON", "json.decode"))

    await dlq.revoke([LOST])
    await dlq.flush()

    assert batch.ticket.outstanding == 2 and dlq.written == 0
    assert not written_files(tmp_path)
    if isinstance(dlq, MemoryDeadLetter):
        assert dlq.entries == []
