"""KPL deaggregation against the reference package aws-kinesis-agg (aggregator and deaggregator)."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import aws_kinesis_agg.aggregator as agg
import aws_kinesis_agg.deaggregator as reference
import orjson
import pytest
from aws_kinesis_agg import messages_pb2  # importable only after the modules above fix sys.path
from google.protobuf.message import DecodeError

from streamkit.connectors.kinesis.decode import DeaggregatedRecords, deaggregate, decode_get_records
from streamkit.connectors.kinesis.kpl import (
    MAGIC,
    KplDecodeError,
    any_aggregated,
    effective_hash_key,
    expand,
    is_aggregated,
    unpack,
)

_MAX_HASH = 2**128 - 1


class Row(NamedTuple):
    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    aggregated: bool


def _body(records: list[tuple[str, str, bytes]]) -> bytes:
    """A GetRecords body from (sequence number, partition key, payload) triples."""
    return orjson.dumps(
        {
            "Records": [
                {
                    "SequenceNumber": seq,
                    "ApproximateArrivalTimestamp": 1_764_165_600 + i / 1000,
                    "Data": base64.b64encode(data).decode(),
                    "PartitionKey": pk,
                }
                for i, (seq, pk, data) in enumerate(records)
            ],
            "NextShardIterator": "it",
            "MillisBehindLatest": 0,
        }
    )


def _ours(records: list[tuple[str, str, bytes]], hash_range: tuple[int, int] | None = None) -> list[Row]:
    return _rows(deaggregate(decode_get_records(_body(records)), hash_range))


def _rows(users: DeaggregatedRecords) -> list[Row]:
    return [
        Row(seq, int(sub), pk, ehk, data, bool(flag))
        for seq, sub, pk, ehk, data, flag in zip(
            users.sequence_numbers,
            users.sub_sequence_numbers,
            users.partition_keys,
            users.explicit_hash_keys,
            users.payloads,
            users.aggregated,
            strict=True,
        )
    ]


def _reference(records: list[tuple[str, str, bytes]]) -> list[Row]:
    boto3_style = [
        {"SequenceNumber": s, "PartitionKey": pk, "ApproximateArrivalTimestamp": 0.0, "Data": d} for s, pk, d in records
    ]
    rows = []
    for user in reference.iter_deaggregate_records(boto3_style, data_format="Boto3"):
        k: dict[str, Any] = user["kinesis"]
        if k.get("aggregated"):
            data = base64.b64decode(k["data"])
            rows.append(
                Row(
                    k["sequenceNumber"],
                    k["subSequenceNumber"],
                    k["partitionKey"],
                    k["explicitHashKey"],
                    data,
                    True,
                )
            )
        else:
            rows.append(Row(k["sequenceNumber"], 0, k["partitionKey"], None, k["data"], False))
    return rows


def _aggregate(users: Sequence[tuple[str, bytes, str | None]], max_size: int = 1024 * 1024) -> list[bytes]:
    """Aggregate (partition key, data, explicit hash key) with aws-kinesis-agg's RecordAggregator."""
    aggregator = agg.RecordAggregator(max_size=max_size)
    out = []
    for pk, data, ehk in users:
        full = aggregator.add_user_record(pk, data, ehk)
        if full is not None:
            out.append(full.get_contents()[2])
    last = aggregator.clear_and_get()
    if last is not None:
        out.append(last.get_contents()[2])
    return out


def _framed(message: bytes) -> bytes:
    assert MAGIC == b"\xf3\x89\x9a\xc2"
    return b"\xf3\x89\x9a\xc2" + message + hashlib.md5(message).digest()


def _pb_record(users: list[tuple[int, bytes]], pks: list[str], tags: bool = False) -> bytes:
    ar = messages_pb2.AggregatedRecord()
    ar.partition_key_table.extend(pks)
    for pk_index, data in users:
        record = ar.records.add()
        record.partition_key_index = pk_index
        record.data = data
        if tags:
            tag = record.tags.add()
            tag.key = "origin"
            tag.value = "test"
            record.tags.add().key = "no-value"
    return bytes(ar.SerializeToString())


