"""S3 object writers: round trips, multipart parts, encoded-size estimates, per-record failures."""

from __future__ import annotations

import gzip
import io
import json
import random
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import fastavro
import fastavro.read
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from streamkit.connectors.s3.formats import (
    InvalidFormatConfig,
    ObjectWriter,
    ObjectWriterError,
    ParquetWriter,
    RecordEncodeError,
    make_writer,
)

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["ok", "err"]}},
        {
            "name": "user",
            "type": {
                "type": "record",
                "name": "User",
                "fields": [{"name": "name", "type": "string"}, {"name": "age", "type": "int"}],
            },
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
UUID = "3f1c2a4e-9b7d-4e21-8c55-0d6a7b8e9f10"
WORDS = ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "lorem", "ipsum"]


def records(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Deterministic ~400-byte records matching SCHEMA."""
    rnd = random.Random(seed)
    return [
        {
            "id": i,
            "ts": 1_764_165_600_000 + i * 250,
            "status": "err" if rnd.random() < 0.1 else "ok",
            "user": {"name": f"user{rnd.randrange(500)}", "age": rnd.randrange(18, 90)},
            "tags": [rnd.choice(WORDS) for _ in range(3)],
            "note": " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(40, 60))),
        }
        for i in range(n)
    ]


def payloads(values: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(v) for v in values]


def write_all(writer: ObjectWriter, values: list[dict[str, Any]], *, as_json: bool, batch: int = 100) -> None:
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        if as_json:
            writer.write_payloads(payloads(chunk))
        else:
            writer.write_values(chunk)


def stream_parts(writer: ObjectWriter, values: list[dict[str, Any]], min_part: int) -> list[bytes]:
    """Upload-style: after every batch take what is ready; finish() gives the last part."""
    parts: list[bytes] = []
    for start in range(0, len(values), 100):
        writer.write_payloads(payloads(values[start : start + 100]))
        part = writer.take_ready(min_part)
        if part is not None:
            parts.append(part)
    parts.append(writer.finish())
    return parts


def read_ndjson(data: bytes, encoding: str | None) -> list[Any]:
    if encoding == "gzip":
        data = gzip.decompress(data)
    elif encoding == "zstd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


def read_avro(data: bytes) -> list[Any]:
    return list(fastavro.reader(io.BytesIO(data)))


def read_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def avro_ts(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What fastavro reads back: timestamp-millis as aware datetimes."""
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return [{**v, "ts": epoch + timedelta(milliseconds=v["ts"])} for v in values]


@pytest.fixture
def zstd_avro_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro reads zstandard blocks only with backports.zstd; this test reader uses `zstandard`."""

    def read_long(fo: io.BytesIO) -> int:
        shift = result = 0
        while True:
            byte = fo.read(1)[0]
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)

    def read_block(fo: io.BytesIO) -> io.BytesIO:
        return io.BytesIO(zstandard.ZstdDecompressor().decompress(fo.read(read_long(fo))))

    monkeypatch.setitem(fastavro.read.BLOCK_READERS, "zstandard", read_block)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
@pytest.mark.parametrize("as_json", [True, False])
def test_ndjson_round_trip(compression: str | None, as_json: bool) -> None:
    values = records(700)
    writer = make_writer("ndjson", compression=compression, avro_schema=None)
    write_all(writer, values, as_json=as_json)
    assert writer.records == 700
    assert read_ndjson(writer.finish(), compression) == values


def test_ndjson_metadata() -> None:
    gz = make_writer("ndjson", compression="gzip", avro_schema=None)
    zst = make_writer("ndjson", compression="zstd", avro_schema=None)
    plain = make_writer("ndjson", compression=None, avro_schema=None)
    assert (gz.content_type, gz.content_encoding, gz.extension) == ("application/x-ndjson", "gzip", ".ndjson.gz")
    assert (zst.content_encoding, zst.extension) == ("zstd", ".ndjson.zst")
    assert (plain.content_encoding, plain.extension) == (None, ".ndjson")


def test_ndjson_gzip_is_one_standard_gzip_member() -> None:
    writer = make_writer("ndjson", compression="gzip", avro_schema=None)
    write_all(writer, records(3000), as_json=True)
    data = writer.finish()
    assert data[:3] == b"\x1f\x8b\x08"  # gzip magic + deflate
    member = zlib.decompressobj(16 + zlib.MAX_WBITS)  # reads exactly one gzip member
    member.decompress(data)
    assert member.eof and member.unused_data == b""


def test_ndjson_newline_inside_a_record_stays_on_its_line() -> None:
    writer = make_writer("ndjson", compression=None, avro_schema=None)
    writer.write_payloads([b'{"a": 1}', b'{\n  "b": 2\n}', b'{"c": 3}'])
    assert read_ndjson(writer.finish(), None) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_ndjson_unencodable_value_is_rejected_by_index() -> None:
    writer = make_writer("ndjson", compression="gzip", avro_schema=None)
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values([{"a": 1}, {"b": {1, 2}}, {"c": 3}])
    assert [f.index for f in caught.value.failures] == [1]
    assert caught.value.written == 2
    assert writer.records == 2
    assert read_ndjson(writer.finish(), "gzip") == [{"a": 1}, {"c": 3}]


@pytest.mark.parametrize("compression", [None, "deflate", "zstd"])
@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.usefixtures("zstd_avro_reader")
def test_avro_round_trip(compression: str | None, as_json: bool) -> None:
    values = records(1500)
    writer = make_writer("avro", compression=compression, avro_schema=SCHEMA)
    write_all(writer, values, as_json=as_json)
    data = writer.finish()
    header = fastavro.reader(io.BytesIO(data)).metadata
    assert header["avro.codec"] == {None: "null", "deflate": "deflate", "zstd": "zstandard"}[compression]
    assert read_avro(data) == avro_ts(values)


def test_avro_bad_records_are_rejected_by_index_and_leave_no_bytes() -> None:
    good = records(3)
    batch = [good[0], {**good[1], "id": "not a long"}, good[1], {**good[2], "user": {"name": "x"}}, good[2]]
    writer = make_writer("avro", compression="deflate", avro_schema=SCHEMA)
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values(batch)
    failures = caught.value.failures
    assert [f.index for f in failures] == [1, 3]
    assert "Event.id" in failures[0].reason and "long" in failures[0].reason
    assert "User.age" in failures[1].reason
    assert caught.value.written == 3 and writer.records == 3
    assert read_avro(writer.finish()) == avro_ts(good)


def test_avro_payload_failures_map_to_payload_indexes() -> None:
    good = records(2)
    writer = make_writer("avro", compression=None, avro_schema=SCHEMA)
    batch = [b"{not json", orjson.dumps(good[0]), orjson.dumps({"id": 1}), orjson.dumps(good[1])]
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_payloads(batch)
    assert [(f.index, f.reason.split(":")[0]) for f in caught.value.failures] == [
        (0, "invalid JSON"),
        (2, "does not match the Avro schema"),
    ]
    assert read_avro(writer.finish()) == avro_ts(good)


NUMBERS: dict[str, Any] = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "maybe", "type": ["null", "float"], "default": None},
        {"name": "series", "type": {"type": "array", "items": "float"}, "default": []},
        {"name": "gauges", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "either", "type": ["double", "long"], "default": 0},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}, "default": UUID},
    ],
}


_INEXACT: list[tuple[str, Any, str]] = [
    ("f", 1e300, "'f' (float)"),
    ("f", -1e300, "'f' (float)"),
    ("f", 3.5e38, "'f' (float)"),
    ("f", 2**200, "'f' (float)"),  # orjson reads an integer beyond 2^64 as a float: still too big
    ("f", 16_777_217, "'f' (float)"),  # an integer a 32-bit float cannot hold: it would be 16777216.0
    ("d", 2**53 + 1, "'d' (double)"),
    ("maybe", 1e300, "'maybe' (float)"),
    ("series", [1.0, 1e300], "'series[]' (float)"),
    ("gauges", {"a": 2**60 + 1}, "'gauges{}' (double)"),
    ("either", 2**53 + 1, "'either' (double)"),  # fastavro writes the first branch that validates
    ("id", "not-a-uuid", "'id' (uuid)"),
]


@pytest.mark.parametrize(
    ("field", "value", "named", "as_json"),
    [(*case, as_json) for case in _INEXACT for as_json in (True, False)]
    + [("d", 2**1100, "'d' (double)", False)],  # not a JSON number anyone can read (orjson: infinity)
)
def test_avro_values_the_schema_cannot_hold_exactly_are_rejected_naming_the_field(
    field: str, value: Any, named: str, as_json: bool
) -> None:
    good = {"f": 1.5, "d": 0.1, "maybe": None, "series": [2.5], "gauges": {"x": 1.0}, "either": 7, "id": UUID}
    writer = make_writer("avro", compression="deflate", avro_schema=NUMBERS)
    batch = [good, {**good, field: value}, good]
    with pytest.raises(RecordEncodeError) as caught:
        if as_json:
            writer.write_payloads([json.dumps(v).encode() for v in batch])
        else:
            writer.write_values(batch)
    assert [f.index for f in caught.value.failures] == [1]
    reason = caught.value.failures[0].reason
    assert reason.startswith("does not match the Avro schema: field " + named), reason
    assert caught.value.written == 2 and writer.records == 2
    expected = {**good, "either": 7.0, "id": uuid.UUID(UUID)}  # as fastavro reads them
    assert read_avro(writer.finish()) == [expected, expected]


def test_avro_values_that_fit_are_written_as_they_are() -> None:
    """Rounding to 32-bit precision is what a float field is; a non-finite value stays what it is."""
    writer = make_writer("avro", compression=None, avro_schema=NUMBERS)
    fits = [
        {"f": 3.4028234e38, "d": 2.0**1000, "either": 2**53, "gauges": {"a": 2**53}},
        {"f": 16_777_216, "d": -(2**63), "maybe": -3.4e38, "series": [1e-3, float("inf")]},
        {"f": float("-inf"), "d": 1e308, "id": UUID},
    ]
    writer.write_values(fits)
    back = read_avro(writer.finish())
    assert [r["f"] for r in back] == [pytest.approx(3.4028234e38, rel=1e-7), 16_777_216.0, float("-inf")]
    assert [r["d"] for r in back] == [2.0**1000, -(2.0**63), 1e308]
    assert back[0]["either"] == 2.0**53 and back[0]["gauges"] == {"a": 2.0**53}
    assert back[1]["maybe"] == pytest.approx(-3.4e38, rel=1e-7) and back[1]["series"][1] == float("inf")


def test_avro_a_record_the_encoder_fails_half_way_leaves_no_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a value pass both checks and still fail in fastavro's encoder (here: the exactness check is
    switched off), the fields it wrote before failing must not stay in the block."""
    schema = {
        "type": "record",
        "name": "r",
        "fields": [{"name": "s", "type": "string"}, {"name": "d", "type": "double"}],
    }
    writer = make_writer("avro", compression="deflate", avro_schema=schema)
    monkeypatch.setattr(writer, "_inexact", None)
    batch = [{"s": "first", "d": 1.0}, {"s": "partial", "d": 2**1100}, {"s": "last", "d": 2.0}]
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values(batch)
    assert [(f.index, f.reason.split(":")[0]) for f in caught.value.failures] == [
        (1, "cannot be encoded with the Avro schema")
    ]
    assert read_avro(writer.finish()) == [batch[0], batch[2]]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (None, "needs avro_schema"),
        ({"type": "record", "name": "r", "fields": [{"name": "a", "type": "lng"}]}, "not a valid Avro schema"),
        ({"type": "string"}, "must be an Avro record schema"),
    ],
)
def test_avro_schema_is_validated_at_construction(schema: Any, message: str) -> None:
    with pytest.raises(InvalidFormatConfig, match=message):
        make_writer("avro", compression=None, avro_schema=schema)


