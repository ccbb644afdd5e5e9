"""Lambda event source mapping events turned into record batches, one per Kinesis shard or Kafka partition.

Lambda hands the function an already parsed event: Kinesis records under ``Records`` (one shard per
invocation in practice), Kafka records under ``records`` keyed by ``"<topic>-<partition>"``. Payloads and
Kafka keys are base64; they are decoded with pybase64 in one C-level pass (the stdlib decoder costs as much
as the JSON work, PERF_FACTS.md), and only when that pass fails does decoding go record by record to find
the bad ones. KPL aggregated Kinesis records are expanded into their user records.

A record that cannot be decoded (bad base64, a malformed KPL aggregate) does not fail the invocation: it
stays in the batch as its raw bytes and is listed in :attr:`EventPartition.decode_failures`, so the handler
can dead-letter it or report it like any other failed record.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal

import numpy as np
import pybase64

from streamkit.batch import Header, Partition, RecordBatch
from streamkit.connectors.kinesis.kpl import MAGIC, KplDecodeError, unpack
from streamkit.connectors.kinesis.positions import BatchPositions

__all__ = [
    "KAFKA_EVENT_SOURCES",
    "KAFKA_PARTITION_KEY",
    "KINESIS_EVENT_SOURCE",
    "EventFormatError",
    "EventKind",
    "EventPartition",
    "decode_event",
]

KINESIS_EVENT_SOURCE = "aws:kinesis"
# Amazon MSK says "aws:kafka"; self-managed Apache Kafka has been seen with and without the prefix.
KAFKA_EVENT_SOURCES = frozenset({"aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka"})

EventKind = Literal["kinesis", "kafka"]

KAFKA_PARTITION_KEY = "partition"
"""The key of a Kafka ``itemIdentifier`` naming the ``"<topic>-<partition>"`` (docs/lambda.md cites the
sources). Lambda fails the whole batch on an identifier with a bad key name, so it lives in one place."""


class EventFormatError(ValueError):
    """The event is not a Kinesis or Kafka event as Lambda delivers them."""


@dataclass(slots=True)
class EventPartition:
    """The records of one shard or topic-partition of an event, in order."""

    kind: EventKind
    partition: Partition
    batch: RecordBatch
    positions: Sequence[Any]
    """Per record: a Kinesis ``KinesisPosition`` (sequence number and KPL sub-sequence, built on demand,
    the same positions as the Kinesis source's) or a Kafka offset."""
    item_ids: Sequence[Any]
    """Per record: the sequence number or offset that Lambda's partial batch response names."""
    event_key: str = ""
    """Kafka: the ``records`` key (``"<topic>-<partition>"``), which the Kafka response repeats."""
    decode_failures: list[tuple[int, str]] = field(default_factory=list)
    """(record index, reason) of records whose bytes could not be decoded."""

    def __len__(self) -> int:
        return len(self.positions)

    def identifier(self, index: int) -> str | dict[str, Any]:
        """The ``itemIdentifier`` that makes Lambda retry from record ``index`` (see docs/lambda.md)."""
        if self.kind == "kinesis":
            return str(self.item_ids[index])
        return {KAFKA_PARTITION_KEY: self.event_key, "offset": self.item_ids[index]}


def decode_event(event: Mapping[str, Any], *, deaggregate: bool = True) -> list[EventPartition]:
    """The partitions of a Kinesis, MSK or self-managed Kafka event, in the order the event lists them."""
    if not isinstance(event, Mapping):
        raise EventFormatError(f"expected the event as a mapping, got {type(event).__name__}")
    source: Any = None
    try:
        if "Records" in event:
            records = event["Records"]
            if not records:
                return []
            source = records[0].get("eventSource")
            if source != KINESIS_EVENT_SOURCE:
                raise EventFormatError(f"unsupported event source {source!r}: streamkit handles Kinesis and Kafka")
            return _kinesis(records, deaggregate)
        source = event.get("eventSource")
        if source in KAFKA_EVENT_SOURCES:
            return _kafka(event.get("records") or {})
    except (KeyError, TypeError, AttributeError) as exc:
        raise EventFormatError(f"malformed {source} event: {type(exc).__name__}: {exc}") from None
    raise EventFormatError(f"unsupported event (eventSource {source!r}): streamkit handles Kinesis and Kafka")


# -------------------------------------------------------------------------------------------- base64

_b64 = pybase64.b64decode


def _b64decode_all(texts: list[str]) -> tuple[list[bytes], list[tuple[int, str]]]:
    """Decode every text; bad ones keep their text as bytes and are returned with the reason."""
    try:
        # validate=True is pybase64's SIMD fast path and rejects junk instead of skipping it; positional
        # arguments because map() cannot pass keywords.
        return list(map(_b64, texts, repeat(None), repeat(True))), []
    except (binascii.Error, ValueError, TypeError):
        pass
    payloads: list[bytes] = []
    bad: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        try:
            payloads.append(_b64(text, None, True))
        except (binascii.Error, ValueError, TypeError) as exc:
            payloads.append(text.encode() if isinstance(text, str) else b"")
            bad.append((i, f"payload is not valid base64: {exc}"))
    return payloads, bad


# ------------------------------------------------------------------------------------------- Kinesis

_kinesis_part = itemgetter("kinesis")
_data = itemgetter("data")
_sequence = itemgetter("sequenceNumber")
_partition_key = itemgetter("partitionKey")
_arrival = itemgetter("approximateArrivalTimestamp")
_first_byte = itemgetter(0)


def _shard_of(record: dict[str, Any]) -> tuple[str, str]:
    # eventID is "<shard id>:<sequence number>"
    return record.get("eventSourceARN", ""), record["eventID"].partition(":")[0]


def _shard_groups(records: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(stream ARN, shard id, records) groups in event order."""
    first = _shard_of(records[0])
    # An event source mapping batch holds the records of one shard, so comparing the ends is enough to
    # take the fast path; checking every record would cost ~4% of the whole invocation. Events that mix
    # shards (hand-made ones) are grouped record by record.
    if _shard_of(records[-1]) == first:
        return [(*first, records)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(_shard_of(record), []).append(record)
    return [(arn, shard, group) for (arn, shard), group in groups.items()]


def _stream_name(arn: str) -> str:
    # arn:aws:kinesis:REGION:ACCOUNT:stream/NAME
    return arn.rpartition("stream/")[2] or arn or "unknown"


def _kinesis(records: list[dict[str, Any]], deaggregate: bool) -> list[EventPartition]:
    out = []
    for arn, shard, group in _shard_groups(records):
        parts = list(map(_kinesis_part, group))
        payloads, bad = _b64decode_all(list(map(_data, parts)))
        sequences: list[str] = list(map(_sequence, parts))
        keys: list[str] = list(map(_partition_key, parts))
        seconds = np.fromiter(map(_arrival, parts), dtype=np.float64, count=len(parts))
        # Kinesis sends whole milliseconds as float seconds: rounding makes them exact again.
        arrival = np.rint(seconds * 1000.0).astype(np.int64)
        partition = Partition(f"kinesis:{_stream_name(arn)}", shard)
        if deaggregate and _any_aggregated(payloads):
            out.append(_deaggregated(partition, payloads, sequences, keys, arrival, bad))
            continue
        batch = RecordBatch(partition, payloads=payloads, keys=keys, arrival_ms=arrival)
        positions = BatchPositions(sequences, np.zeros(len(sequences), dtype=np.int64), None, None)
        out.append(EventPartition("kinesis", partition, batch, positions, sequences, decode_failures=bad))
    return out


def _any_aggregated(payloads: list[bytes]) -> bool:
    try:
        # One int per record first: ~2x cheaper than bytes.startswith per record on the usual batch.
        if MAGIC[0] not in map(_first_byte, payloads):
            return False
    except IndexError:
        pass  # an empty payload: fall through to the exact scan
    return any(map(bytes.startswith, payloads, repeat(MAGIC)))


def _deaggregated(
    partition: Partition,
    payloads: list[bytes],
    sequences: list[str],
    keys: list[str],
    arrival: np.ndarray[Any, np.dtype[np.int64]],
    bad: list[tuple[int, str]],
) -> EventPartition:
    """Expand KPL aggregates; a malformed aggregate stays one record, listed as a decode failure."""
    undecodable = dict(bad)
    out_payloads: list[bytes] = []
    out_keys: list[str] = []
    subs: list[int] = []
    item_ids: list[str] = []
    counts: list[int] = []
    failures: list[tuple[int, str]] = []
    for i, (payload, sequence, key) in enumerate(zip(payloads, sequences, keys, strict=True)):
        users = None
        if i in undecodable:
            failures.append((len(out_payloads), undecodable[i]))
        elif payload.startswith(MAGIC):
            try:
                # No hash range: the event does not say which range the shard owns, and Lambda itself
                # delivered these records to this shard.
                users = unpack(payload, sequence)
            except KplDecodeError as exc:
                failures.append((len(out_payloads), str(exc)))
        if users is None or not users.payloads:
            out_payloads.append(payload)
            out_keys.append(key)
            subs.append(0)
            item_ids.append(sequence)
            counts.append(1)
            continue
        n = len(users.payloads)
        out_payloads.extend(users.payloads)
        out_keys.extend(users.partition_keys)
        subs.extend(users.sub_sequence_numbers)
        item_ids.extend(repeat(sequence, n))
        counts.append(n)
    batch = RecordBatch(partition, payloads=out_payloads, keys=out_keys, arrival_ms=np.repeat(arrival, counts))
    positions = BatchPositions(item_ids, np.array(subs, dtype=np.int64), None, None)
    return EventPartition("kinesis", partition, batch, positions, item_ids, decode_failures=failures)


# --------------------------------------------------------------------------------------------- Kafka

_value = itemgetter("value")
_offset = itemgetter("offset")
_timestamp = itemgetter("timestamp")


def _kafka(groups: Mapping[str, list[dict[str, Any]]]) -> list[EventPartition]:
    out = []
    for event_key, records in groups.items():
        if not records:
            continue
        first = records[0]
        partition = Partition(f"kafka:{first['topic']}", str(first["partition"]))
        # A null value (a tombstone) arrives without "value" or as null: it becomes empty bytes.
        texts = [r.get("value") or "" for r in records]
        payloads, bad = _b64decode_all(texts)
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