def test_mixed_batch_matches_reference_and_input() -> None:
    rng = random.Random(11)
    # 300 distinct keys in one aggregate: partition_key_index needs multi-byte varints.
    no_ehk: list[tuple[str, bytes, str | None]] = [
        (f"key-{i % 300}", rng.randbytes(rng.choice([0, 1, 200, 3000, 20_000])), None) for i in range(900)
    ]
    with_ehk: list[tuple[str, bytes, str | None]] = [
        (f"k{i}", rng.randbytes(100), str(rng.randrange(_MAX_HASH))) for i in range(60)
    ]
    aggregates = _aggregate(no_ehk, max_size=300_000) + _aggregate(with_ehk, max_size=2_000)
    assert len(aggregates) > 4

    records: list[tuple[str, str, bytes]] = []
    expected: list[Row] = []
    users = iter(no_ehk + with_ehk)
    for i, blob in enumerate(aggregates):
        seq = str(49_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000 + 2 * i)
        records.append((seq, "outer-key", blob))
        n = len(messages_pb2.AggregatedRecord.FromString(blob[4:-16]).records)
        for sub in range(n):
            pk, data, ehk = next(users)
            expected.append(Row(seq, sub, pk, ehk, data, True))
        plain = (str(int(seq) + 1), f"plain-{i}", b'{"plain": %d}' % i)
        records.append(plain)
        expected.append(Row(plain[0], 0, plain[1], None, plain[2], False))

    ours = _ours(records)
    assert ours == expected
    assert ours == _reference(records)
    # Per-record columns are repeated for every user record of an aggregate.
    users_out = deaggregate(decode_get_records(_body(records)))
    assert users_out.arrival_ms.tolist()[0] == 1_764_165_600_000
    assert len(set(users_out.arrival_ms.tolist())) == len(records)


def test_corrupted_digest_passes_through_as_plain() -> None:
    (blob,) = _aggregate([("a", b"one", None), ("b", b"two", None)])
    bad_digest = blob[:-1] + bytes([blob[-1] ^ 1])
    bad_body = blob[:10] + bytes([blob[10] ^ 0x40]) + blob[11:]
    records = [("1", "x", bad_digest), ("2", "y", blob), ("3", "z", bad_body)]
    ours = _ours(records)
    assert ours == _reference(records)
    assert ours[0] == Row("1", 0, "x", None, bad_digest, False)
    assert [r.data for r in ours[1:3]] == [b"one", b"two"]
    assert ours[3] == Row("3", 0, "z", None, bad_body, False)
    assert unpack(bad_digest, "1") is None


def test_records_with_tags() -> None:
    blob = _framed(_pb_record([(0, b"first"), (1, b"second"), (0, b"")], ["p0", "p1"], tags=True))
    records = [("7", "outer", blob)]
    ours = _ours(records)
    assert ours == _reference(records)
    assert [(r.partition_key, r.data, r.sub_sequence_number) for r in ours] == [
        ("p0", b"first", 0),
        ("p1", b"second", 1),
        ("p0", b"", 2),
    ]


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _unknown_fields() -> bytes:
    """One unknown field of every wire type, including a group holding a nested group."""
    group_body = _key(1, 0) + _varint(5) + _key(2, 3) + _key(1, 5) + b"abcd" + _key(2, 4) + _key(3, 2) + b"\x01z"
    return (
        _key(15, 0) + _varint(2**64 - 1)
        + _key(16, 1) + b"8bytes!!"
        + _key(17, 2) + _varint(3) + b"xyz"
        + _key(18, 3) + group_body + _key(18, 4)
        + _key(2000, 5) + b"4byt"
    )  # fmt: skip


