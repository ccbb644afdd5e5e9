"""The S3 sink's segment rule, without a network: cuts are a function of the records, not of the fetches."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.connectors.s3.dead_letter import dead_letter_key
from streamkit.connectors.s3.formats import make_writer
from streamkit.connectors.s3.keys import compile_partitioner
from streamkit.connectors.s3.segments import Segment, SegmentRules, ShardSegments
from streamkit.connectors.s3.sink import marker_key
from streamkit.errors import SinkError
from streamkit.processor import Failure

P = Partition("kinesis:orders", "shardId-000000000001")
HOUR_MS = 3_600_000
BASE_MS = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS


def events(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    # Event times cross an hour boundary every 700 records, so segments hold several objects.
    return [
        {"id": i, "ts": BASE_MS + (i // 700) * HOUR_MS + i, "kind": "ab"[i % 2], "pad": "x" * (i % 37)}
        for i in range(start, start + n)
    ]


def fetches(
    values: Sequence[dict[str, Any]],
    sizes: Sequence[int] | int,
    *,
    arrival: Sequence[int] | None = None,
    decoded: bool = False,
    tracker: PartitionTracker | None = None,
) -> list[RecordBatch]:
    """The records as the runtime would hand them over: fetch batches, each with its own ticket."""
    tracker = tracker or PartitionTracker(P)
    out: list[RecordBatch] = []
    start = 0
    turn = 0
    while start < len(values):
        size = sizes if isinstance(sizes, int) else sizes[turn % len(sizes)]
        chunk = list(values[start : start + size])
        payloads = [orjson.dumps(v) for v in chunk]
        arrivals = np.asarray(arrival[start : start + size] if arrival is not None else [0] * len(chunk))
        batch = RecordBatch(
            P,
            payloads=payloads,
            values=chunk if decoded else None,
            arrival_ms=arrivals.astype(np.int64),
            event_ms=np.asarray([v["ts"] for v in chunk], dtype=np.int64),
        )
        batch.ticket = tracker.open(list(range(start, start + len(chunk))), batch.total_bytes())
        out.append(batch)
        start += len(chunk)
        turn += 1
    return out


def shard(rules: SegmentRules, template: str = "hour={event_time:%H}/", **writer: Any) -> ShardSegments:
    options = {"compression": "gzip", "avro_schema": None, **writer}
    fmt = options.pop("format", "ndjson")
    return ShardSegments(P, rules, compile_partitioner(template), lambda: make_writer(fmt, **options))


def run(segments: ShardSegments, batches: Sequence[RecordBatch]) -> list[Segment]:
    closed: list[Segment] = []
    for batch in batches:
        closed.extend(segments.add(batch))
    last = segments.cut("flush")
    return [*closed, *([last] if last else [])]


def describe(closed: Sequence[Segment]) -> list[tuple[Any, ...]]:
    """What the objects would be: partition, first and last position, records, exact bytes."""
    return [
        (seg.reason, hive, obj.first, obj.last, obj.records, obj.anchor, obj.writer.finish())
        for seg in closed
        for hive, obj in sorted(seg.objects.items())
    ]


@pytest.mark.parametrize("rules", [SegmentRules(max_records=1200, max_bytes=10**9), SegmentRules(1200, 12_000)])
def test_cuts_and_bytes_do_not_depend_on_fetch_batches(rules: SegmentRules) -> None:
    values = events(5000)
    reference = describe(run(shard(rules), fetches(values, 5000)))
    assert len(reference) > 4
    for sizes in ([1, 2, 3], 7, [333, 41, 999], 500):
        assert describe(run(shard(rules), fetches(values, sizes))) == reference
    records = sum(item[4] for item in reference)
    assert records == 5000
    # Every segment but the last ends on a deterministic trigger.
    assert {item[0] for item in reference[:-2]} <= {"max_records", "max_bytes"}


def test_max_records_cut_lands_exactly_and_slices_restart_at_each_segment() -> None:
    closed = run(shard(SegmentRules(max_records=1200, max_bytes=10**9)), fetches(events(3000), 250))
    assert [s.records for s in closed] == [1200, 1200, 600]
    assert [s.reason for s in closed] == ["max_records", "max_records", "flush"]
    assert [s.forced for s in closed] == [False, False, True]
    firsts = [min(o.first for o in s.objects.values()) for s in closed]
    assert firsts == [0, 1200, 2400]


def test_a_segment_never_spans_two_arrival_windows() -> None:
    values = events(10)
    # Window 1 s: records 0-3 in window 0, record 4 opens window 1, record 5 arrived out of order (it stays),
    # record 6 has no arrival time (never cuts), record 7 opens window 3.
    arrival = [100, 200, 300, 999, 1500, 400, -1, 3100, 3200, 3300]
    rules = SegmentRules(max_records=100, max_bytes=10**9, window_ms=1000)
    for sizes in (10, 1, [3, 4]):
        closed = run(shard(rules, template=""), fetches(values, sizes, arrival=arrival))
        assert [(s.records, s.reason) for s in closed] == [(4, "window"), (3, "window"), (3, "flush")]
        assert [s.objects[""].first for s in closed] == [0, 4, 7]


def test_an_object_is_anchored_at_the_slice_where_it_crosses_the_stream_threshold() -> None:
    # Uncompressed NDJSON: encoded bytes are exact, so the crossing slice is known in advance.
    values = [{"id": i, "ts": BASE_MS, "pad": "y" * 88} for i in range(3000)]
    line = len(orjson.dumps(values[0])) + 1
    threshold = 1100 * line  # crossed by the third slice (records 1000-1499)
    rules = SegmentRules(max_records=10**6, max_bytes=10**9, stream_threshold=threshold)
    for sizes in (3000, [17, 250]):
        (segment,) = run(shard(rules, template="", compression=None), fetches(values, sizes))
        obj = segment.objects[""]
        assert obj.anchor == 1499
        assert (obj.first, obj.last, obj.records) == (0, 2999, 3000)


def test_records_that_do_not_encode_are_rejected_and_not_acknowledged() -> None:
    schema = {
        "type": "record",
        "name": "event",
        "fields": [{"name": "id", "type": "long"}, {"name": "ts", "type": "long"}],
    }
    values = events(20)
    values[0]["id"] = "not a long"
    values[7]["id"] = "also not"
    rules = SegmentRules(max_records=100, max_bytes=10**9, use_values=True)
    tracker = PartitionTracker(P)
    batches = fetches(values, 8, decoded=True, tracker=tracker)
    for batch in batches:
        assert batch.ticket is not None
        batch.ticket.hold(batch.origin)  # this sink's delivery
        batch.ticket.release_processing()
    (segment,) = run(shard(rules, template="", format="avro", compression=None, avro_schema=schema), batches)
    obj = segment.objects[""]
    assert (obj.first, obj.last, obj.records) == (1, 19, 18)  # positions of written records only
    assert len(segment.rejects) == 2
    rejected_ids = sorted(v["id"] for r in segment.rejects for v in r.batch.values)
    assert rejected_ids == ["also not", "not a long"]
    assert all("Avro schema" in r.reason for r in segment.rejects)
    for piece in segment.acks:
        assert piece.ticket is not None
        piece.ticket.ack(piece.origin, piece.unique)
    # Records 0 and 7 are still owed (to the dead-letter queue): the checkpoint stays before record 0.
    assert tracker.checkpoint_position() is None
    for rejected in segment.rejects:
        assert rejected.batch.ticket is not None
        rejected.batch.ticket.ack(rejected.batch.origin)
    assert tracker.checkpoint_position() == 19


def test_field_partitions_need_decoded_records() -> None:
    segments = shard(SegmentRules(max_records=10, max_bytes=10**9), template="kind={field.kind}/")
    with pytest.raises(SinkError, match=r"json\.decode"):
        run(segments, fetches(events(20), 20))


def test_field_and_time_partitions_split_a_segment_into_objects() -> None:
    segments = shard(SegmentRules(max_records=10**6, max_bytes=10**9), template="hour={event_time:%H}/k={field.kind}/")
    (segment,) = run(segments, fetches(events(1400), 300, decoded=True))
    assert len(segment.objects) == 4  # two hours x two kinds
    total = 0
    for hive, obj in segment.objects.items():
        lines = gzip.decompress(obj.writer.finish()).splitlines()
        total += len(lines)
        kind = hive.split("k=")[1].rstrip("/")
        assert {orjson.loads(line)["kind"] for line in lines} == {kind}
    assert total == 1400


def test_marker_and_dead_letter_keys_are_deterministic() -> None:
    assert marker_key("raw/dt=1/a/0-9.ndjson.gz") == "raw/dt=1/a/_0-9.ndjson.gz.written"
    assert marker_key("0-9.parquet") == "_0-9.parquet.written"
    batch = fetches(events(5), 5)[0]
    day = dt.date(2026, 11, 26)
    key = dead_letter_key("dlq/", "clicks", [Failure(batch, "bad", "json.decode")], day=day, extension=".ndjson.gz")
    again = dead_letter_key("dlq/", "clicks", [Failure(batch, "bad", "json.decode")], day=day, extension=".ndjson.gz")
    other = dead_letter_key("dlq/", "clicks", [Failure(batch.slice(1, 5), "bad", "json.decode")], day=day, extension="")
    assert key == again
    assert key.startswith("dlq/dt=2026-11-26/clicks-") and key.endswith("-5.ndjson.gz")
    assert other != key
