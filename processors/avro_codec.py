"""``avro.decode``: Avro records framed by a schema registry, into values.

Two framings:

- ``confluent`` (the Confluent wire format): byte 0 is the magic byte 0, bytes 1-4 the schema id (big
  endian), then the Avro binary body. Writer schemas come from a Confluent-compatible schema registry
  (confluent-kafka's client; ``mock://`` URLs give its in-process mock) or from local files by id.
- ``glue`` (AWS Glue Schema Registry): byte 0 is the header version 3, byte 1 the compression (0 none,
  5 zlib), bytes 2-17 the schema version UUID, then the body. Writer schemas come from local files by
  UUID (export them with ``aws glue get-schema-version``): this processor does not call Glue.

Writer schemas are parsed once per id and cached. A record that is not framed as configured, names a
schema the registry does not know, or does not decode with its schema goes to the dead-letter queue with
a reason that names the schema id; the rest of the batch goes on. A registry that cannot be reached is
not the record's fault: after retries the pipeline stops, and nothing past the batch is checkpointed.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Hashable
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import fastavro
import msgspec
import orjson

from streamkit.batch import RecordBatch
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.processor import ProcessContext
from streamkit.retry import RetryPolicy, retry

CONFLUENT_MAGIC = 0
GLUE_HEADER_VERSION = 3
GLUE_COMPRESSION_NONE = 0
GLUE_COMPRESSION_ZLIB = 5
_UNKNOWN_TTL_S = 60.0
"""How long a schema id the registry does not know is remembered (instead of asking per batch)."""

ParsedSchema = Any


class RegistryOptions(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    """``https://...`` (a comma-separated list is allowed), or ``mock://name`` for in-process tests."""
    basic_auth: str | None = None
    """``user:secret`` (use ``${ENV_VAR}``); sent as HTTP basic auth."""
    config: dict[str, str] = msgspec.field(default_factory=dict)
    """Further client settings of confluent-kafka's SchemaRegistryClient (for example ``ssl.ca.location``)."""


class AvroDecodeOptions(msgspec.Struct, forbid_unknown_fields=True):
    framing: Literal["confluent", "glue"] = "confluent"
    registry: RegistryOptions | None = None
    schemas: dict[str, str] = msgspec.field(default_factory=dict)
    """Writer schema files (.avsc) by schema id (confluent) or schema version UUID (glue)."""
    reader_schema: str | None = None
    """Decode into this schema (Avro schema resolution: renamed, added, removed fields) instead of the
    writer's."""


class UnknownSchema(Exception):
    """The registry has no schema with this id, or it is not an Avro schema."""