@pytest.mark.parametrize("as_json", [True, False])
def test_parquet_round_trip_with_inferred_schema(as_json: bool) -> None:
    values = records(2000)
    writer = ParquetWriter(schema=None, compression="zstd", level=None, row_group_bytes=128 * 1024)
    write_all(writer, values, as_json=as_json)
    data = writer.finish()
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups > 1
    assert read_parquet(data).to_pylist() == values


@pytest.mark.parametrize("as_json", [True, False])
def test_parquet_round_trip_with_schema_from_avro(as_json: bool) -> None:
    values = records(800)
    writer = make_writer("parquet", compression=None, avro_schema=SCHEMA)
    assert (writer.content_type, writer.extension) == ("application/vnd.apache.parquet", ".parquet")
    write_all(writer, values, as_json=as_json)
    table = read_parquet(writer.finish())
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("user").type == pa.struct([("name", pa.string()), ("age", pa.int32())])
    assert [{**r, "ts": int(r["ts"].timestamp() * 1000)} for r in table.to_pylist()] == values


def test_parquet_inference_widens_until_the_first_row_group() -> None:
    writer = make_writer("parquet", compression=None, avro_schema=None)
    writer.write_values([{"a": 1, "b": None}])
    writer.write_values([{"a": 2.5, "b": "x", "c": {"d": 1}}])
    table = read_parquet(writer.finish())
    assert table.schema.field("a").type == pa.float64()
    assert table.schema.field("b").type == pa.string()
    assert table.to_pylist() == [{"a": 1.0, "b": None, "c": None}, {"a": 2.5, "b": "x", "c": {"d": 1}}]


