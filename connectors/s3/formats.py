"""Streaming object writers: the bytes of ONE S3 object, built batch by batch.

A writer takes records incrementally and keeps only the finished output that has not been handed out
yet, so the sink can stream a large object as multipart parts (``take_ready``) instead of holding it
whole. Each writer reports ``encoded_bytes``, the object's size *after* compression, because the sink
closes objects on that size: sizing by in-memory or raw sizes makes objects come out several times too
small (AWS_FACTS.md). How close the estimate is, per format, is written in docs/s3-objects.md.

Records that cannot be encoded are rejected one by one with their index (``RecordEncodeError``), so
the sink dead-letters them and keeps the rest of the batch; the other records of the batch are
written.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, cast

import fastavro
import orjson
import zstandard
from fastavro.validation import ValidationError
from fastavro.write import Writer as _FastavroWriter
from isal import isal_zlib

from streamkit.connectors.s3.avro_exact import exactness_check

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "MIN_PART_SIZE",
    "AvroWriter",
    "InvalidFormatConfig",
    "NdjsonWriter",
    "ObjectWriter",
    "ObjectWriterError",
    "ParquetWriter",
    "RecordEncodeError",
    "RecordFailure",
    "arrow_schema_from_avro",
    "decode_json_payloads",
    "make_writer",
    "read_json_table",
]

MIB: Final = 1024 * 1024
# S3 multipart: every part but the last must be at least 5 MiB.
MIN_PART_SIZE: Final = 5 * MIB
# NDJSON: end a compressed block after this much raw input, so the exact compressed size is known at
# least every MiB (sooner at the start: 64 KiB, then doubling, so small objects are measured too).
# A sync flush keeps the dictionary, so it costs nothing measurable at this spacing.
_NDJSON_SYNC_EVERY: Final = 1 * MIB
_NDJSON_FIRST_SYNC: Final = 64 * 1024
# Avro: block size before compression. Blocks are the unit a reader decompresses; 256 KiB gives
# deflate and zstd their ratio (64 KiB blocks come out 1-2% bigger). The first block is smaller so
# that the compression ratio behind encoded_bytes is measured early.
_AVRO_BLOCK_BYTES: Final = 256 * 1024
_AVRO_FIRST_BLOCK_BYTES: Final = 64 * 1024
# Parquet: Arrow bytes held before a row group is written. It bounds the memory of an open object.
_PARQUET_ROW_GROUP_BYTES: Final = 32 * MIB
# The first row group is smaller, to measure the compression ratio early.
_PARQUET_FIRST_ROW_GROUP_BYTES: Final = 4 * MIB
_PARQUET_MAX_ROW_GROUP_ROWS: Final = 1024 * 1024
# Compressed/raw ratios assumed until the first measured block (1 KB JSON records, benchmarks/).
_PRIOR_RATIO: Final = {"gzip": 0.25, "zstd": 0.2, "deflate": 0.25, "null": 1.0, "parquet": 0.2}
_JSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY
# zstd level 1 compresses JSON records within 0.5% of level 3, 1.3x faster (benchmarks/sink_encode.py).
_ZSTD_LEVEL: Final = 1


class ObjectWriterError(Exception):
    """Base class of the errors raised by object writers."""


class InvalidFormatConfig(ObjectWriterError, ValueError):
    """A format, compression, level or schema setting is wrong; the message names the setting."""


@dataclass(frozen=True, order=True, slots=True)
class RecordFailure:
    index: int  # index of the record in the batch given to write_payloads / write_values
    reason: str


class RecordEncodeError(ObjectWriterError, ValueError):
    """Some records of a batch could not be encoded. They were skipped; the others were written."""

    def __init__(self, failures: Sequence[RecordFailure], written: int) -> None:
        self.failures: tuple[RecordFailure, ...] = tuple(failures)
        self.written = written
        first = self.failures[0]
        super().__init__(
            f"{len(self.failures)} record(s) rejected, {written} written; first: record {first.index}: {first.reason}"
        )


class ObjectWriter(Protocol):
    """Builds one object. Not thread-safe; one writer per open object."""

    content_type: str
    content_encoding: str | None
    extension: str  # e.g. ".ndjson.gz", for the object key

    def write_payloads(self, payloads: Sequence[bytes]) -> None:
        """Append JSON-encoded records. Raises RecordEncodeError for records that cannot be
        encoded; the others are written."""

    def write_values(self, values: Sequence[Any]) -> None:
        """Append decoded records (dicts). Same error contract as write_payloads."""

    @property
    def encoded_bytes(self) -> int:
        """Size of the object so far, compressed, with pending input estimated."""

    @property
    def records(self) -> int:
        """Records written so far."""

    def take_ready(self, min_part: int) -> bytes | None:
        """All finished output if it is at least ``min_part`` bytes (a multipart part), else None."""

    def finish(self) -> bytes:
        """The remaining output (the last part); the writer takes nothing more."""


class _Output:
    """Output produced but not handed out yet, and the running total of everything produced."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.produced = 0

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self.produced += len(data)

    def take(self, min_part: int) -> bytes | None:
        if not self._buffered or self._buffered < min_part:
            return None
        return self.take_all()

    def take_all(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data


class _OutputFile(io.RawIOBase):
    """Write-only file over an _Output, for libraries that write to files (fastavro, pyarrow)."""

    def __init__(self, output: _Output) -> None:
        super().__init__()
        self._output = output

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        chunk = bytes(data)  # the caller may reuse its buffer
        self._output.append(chunk)
        return len(chunk)


def _estimate(exact: int, pending_raw: int, pending_out: int, ratio: float) -> int:
    """Size so far: exact output plus pending raw input at the measured ratio (never below output)."""
    return exact + max(pending_out, round(pending_raw * ratio))


def _json_failure(index: int, error: Exception) -> RecordFailure:
    return RecordFailure(index, f"not JSON-encodable: {error}")


def decode_json_payloads(payloads: Sequence[bytes]) -> tuple[list[Any], list[int], list[RecordFailure]]:
    """Decode JSON payloads; returns the values, their indexes in ``payloads``, and the failures."""
    values: list[Any] = []
    indexes: list[int] = []
    failures: list[RecordFailure] = []
    for i, payload in enumerate(payloads):
        try:
            values.append(orjson.loads(payload))
        except orjson.JSONDecodeError as error:
            failures.append(RecordFailure(i, f"invalid JSON: {error}"))
        else:
            indexes.append(i)
    return values, indexes, failures


def _remap(error: RecordEncodeError, indexes: Sequence[int]) -> list[RecordFailure]:
    return [RecordFailure(indexes[f.index], f.reason) for f in error.failures]


class _Finishable:
    """State shared by all writers: output buffer, record count, single use."""

    def __init__(self) -> None:
        self._output = _Output()
        self._records = 0
        self._finished = False

    @property
    def records(self) -> int:
        return self._records

    def take_ready(self, min_part: int) -> bytes | None:
        return self._output.take(min_part)

    def _check_open(self) -> None:
        if self._finished:
            raise ObjectWriterError("the object is finished; start a new writer")

    def _write_decoded(self, payloads: Sequence[bytes], write_values: Callable[[list[Any]], None]) -> None:
        """write_payloads for formats that need values: decode, write, report failures by index."""
        values, indexes, failures = decode_json_payloads(payloads)
        try:
            write_values(values)
        except RecordEncodeError as error:
            failures.extend(_remap(error, indexes))
        if failures:
            failures.sort()
            raise RecordEncodeError(failures, written=len(payloads) - len(failures))


# --------------------------------------------------------------------------------------------- NDJSON


class _StreamCodec(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def sync(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _GzipCodec:
    """ISA-L deflate in a gzip container: ~10x zlib level 6 at a similar ratio (PERF_FACTS.md)."""

    def __init__(self, level: int) -> None:
        self._compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def sync(self) -> bytes:
        return self._compressor.flush(isal_zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush()


class _ZstdCodec:
    """One zstd frame per object, with a checksum; readers need no content size."""

    def __init__(self, level: int) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def sync(self) -> bytes:
        return self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class NdjsonWriter(_Finishable):
    """Newline-delimited JSON, one record per line, optionally gzip or zstd compressed."""

    content_type = "application/x-ndjson"

    def __init__(self, codec: _StreamCodec | None, *, encoding: str | None, prior_ratio: float) -> None:
        super().__init__()
        self._codec = codec
        self.content_encoding = encoding
        self.extension = ".ndjson" + {"gzip": ".gz", "zstd": ".zst", None: ""}[encoding]
        self._ratio = prior_ratio
        self._exact = 0  # output bytes up to the last sync point
        self._raw_since_sync = 0
        self._out_since_sync = 0
        self._raw_synced = 0

    def write_payloads(self, payloads: Sequence[bytes]) -> None:
        """Append JSON-encoded records. A raw newline inside a record is JSON whitespace: it becomes a
        space so that the record stays on one line."""
        self._check_open()
        if not payloads:
            return
        data = b"\n".join(payloads)
        if data.count(b"\n") != len(payloads) - 1:
            data = b"\n".join(p.replace(b"\n", b" ") for p in payloads)
        self._feed(data)
        self._feed(b"\n")
        self._records += len(payloads)
        if self._raw_since_sync >= min(_NDJSON_SYNC_EVERY, max(_NDJSON_FIRST_SYNC, self._raw_synced)):
            self._sync()

    def write_values(self, values: Sequence[Any]) -> None:
        """Append decoded records, encoded with orjson."""
        self._check_open()
        dumps = orjson.dumps
        try:
            payloads = [dumps(v, option=_JSON_OPTIONS) for v in values]
        except orjson.JSONEncodeError:
            self._write_each(values)
        else:
            self.write_payloads(payloads)

    def _write_each(self, values: Sequence[Any]) -> None:
        payloads: list[bytes] = []
        failures: list[RecordFailure] = []
        for i, value in enumerate(values):
            try:
                payloads.append(orjson.dumps(value, option=_JSON_OPTIONS))
            except orjson.JSONEncodeError as error:
                failures.append(_json_failure(i, error))
        self.write_payloads(payloads)
        if failures:
            raise RecordEncodeError(failures, written=len(payloads))

    def _feed(self, data: bytes) -> None:
        out = self._codec.compress(data) if self._codec else data
        self._output.append(out)
        self._raw_since_sync += len(data)
        self._out_since_sync += len(out)

    def _sync(self) -> None:
        if self._codec is not None:
            self._output.append(self._codec.sync())
        self._exact = self._output.produced
        self._raw_synced += self._raw_since_sync
        self._ratio = self._exact / self._raw_synced
        self._raw_since_sync = self._out_since_sync = 0

    @property
    def encoded_bytes(self) -> int:
        if self._codec is None:
            return self._output.produced
        return _estimate(self._exact, self._raw_since_sync, self._out_since_sync, self._ratio)

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        if self._codec is not None:
            self._output.append(self._codec.finish())
        return self._output.take_all()


# ----------------------------------------------------------------------------------------------- Avro


def _avro_long(value: int) -> bytes:
    """Avro's zigzag varint encoding of a long."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_block_compressor(codec: str, level: int | None) -> Callable[[bytes], bytes]:
    if codec == "deflate":  # Avro's deflate is raw RFC 1951: no zlib header, hence wbits=-15
        isal_level = 1 if level is None else level
        return lambda block: isal_zlib.compress(block, isal_level, -isal_zlib.MAX_WBITS)
    if codec == "zstandard":
        compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL if level is None else level)
        return compressor.compress
    return bytes


def _parse_avro_schema(schema: Any, named: dict[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise InvalidFormatConfig("avro_schema must be an Avro record schema (a dict with type 'record')")
    try:
        parsed = cast(dict[str, Any], fastavro.parse_schema(schema, named_schemas=named))
    except Exception as error:  # fastavro raises several unrelated types for a bad schema
        raise InvalidFormatConfig(f"avro_schema is not a valid Avro schema: {error}") from error
    return parsed


def _validation_reason(error: ValidationError) -> str:
    parts = [f"{e.field}: {e.datum!r:.80} is not {e.schema}" for e in error.errors[:3]]
    return "does not match the Avro schema: " + "; ".join(parts)


class AvroWriter(_Finishable):
    """Avro object container file, block by block, every record validated against the schema.

    Validation runs before a record is encoded, so a rejected record leaves no bytes behind.
    """

    content_type = "application/avro"
    content_encoding: str | None = None
    extension = ".avro"

    def __init__(
        self, schema: dict[str, Any], *, codec: str, level: int | None, block_bytes: int = _AVRO_BLOCK_BYTES
    ) -> None:
        super().__init__()
        named: dict[str, Any] = {}
        parsed = _parse_avro_schema(schema, named)
        # What the validator lets through but the encoder would alter (1e300 into a float: infinity).
        self._inexact = exactness_check(parsed, named)
        self._compress = _avro_block_compressor(codec, level)
        # Ratio of the last block: the pending block will be a full-size block like it.
        self._ratio = _PRIOR_RATIO[codec if codec != "zstandard" else "zstd"]
        self._file = _OutputFile(self._output)
        self._writer = _FastavroWriter(
            cast(IO[bytes], self._file),
            parsed,
            codec=codec,
            sync_interval=min(block_bytes, _AVRO_FIRST_BLOCK_BYTES),
            validator=True,
        )
        self._block_bytes = block_bytes
        # Our block writer: ISA-L instead of zlib for deflate (~10x), zstd without the optional
        # dependency fastavro wants, and a measured compression ratio for encoded_bytes.
        self._writer.block_writer = self._write_block

    def _write_block(self, file: _OutputFile, block: bytes, _level: int | None) -> None:
        data = self._compress(block)
        self._writer.sync_interval = self._block_bytes
        self._ratio = len(data) / max(1, len(block))
        file.write(_avro_long(len(data)))
        file.write(data)

    def write_values(self, values: Sequence[Any]) -> None:
        self._check_open()
        block: Any = self._writer.io  # the compiled writer's in-memory block buffer
        write, inexact = self._writer.write, self._inexact
        failures: list[RecordFailure] = []
        for i, value in enumerate(values):
            if inexact is not None and (reason := inexact(value)) is not None:
                failures.append(RecordFailure(i, f"does not match the Avro schema: {reason}"))
                continue
            start = block.tell()
            try:
                write(value)
            except ValidationError as error:
                failures.append(RecordFailure(i, _validation_reason(error)))
            except Exception as error:  # fastavro's encoder raises many types; the record is what failed
                self._drop_partial_record(start)
                failures.append(RecordFailure(i, f"cannot be encoded with the Avro schema: {error}"))
        self._records += len(values) - len(failures)
        if failures:
            raise RecordEncodeError(failures, written=len(values) - len(failures))

    def _drop_partial_record(self, start: int) -> None:
        """The encoder failed after validation, half way through a record: the block keeps the bytes of
        the fields it wrote. Write the block's earlier records out as a block of their own, without them
        (what fastavro's dump does, on the good prefix)."""
        writer: Any = self._writer  # block buffer, count and sync marker: the compiled writer's attributes
        block = writer.io
        if block.tell() == start:
            return
        done = block.getvalue()[:start]
        block.clear()
        if writer.block_count:
            self._file.write(_avro_long(writer.block_count))
            self._write_block(self._file, done, None)
            self._file.write(writer.sync_marker)
            writer.block_count = 0

    def write_payloads(self, payloads: Sequence[bytes]) -> None:
        self._check_open()
        self._write_decoded(payloads, self.write_values)

    @property
    def encoded_bytes(self) -> int:
        block: Any = self._writer.io  # the compiled writer's in-memory block buffer
        return _estimate(self._output.produced, block.tell(), 0, self._ratio)

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        self._writer.flush()
        return self._output.take_all()


# -------------------------------------------------------------------------------------------- Parquet


def _pyarrow() -> tuple[ModuleType, ModuleType, ModuleType]:
    """pyarrow is an optional extra: import it only when a Parquet writer is made."""
    try:
        import pyarrow
        import pyarrow.json
        import pyarrow.parquet
    except ImportError as error:
        raise InvalidFormatConfig("format 'parquet' needs pyarrow: pip install 'streamkit[parquet]'") from error
    return pyarrow, pyarrow.parquet, pyarrow.json


_AVRO_PRIMITIVES: Final = {
    "null": "null",
    "boolean": "bool_",
    "int": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "bytes": "binary",
    "string": "string",
}


def read_json_table(payloads: Sequence[bytes], schema: Any, *, unexpected_fields: str = "ignore") -> Any | None:
    """JSON payloads as an Arrow table of ``schema`` through pyarrow's columnar JSON reader (~3x faster than
    decoding records), or None when any record does not fit (the caller then finds which, record by record).

    ``unexpected_fields``: ``ignore`` drops fields the schema does not have; ``error`` fails on them.
    """
    _, _, pj = _pyarrow()
    from streamkit.connectors.arrow_exact import CONVERT_ERRORS, exact_cast, widen_float32

    # The reader turns 1e300 into inf in a float32 column: read float64, then cast exactly.
    wide = widen_float32(schema)
    options = pj.ParseOptions(explicit_schema=wide, unexpected_field_behavior=unexpected_fields)
    try:
        data = b"\n".join(payloads)
        # One block, one thread: per call, that is ~1.5x faster on sink-sized batches.
        read = pj.ReadOptions(use_threads=False, block_size=max(len(data) + 1, MIB))
        table = pj.read_json(io.BytesIO(data), read_options=read, parse_options=options).select(schema.names)
        if wide.equals(schema):
            return table.cast(schema)
        return exact_cast(table, schema)
    except CONVERT_ERRORS:
        return None


def _arrow_logical(pa: ModuleType, schema: dict[str, Any]) -> Any:
    logical, base = schema.get("logicalType"), schema.get("type")
    if logical == "decimal" and base in ("bytes", "fixed"):
        return pa.decimal128(schema["precision"], schema.get("scale", 0))
    known: dict[tuple[Any, Any], Any] = {
        ("timestamp-millis", "long"): pa.timestamp("ms", tz="UTC"),
        ("timestamp-micros", "long"): pa.timestamp("us", tz="UTC"),
        ("local-timestamp-millis", "long"): pa.timestamp("ms"),
        ("local-timestamp-micros", "long"): pa.timestamp("us"),
        ("date", "int"): pa.date32(),
        ("time-millis", "int"): pa.time32("ms"),
        ("time-micros", "long"): pa.time64("us"),
    }
    return known.get((logical, base))


def _arrow_type(pa: ModuleType, schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        if schema in _AVRO_PRIMITIVES:
            return getattr(pa, _AVRO_PRIMITIVES[schema])()
        return named[schema]
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        if len(branches) != 1:
            raise InvalidFormatConfig(f"Parquet cannot hold the Avro union {schema}: use [null, <type>]")
        return _arrow_type(pa, branches[0], named)
    arrow = _arrow_logical(pa, schema) if "logicalType" in schema else None
    if arrow is not None:
        return arrow
    kind = schema["type"]
    if kind == "record":
        fields = [pa.field(f["name"], _arrow_type(pa, f["type"], named)) for f in schema["fields"]]
        arrow = pa.struct(fields)
    elif kind == "array":
        arrow = pa.list_(_arrow_type(pa, schema["items"], named))
    elif kind == "map":
        arrow = pa.map_(pa.string(), _arrow_type(pa, schema["values"], named))
    elif kind == "enum":
        arrow = pa.string()
    elif kind == "fixed":
        arrow = pa.binary(schema["size"])
    else:
        return _arrow_type(pa, kind, named)
    if "name" in schema:
        named[schema["name"]] = arrow
    return arrow


def arrow_schema_from_avro(avro_schema: dict[str, Any]) -> Any:
    """The Arrow schema (every column nullable) of Parquet files holding Avro ``avro_schema`` records."""
    pa, _, _ = _pyarrow()
    parsed = _parse_avro_schema(avro_schema)
    try:
        struct = _arrow_type(pa, parsed, {})
    except KeyError as error:  # a name used inside its own definition
        raise InvalidFormatConfig(f"recursive Avro type {error} cannot be stored in Parquet") from error
    return pa.schema([struct.field(i) for i in range(struct.num_fields)])


class ParquetWriter(_Finishable):
    """Parquet file written row group by row group.

    Without a schema, the schema is inferred from the records received until the first row group is
    written, widening as Arrow's permissive unification allows (null to any type, int to double, new
    struct fields); from then on it is fixed and records that do not fit are rejected one by one.
    JSON payloads go through pyarrow's JSON reader (columnar, ~3x faster than decoding records) once
    the schema is fixed.
    """

    content_type = "application/vnd.apache.parquet"
    content_encoding: str | None = None
    extension = ".parquet"

    def __init__(
        self,
        *,
        schema: Any | None,
        compression: str,
        level: int | None,
        row_group_bytes: int = _PARQUET_ROW_GROUP_BYTES,
    ) -> None:
        super().__init__()
        self._pa, self._pq, _ = _pyarrow()
        self._compression, self._level = compression, level
        self._row_group_bytes = row_group_bytes
        self._schema: Any | None = schema  # fixed schema, or None while inferring
        self._provisional: Any | None = None  # inferred so far
        self._pending: list[Any] = []  # RecordBatches of the next row group
        self._pending_bytes = self._pending_rows = 0
        self._writer: Any | None = None
        self._json_fast_path = True
        self._arrow_written = 0
        self._ratio = _PRIOR_RATIO["parquet"]

    def write_values(self, values: Sequence[Any]) -> None:
        self._check_open()
        if not values:
            return
        if self._schema is not None:
            batch, failures = self._convert(values, self._schema)
        else:
            batch, failures = self._infer(values)
        self._add(batch)
        if failures:
            raise RecordEncodeError(failures, written=len(values) - len(failures))

    def write_payloads(self, payloads: Sequence[bytes]) -> None:
        self._check_open()
        if not payloads:
            return
        if self._schema is None or not self._json_fast_path:
            self._write_decoded(payloads, self.write_values)
            return
        table = self._read_json(payloads)
        if table is not None:
            for batch in table.to_batches():
                self._add(batch)
            return
        # The JSON reader rejected the batch: decode record by record to find the culprits. If there
        # are none, the data is what the JSON reader cannot convert but Arrow's Python conversion can
        # (epoch numbers for timestamps): it would fail every time, so stop trying it.
        self._write_decoded(payloads, self.write_values)
        self._json_fast_path = False  # reached only if no record was rejected (else it raised)

    def _read_json(self, payloads: Sequence[bytes]) -> Any | None:
        assert self._schema is not None
        return read_json_table(payloads, self._schema)

    def _struct_array(self, values: Sequence[Any], schema: Any | None) -> Any:
        """Records as a struct array: of ``schema`` exactly (never pyarrow's typed conversion, which
        truncates 1.5 into an integer column), or of the types Arrow infers."""
        if schema is None:
            return self._pa.array(values)
        from streamkit.connectors.arrow_exact import exact_array  # pyarrow is an optional extra

        return exact_array(values, self._pa.struct(schema))

    def _convert(self, values: Sequence[Any], schema: Any) -> tuple[Any, list[RecordFailure]]:
        """Records as a RecordBatch of ``schema``; records that do not fit are failures."""
        pa = self._pa
        try:
            return pa.RecordBatch.from_struct_array(self._struct_array(values, schema)), []
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        good: list[Any] = []
        failures: list[RecordFailure] = []
        for i, value in enumerate(values):
            try:
                self._struct_array([value], schema)
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as error:
                failures.append(RecordFailure(i, f"does not match the Parquet schema: {error}"))
            else:
                good.append(value)
        return pa.RecordBatch.from_struct_array(self._struct_array(good, schema)), failures

    def _infer(self, values: Sequence[Any]) -> tuple[Any, list[RecordFailure]]:
        pa = self._pa
        try:
            batch = pa.RecordBatch.from_struct_array(self._struct_array(values, None))
            schemas = [batch.schema] if self._provisional is None else [self._provisional, batch.schema]
            self._provisional = pa.unify_schemas(schemas, promote_options="permissive")
            return batch, []
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        for value in values:  # widen record by record; records that conflict fail in _convert
            try:
                single = pa.RecordBatch.from_struct_array(self._struct_array([value], None))
                schemas = [single.schema] if self._provisional is None else [self._provisional, single.schema]
                self._provisional = pa.unify_schemas(schemas, promote_options="permissive")
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                continue
        if self._provisional is None:
            return None, [RecordFailure(i, "not a JSON object") for i in range(len(values))]
        return self._convert(values, self._provisional)

    def _add(self, batch: Any | None) -> None:
        if batch is None or batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self._pending_rows += batch.num_rows
        self._records += batch.num_rows
        limit = self._row_group_bytes
        if not self._arrow_written:
            limit = min(limit, _PARQUET_FIRST_ROW_GROUP_BYTES)
        if self._pending_bytes >= limit or self._pending_rows >= _PARQUET_MAX_ROW_GROUP_ROWS:
            self._write_row_group()

    def _write_row_group(self) -> None:
        pa = self._pa
        if self._schema is None:
            tables = [pa.Table.from_batches([b]) for b in self._pending]
            table = pa.concat_tables(tables, promote_options="permissive")
            self._schema = table.schema
        else:
            table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._open().write_table(table, row_group_size=max(1, table.num_rows))
        self._arrow_written += self._pending_bytes
        self._ratio = (self._output.produced - 4) / self._arrow_written  # 4: the leading magic
        self._pending.clear()
        self._pending_bytes = self._pending_rows = 0

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(
                _OutputFile(self._output),
                self._schema,
                compression=self._compression,
                compression_level=self._level,
            )
        return self._writer

    @property
    def encoded_bytes(self) -> int:
        return _estimate(self._output.produced, self._pending_bytes, 0, self._ratio)

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        if self._pending:
            self._write_row_group()
        if self._schema is None:  # no records at all: a valid file with no columns
            self._schema = self._pa.schema([])
        self._open().close()
        return self._output.take_all()


# ---------------------------------------------------------------------------------------------- make


_NDJSON_CODECS: Final[dict[str | None, str | None]] = {None: None, "none": None, "gzip": "gzip", "zstd": "zstd"}
_AVRO_CODECS: Final[dict[str | None, str]] = {
    None: "null",
    "none": "null",
    "null": "null",
    "deflate": "deflate",
    "zstd": "zstandard",
    "zstandard": "zstandard",
}
_PARQUET_CODECS: Final = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")


def _choice(setting: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise InvalidFormatConfig(f"{setting}={value!r} is not supported; use one of {shown}")


def _ndjson_codec(compression: str | None, level: int | None) -> _StreamCodec | None:
    _choice("compression", compression, list(_NDJSON_CODECS))
    codec = _NDJSON_CODECS[compression]
    if codec == "gzip":
        if level is not None and not 0 <= level <= 3:
            raise InvalidFormatConfig(
                f"level={level}: ISA-L gzip levels are 0-3 (1 has about zlib 6's ratio at ~10x the speed)"
            )
        return _GzipCodec(1 if level is None else level)
    if codec == "zstd":
        try:
            return _ZstdCodec(_ZSTD_LEVEL if level is None else level)
        except (zstandard.ZstdError, ValueError) as error:
            raise InvalidFormatConfig(f"level={level} is not a zstd level: {error}") from error
    return None


def make_writer(
    format: str,
    *,
    compression: str | None,
    avro_schema: dict[str, Any] | None,
    parquet_compression: str = "zstd",
    level: int | None = None,
) -> ObjectWriter:
    """A writer for one object.

    ``format``: ``ndjson`` (``compression`` None, ``gzip`` or ``zstd``), ``avro`` (``avro_schema``
    required; ``compression`` None, ``deflate`` or ``zstd``: the Avro block codec) or ``parquet``
    (columns compressed with ``parquet_compression``; schema from ``avro_schema`` or inferred).
    ``level``: the compression level (gzip and deflate: ISA-L 0-3, default 1; zstd: default 1; Parquet:
    the codec's default).
    """
    if format == "ndjson":
        codec = _ndjson_codec(compression, level)
        encoding = _NDJSON_CODECS[compression]
        prior = _PRIOR_RATIO[encoding or "null"]
        return NdjsonWriter(codec, encoding=encoding, prior_ratio=prior)
    if format == "avro":
        _choice("compression", compression, list(_AVRO_CODECS))
        if avro_schema is None:
            raise InvalidFormatConfig("format 'avro' needs avro_schema (an Avro record schema)")
        return AvroWriter(avro_schema, codec=_AVRO_CODECS[compression], level=level)
    if format == "parquet":
        if compression is not None:
            raise InvalidFormatConfig(
                f"compression={compression!r}: Parquet compresses its columns, set parquet_compression"
            )
        _choice("parquet_compression", parquet_compression, _PARQUET_CODECS)
        if level is not None and parquet_compression not in ("zstd", "gzip", "brotli"):
            raise InvalidFormatConfig(f"level={level}: parquet_compression={parquet_compression!r} has no levels")
        schema = arrow_schema_from_avro(avro_schema) if avro_schema is not None else None
        return ParquetWriter(schema=schema, compression=parquet_compression, level=level)
    _choice("format", format, ("ndjson", "avro", "parquet"))
    raise AssertionError("unreachable")