def _message_with_unknown_fields(data: bytes) -> bytes:
    unknown = _unknown_fields()
    record = _key(1, 0) + _varint(0) + unknown + _key(3, 2) + _varint(len(data)) + data + unknown
    # A known field number with an unexpected wire type is an unknown field too (as in protobuf).
    record += _key(2, 2) + _varint(1) + b"?"
    return unknown + _key(1, 2) + _varint(2) + b"pk" + _key(3, 2) + _varint(len(record)) + record + unknown


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    data = b"payload"
    records = [("9", "outer", _framed(_message_with_unknown_fields(data)))]
    ours = _ours(records)
    assert ours == _reference(records) == [Row("9", 0, "pk", None, data, True)]


def test_hash_range_filtering_drops_and_counts() -> None:
    start, end = 0, 2**127 - 1  # the lower half of the key space, as after a split
    keys = [f"user-{i}" for i in range(40)]
    in_range = [int.from_bytes(hashlib.md5(k.encode()).digest(), "big") <= end for k in keys]
    assert 5 < sum(in_range) < 35
    (blob,) = _aggregate([(k, k.encode(), None) for k in keys])
    (ehk_blob,) = _aggregate([("any", b"low", "0"), ("any", b"high", str(2**127)), ("any", b"top", str(end))])
    far_key = next(k for k, ok in zip(keys, in_range, strict=True) if not ok)
    records = [
        ("1", "outer", blob),
        ("2", far_key, b"plain records are never filtered"),
        ("3", "o", ehk_blob),
    ]

    users = deaggregate(decode_get_records(_body(records)), (start, end))
    kept = [i for i, ok in enumerate(in_range) if ok]
    assert users.dropped == len(keys) - len(kept) + 1
    rows = _rows(users)
    assert rows[: len(kept)] == [Row("1", i, keys[i], None, keys[i].encode(), True) for i in kept]
    assert rows[len(kept)] == Row("2", 0, far_key, None, b"plain records are never filtered", False)
    assert rows[len(kept) + 1 :] == [
        Row("3", 0, "any", "0", b"low", True),
        Row("3", 2, "any", str(end), b"top", True),
    ]
    # Arrival times follow their Kinesis record through the filter.
    assert users.arrival_ms.tolist() == [1_764_165_600_000] * len(kept) + [1_764_165_600_001] + [1_764_165_600_002] * 2
    # The full range keeps everything.
    assert deaggregate(decode_get_records(_body(records)), (0, _MAX_HASH)).dropped == 0


def test_effective_hash_key() -> None:
    assert effective_hash_key("a", "42") == 42
    digest = hashlib.md5(b"\xc3\xa9").digest()  # "é" in UTF-8
    assert effective_hash_key("é", None) == int(digest.hex(), 16)


def test_mixed_explicit_hash_keys_follow_the_kcl() -> None:
    # Only a record that carries explicit_hash_key_index has an explicit hash key (KCL rule).
    # aws-kinesis-agg's deaggregator instead gives such a record table entry 0; that is the one
    # field where we differ from it on purpose.
    (blob,) = _aggregate([("a", b"1", "100"), ("b", b"2", None)])
    records = [("5", "o", blob)]
    ours = _ours(records)
    ref = _reference(records)
    assert [r.explicit_hash_key for r in ours] == ["100", None]
    assert [r.explicit_hash_key for r in ref] == ["100", "100"]
    assert [r._replace(explicit_hash_key=None) for r in ours] == [r._replace(explicit_hash_key=None) for r in ref]


def test_aggregate_without_body_is_plain() -> None:
    # Magic + digest of an empty message: too short to be aggregated, as in the KCL.
    blob = _framed(b"")
    assert not is_aggregated(blob)
    assert _ours([("1", "k", blob)]) == [Row("1", 0, "k", None, blob, False)]