class AvroDecode:
    """Decode Avro payloads framed by a schema registry (see the module docs)."""

    name = "avro.decode"
    Options = AvroDecodeOptions

    def __init__(self, options: AvroDecodeOptions, env: PluginEnv) -> None:
        where = env.where or "processors[?]"
        self.framing = options.framing
        self.registry_options = options.registry
        if options.framing == "glue" and options.registry is not None:
            raise ConfigError(f"{where}.registry", "not used with framing 'glue': give the schemas by version UUID")
        if options.registry is None and not options.schemas:
            needs = "registry or schemas" if options.framing == "confluent" else "schemas"
            raise ConfigError(f"{where}.schemas", f"framing {options.framing!r} needs {needs}")
        self._cache: dict[Hashable, ParsedSchema] = {}
        for key, file in options.schemas.items():
            schema_key = self._schema_key(key, f"{where}.schemas.{key}")
            self._cache[schema_key] = _load_schema(env.path(file), f"{where}.schemas.{key}")
        self.reader_schema = (
            _load_schema(env.path(options.reader_schema), f"{where}.reader_schema") if options.reader_schema else None
        )
        self._unknown: dict[Hashable, tuple[str, float]] = {}
        self._client: Any = None
        self.retry = RetryPolicy(max_attempts=5, base_delay_s=0.2, max_delay_s=5.0)

    def _schema_key(self, key: str, where: str) -> Hashable:
        if self.framing == "confluent":
            if not key.isdigit():
                raise ConfigError(where, f"expected a schema id (a number), got {key!r}")
            return int(key)
        try:
            return uuid.UUID(key).bytes
        except ValueError:
            raise ConfigError(where, f"expected a schema version UUID, got {key!r}") from None

    @property
    def registry(self) -> Any:
        """The schema registry client (created on first use: building a pipeline never connects)."""
        if self._client is None and self.registry_options is not None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            conf: dict[str, Any] = {"url": self.registry_options.url, **self.registry_options.config}
            if self.registry_options.basic_auth:
                conf["basic.auth.user.info"] = self.registry_options.basic_auth
            self._client = SchemaRegistryClient.new_client(conf)
        return self._client

    # -- processing -------------------------------------------------------------------------------
    def __call__(self, batch: RecordBatch, ctx: ProcessContext) -> Any:
        split = _split_glue if self.framing == "glue" else _split_confluent
        framed = [split(p) for p in batch.payloads]
        if self.registry_options is not None:
            now = time.monotonic()
            cache, unknown = self._cache, self._unknown
            missing: set[Hashable] = {f[0] for f in framed if type(f) is tuple and f[0] not in cache}
            missing = {k for k in missing if k not in unknown or unknown[k][1] < now}
            if missing:
                return self._fetch_then_decode(batch, ctx, framed, missing)
        return self._decode(batch, ctx, framed)

    async def _fetch_then_decode(
        self, batch: RecordBatch, ctx: ProcessContext, framed: list[Any], missing: set[Hashable]
    ) -> RecordBatch | None:
        for schema_id in sorted(missing, key=str):
            try:
                self._cache[schema_id] = await retry(
                    lambda sid=schema_id: asyncio.to_thread(self._fetch, sid),  # type: ignore[misc]
                    lambda exc: not isinstance(exc, UnknownSchema),
                    self.retry,
                )
                self._unknown.pop(schema_id, None)
            except UnknownSchema as exc:
                self._unknown[schema_id] = (str(exc), time.monotonic() + _UNKNOWN_TTL_S)
        return self._decode(batch, ctx, framed)

    def _fetch(self, schema_id: Any) -> ParsedSchema:
        """The parsed writer schema ``schema_id`` from the registry, with its references (blocking)."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        client = self.registry
        try:
            schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchema("not found in the schema registry") from None
            raise
        if (schema.schema_type or "AVRO") != "AVRO":
            raise UnknownSchema(f"a {schema.schema_type} schema, not Avro")
        named: dict[str, Any] = {}
        self._resolve_references(schema.references or [], named, set())
        return fastavro.parse_schema(orjson.loads(schema.schema_str), named_schemas=named)

    def _resolve_references(self, references: list[Any], named: dict[str, Any], seen: set[tuple[str, int]]) -> None:
        for ref in references:
            if (ref.subject, ref.version) in seen:
                continue
            seen.add((ref.subject, ref.version))
            registered = self.registry.get_version(ref.subject, ref.version)
            self._resolve_references(registered.schema.references or [], named, seen)
            fastavro.parse_schema(orjson.loads(registered.schema.schema_str), named_schemas=named)

    def _decode(self, batch: RecordBatch, ctx: ProcessContext, framed: list[Any]) -> RecordBatch | None:
        cache, unknown, reader = self._cache, self._unknown, self.reader_schema
        read = fastavro.schemaless_reader
        values: list[Any] = []
        keep: list[bool] = []
        failed: defaultdict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(framed):
            if type(item) is str:  # a framing error
                failed[item].append(i)
                keep.append(False)
                continue
            key, body = item
            schema = cache.get(key)
            if schema is None:
                why = unknown[key][0] if key in unknown else "not in the configured schemas"
                failed[f"unknown {self._describe(key)}: {why}"].append(i)
                keep.append(False)
                continue
            try:
                values.append(read(body, schema, reader))
                keep.append(True)
            except Exception as exc:  # fastavro raises many types on corrupt input; the record is what failed
                failed[f"cannot decode with {self._describe(key)}: {type(exc).__name__}: {_message(exc)}"].append(i)
                keep.append(False)
        for reason, indices in failed.items():
            ctx.fail(batch, indices, reason)
        if not values:
            return None
        return batch.select(keep).with_values(values)

    def _describe(self, key: Hashable) -> str:
        if self.framing == "confluent":
            return f"schema id {key}"
        assert isinstance(key, bytes)
        return f"Glue schema version {uuid.UUID(bytes=key)}"


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _message(exc: Exception) -> str:
    """fastavro's message without the reprs it names (``cannot read double from <_io.BytesIO object at
    0x7f...>``): a dead-letter reason is the same for the same record, every run (and groups records)."""
    return _OBJECT_REPR.sub("the record", str(exc))


def _split_confluent(payload: bytes) -> tuple[int, BytesIO] | str:
    """(schema id, body) of a Confluent-framed record, or the reason it is not one."""
    if len(payload) < 5:
        return f"too short for the Confluent wire format ({len(payload)} bytes)"
    if payload[0] != CONFLUENT_MAGIC:
        return f"not in the Confluent wire format (magic byte {payload[0]}, expected 0)"
    body = BytesIO(payload)
    body.seek(5)
    return int.from_bytes(payload[1:5], "big"), body


def _split_glue(payload: bytes) -> tuple[bytes, BytesIO] | str:
    """(schema version UUID bytes, body) of a Glue-framed record, or the reason it is not one."""
    if len(payload) < 18:
        return f"too short for the Glue Schema Registry format ({len(payload)} bytes)"
    if payload[0] != GLUE_HEADER_VERSION:
        return f"not in the Glue Schema Registry format (header version {payload[0]}, expected 3)"
    compression = payload[1]
    if compression == GLUE_COMPRESSION_NONE:
        body = BytesIO(payload)
        body.seek(18)
    elif compression == GLUE_COMPRESSION_ZLIB:
        try:
            body = BytesIO(zlib.decompress(payload[18:]))
        except zlib.error as exc:
            return f"Glue record with corrupt zlib body: {exc}"
    else:
        return f"Glue record with unknown compression byte {compression} (expected 0 or 5)"
    return payload[2:18], body


def _load_schema(path: Path, where: str) -> ParsedSchema:
    try:
        with open(path, "rb") as fh:
            return fastavro.parse_schema(orjson.loads(fh.read()))
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}") from None
    except (orjson.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(where, f"{path} is not a valid Avro schema: {exc}") from None
