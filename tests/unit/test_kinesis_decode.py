"""decode_get_records against botocore's own parser on the same GetRecords bodies."""

from __future__ import annotations

import base64
import datetime as dt
import random
from typing import Any, cast

import botocore.parsers
import botocore.session
import numpy as np
import orjson
import pytest

from streamkit.connectors.kinesis.decode import (
    MISSING_ARRIVAL_MS,
    ChildShard,
    GetRecordsDecodeError,
    deaggregate,
    decode_get_records,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_HASH = 2**128 - 1


def _botocore_parse(body: bytes) -> dict[str, Any]:
    model = botocore.session.get_session().get_service_model("kinesis")
    shape = model.operation_model("GetRecords").output_shape
    parser = botocore.parsers.create_parser("json")
    return cast(dict[str, Any], parser.parse({"body": body, "headers": {}, "status_code": 200}, shape))


def _micros(value: dt.datetime) -> int:
    """Exact microseconds since the epoch of botocore's datetime (no float round trip)."""
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _random_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    records = []
    base_ms = 1_764_165_600_000
    for i in range(n):
        size = rng.choice([0, 1, 2, 3, 57, 1000, 5000])
        data = bytes(rng.getrandbits(8) for _ in range(size))
        records.append(
            {
                "SequenceNumber": str(rng.randrange(10**55, 10**56)),
                "ApproximateArrivalTimestamp": (base_ms + i * 7 + rng.randrange(1000)) / 1000,
                "Data": base64.b64encode(data).decode(),
                "PartitionKey": rng.choice(["pk-1", "ключ", "k" * 256, "🔑", str(i)]),
            }
        )
    return records


def test_matches_botocore_field_for_field() -> None:
    rng = random.Random(7)
    body = orjson.dumps(
        {
            "Records": _random_records(rng, 400),
            "NextShardIterator": "AAAAAAAAAAG" + "x" * 200,
            "MillisBehindLatest": 1234,
        }
    )
    ours = decode_get_records(body)
    ref = _botocore_parse(body)

    assert len(ours) == len(ref["Records"]) == 400
    assert ours.payloads == [r["Data"] for r in ref["Records"]]
    assert ours.sequence_numbers == [r["SequenceNumber"] for r in ref["Records"]]
    assert ours.partition_keys == [r["PartitionKey"] for r in ref["Records"]]
    assert ours.arrival_ms.dtype == np.int64
    # The inputs have millisecond precision, so the millisecond is exact, not just close.
    assert [int(v) * 1000 for v in ours.arrival_ms] == [
        _micros(r["ApproximateArrivalTimestamp"]) for r in ref["Records"]
    ]
    assert ours.next_shard_iterator == ref["NextShardIterator"]
    assert ours.millis_behind_latest == ref["MillisBehindLatest"] == 1234
    assert ours.child_shards == []
    assert all(type(p) is bytes for p in ours.payloads)


def test_arrival_ms_is_seconds_times_1000_rounded_half_to_even() -> None:
    # Definition: arrival_ms = rint(seconds * 1000.0) in float64. Kinesis sends milliseconds
    # (3 decimals); sub-millisecond inputs round to the nearest millisecond.
    cases = {
        1.0004: 1000,
        1.0006: 1001,
        1_764_165_600.1234: 1_764_165_600_123,
        1_764_165_600.1236: 1_764_165_600_124,
        1_764_165_600.9996: 1_764_165_601_000,
        0.0: 0,
    }
    records = [
        {"SequenceNumber": str(i), "Data": "", "PartitionKey": "k", "ApproximateArrivalTimestamp": ts}
        for i, ts in enumerate(cases)
    ]
    ours = decode_get_records(orjson.dumps({"Records": records}))
    assert ours.arrival_ms.tolist() == list(cases.values())
    # botocore keeps microseconds; ours is within half a millisecond of it.
    ref = _botocore_parse(orjson.dumps({"Records": records}))["Records"]
    for ms, r in zip(ours.arrival_ms.tolist(), ref, strict=True):
        assert abs(ms * 1000 - _micros(r["ApproximateArrivalTimestamp"])) <= 500


def test_every_millisecond_value_is_exact() -> None:
    # Any millisecond timestamp between 2000 and 2100 survives the float round trip exactly.
    rng = random.Random(3)
    millis = [rng.randrange(946_684_800_000, 4_102_444_800_000) for _ in range(20_000)]
    records = [
        {"SequenceNumber": "1", "Data": "", "PartitionKey": "k", "ApproximateArrivalTimestamp": ms / 1000}
        for ms in millis
    ]
    assert decode_get_records(orjson.dumps({"Records": records})).arrival_ms.tolist() == millis


def test_service_style_numbers_and_unknown_fields() -> None:
    # Kinesis writes the timestamp in Java's scientific notation and may add fields we skip.
    body = (
        b'{"Records":[{"SequenceNumber":"49545115243490985018280067714973144582180062593244200961",'
        b'"ApproximateArrivalTimestamp":1.441215410867E9,"Data":"aGVsbG8=","PartitionKey":"a",'
        b'"EncryptionType":"KMS","SomethingNew":{"x":[1,2]}},'
        b'{"SequenceNumber":"2","ApproximateArrivalTimestamp":1441215411,"Data":"","PartitionKey":"b"}],'
        b'"NextShardIterator":"it","MillisBehindLatest":0}'
    )
    ours = decode_get_records(body)
    assert ours.payloads == [b"hello", b""]
    assert ours.arrival_ms.tolist() == [1_441_215_410_867, 1_441_215_411_000]
    assert ours.millis_behind_latest == 0


def test_empty_records() -> None:
    body = b'{"Records":[],"NextShardIterator":"AAAA","MillisBehindLatest":0}'
    ours = decode_get_records(body)
    assert len(ours) == 0
    assert ours.payloads == [] and ours.sequence_numbers == [] and ours.partition_keys == []
    assert ours.arrival_ms.shape == (0,)
    assert ours.arrival_ms.dtype == np.int64
    assert ours.next_shard_iterator == "AAAA"
    users = deaggregate(ours, (0, _MAX_HASH))
    assert len(users) == 0
    assert users.dropped == 0


@pytest.mark.parametrize("iterator_json", [b"", b'"NextShardIterator":null,'])
def test_closed_shard_child_shards(iterator_json: bytes) -> None:
    half = 2**127
    body = (
        b'{"Records":[{"SequenceNumber":"5","ApproximateArrivalTimestamp":1.7E9,"Data":"YQ==",'
        b'"PartitionKey":"p"}],' + iterator_json + b'"MillisBehindLatest":0,"ChildShards":['
        b'{"ShardId":"shardId-000000000001","ParentShards":["shardId-000000000000"],'
        b'"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"' + str(half - 1).encode() + b'"}},'
        b'{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],'
        b'"HashKeyRange":{"StartingHashKey":"'
        + str(half).encode()
        + b'","EndingHashKey":"'
        + str(_MAX_HASH).encode()
        + b'"}}]}'
    )
    ours = decode_get_records(body)
    assert ours.next_shard_iterator is None
    assert ours.child_shards == [
        ChildShard("shardId-000000000001", ["shardId-000000000000"], (0, half - 1)),
        ChildShard("shardId-000000000002", ["shardId-000000000000"], (half, _MAX_HASH)),
    ]
    ref = _botocore_parse(body)
    assert "NextShardIterator" not in ref or ref["NextShardIterator"] is None
    assert [
        (c["ShardId"], c["ParentShards"], int(c["HashKeyRange"]["StartingHashKey"])) for c in ref["ChildShards"]
    ] == [(c.shard_id, c.parent_shards, c.hash_key_range[0]) for c in ours.child_shards]


def test_merge_child_has_two_parents() -> None:
    body = (
        b'{"Records":[],"ChildShards":[{"ShardId":"shardId-000000000009",'
        b'"ParentShards":["shardId-000000000007","shardId-000000000008"],'
        b'"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"' + str(_MAX_HASH).encode() + b'"}}]}'
    )
    (child,) = decode_get_records(body).child_shards
    assert child.parent_shards == ["shardId-000000000007", "shardId-000000000008"]
    assert child.hash_key_range == (0, _MAX_HASH)


def test_128_digit_sequence_numbers_kept_verbatim() -> None:
    seqs = ["9" * 128, "2" + "0" * 127, "1" + "0" * 100, "99"]
    records = [{"SequenceNumber": s, "Data": "", "PartitionKey": "k"} for s in seqs]
    body = orjson.dumps({"Records": records, "NextShardIterator": "x"})
    ours = decode_get_records(body)
    assert ours.sequence_numbers == seqs == [r["SequenceNumber"] for r in _botocore_parse(body)["Records"]]
    # Why they must be compared as integers: as strings "99" sorts after "20...0".
    assert max(ours.sequence_numbers[1:]) == "99"
    assert max(ours.sequence_numbers[1:], key=int) == "2" + "0" * 127
    assert ours.arrival_ms.tolist() == [MISSING_ARRIVAL_MS] * 4


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"NextShardIterator":"x"}',
        b'{"Records":[{"SequenceNumber":"1","Data":"@@@@","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":"YQ","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":"YQ\\u00e9=","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":1,"Data":"","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":"YQ==\\n","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":"Y Q==","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":"YS-i","PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":123456,"PartitionKey":"k"}]}',
        b'{"Records":[{"SequenceNumber":"1","Data":[],"PartitionKey":"k"}]}',
        b'{"__type":"ExpiredIteratorException","message":"Iterator expired"}',
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(GetRecordsDecodeError):
        decode_get_records(body)