_PK = _key(1, 2) + b"\x02pk"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_PK + _key(3, 2) + b"\x02" + _key(1, 0) + b"\x80", "truncated varint"),
        (_PK + _key(3, 2) + b"\x06" + _key(1, 0) + b"\x01" + _key(3, 2) + b"\x01x", "index out of range"),
        (_PK + _key(3, 2) + b"\x02" + _key(1, 0) + b"\x00", "missing data"),
        (_PK + _key(3, 2) + b"\x03" + _key(3, 2) + b"\x01x", "missing partition key index"),
        (_PK + _key(3, 2) + b"\x09" + _key(1, 0) + b"\x00" + _key(3, 2) + b"\x01x", "record past end"),
        (_PK + _key(3, 2) + b"\x05" + _key(1, 0) + b"\x00" + _key(3, 2) + b"\x05x", "data past end"),
        (_PK + _key(7, 7), "invalid wire type"),
        (_PK + _key(7, 4), "unmatched end group"),
        (_PK + _key(7, 3) + _key(8, 4), "mismatched end group"),
        (_PK + _key(7, 3), "unterminated group"),
        (_PK + b"\x00", "field number zero"),
        (_PK + _varint(1 << 32 | 0), "field number too large"),
        (_PK + _key(7, 0) + b"\xff" * 10 + b"\x01", "varint too long"),
    ],
)
def test_malformed_protobuf_with_valid_digest_raises(message: bytes, reason: str) -> None:
    seq = "49590338271490256608559692538361571095921575989136588898"
    with pytest.raises(KplDecodeError, match=seq) as info:
        deaggregate(decode_get_records(_body([("1", "k", b"plain"), (seq, "k", _framed(message))])))
    assert info.value.sequence_number == seq, reason


def test_invalid_utf8_key_is_replaced_and_hashed_raw() -> None:
    raw = b"k\xff"
    message = _key(1, 2) + _varint(len(raw)) + raw + _key(3, 2) + b"\x05" + _key(1, 0) + b"\x00" + _key(3, 2) + b"\x01x"
    digest = int.from_bytes(hashlib.md5(raw).digest(), "big")
    users = unpack(_framed(message), "1", (digest, digest))
    assert users is not None
    assert users.partition_keys == ["k\ufffd"]
    assert users.dropped == 0
    dropped = unpack(_framed(message), "1", (digest + 1, _MAX_HASH))
    assert dropped is not None and dropped.dropped == 1


def test_non_decimal_explicit_hash_key_raises_only_when_filtering() -> None:
    (blob,) = _aggregate([("a", b"1", "0x10")])
    assert unpack(blob, "1") is not None
    # A shard owning the whole key space filters nothing, so the key is not even read.
    assert unpack(blob, "1", (0, _MAX_HASH)) is not None
    with pytest.raises(KplDecodeError, match="not a decimal integer"):
        unpack(blob, "1", (0, _MAX_HASH - 1))


