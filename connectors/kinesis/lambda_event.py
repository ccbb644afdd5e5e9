"""Kinesis events of a Lambda event source mapping, decoded into one record batch per shard.

Registered as the ``streamkit.lambda_events`` entry point ``aws:kinesis``; :func:`streamkit.aws_lambda.events.
decode_event` calls it. Payloads are base64 (decoded in one C-level pass), and KPL aggregates are expanded by
the connector's one deaggregation loop (:func:`~streamkit.connectors.kinesis.kpl.expand`) in its per-record
failure mode: a malformed aggregate stays one record, listed in ``decode_failures`` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import numpy as np

from streamkit.aws_lambda.events import EventPartition, b64decode_all
from streamkit.batch import Partition, RecordBatch
from streamkit.connectors.kinesis.kpl import any_aggregated, expand
from streamkit.connectors.kinesis.positions import BatchPositions

__all__ = ["KINESIS_EVENT_SOURCE", "decode_kinesis_event"]

KINESIS_EVENT_SOURCE = "aws:kinesis"

_kinesis_part = itemgetter("kinesis")
_data = itemgetter("data")
_sequence = itemgetter("sequenceNumber")
_partition_key = itemgetter("partitionKey")
_arrival = itemgetter("approximateArrivalTimestamp")


def decode_kinesis_event(event: Mapping[str, Any], *, deaggregate: bool = True) -> list[EventPartition]:
    """One :class:`EventPartition` per shard of the event's ``Records``, in event order."""
    out = []
    for arn, shard, group in _shard_groups(event["Records"]):
        parts = list(map(_kinesis_part, group))
        payloads, bad = b64decode_all(list(map(_data, parts)))
        sequences: list[str] = list(map(_sequence, parts))
        keys: list[str] = list(map(_partition_key, parts))
        seconds = np.fromiter(map(_arrival, parts), dtype=np.float64, count=len(parts))
        # Kinesis sends whole milliseconds as float seconds: rounding makes them exact again.
        arrival = np.rint(seconds * 1000.0).astype(np.int64)
        partition = Partition(f"kinesis:{_stream_name(arn)}", shard)
        if deaggregate and any_aggregated(payloads):
            out.append(_deaggregated(partition, payloads, sequences, keys, arrival, bad))
            continue
        batch = RecordBatch(partition, payloads=payloads, keys=keys, arrival_ms=arrival)
        positions = BatchPositions(sequences, np.zeros(len(sequences), dtype=np.int64), None, None)
        out.append(EventPartition("kinesis", partition, batch, positions, sequences, decode_failures=bad))
    return out


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


def _deaggregated(
    partition: Partition,
    payloads: list[bytes],
    sequences: list[str],
    keys: list[str],
    arrival: np.ndarray[Any, np.dtype[np.int64]],
    bad: list[tuple[int, str]],
) -> EventPartition:
    """Expand KPL aggregates; a malformed aggregate stays one record, listed as a decode failure."""
    # No hash range: the event does not say which range the shard owns, and Lambda itself delivered these
    # records to this shard.
    users = expand(payloads, sequences, keys, malformed="fail_record")
    # A record whose base64 was bad holds its text as UTF-8 bytes, which cannot start with the KPL magic
    # (0xf3 0x89 0x9a 0xc2 is not valid UTF-8): it passed through as one record, at the user-record index
    # where its Kinesis record starts.
    starts = np.cumsum(users.counts) - users.counts
    failures = sorted([(int(starts[i]), reason) for i, reason in bad] + list(users.failures.items()))
    batch = RecordBatch(
        partition, payloads=users.payloads, keys=users.partition_keys, arrival_ms=np.repeat(arrival, users.counts)
    )
    positions = BatchPositions(users.sequence_numbers, np.array(users.sub_sequence_numbers, dtype=np.int64), None, None)
    return EventPartition("kinesis", partition, batch, positions, users.sequence_numbers, decode_failures=failures)
