"""Enhanced fan-out pieces that need no server: event decoding, the proxy's event encoding, settings."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import structlog
import yaml
from botocore.eventstream import EventStreamBuffer

from streamkit import cli
from streamkit.connectors.kinesis.decode import GetRecordsDecodeError, decode_subscribe_event
from streamkit.connectors.kinesis.efo import FanOutOptions
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.devtools.localstack.efo_proxy import INITIAL_RESPONSE, event_message


def event(records: list[tuple[str, bytes]], continuation: str | None, children: list[dict[str, Any]] | None) -> bytes:
    return orjson.dumps(
        {
            "Records": [
                {
                    "SequenceNumber": seq,
                    "Data": base64.b64encode(data).decode(),
                    "PartitionKey": "k",
                    "ApproximateArrivalTimestamp": 1796398124.417,
                }
                for seq, data in records
            ],
            "ContinuationSequenceNumber": continuation,
            "MillisBehindLatest": 7,
            "ChildShards": children,
        }
    )


def test_an_event_decodes_into_the_getrecords_columns_with_its_continuation() -> None:
    decoded = decode_subscribe_event(event([("49600", b"a"), ("49601", b"bc")], "49601", None))
    assert decoded.payloads == [b"a", b"bc"]
    assert decoded.sequence_numbers == ["49600", "49601"]
    assert decoded.arrival_ms.tolist() == [1796398124417, 1796398124417]
    assert decoded.next_shard_iterator == "49601"
    assert decoded.millis_behind_latest == 7
    assert decoded.child_shards == []


def test_the_last_event_of_a_closed_shard_has_no_continuation_and_lists_the_children() -> None:
    child = {"ShardId": "shardId-000000000002", "ParentShards": ["shardId-000000000000"],
             "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "99"}}  # fmt: skip
    decoded = decode_subscribe_event(event([], None, [child]))
    assert len(decoded) == 0 and decoded.next_shard_iterator is None
    assert [(c.shard_id, c.parent_shards, c.hash_key_range) for c in decoded.child_shards] == [
        ("shardId-000000000002", ["shardId-000000000000"], (0, 99))
    ]


def test_a_malformed_event_is_a_decode_error() -> None:
    with pytest.raises(GetRecordsDecodeError, match="SubscribeToShardEvent"):
        decode_subscribe_event(b'{"Records": 3}')
    with pytest.raises(GetRecordsDecodeError, match="base64"):
        decode_subscribe_event(b'{"Records": [{"SequenceNumber": "1", "Data": "!!"}]}')


def test_the_proxy_encodes_messages_botocore_decodes() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(INITIAL_RESPONSE + event_message({":message-type": "event", ":event-type": "X"}, b"hello"))
    first, second = list(buffer)
    assert first.headers == {":message-type": "event", ":event-type": "initial-response",
                             ":content-type": "application/json"}  # fmt: skip
    assert first.payload == b"{}"
    assert (second.headers[":event-type"], second.payload) == ("X", b"hello")


@pytest.mark.parametrize(
    ("efo", "key"),
    [
        ({"stall_timeout_s": 1}, "source.efo.stall_timeout_s"),
        ({"register_timeout_s": 0}, "source.efo.register_timeout_s"),
        ({"consumer_name": "has space"}, "source.efo.consumer_name"),
        ({"consumer_name": ""}, "source.efo.consumer_name"),
        ({"stall": 60}, "source.efo"),
    ],
)
def test_bad_fan_out_settings_fail_validation_naming_their_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], efo: dict[str, Any], key: str
) -> None:
    source = {"type": "kinesis", "stream": "s", "consumer": "efo", "efo": efo}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"source": source, "sinks": [{"type": "memory"}]}))
    try:
        assert cli.main(["validate", str(path)]) == cli.EXIT_CONFIG
    finally:
        structlog.reset_defaults()  # cli.main configured logging onto capsys's stderr
    err = capsys.readouterr().err
    assert f"configuration error: {path}: {key}" in err, err


def test_the_fan_out_defaults() -> None:
    options = msgspec.convert({"stream": "s", "consumer": "efo"}, KinesisSource.Options)
    assert options.efo == FanOutOptions(consumer_name=None, stall_timeout_s=60.0, register_timeout_s=300.0)
    assert msgspec.convert({"stream": "s"}, KinesisSource.Options).consumer == "polling"
