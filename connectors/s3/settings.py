"""The ``s3`` sink's settings: validated at build time, without connecting (``streamkit validate``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec

from streamkit.config import NonNegativeSeconds, PositiveInt, PositiveSeconds, Size
from streamkit.connectors.aws_clients import ClientOptions
from streamkit.connectors.s3.formats import MIN_PART_SIZE, InvalidFormatConfig, ObjectWriter, make_writer
from streamkit.connectors.s3.keys import DEFAULT_KEY_TEMPLATE, DEFAULT_PARTITION_TEMPLATE
from streamkit.connectors.s3.segments import SegmentRules
from streamkit.connectors.s3.upload import ACCOUNT_ID, MAX_PART_SIZE, SseOptions
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.retry import RetryPolicy

__all__ = ["S3SinkOptions", "check_options", "segment_rules", "writer_factory"]

MIB = 1024 * 1024
_DEFAULT_COMPRESSION = {"ndjson": "gzip", "avro": "deflate", "parquet": None}
# Memory of an open object besides its output, measured with 200 open writers (RSS): the gzip or zstd
# compressor state, Avro's block buffer, Arrow's buffers and pools for Parquet.
_OBJECT_OVERHEAD = {"ndjson": 64 * 1024, "avro": 16 * 1024, "parquet": 256 * 1024}


class S3SinkOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bucket: str
    expected_bucket_owner: Annotated[str, msgspec.Meta(pattern=ACCOUNT_ID)] | None = None
    """The bucket owner's 12-digit account id, sent as ExpectedBucketOwner on every S3 call."""
    prefix: str = ""
    """Key prefix: empty, or ending with ``/`` (``raw/events/``)."""
    format: Literal["ndjson", "avro", "parquet"] = "ndjson"
    compression: str | None = None
    """ndjson: gzip (default), zstd, none. avro: deflate (default), zstd, none. parquet: see parquet_compression."""
    level: Annotated[int, msgspec.Meta(ge=-131072, le=22)] | None = None
    """Compression level; zstd takes -131072 to 22, the format checks its own range (gzip 0-3)."""
    avro_schema: dict[str, Any] | str | None = None
    """An Avro record schema, inline or the path of an .avsc file (required for avro, optional for parquet)."""
    parquet_compression: str = "zstd"
    key_template: str = DEFAULT_KEY_TEMPLATE
    partition_template: str = DEFAULT_PARTITION_TEMPLATE
    hive: bool = True
    max_records: PositiveInt = 1_000_000
    max_bytes: Size = Size(64 * MIB)
    """Encoded (compressed) size at which an object is closed."""
    max_age_s: PositiveSeconds = 60.0
    """A segment open this long is written, even if its partition went quiet."""
    window_s: NonNegativeSeconds | None = None
    """Arrival-time window a segment never spans (default: max_age_s; 0 turns it off)."""
    slice_records: PositiveInt = 500
    memory_budget: Size = Size(256 * MIB)
    """Encoded bytes held by all open and closing objects of this sink."""
    max_unacked_bytes: Size | None = None
    """Source bytes of records held unacknowledged; default 3/4 of runtime.max_bytes_in_flight (at most
    48MiB), and never above it: the runtime stops fetching at its budget, so a larger value would only
    leave fetching stalled until max_age_s cuts the segments."""
    multipart_threshold: Size = Size(16 * MIB)
    part_size: Size = Size(8 * MIB)
    max_concurrent_uploads: PositiveInt = 8
    sse: SseOptions | None = None
    retry: RetryPolicy = RetryPolicy()
    client: ClientOptions = ClientOptions()


def load_schema(value: dict[str, Any] | str | None, env: PluginEnv, where: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    path = env.path(value)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}.avro_schema", f"cannot read an Avro schema from {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}.avro_schema", f"{path} does not hold an Avro record schema")
    return loaded


def unacked_limit(options: S3SinkOptions, runtime_budget: int, where: str) -> int:
    """``max_unacked_bytes`` as configured, or derived from the runtime's byte budget."""
    if options.max_unacked_bytes is None:
        return min(48 * MIB, runtime_budget * 3 // 4)
    if options.max_unacked_bytes < 1:
        raise ConfigError(f"{where}.max_unacked_bytes", f"expected at least 1, got {options.max_unacked_bytes}")
    if options.max_unacked_bytes >= runtime_budget:
        raise ConfigError(
            f"{where}.max_unacked_bytes",
            f"{options.max_unacked_bytes} bytes must be below runtime.max_bytes_in_flight ({runtime_budget}): "
            "the runtime stops fetching at its budget, before this sink would cut a segment",
        )
    return int(options.max_unacked_bytes)


def check_options(options: S3SinkOptions, where: str) -> None:
    positive = {
        "max_records": options.max_records,
        "max_bytes": options.max_bytes,
        "slice_records": options.slice_records,
        "memory_budget": options.memory_budget,
        "max_concurrent_uploads": options.max_concurrent_uploads,
        "multipart_threshold": options.multipart_threshold,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{where}.{name}", f"expected at least 1, got {value}")
    if not options.bucket:
        raise ConfigError(f"{where}.bucket", "expected a bucket name")
    if options.max_age_s <= 0:
        raise ConfigError(f"{where}.max_age_s", f"expected a positive number of seconds, got {options.max_age_s}")
    if options.window_s is not None and options.window_s < 0:
        raise ConfigError(f"{where}.window_s", f"expected 0 (off) or a positive number, got {options.window_s}")
    if not MIN_PART_SIZE <= options.part_size <= MAX_PART_SIZE:
        raise ConfigError(f"{where}.part_size", f"S3 parts are 5MiB to 5GiB, got {options.part_size} bytes")


def writer_factory(options: S3SinkOptions, env: PluginEnv, where: str) -> tuple[Any, ObjectWriter]:
    """A function making one object's writer, and a sample writer (settings checked by making it)."""
    compression = options.compression or _DEFAULT_COMPRESSION[options.format]
    if options.format == "parquet" and compression == "none":
        compression = None
    settings: dict[str, Any] = {
        "compression": compression,
        "avro_schema": load_schema(options.avro_schema, env, where),
        "parquet_compression": options.parquet_compression,
        "level": options.level,
    }

    def new_writer() -> ObjectWriter:
        return make_writer(options.format, **settings)

    try:
        sample = new_writer()
    except InvalidFormatConfig as exc:
        message = str(exc)
        # The message names the setting: first word ("level=4: ..."), else a mention ("needs avro_schema").
        names = ("parquet_compression", "compression", "level", "avro_schema")
        setting = next((n for n in names if message.startswith(n)), None)
        setting = setting or next((n for n in names if n in message), "format")
        raise ConfigError(f"{where}.{setting}", message) from None
    return new_writer, sample


def segment_rules(options: S3SinkOptions) -> SegmentRules:
    window_s = options.max_age_s if options.window_s is None else options.window_s
    return SegmentRules(
        max_records=options.max_records,
        max_bytes=options.max_bytes,
        slice_records=options.slice_records,
        window_ms=round(window_s * 1000),
        stream_threshold=options.multipart_threshold,
        use_values=options.format != "ndjson",
        object_overhead=_OBJECT_OVERHEAD[options.format],
    )