def _text(value: str | bytes) -> str:
    # The proto2 runtime hands back bytes for a string field that is not valid UTF-8.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def test_random_corruptions_agree_with_protobuf() -> None:
    # Mutate valid messages, fix the digest, and compare with the protobuf runtime: whenever it
    # decodes and every index is valid we must return the same records, otherwise raise.
    rng = random.Random(5)
    # Data of 0-39 bytes and of 200 (a two-byte length varint), for both decoding paths.
    users = [(f"p{i % 7}", rng.randbytes(rng.choice([rng.randrange(40), 200])), None) for i in range(20)]
    (base,) = _aggregate(users)
    (with_ehk,) = _aggregate([(f"p{i}", b"d%d" % i, str(i * 10**30)) for i in range(5)])
    seed_messages = [
        base[4:-16],
        with_ehk[4:-16],
        _pb_record([(0, b"a"), (1, b"bc")], ["x", "y"], tags=True),
        _message_with_unknown_fields(b"data"),
    ]
    agreed = raised = 0
    for _ in range(3000):
        message = bytearray(rng.choice(seed_messages))
        for _ in range(rng.randrange(1, 4)):
            if not message:
                break
            op = rng.randrange(3)
            at = rng.randrange(len(message))
            if op == 0:
                message[at] = rng.randrange(256)
            elif op == 1:
                del message[at:]
            else:
                message[at:at] = rng.randbytes(rng.randrange(1, 4))
        if not message:
            continue
        expected: list[tuple[str, str | None, bytes, int]] | None
        try:
            parsed = messages_pb2.AggregatedRecord.FromString(bytes(message))
            # The Python runtime does not enforce proto2 `required` in nested messages (Java's
            # does); a record without its required fields is malformed to us.
            if not all(
                r.HasField("partition_key_index") and r.HasField("data") and all(t.HasField("key") for t in r.tags)
                for r in parsed.records
            ):
                raise DecodeError("missing required field")
            expected = [
                (
                    _text(parsed.partition_key_table[r.partition_key_index]),
                    _text(parsed.explicit_hash_key_table[r.explicit_hash_key_index])
                    if r.HasField("explicit_hash_key_index")
                    else None,
                    r.data,
                    i,
                )
                for i, r in enumerate(parsed.records)
            ]
        except (DecodeError, IndexError, TypeError):
            # TypeError: upb's containers refuse an index of 2**63 or more instead of IndexError.
            expected = None
        try:
            got = unpack(_framed(bytes(message)), "s")
        except KplDecodeError as exc:
            got = None
            if expected is not None and exc.reason == "invalid field number 0":
                # upb skips an unknown group without checking the field numbers inside it;
                # field number 0 is invalid anywhere (protobuf-java rejects it too).
                continue
        if expected is None:
            assert got is None
            raised += 1
        else:
            assert got is not None
            assert (
                list(
                    zip(
                        got.partition_keys,
                        got.explicit_hash_keys,
                        got.payloads,
                        got.sub_sequence_numbers,
                        strict=True,
                    )
                )
                == expected
            )
            agreed += 1
    assert agreed > 100 and raised > 100


def test_fail_record_mode_keeps_a_malformed_aggregate_as_one_failed_record_and_goes_on() -> None:
    # The one deaggregation loop serves the Kinesis source and Lambda's Kinesis events; in this mode a
    # producer fault costs one record (dead-lettered or reported with the reason), not the shard.
    seq = "49590338271490256608559692538361571095921575989136588898"
    good = _framed(_PK + _key(3, 2) + b"\x05" + _key(1, 0) + b"\x00" + _key(3, 2) + b"\x01x")
    broken = _framed(_PK + _key(3, 2) + b"\x02" + _key(1, 0) + b"\x80")
    decoded = decode_get_records(_body([("1", "a", good), (seq, "b", broken), ("3", "c", b"plain")]))
    users = deaggregate(decoded, malformed="fail_record")
    assert users.payloads == [b"x", broken, b"plain"]
    assert users.sequence_numbers == ["1", seq, "3"]
    assert users.aggregated.tolist() == [True, False, False]
    [(index, reason)] = users.failures.items()
    assert index == 1 and seq in reason and "malformed KPL aggregated record" in reason
    with pytest.raises(KplDecodeError, match=seq):
        deaggregate(decoded)  # the default mode still raises


def test_expand_counts_user_records_per_kinesis_record_for_per_record_columns() -> None:
    two = _framed(_PK + (_key(3, 2) + b"\x05" + _key(1, 0) + b"\x00" + _key(3, 2) + b"\x01x") * 2)
    users = expand([b"p", two, b"q"], ["1", "2", "3"], ["k1", "k2", "k3"])
    assert users.counts == [1, 2, 1]
    assert users.sub_sequence_numbers == [0, 0, 1, 0]
    assert users.sequence_numbers == ["1", "2", "2", "3"]
    assert users.failures == {}
    assert any_aggregated([b"p", two]) and not any_aggregated([b"p", b"", b"q"])