def test_fast_path_without_aggregated_records() -> None:
    # Payloads that only look like a KPL record at a glance: 0xF3 first, too short, empty.
    payloads = [b"\xf3plain", b"\xf3\x89\x9a", b"", b'{"a":1}', b"\xf3\x89\x9a\xc2"]
    records = [
        {
            "SequenceNumber": str(i),
            "Data": base64.b64encode(p).decode(),
            "PartitionKey": "k",
            "ApproximateArrivalTimestamp": 1.5,
        }
        for i, p in enumerate(payloads)
    ]
    for subset in (records[1:4], records):  # without and with a leading 0xF3 / magic-only payload
        decoded = decode_get_records(orjson.dumps({"Records": subset}))
        users = deaggregate(decoded, (0, 1))
        assert users.payloads == decoded.payloads
        assert users.sequence_numbers == decoded.sequence_numbers
        assert users.partition_keys == decoded.partition_keys
        assert users.sub_sequence_numbers.tolist() == [0] * len(subset)
        assert users.aggregated.tolist() == [False] * len(subset)
        assert users.explicit_hash_keys == [None] * len(subset)
        assert users.arrival_ms.tolist() == [1500] * len(subset)
        assert users.dropped == 0
    # The no-aggregate path hands the decoded columns over without copying them.
    plain = decode_get_records(orjson.dumps({"Records": records[3:4]}))
    assert deaggregate(plain).payloads is plain.payloads


def test_data_with_json_escapes_decodes_as_botocore_reads_it() -> None:
    """JSON escapes in Data (a ``\\/`` some encoders write) are resolved before the base64 is decoded."""
    body = (
        b'{"Records":[{"SequenceNumber":"1","Data":"YS\\/i","PartitionKey":"k"},'
        b'{"SequenceNumber":"2","Data":"\\u0059Q==","PartitionKey":"k"}]}'
    )
    decoded = decode_get_records(body)
    assert decoded.payloads == [b"a/\xe2", b"a"]
    assert decoded.payloads == [r["Data"] for r in _botocore_parse(body)["Records"]]
