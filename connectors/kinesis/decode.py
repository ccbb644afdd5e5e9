"""Decode a raw Kinesis GetRecords response body straight into columns.

botocore's parser builds a dict and a timezone-aware datetime per record (~50-60k records/s per
core on a 10,000-record response, PERF_FACTS.md). Here the body is decoded by msgspec into
gc-untracked structs that name only the fields we use, ``Data`` straight into bytes (msgspec decodes
base64 for a ``bytes`` field itself, strictly), and each column is pulled out with a C-level ``map``: no
per-record Python function runs. ``benchmarks/kinesis_decode.py`` measures it against botocore
and against an orjson variant (msgspec is the faster of the two on this shape).

KPL deaggregation is a separate step, :func:`deaggregate`, so a source can skip it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from streamkit.connectors.kinesis.kpl import KplDecodeError, Malformed, any_aggregated, expand

__all__ = [
    "MISSING_ARRIVAL_MS",
    "ChildShard",
    "DeaggregatedRecords",
    "DecodedRecords",
    "GetRecordsDecodeError",
    "KplDecodeError",
    "as_user_records",
    "deaggregate",
    "decode_get_records",
    "decode_subscribe_event",
]

# arrival_ms of a record without ApproximateArrivalTimestamp (the API model makes it optional;
# the service always sends it). The struct default below is this value in seconds, so the
# vectorized rounding produces it without a per-record branch.
MISSING_ARRIVAL_MS = -1


class GetRecordsDecodeError(ValueError):
    """The body is not a well-formed GetRecords response (bad JSON, shape or base64)."""


class ChildShard(NamedTuple):
    shard_id: str
    parent_shards: list[str]
    # Inclusive [start, end] of the 128-bit hash key space, as integers.
    hash_key_range: tuple[int, int]


@dataclass(frozen=True, slots=True)
class DecodedRecords:
    """One GetRecords response as columns; index i of every column is record i.

    GetRecords carries no explicit hash keys (its Record shape has none); they exist only
    inside KPL aggregated records, see :class:`DeaggregatedRecords`.
    """

    payloads: list[bytes]
    # Decimal strings up to 128 digits: compare them as int(), never as strings.
    sequence_numbers: list[str]
    partition_keys: list[str]
    # int64 milliseconds since the epoch: ApproximateArrivalTimestamp (float seconds) x 1000
    # rounded half to even. Kinesis sends millisecond precision, for which this is exact.
    arrival_ms: npt.NDArray[np.int64]
    # None: the shard is closed and read to its end. From a SubscribeToShardEvent: its
    # ContinuationSequenceNumber (see decode_subscribe_event).
    next_shard_iterator: str | None
    millis_behind_latest: int | None
    child_shards: list[ChildShard]

    def __len__(self) -> int:
        return len(self.sequence_numbers)


@dataclass(frozen=True, slots=True)
class DeaggregatedRecords:
    """User records after KPL deaggregation; index i of every column is user record i.

    A user record from an aggregated record shares the Kinesis record's sequence number and
    arrival time and has its index in the aggregate as sub-sequence number; a plain record has
    sub-sequence 0 and ``aggregated`` False. Checkpoint at (sequence number, sub-sequence).
    Batch-level fields (iterator, lag, child shards) stay on :class:`DecodedRecords`.
    When no record is aggregated the lists are the DecodedRecords' own lists, not copies.
    """

    payloads: list[bytes]
    sequence_numbers: list[str]
    sub_sequence_numbers: npt.NDArray[np.int64]
    partition_keys: list[str]
    explicit_hash_keys: list[str | None]
    arrival_ms: npt.NDArray[np.int64]
    aggregated: npt.NDArray[np.bool_]
    # User records dropped because their effective hash key is outside the shard's range.
    dropped: int
    # deaggregate(malformed="fail_record"): user-record index -> reason of malformed aggregates kept whole.
    failures: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequence_numbers)


# gc=False: these objects hold only strings, bytes and lists of strings, never cycles, so keeping
# 10,000 of them out of the cyclic GC's tracking is safe and saves its collections.
class _HashKeyRange(msgspec.Struct, rename="pascal", gc=False):
    starting_hash_key: str
    ending_hash_key: str


class _ChildShard(msgspec.Struct, rename="pascal", gc=False):
    shard_id: str
    parent_shards: list[str]
    hash_key_range: _HashKeyRange


class _Record(msgspec.Struct, rename="pascal", gc=False):
    sequence_number: str
    # Bytes: msgspec decodes the base64 itself, straight from the body. A str handed to pybase64 (SIMD) is as
    # fast on one response in isolation, but in a pipeline the ~1.3 KB str per record, copied out of the
    # body, allocated and freed again, costs ~0.2 us per record more (streamkit bench, docs/performance.md).
    # Both are strict alike: padding required, no whitespace or junk, JSON escapes resolved first.
    data: bytes
    partition_key: str = ""
    approximate_arrival_timestamp: float = MISSING_ARRIVAL_MS / 1000
    # Unknown fields (EncryptionType, anything new) are skipped by msgspec without being built.


class _Response(msgspec.Struct, rename="pascal", gc=False):
    records: list[_Record]
    next_shard_iterator: str | None = None
    millis_behind_latest: int | None = None
    child_shards: list[_ChildShard] | None = None


class _ShardEvent(msgspec.Struct, rename="pascal", gc=False):
    """A SubscribeToShardEvent (enhanced fan-out): the records of GetRecords plus where to go on."""

    records: list[_Record]
    continuation_sequence_number: str | None = None
    millis_behind_latest: int | None = None
    child_shards: list[_ChildShard] | None = None


_decoder = msgspec.json.Decoder(_Response)
_event_decoder = msgspec.json.Decoder(_ShardEvent)
_data = attrgetter("data")
_seq = attrgetter("sequence_number")
_pkey = attrgetter("partition_key")
_arrival = attrgetter("approximate_arrival_timestamp")


def decode_get_records(body: bytes) -> DecodedRecords:
    """Decode the raw JSON body of a successful GetRecords response."""
    try:
        resp = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise GetRecordsDecodeError(f"not a GetRecords response: {exc}") from exc
    return _columns(resp.records, resp.next_shard_iterator, resp.millis_behind_latest, resp.child_shards)


def decode_subscribe_event(payload: bytes) -> DecodedRecords:
    """Decode the JSON payload of a SubscribeToShardEvent (enhanced fan-out) into the same columns.

    ``next_shard_iterator`` carries the event's ContinuationSequenceNumber: where the next subscription
    starts (AFTER_SEQUENCE_NUMBER), and None once the shard is closed and read to its end, as for GetRecords.
    """
    try:
        event = _event_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise GetRecordsDecodeError(f"not a SubscribeToShardEvent: {exc}") from exc
    return _columns(event.records, event.continuation_sequence_number, event.millis_behind_latest, event.child_shards)


def _columns(
    records: list[_Record], next_at: str | None, millis_behind: int | None, child_shards: list[_ChildShard] | None
) -> DecodedRecords:
    payloads: list[bytes] = list(map(_data, records))
    seconds = np.fromiter(map(_arrival, records), dtype=np.float64, count=len(records))
    seconds *= 1000.0
    arrival_ms = np.rint(seconds).astype(np.int64)

    children = [
        ChildShard(
            c.shard_id,
            c.parent_shards,
            (int(c.hash_key_range.starting_hash_key), int(c.hash_key_range.ending_hash_key)),
        )
        for c in child_shards or ()
    ]
    return DecodedRecords(
        payloads=payloads,
        sequence_numbers=list(map(_seq, records)),
        partition_keys=list(map(_pkey, records)),
        arrival_ms=arrival_ms,
        next_shard_iterator=next_at,
        millis_behind_latest=millis_behind,
        child_shards=children,
    )


def as_user_records(decoded: DecodedRecords) -> DeaggregatedRecords:
    """Every record as one user record (no KPL aggregation): the input columns with constant flags."""
    n = len(decoded)
    return DeaggregatedRecords(
        payloads=decoded.payloads,
        sequence_numbers=decoded.sequence_numbers,
        sub_sequence_numbers=np.zeros(n, dtype=np.int64),
        partition_keys=decoded.partition_keys,
        explicit_hash_keys=[None] * n,
        arrival_ms=decoded.arrival_ms,
        aggregated=np.zeros(n, dtype=np.bool_),
        dropped=0,
    )


def deaggregate(
    decoded: DecodedRecords, shard_hash_range: tuple[int, int] | None = None, *, malformed: Malformed = "raise"
) -> DeaggregatedRecords:
    """Expand KPL aggregated records into user records (:func:`~streamkit.connectors.kinesis.kpl.expand`).

    ``shard_hash_range`` is the shard's inclusive [start, end] hash key range; when given, user
    records of aggregated records whose effective hash key is outside it are dropped and counted
    (plain records are never filtered: Kinesis itself routed them to this shard). An aggregated
    record whose digest matches but whose protobuf is malformed raises KplDecodeError, or with
    ``malformed="fail_record"`` stays one record listed in ``failures`` with the reason.
    """
    payloads = decoded.payloads
    # Fast path: a batch without aggregated records is returned as the input columns with
    # constant flags, after a C-level scan of first bytes.
    if not any_aggregated(payloads):
        return as_user_records(decoded)
    users = expand(payloads, decoded.sequence_numbers, decoded.partition_keys, shard_hash_range, malformed=malformed)
    return DeaggregatedRecords(
        payloads=users.payloads,
        sequence_numbers=users.sequence_numbers,
        sub_sequence_numbers=np.array(users.sub_sequence_numbers, dtype=np.int64),
        partition_keys=users.partition_keys,
        explicit_hash_keys=users.explicit_hash_keys,
        arrival_ms=np.repeat(decoded.arrival_ms, users.counts),
        aggregated=np.repeat(np.array(users.aggregated, dtype=np.bool_), users.counts),
        dropped=users.dropped,
        failures=users.failures,
    )
