"""``avro.decode``: the Confluent wire format with a (mock) schema registry, and the Glue framing."""

from __future__ import annotations

import io
import json
import uuid
import zlib
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamkit.batch import Partition, RecordBatch
from streamkit.chain import Chain
from streamkit.config import AwsSettings
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.processors.avro_codec import AvroDecode, AvroDecodeOptions, RegistryOptions

SCHEMA = {
    "type": "record",
    "name": "Click",
    "fields": [{"name": "id", "type": "long"}, {"name": "page", "type": "string"}],
}
SCHEMA_V2 = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "ms", "type": "long", "default": 0}]}
VALUES = [{"id": i, "page": f"/p/{i}"} for i in range(5)]
P = Partition("kafka:clicks", "0")


def env(tmp_path: Path) -> PluginEnv:
    return PluginEnv("test", AwsSettings(), tmp_path, where="processors[0]")


def body(value: dict[str, Any], schema: dict[str, Any] = SCHEMA) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def schema_file(tmp_path: Path, schema: dict[str, Any], name: str = "click.avsc") -> str:
    (tmp_path / name).write_text(json.dumps(schema))
    return name


async def run(decoder: AvroDecode, payloads: list[bytes]) -> tuple[list[Any], list[tuple[str, list[int]]]]:
    outputs, failures = await Chain([decoder]).run(RecordBatch(P, payloads=payloads))
    values = [v for batch in outputs for v in batch.values]
    return values, [(f.reason, [int(f.batch.position(i)) for i in range(len(f.batch))]) for f in failures]


async def test_confluent_serializer_output_decodes_with_the_registry_and_bad_records_fail_alone(
    tmp_path: Path,
) -> None:
    decoder = AvroDecode(AvroDecodeOptions(registry=RegistryOptions(url="mock://unit")), env(tmp_path))
    serializer = AvroSerializer(decoder.registry, json.dumps(SCHEMA))
    context = SerializationContext("clicks", MessageField.VALUE)
    frames = [serializer(v, context) for v in VALUES]
    schema_id = int.from_bytes(frames[0][1:5], "big")
    bad = [
        b"\x01" + frames[0][1:],  # wrong magic byte
        b"\x00\x00\x00",  # too short
        b"\x00\x00\x00\x30\x39" + frames[0][5:],  # schema id 12345, unknown to the registry
        frames[0][:5] + b"\xff",  # truncated body
    ]
    values, failures = await run(decoder, [*frames[:2], *bad, *frames[2:]])
    assert values == VALUES
    reasons = dict(failures)
    assert reasons["not in the Confluent wire format (magic byte 1, expected 0)"] == [2]
    assert reasons["too short for the Confluent wire format (3 bytes)"] == [3]
    assert reasons["unknown schema id 12345: not found in the schema registry"] == [4]
    assert any(r.startswith(f"cannot decode with schema id {schema_id}:") and p == [5] for r, p in failures)
    # Parsed schemas are cached; the unknown id is remembered for a while instead of asked per batch.
    assert schema_id in decoder._cache and 12345 in decoder._unknown


async def test_schema_references_are_resolved_through_the_registry(tmp_path: Path) -> None:
    decoder = AvroDecode(AvroDecodeOptions(registry=RegistryOptions(url="mock://refs")), env(tmp_path))
    client = decoder.registry
    address = {"type": "record", "name": "Address", "namespace": "shop", "fields": [{"name": "city", "type": "string"}]}
    client.register_schema("address", Schema(json.dumps(address), "AVRO"))
    from confluent_kafka.schema_registry import SchemaReference

    order = {"type": "record", "name": "Order", "namespace": "shop",
             "fields": [{"name": "id", "type": "long"}, {"name": "ship_to", "type": "shop.Address"}]}  # fmt: skip
    order_id = client.register_schema(
        "order", Schema(json.dumps(order), "AVRO", [SchemaReference("shop.Address", "address", 1)])
    )
    named: dict[str, Any] = {}
    fastavro.parse_schema(address, named_schemas=named)
    value = {"id": 7, "ship_to": {"city": "Lisbon"}}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(order, named_schemas=named), value)
    values, failures = await run(decoder, [b"\x00" + order_id.to_bytes(4, "big") + out.getvalue()])
    assert failures == [] and values == [value]


