"""Lambda events (Kinesis, KPL-aggregated Kinesis, MSK, self-managed Kafka) decoded into record batches.

Events are shaped exactly as Lambda delivers them (AWS_FACTS.md, Lambda event source mappings); KPL
aggregates are produced by the reference aggregator, aws-kinesis-agg.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from typing import Any

import aws_kinesis_agg.aggregator as agg
import numpy as np
import pytest

from streamkit.aws_lambda.events import EventFormatError, decode_event, decoder_for
from streamkit.batch import Partition
from streamkit.connectors.kafka.lambda_event import decode_kafka_event
from streamkit.connectors.kinesis.kpl import MAGIC
from streamkit.connectors.kinesis.lambda_event import decode_kinesis_event
from streamkit.plugins import available

STREAM_ARN = "arn:aws:kinesis:us-east-2:123456789012:stream/clicks"
SEQ = "4959033827149025660855969253836157109592157598913658"  # + 4 digits: 56 like real sequence numbers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kinesis_record(
    i: int, data: bytes, *, key: str | None = None, shard: str = "shardId-000000000006", arn: str = STREAM_ARN
) -> dict[str, Any]:
    sequence = f"{SEQ}{i:04d}"
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key if key is not None else f"k{i}",
            "sequenceNumber": sequence,
            "data": b64(data),
            "approximateArrivalTimestamp": 1545084650.987 + i,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": arn,
    }


def aggregate(users: list[tuple[str, bytes]]) -> bytes:
    """One KPL aggregated record holding ``users`` (partition key, data), from aws-kinesis-agg."""
    aggregator = agg.RecordAggregator()
    for key, data in users:
        assert aggregator.add_user_record(key, data) is None
    record = aggregator.clear_and_get()
    _, _, blob = record.get_contents()
    return bytes(blob)


def kafka_record(topic: str, partition: int, offset: int, value: bytes | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": 1545084650987 + offset,
        "timestampType": "CREATE_TIME",
        "key": b64(b"key-%d" % offset),
        "value": None if value is None else b64(value),
        "headers": [],
    }
    record.update(extra)
    return record


def msk_event(records: dict[str, list[dict[str, Any]]], source: str = "aws:kafka") -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventSource": source,
        "bootstrapServers": "b-1.demo:9092,b-2.demo:9092",
        "records": records,
    }
    if source == "aws:kafka":
        event["eventSourceArn"] = "arn:aws:kafka:us-east-2:123456789012:cluster/demo/751d2973-a626-431c"
    return event


# ---------------------------------------------------------------------------------------------- Kinesis


def test_kinesis_event_becomes_one_batch_with_keys_positions_and_arrival_times() -> None:
    event = {"Records": [kinesis_record(i, b'{"n": %d}' % i) for i in range(3)]}
    [part] = decode_event(event)
    assert part.kind == "kinesis"
    assert part.partition == Partition("kinesis:clicks", "shardId-000000000006")
    assert part.batch.payloads == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert part.batch.keys == ["k0", "k1", "k2"]
    assert part.batch.arrival_ms.tolist() == [1545084650987, 1545084651987, 1545084652987]
    assert [str(p) for p in part.positions] == [f"{SEQ}{i:04d}:0" for i in range(3)]
    assert part.identifier(1) == f"{SEQ}0001"
    assert part.decode_failures == []


def test_kpl_aggregates_expand_into_user_records_sharing_the_sequence_number() -> None:
    first = aggregate([("a", b"u0"), ("b", b"u1"), ("a", b"u2")])
    second = aggregate([("c", b"v0"), ("d", b"v1")])
    event = {"Records": [kinesis_record(0, first), kinesis_record(1, b"plain"), kinesis_record(2, second)]}
    [part] = decode_event(event)
    assert part.batch.payloads == [b"u0", b"u1", b"u2", b"plain", b"v0", b"v1"]
    assert part.batch.keys == ["a", "b", "a", "k1", "c", "d"]
    assert [(p.sequence, p.sub_sequence) for p in part.positions] == [
        (f"{SEQ}0000", 0), (f"{SEQ}0000", 1), (f"{SEQ}0000", 2), (f"{SEQ}0001", 0),
        (f"{SEQ}0002", 0), (f"{SEQ}0002", 1),
    ]  # fmt: skip
    # Lambda retries whole Kinesis records: a user record is identified by its aggregate's sequence number.
    assert [part.identifier(i) for i in (2, 3, 5)] == [f"{SEQ}0000", f"{SEQ}0001", f"{SEQ}0002"]
    assert part.batch.arrival_ms.tolist()[:4] == [1545084650987] * 3 + [1545084651987]


def test_deaggregation_can_be_turned_off() -> None:
    blob = aggregate([("a", b"u0"), ("b", b"u1")])
    [part] = decode_event({"Records": [kinesis_record(0, blob)]}, deaggregate=False)
    assert part.batch.payloads == [blob]


def test_a_malformed_kpl_aggregate_is_a_failed_record_not_a_crash() -> None:
    good = aggregate([("a", b"u0"), ("b", b"u1")])
    body = good[len(MAGIC) : -16][:-1]  # truncated protobuf ...
    broken = MAGIC + body + hashlib.md5(body).digest()  # ... with a matching digest: a real KPL fault
    event = {"Records": [kinesis_record(0, good), kinesis_record(1, broken), kinesis_record(2, b"after")]}
    [part] = decode_event(event)
    assert part.batch.payloads == [b"u0", b"u1", broken, b"after"]
    [(index, reason)] = part.decode_failures
    assert index == 2 and "malformed KPL aggregated record" in reason and f"{SEQ}0001" in reason
    assert part.identifier(index) == f"{SEQ}0001"


def test_invalid_base64_fails_that_record_only() -> None:
    records = [kinesis_record(i, b"x%d" % i) for i in range(3)]
    records[1]["kinesis"]["data"] = "%%% not base64 %%%"
    [part] = decode_event({"Records": records})
    assert part.batch.payloads == [b"x0", b"%%% not base64 %%%", b"x2"]
    assert [i for i, _ in part.decode_failures] == [1]
    assert "base64" in part.decode_failures[0][1]


def test_records_of_several_shards_and_streams_are_grouped_in_event_order() -> None:
    other = "arn:aws:kinesis:us-east-2:123456789012:stream/orders"
    records = [
        kinesis_record(0, b"a0", shard="shardId-000000000001"),
        kinesis_record(1, b"b0", shard="shardId-000000000002"),
        kinesis_record(2, b"a1", shard="shardId-000000000001"),
        kinesis_record(3, b"c0", shard="shardId-000000000001", arn=other),
    ]
    parts = decode_event({"Records": records})
    assert [(p.partition, p.batch.payloads) for p in parts] == [
        (Partition("kinesis:clicks", "shardId-000000000001"), [b"a0", b"a1"]),
        (Partition("kinesis:clicks", "shardId-000000000002"), [b"b0"]),
        (Partition("kinesis:orders", "shardId-000000000001"), [b"c0"]),
    ]


# ------------------------------------------------------------------------------------------------ Kafka


@pytest.mark.parametrize("source", ["aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka"])
def test_kafka_events_become_one_batch_per_topic_partition(source: str) -> None:
    event = msk_event(
        {
            "orders-0": [kafka_record("orders", 0, 15, b"a"), kafka_record("orders", 0, 16, b"b")],
            "orders-1": [kafka_record("orders", 1, 7, b"c")],
        },
        source,
    )
    first, second = decode_event(event)
    assert (first.kind, first.partition, first.event_key) == ("kafka", Partition("kafka:orders", "0"), "orders-0")
    assert first.batch.payloads == [b"a", b"b"]
    assert first.batch.keys == [b"key-15", b"key-16"]
    assert first.batch.arrival_ms.tolist() == [1545084651002, 1545084651003]
    assert list(first.positions) == [15, 16]
    assert first.identifier(1) == {"partition": "orders-0", "offset": 16}
    assert second.partition == Partition("kafka:orders", "1")
    assert second.identifier(0) == {"partition": "orders-1", "offset": 7}


def test_kafka_headers_null_keys_and_tombstones() -> None:
    records = [
        # Lambda sends header values as arrays of byte values; Java's signed bytes may be negative.
        kafka_record("t", 0, 1, b"v", headers=[{"trace": list(b"abc")}, {"bin": [-1, 0, 127]}]),
        kafka_record("t", 0, 2, None, key=None),
        kafka_record("t", 0, 3, b"w"),
    ]
    del records[2]["headers"]
    [part] = decode_event(msk_event({"t-0": records}))
    assert part.batch.headers == [[("trace", b"abc"), ("bin", b"\xff\x00\x7f")], None, None]
    assert part.batch.keys == [b"key-1", None, b"key-3"]
    assert part.batch.payloads == [b"v", b"", b"w"]
    assert part.decode_failures == []


def test_kafka_value_that_is_not_base64_is_a_failed_record() -> None:
    records = [kafka_record("t", 0, 1, b"ok"), kafka_record("t", 0, 2, b"x")]
    records[1]["value"] = "not*base64"
    [part] = decode_event(msk_event({"t-0": records}))
    assert [i for i, _ in part.decode_failures] == [1]
    assert part.batch.payloads[0] == b"ok"


def test_kafka_headers_absent_everywhere_cost_nothing() -> None:
    [part] = decode_event(msk_event({"t-0": [kafka_record("t", 0, 1, b"v")]}))
    assert part.batch.headers is None
    assert isinstance(part.batch.arrival_ms, np.ndarray)


# ------------------------------------------------------------------------------------------- not ours


def test_empty_events_have_no_partitions() -> None:
    assert decode_event({"Records": []}) == []
    assert decode_event(msk_event({})) == []


@pytest.mark.parametrize(
    "event",
    [
        {"Records": [{"eventSource": "aws:sqs", "messageId": "1", "body": "x"}]},
        {"Records": [{"eventSource": "aws:dynamodb", "dynamodb": {}}]},
        {"source": "aws.events", "detail": {}},
        {"Records": [{"eventSource": "aws:kinesis", "kinesis": {}}]},
    ],
)
def test_other_events_are_refused_with_a_clear_error(event: dict[str, Any]) -> None:
    with pytest.raises(EventFormatError, match="event"):
        decode_event(event)


# ------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize(
    ("source", "decoder"),
    [
        ("aws:kinesis", decode_kinesis_event),
        ("aws:kafka", decode_kafka_event),
        ("SelfManagedKafka", decode_kafka_event),
        ("aws:SelfManagedKafka", decode_kafka_event),
    ],
)
def test_each_event_source_is_decoded_by_its_connector_through_an_entry_point(source: str, decoder: Any) -> None:
    assert decoder_for(source) is decoder
    assert source in {info.name for info in available("lambda_event")}


def test_unknown_event_sources_have_no_decoder_and_the_error_lists_the_known_ones() -> None:
    assert decoder_for("aws:sqs") is None
    with pytest.raises(EventFormatError, match=r"aws:kinesis.*aws:kafka|aws:kafka.*aws:kinesis"):
        decode_event({"Records": [{"eventSource": "aws:sqs", "body": "x"}]})


def test_a_kafka_source_with_kinesis_shaped_records_is_refused() -> None:
    with pytest.raises(EventFormatError, match="records"):
        decode_event({"Records": [{"eventSource": "aws:kafka", "value": "eA=="}]})


def test_the_lambda_core_imports_no_connector() -> None:
    # The decoders are found by entry point: streamkit.aws_lambda must work without naming a connector.
    code = (
        "import sys, streamkit.aws_lambda.events, streamkit.aws_lambda.app; "
        "print(sorted(m for m in sys.modules if m.startswith('streamkit.connectors')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