def test_parquet_bad_records_are_rejected_by_index() -> None:
    writer = make_writer("parquet", compression=None, avro_schema=SCHEMA)
    good = records(2)
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values([good[0], {**good[0], "user": {"name": "x", "age": "old"}}, good[1]])
    assert [f.index for f in caught.value.failures] == [1]
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_payloads([orjson.dumps(good[0]), b'{"id": "x"}', b"[1,"])
    assert [f.index for f in caught.value.failures] == [1, 2]
    assert writer.records == 3
    assert [r["id"] for r in read_parquet(writer.finish()).to_pylist()] == [0, 1, 0]


def test_empty_objects_are_valid() -> None:
    assert gzip.decompress(make_writer("ndjson", compression="gzip", avro_schema=None).finish()) == b""
    assert read_avro(make_writer("avro", compression="deflate", avro_schema=SCHEMA).finish()) == []
    assert read_parquet(make_writer("parquet", compression=None, avro_schema=None).finish()).num_rows == 0
    assert read_parquet(make_writer("parquet", compression=None, avro_schema=SCHEMA).finish()).num_columns == 6


def test_a_finished_writer_refuses_more() -> None:
    writer = make_writer("ndjson", compression="zstd", avro_schema=None)
    writer.finish()
    with pytest.raises(ObjectWriterError, match="finished"):
        writer.write_payloads([b"{}"])
    with pytest.raises(ObjectWriterError, match="finished"):
        writer.finish()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "csv", "compression": None}, "format='csv' is not supported"),
        ({"format": "ndjson", "compression": "brotli"}, "compression='brotli'"),
        ({"format": "ndjson", "compression": "gzip", "level": 6}, "ISA-L gzip levels are 0-3"),
        ({"format": "ndjson", "compression": "zstd", "level": 99}, "not a zstd level"),
        ({"format": "avro", "compression": "gzip", "avro_schema": SCHEMA}, "compression='gzip'"),
        ({"format": "parquet", "compression": "gzip"}, "set parquet_compression"),
        ({"format": "parquet", "compression": None, "parquet_compression": "lzo"}, "parquet_compression='lzo'"),
        ({"format": "parquet", "compression": None, "parquet_compression": "snappy", "level": 3}, "no levels"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("avro_schema", None)
    with pytest.raises(InvalidFormatConfig, match=message):
        make_writer(**kwargs)


# ------------------------------------------------------------------------------------------- multipart

MIN_PART = 64 * 1024  # the real minimum is 5 MiB; the rule is the same at a smaller scale

READERS: dict[str, Callable[[bytes], int]] = {
    "ndjson-gzip": lambda data: len(read_ndjson(data, "gzip")),
    "ndjson-zstd": lambda data: len(read_ndjson(data, "zstd")),
    "avro-deflate": lambda data: len(read_avro(data)),
    "parquet": lambda data: read_parquet(data).num_rows,
}


def new_writer(kind: str) -> ObjectWriter:
    if kind == "parquet":
        return ParquetWriter(schema=None, compression="zstd", level=None, row_group_bytes=256 * 1024)
    fmt, compression = kind.split("-")
    return make_writer(fmt, compression=compression, avro_schema=SCHEMA)


@pytest.mark.parametrize("kind", list(READERS))
def test_parts_are_big_enough_and_concatenate_into_a_valid_object(kind: str) -> None:
    values = records(8000)
    parts = stream_parts(new_writer(kind), values, MIN_PART)
    assert len(parts) > 2, "the object should have streamed out in several parts"
    assert all(len(p) >= MIN_PART for p in parts[:-1])
    assert READERS[kind](b"".join(parts)) == len(values)


def test_take_ready_never_hands_out_an_empty_part() -> None:
    writer = make_writer("ndjson", compression="gzip", avro_schema=None)
    assert writer.take_ready(0) is None
    writer.write_payloads([b"{}"])
    assert writer.take_ready(MIN_PART) is None


# ------------------------------------------------------------------------------------ encoded bytes

# encoded_bytes promises (docs/s3-objects.md), once the object holds 64 KiB of input: NDJSON within
# 1% of the finished size (exact uncompressed); Avro within 1% + 16 KiB (the pending block, at most
# 256 KiB raw, is estimated); Parquet within 5% + 16 KiB once a row group has been written (the
# pending row group is estimated and the footer is not counted before finish()).
TOLERANCE = {
    "ndjson-gzip": (0.01, 0),
    "ndjson-zstd": (0.01, 0),
    "ndjson-none": (0.0, 0),
    "avro-deflate": (0.01, 16 * 1024),
    "avro-zstd": (0.01, 16 * 1024),
    "avro-none": (0.01, 16 * 1024),
    "parquet": (0.05, 16 * 1024),
}


def sized_writer(kind: str) -> ObjectWriter:
    if kind == "parquet":
        return ParquetWriter(schema=None, compression="zstd", level=None, row_group_bytes=256 * 1024)
    fmt, compression = kind.split("-")
    return make_writer(fmt, compression=None if compression == "none" else compression, avro_schema=SCHEMA)


@pytest.mark.parametrize("kind", list(TOLERANCE))
@pytest.mark.parametrize("count", [250, 1200, 5000])
def test_encoded_bytes_tracks_the_real_size(kind: str, count: int) -> None:
    writer = sized_writer(kind)
    write_all(writer, records(count, seed=count), as_json=True, batch=70)
    estimate = writer.encoded_bytes
    actual = len(writer.finish())
    relative, absolute = TOLERANCE[kind]
    assert abs(estimate - actual) <= relative * actual + absolute, (estimate, actual)


# -- Parquet: a value that does not fit its column exactly is rejected, never altered ----------------
def one_field_schema(field_type: Any) -> dict[str, Any]:
    fields = [{"name": "id", "type": "long"}, {"name": "v", "type": field_type}]
    return {"type": "record", "name": "r", "fields": fields}


DECIMAL_5_2 = {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}
LOSSY = [
    pytest.param("long", 1.5, "v", id="fraction-into-long"),
    pytest.param("int", 2**40, "v", id="out-of-range-int"),
    pytest.param("long", True, "v", id="bool-into-long"),
    pytest.param("double", True, "v", id="bool-into-double"),
    pytest.param("boolean", 1, "v", id="number-into-boolean"),
    pytest.param("float", 1e300, "v", id="overflow-into-float"),
    pytest.param(DECIMAL_5_2, 1.234, "v", id="extra-digits-into-decimal"),
    pytest.param({"type": "long", "logicalType": "timestamp-millis"}, 1.5, "v", id="fraction-into-timestamp"),
    pytest.param({"type": "array", "items": "long"}, [1, 2.5], "v[]", id="fraction-in-array"),
    pytest.param({"type": "map", "values": "long"}, {"k": 0.5}, "v{}", id="fraction-in-map"),
    pytest.param(
        {"type": "record", "name": "inner", "fields": [{"name": "n", "type": "int"}]}, {"n": 7.25}, "v.n", id="nested"
    ),
    pytest.param("string", 12, "v", id="number-into-string"),
    pytest.param("long", "12", "v", id="text-into-long"),
]


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(("field_type", "bad", "path"), LOSSY)
def test_parquet_value_that_would_be_altered_is_rejected_naming_the_field(
    field_type: Any, bad: Any, path: str, as_json: bool
) -> None:
    writer = make_writer("parquet", compression=None, avro_schema=one_field_schema(field_type))
    fits = {"id": 0, "v": None}
    values = [fits, {"id": 1, "v": bad}, {**fits, "id": 2}]
    with pytest.raises(RecordEncodeError) as caught:
        if as_json:
            writer.write_payloads(payloads(values))
        else:
            writer.write_values(values)
    (failure,) = caught.value.failures
    assert failure.index == 1
    assert "does not match the Parquet schema" in failure.reason
    assert repr(path) in failure.reason, failure.reason
    assert read_parquet(writer.finish()).to_pylist() == [fits, {**fits, "id": 2}]


def test_parquet_integer_beyond_double_precision_is_rejected_from_values() -> None:
    # From decoded values only: pyarrow's JSON reader, like most JSON parsers, reads a number literal
    # into a double column by rounding (docs/sinks-s3.md).
    writer = make_writer("parquet", compression=None, avro_schema=one_field_schema("double"))
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values([{"id": 0, "v": 2**60 + 1}])
    assert "'v'" in caught.value.failures[0].reason


@pytest.mark.parametrize("as_json", [True, False])
def test_parquet_values_that_fit_exactly_are_written_unchanged(as_json: bool) -> None:
    from decimal import Decimal

    schema = {
        "type": "record",
        "name": "r",
        "fields": [
            {"name": "n", "type": "long"},
            {"name": "small", "type": "int"},
            {"name": "x", "type": "double"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": DECIMAL_5_2},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "m", "type": {"type": "map", "values": "long"}},
            {"name": "b", "type": "boolean"},
        ],
    }
    value: dict[str, Any] = {"n": 2**62, "small": -(2**31), "x": 1, "f": 0.5, "d": 123.45, "ts": 1_700_000_000_000}
    value |= {"m": {"a": 1, "b": 2}, "b": True}
    writer = make_writer("parquet", compression=None, avro_schema=schema)
    if as_json:
        writer.write_payloads(payloads([value]))
    else:
        writer.write_values([value])
    (row,) = read_parquet(writer.finish()).to_pylist()
    assert row["d"] == Decimal("123.45") and row["x"] == 1.0 and row["m"] == [("a", 1), ("b", 2)]
    assert int(row["ts"].timestamp() * 1000) == value["ts"]
    assert {k: row[k] for k in ("n", "small", "f", "b")} == {k: value[k] for k in ("n", "small", "f", "b")}


def test_parquet_inferred_schema_rejects_a_fraction_once_the_column_is_an_integer() -> None:
    writer = ParquetWriter(schema=None, compression="zstd", level=None, row_group_bytes=1)
    writer.write_values([{"n": 1}])  # the first row group fixes the schema: n is int64
    with pytest.raises(RecordEncodeError) as caught:
        writer.write_values([{"n": 2}, {"n": 2.5}])
    assert [f.index for f in caught.value.failures] == [1]
    assert "'n'" in caught.value.failures[0].reason
    assert read_parquet(writer.finish()).column("n").to_pylist() == [1, 2]