async def test_local_schemas_by_id_and_a_reader_schema_for_evolution(tmp_path: Path) -> None:
    options = AvroDecodeOptions(
        schemas={"3": schema_file(tmp_path, SCHEMA)}, reader_schema=schema_file(tmp_path, SCHEMA_V2, "v2.avsc")
    )
    decoder = AvroDecode(options, env(tmp_path))
    values, failures = await run(decoder, [b"\x00\x00\x00\x00\x03" + body(v) for v in VALUES[:2]] + [b"\x00" * 5])
    assert values == [{**v, "ms": 0} for v in VALUES[:2]]
    assert failures == [("unknown schema id 0: not in the configured schemas", [2])]


async def test_glue_framing_plain_and_zlib_with_schemas_by_version_uuid(tmp_path: Path) -> None:
    version = uuid.uuid4()
    decoder = AvroDecode(
        AvroDecodeOptions(framing="glue", schemas={str(version): schema_file(tmp_path, SCHEMA)}), env(tmp_path)
    )
    plain = bytes([3, 0]) + version.bytes + body(VALUES[0])
    packed = bytes([3, 5]) + version.bytes + zlib.compress(body(VALUES[1]))
    other = uuid.uuid4()
    unknown = bytes([3, 0]) + other.bytes + body(VALUES[2])
    confluent = b"\x00\x00\x00\x00\x01" + body(VALUES[3]) + bytes(12)
    values, failures = await run(decoder, [plain, packed, unknown, confluent, bytes([3, 9]) + version.bytes])
    assert values == VALUES[:2]
    assert dict(failures) == {
        f"unknown Glue schema version {other}: not in the configured schemas": [2],
        "not in the Glue Schema Registry format (header version 0, expected 3)": [3],
        "Glue record with unknown compression byte 9 (expected 0 or 5)": [4],
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (AvroDecodeOptions(), "processors[0].schemas: framing 'confluent' needs registry or schemas"),
        (AvroDecodeOptions(framing="glue", registry=RegistryOptions(url="mock://x")), "processors[0].registry"),
        (AvroDecodeOptions(schemas={"abc": "x.avsc"}), "processors[0].schemas.abc: expected a schema id"),
        (AvroDecodeOptions(framing="glue", schemas={"7": "x.avsc"}), "expected a schema version UUID"),
        (AvroDecodeOptions(schemas={"1": "missing.avsc"}), "processors[0].schemas.1: cannot read"),
    ],
)
def test_invalid_options_name_their_key(tmp_path: Path, options: AvroDecodeOptions, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        AvroDecode(options, env(tmp_path))
    assert message in str(info.value)


def test_a_file_that_is_not_an_avro_schema_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "no-such-type"}')
    with pytest.raises(ConfigError, match=r"processors\[0\]\.schemas\.1: .*bad\.avsc is not a valid Avro schema"):
        AvroDecode(AvroDecodeOptions(schemas={"1": "bad.avsc"}), env(tmp_path))


async def test_a_truncated_record_fails_with_the_same_reason_every_time(tmp_path: Path) -> None:
    """fastavro names the BytesIO it read from (with its address): the reason must not, or the same record
    gets a new reason on every run and no two records share one."""
    schema = {"type": "record", "name": "Price", "fields": [{"name": "amount", "type": "double"}]}
    decoder = AvroDecode(AvroDecodeOptions(schemas={"3": schema_file(tmp_path, schema)}), env(tmp_path))
    truncated = b"\x00" + (3).to_bytes(4, "big") + body({"amount": 1.5}, schema)[:3]
    _, failures = await run(decoder, [truncated, truncated])
    assert failures == [("cannot decode with schema id 3: EOFError: cannot read double from the record", [0, 1])]
