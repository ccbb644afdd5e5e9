"""Kafka events of a Lambda event source mapping (Amazon MSK or self-managed Apache Kafka), one batch per partition.

Registered as the ``streamkit.lambda_events`` entry points ``aws:kafka``, ``SelfManagedKafka`` and
``aws:SelfManagedKafka`` (self-managed Kafka has been seen with and without the prefix);
:func:`streamkit.aws_lambda.events.decode_event` calls it. Records arrive under ``records`` keyed by
``"<topic>-<partition>"``; values and keys are base64. Importing this module does not import confluent-kafka.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np
import pybase64

from streamkit.aws_lambda.events import EventFormatError, EventPartition, b64decode_all
from streamkit.batch import Header, Partition, RecordBatch

__all__ = ["KAFKA_EVENT_SOURCES", "decode_kafka_event"]

KAFKA_EVENT_SOURCES = frozenset({"aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka"})
"""The eventSource values this decoder is registered under (pyproject.toml's streamkit.lambda_events)."""

_b64 = pybase64.b64decode
_value = itemgetter("value")
_offset = itemgetter("offset")
_timestamp = itemgetter("timestamp")


def decode_kafka_event(event: Mapping[str, Any], *, deaggregate: bool = True) -> list[EventPartition]:
    """One :class:`EventPartition` per ``"<topic>-<partition>"`` of the event's ``records``, in event order.

    ``deaggregate`` is for Kinesis; Kafka has no aggregated records.
    """
    if "Records" in event:
        raise EventFormatError("a Kafka event lists its records under 'records' (keyed by topic-partition)")
    groups: Mapping[str, list[dict[str, Any]]] = event.get("records") or {}
    out = []
    for event_key, records in groups.items():
        if not records:
            continue
        first = records[0]
        partition = Partition(f"kafka:{first['topic']}", str(first["partition"]))
        # A null value (a tombstone) arrives without "value" or as null: it becomes empty bytes.
        texts = [r.get("value") or "" for r in records]
        payloads, bad = b64decode_all(texts)
        keys = _kafka_keys(records)
        offsets: list[int] = list(map(_offset, records))
        timestamps = np.fromiter(map(_timestamp, records), dtype=np.int64, count=len(records))
        batch = RecordBatch(
            partition, payloads=payloads, keys=keys, arrival_ms=timestamps, headers=_kafka_headers(records)
        )
        out.append(EventPartition("kafka", partition, batch, offsets, offsets, event_key, bad))
    return out


def _kafka_keys(records: list[dict[str, Any]]) -> list[bytes | None]:
    texts: list[Any] = [r.get("key") for r in records]  # str, or None for a null key
    try:
        # The usual case in one C-level pass; a null key (TypeError) or bad base64 takes the slow path.
        return list(map(_b64, texts, repeat(None), repeat(True)))
    except (binascii.Error, ValueError, TypeError):
        return [_kafka_key(text) for text in texts]


def _kafka_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return _b64(text, None, True)
    except (binascii.Error, ValueError, TypeError):
        # A key is metadata: keep what arrived rather than failing the record over it.
        return text.encode()


def _kafka_headers(records: list[dict[str, Any]]) -> list[list[Header] | None] | None:
    """Headers as (name, bytes) pairs; Lambda sends each value as a list of (possibly signed) byte values."""
    if not any(r.get("headers") for r in records):
        return None
    out: list[list[Header] | None] = []
    for record in records:
        headers: list[Header] = []
        for entry in record.get("headers") or ():
            for name, value in entry.items():
                headers.append((name, None if value is None else bytes(b & 0xFF for b in value)))
        out.append(headers or None)
    return out
