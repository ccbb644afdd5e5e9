"""Consumer lag per partition: how far this worker is behind the end of each partition it holds.

Measured on the consumer thread from librdkafka's cached high watermarks (updated by every fetch
response, so no extra request reaches the brokers) and the offsets this worker has fetched and
committed. Two numbers per partition:

- ``lag``: high watermark - next offset to fetch. What is still on the broker.
- ``commit_lag``: high watermark - committed offset. What a restart would read again or for the first
  time; it includes records fetched but not yet acknowledged by every sink.
- ``millis_behind``: while ``lag`` is above 0, now - the timestamp of the last fetched record (0 when
  caught up). The time counterpart of Kinesis' MillisBehindLatest, published as the partition's
  ``millis_behind`` metric.

Brokers that report a wrong high watermark (Tansu does) give wrong figures; a negative difference is
reported as 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Set
from typing import Any, NamedTuple

import structlog

from .feed import TopicPartitionKey

log = structlog.get_logger("streamkit.kafka")


class PartitionLag(NamedTuple):
    high_watermark: int
    position: int | None
    """The next offset to fetch (None until something was fetched)."""
    committed: int | None
    lag: int | None
    commit_lag: int | None
    millis_behind: int | None


class LagTracker:
    """Fetch positions (updated per delivered run) and the latest lag sample (replaced, never mutated)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = time.monotonic() + interval_s
        self._positions: dict[TopicPartitionKey, int] = {}
        self._last_timestamps: dict[TopicPartitionKey, int] = {}
        self.latest: Mapping[TopicPartitionKey, PartitionLag] = {}

    def delivered(self, key: TopicPartitionKey, last_offset: int, last_timestamp_ms: int) -> None:
        self._positions[key] = last_offset + 1
        self._last_timestamps[key] = last_timestamp_ms

    def forget(self, key: TopicPartitionKey) -> None:
        self._positions.pop(key, None)
        self._last_timestamps.pop(key, None)

    def due(self) -> bool:
        return self.interval_s > 0 and time.monotonic() >= self._next

    def sample(self, consumer: Any, owned: Set[TopicPartitionKey], committed: Mapping[TopicPartitionKey, int]) -> None:
        from confluent_kafka import TopicPartition

        self._next = time.monotonic() + self.interval_s
        snapshot: dict[TopicPartitionKey, PartitionLag] = {}
        now_ms = int(time.time() * 1000)
        for key in sorted(owned):
            _low, high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            if high < 0:
                continue  # nothing fetched yet, so no cached watermark
            position = self._positions.get(key)
            done = committed.get(key)
            lag = None if position is None else max(0, high - position)
            last_ms = self._last_timestamps.get(key)
            snapshot[key] = PartitionLag(
                high_watermark=high,
                position=position,
                committed=done,
                lag=lag,
                commit_lag=None if done is None else max(0, high - done),
                millis_behind=None if lag is None or last_ms is None else (max(0, now_ms - last_ms) if lag else 0),
            )
        self.latest = snapshot
        if snapshot:
            log.info(
                "kafka consumer lag",
                lag=sum(p.lag or 0 for p in snapshot.values()),
                commit_lag=sum(p.commit_lag or 0 for p in snapshot.values()),
                partitions={f"{t}/{p}": lag.lag for (t, p), lag in snapshot.items()},
            )
