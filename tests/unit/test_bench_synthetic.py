"""Recorded GetRecords bodies and the synthetic source that replays them through the production reader."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.parsers
import botocore.session
import orjson

from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.connectors.kinesis.decode import decode_get_records
from streamkit.connectors.kinesis.reader import ShardReader
from streamkit.connectors.kinesis.synthetic import SyntheticKinesisSource, SyntheticShardReader
from streamkit.connectors.local.memory_sink import MemorySink, MemorySinkOptions
from streamkit.devtools.bench.data import FIRST_SEQUENCE, RECORDS_PER_BODY, recorded_shard
from streamkit.runtime import Pipeline, Route, Runtime


def test_bodies_are_getrecords_responses_with_realistic_records() -> None:
    shard = recorded_shard(RECORDS_PER_BODY + 250)
    assert [len(decode_get_records(b)) for b in shard.bodies] == [RECORDS_PER_BODY, 250]
    first, last = (decode_get_records(b) for b in shard.bodies)
    sequences = [int(s) for s in first.sequence_numbers + last.sequence_numbers]
    assert all(len(s) == 56 for s in first.sequence_numbers + last.sequence_numbers)
    assert sequences == sorted(set(sequences)) and sequences[0] == FIRST_SEQUENCE
    assert first.millis_behind_latest == 250 and last.millis_behind_latest == 0
    assert first.next_shard_iterator and last.next_shard_iterator  # an open shard
    sizes = [len(p) for p in first.payloads]
    assert 850 < sum(sizes) / len(sizes) < 1050  # ~1 KB JSON events
    assert shard.payload_bytes == sum(sizes) + sum(len(p) for p in last.payloads)
    statuses = [orjson.loads(p)["status"] for p in first.payloads + last.payloads]
    assert shard.kept == statuses.count("ok") and 0.05 < statuses.count("err") / len(statuses) < 0.15
    assert first.arrival_ms[0] > 1_700_000_000_000


def test_botocore_parses_the_bodies_like_a_service_response() -> None:
    """The boto3 baseline feeds these bodies to botocore's parser: they must be valid for it."""
    shard = recorded_shard(20)
    shape = botocore.session.get_session().get_service_model("kinesis").operation_model("GetRecords").output_shape
    parsed: dict[str, Any] = botocore.parsers.create_parser("json").parse(
        {"body": shard.bodies[0], "headers": {}, "status_code": 200}, shape
    )
    assert [r["Data"] for r in parsed["Records"]] == decode_get_records(shard.bodies[0]).payloads
    assert parsed["Records"][0]["ApproximateArrivalTimestamp"].year == 2026


def test_the_synthetic_reader_only_replaces_where_responses_come_from() -> None:
    assert issubclass(SyntheticShardReader, ShardReader)
    methods = {name for name, value in vars(SyntheticShardReader).items() if callable(value) and name != "__init__"}
    assert methods == {"_responses"}


async def test_replayed_shards_arrive_complete_in_order_and_checkpoint_at_the_last_sequence_number() -> None:
    shard = recorded_shard(2 * RECORDS_PER_BODY + 7, distinct=500)
    source = SyntheticKinesisSource({"shardId-000000000000": shard.bodies, "shardId-000000000001": shard.bodies[:1]})
    sink = MemorySink(MemorySinkOptions(max_records=5000))
    store = MemoryCheckpointStore()
    pipeline = Pipeline("t", source, Chain([]), [Route("out", sink)], None, store, checkpoint_interval_s=0.05)
    source.metrics = pipeline.metrics
    sink.bind("out", None, pipeline.metrics)
    summary = await asyncio.wait_for(Runtime(pipeline).run(asyncio.Event()), 30)
    assert summary.records_in == 2 * RECORDS_PER_BODY + 7 + RECORDS_PER_BODY
    written = sink.records[next(p for p in sink.records if p.key.endswith("0"))]
    expected = [p for b in shard.bodies for p in decode_get_records(b).payloads]
    assert [payload for _, payload in written] == expected
    last = decode_get_records(shard.bodies[-1]).sequence_numbers[-1]
    assert {str(k): v for k, v in summary.checkpoints.items()}["kinesis:synthetic/shardId-000000000000"] == f"{last}:0"
    # MillisBehindLatest as the last replayed body says: the second shard stopped after the first body.
    behind = {p.key: stats.millis_behind for p, stats in pipeline.metrics.partitions.items()}
    assert behind == {"shardId-000000000000": 0, "shardId-000000000001": RECORDS_PER_BODY + 7}
