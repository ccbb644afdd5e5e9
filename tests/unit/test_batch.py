from __future__ import annotations

import numpy as np
import orjson
import pytest

from streamkit.batch import BatchError, RecordBatch, chunk_bounds, sizes_of
from tests.helpers import P, json_batch


def test_sizes_and_total_bytes_are_vectorized_over_payloads() -> None:
    batch = RecordBatch(P, payloads=[b"a", b"bbb", b""])
    assert sizes_of(batch.payloads).tolist() == [1, 3, 0]
    assert batch.total_bytes() == 4


@pytest.mark.parametrize(
    ("sizes", "max_records", "max_bytes", "expected"),
    [
        ([1] * 10, 3, 100, [(0, 3), (3, 6), (6, 9), (9, 10)]),
        ([40, 40, 40, 40], 500, 100, [(0, 2), (2, 4)]),
        ([150, 10, 10], 500, 100, [(0, 1), (1, 3)]),  # an oversize record gets a chunk of its own
        ([30, 30, 30], 500, 90, [(0, 3)]),  # exactly at the limit fits
        ([], 500, 100, []),
    ],
)
def test_chunk_bounds(sizes: list[int], max_records: int, max_bytes: int, expected: list[tuple[int, int]]) -> None:
    assert chunk_bounds(np.array(sizes, dtype=np.int64), max_records, max_bytes) == expected


def test_chunk_bounds_counts_per_record_overhead() -> None:
    # 4 records of 24 bytes + 1 newline each: 25 * 4 = 100 fits, a 5th does not.
    assert chunk_bounds(np.full(5, 24, dtype=np.int64), 500, 100, overhead=1) == [(0, 4), (4, 5)]


def test_split_respects_both_limits_and_keeps_order() -> None:
    batch = json_batch([{"i": i, "pad": "x" * (i * 10)} for i in range(50)])
    parts = batch.split(max_records=7, max_bytes=1500)
    assert [orjson.loads(p)["i"] for part in parts for p in part.payloads] == list(range(50))
    for part in parts:
        assert len(part) <= 7
        assert part.total_bytes() <= 1500 or len(part) == 1


def test_select_filters_every_column_with_one_mask() -> None:
    batch = RecordBatch(
        P,
        payloads=[b"0", b"1", b"2", b"3"],
        keys=["a", "b", "c", "d"],
        arrival_ms=np.array([10, 11, 12, 13], dtype=np.int64),
        headers=[[("h", b"0")], None, [("h", b"2")], None],
    )
    sub = batch.select(np.array([True, False, True, False]))
    assert sub.payloads == [b"0", b"2"]
    assert sub.keys == ["a", "c"]
    assert sub.arrival_ms.tolist() == [10, 12]
    assert sub.headers == [[("h", b"0")], [("h", b"2")]]
    assert sub.origin.tolist() == [0, 2]


def test_values_require_a_decoder_and_name_the_partition() -> None:
    batch = RecordBatch(P, payloads=[b"{}"])
    with pytest.raises(BatchError, match=r"test:stream/0.*json.decode"):
        _ = batch.values


def test_payloads_are_reused_while_values_are_unchanged_and_encoded_once_replaced() -> None:
    batch = json_batch([{"a": 1}, {"a": 2}])
    decoded = batch.with_values([orjson.loads(p) for p in batch.payloads], keep_payloads=True)
    assert decoded.payloads is batch.payloads  # no re-encoding on the route-bytes path
    changed = decoded.with_values([{"b": 1}, {"b": 2}])
    assert not changed.has_payloads
    assert changed.payloads == [b'{"b":1}', b'{"b":2}']


def test_expand_tracks_the_origin_of_multiplied_records() -> None:
    batch = json_batch([{"n": 2}, {"n": 0}, {"n": 1}])
    out = RecordBatch.expand(batch, ["a", "b", "c"], np.array([0, 0, 2]))
    assert out.origin.tolist() == [0, 0, 2]
    assert out.origin_unique is False


def test_values_on_demand_are_decoded_from_the_payloads_once_and_follow_selections() -> None:
    rows = [{"a": 1}, {"a": 2, "b": [1.5]}, {"a": 3}]
    batch = json_batch(rows).with_values_on_demand()
    assert batch.decoded and batch.has_payloads
    picked = batch.select([True, False, True])
    assert picked.decoded and picked.values == [rows[0], rows[2]]
    assert batch.slice(1, 2).values == [rows[1]] and batch.take([2]).values == [rows[2]]
    values = batch.values
    assert values == rows and batch.values is values  # decoded once
    # New bytes with values kept: the values decoded from the old bytes stay, not the new bytes' decoding.
    sorted_bytes = [orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in rows]
    kept = json_batch([{"b": 0, "a": 0}] * 3).with_values_on_demand().with_payloads(sorted_bytes, keep_values=True)
    assert list(kept.values[0]) == ["b", "a"]
    assert not json_batch(rows).with_values_on_demand().with_payloads(sorted_bytes).decoded
    assert not json_batch(rows).with_values_on_demand().with_values(rows).with_payloads(sorted_bytes).decoded
