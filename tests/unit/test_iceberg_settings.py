"""The iceberg sink's pure parts: position order, ledger merging, types, partition specs, catalog properties."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform, TruncateTransform
from pyiceberg.types import DecimalType, IntegerType, LongType, NestedField, StringType, TimestamptzType

from streamkit.config import AwsSettings
from streamkit.connectors.iceberg import positions
from streamkit.connectors.iceberg.schema import RecordConverter, iceberg_type, infer_columns
from streamkit.connectors.iceberg.settings import CatalogOptions, catalog_properties
from streamkit.connectors.iceberg.table import partition_field
from streamkit.connectors.kinesis.positions import KinesisPosition
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv


def test_positions_order_as_numbers_not_text() -> None:
    assert positions.order_key(9) < positions.order_key(10)
    assert positions.order_key("9") < positions.order_key("10")
    big = "49590338271490256608559692538361571095921575989136588898"
    assert positions.order_key(KinesisPosition(big, 3)) == (int(big), 3)
    assert positions.order_key(f"{big}:3") < positions.order_key(f"{big}:4") < positions.order_key(f"{int(big) + 1}:0")
    with pytest.raises(positions.PositionError, match="cannot be ordered"):
        positions.order_key("LATEST")


def test_the_ledger_never_moves_back() -> None:
    held = {"k/0": "100", "k/1": "7"}
    assert positions.merge(held, {"k/0": "99", "k/2": "1"}) == {"k/0": "100", "k/1": "7", "k/2": "1"}
    assert positions.decode(positions.encode({"b": "2", "a": "1"}), "x") == {"a": "1", "b": "2"}
    with pytest.raises(positions.PositionError, match="not JSON"):
        positions.decode("{", "snapshot 1")


class _Snap:
    def __init__(self, snapshot_id: int, parent: int | None, summary: dict[str, str]) -> None:
        self.snapshot_id, self.parent_snapshot_id, self.summary = snapshot_id, parent, summary


class _Lineage:
    def __init__(self, *snapshots: _Snap) -> None:
        self.by_id = {s.snapshot_id: s for s in snapshots}
        self.current = snapshots[-1]

    def current_snapshot(self) -> _Snap:
        return self.current

    def snapshot_by_id(self, snapshot_id: int) -> _Snap | None:
        return self.by_id.get(snapshot_id)


def test_the_ledger_of_a_lineage_survives_compaction_and_stale_carry_forward() -> None:
    prop = positions.PROPERTY_PREFIX + "p"
    table = _Lineage(
        _Snap(1, None, {prop: '{"a/0": "10", "a/1": "5"}'}),
        _Snap(2, 1, {prop: '{"a/0": "20"}'}),  # a writer that carried an older map forward
        _Snap(3, 2, {"operation": "replace"}),  # compaction: no ledger
    )
    assert positions.committed_positions(table, prop) == ({"a/0": "20", "a/1": "5"}, 2)
    assert positions.committed_positions(table, positions.PROPERTY_PREFIX + "other") == ({}, None)


def test_configured_types() -> None:
    assert iceberg_type("long") == LongType()
    assert iceberg_type(" TimestampTZ ") == TimestamptzType()
    assert iceberg_type("decimal(10, 2)") == DecimalType(10, 2)
    for bad in ("varchar", "decimal(40,2)", "decimal(2,3)"):
        with pytest.raises(ValueError):
            iceberg_type(bad)


def test_partition_fields() -> None:
    assert partition_field("event", "w") == ("event", IdentityTransform(), "event")
    assert partition_field("day(ts)", "w") == ("ts", DayTransform(), "ts_day")
    assert partition_field("bucket(16, id)", "w") == ("id", BucketTransform(16), "id_bucket")
    assert partition_field("truncate(4,name)", "w") == ("name", TruncateTransform(4), "name_truncate")
    for bad in ("bucket(id)", "week(ts)", "day(ts"):
        with pytest.raises(ConfigError) as caught:
            partition_field(bad, "sinks[0].partition_by[0]")
        assert caught.value.path == "sinks[0].partition_by[0]"


def test_inferred_columns_leave_out_what_only_held_null() -> None:
    schema = infer_columns([{"a": 1, "b": None, "c": {"x": None, "y": "s"}}, {"a": 2.5, "b": None}])
    assert schema == pa.schema([("a", pa.float64()), ("c", pa.struct([("y", pa.string())]))])


def test_conversion_finds_the_culprits_and_what_to_widen() -> None:
    schema = Schema(
        NestedField(1, "id", StringType(), required=True),
        NestedField(2, "n", IntegerType()),
    )
    converter = RecordConverter(schema, "add")
    converted = converter.convert([b'{"id": "a", "n": 1}', b"not json", b"[1]", b'{"n": 2}'], None)
    assert converted.rows == [0]
    assert converted.failures[1].startswith("invalid JSON")
    assert converted.failures[2] == "not a JSON object: list"
    assert converted.failures[3] == "required column 'id' is missing or null"
    widen = converter.convert(None, [{"id": "a", "n": 2**33}])
    assert widen.data is None and widen.evolution.widen_to_long == {"n"}
    new = converter.convert(None, [{"id": "a", "tags": ["x"]}])
    assert new.evolution.add == {"tags": pa.list_(pa.string())}
    truncating = converter.convert(None, [{"id": "a", "n": 1.5}, {"id": "b", "n": 2}])
    assert truncating.rows == [1] and "1.5" in truncating.failures[0]


def test_rest_catalog_properties_sign_with_sigv4_and_refuse_credentials(tmp_path: Path) -> None:
    env = PluginEnv("p", AwsSettings(region="eu-west-1"), tmp_path, "sinks[0]")
    s3tables = CatalogOptions(
        type="rest",
        uri="https://s3tables.eu-west-1.amazonaws.com/iceberg",
        warehouse="arn:aws:s3tables:eu-west-1:123456789012:bucket/lake",
    )
    props = catalog_properties(s3tables, env)
    assert props["rest.sigv4-enabled"] == "true"
    assert props["rest.signing-name"] == "s3tables"
    assert props["rest.signing-region"] == "eu-west-1"
    assert props["warehouse"] == s3tables.warehouse
    glue = CatalogOptions(type="rest", uri="https://glue.eu-west-1.amazonaws.com/iceberg", warehouse="123456789012")
    assert catalog_properties(glue, env)["rest.signing-name"] == "glue"
    assert not any("key" in k or "token" in k for k in props)
    for key in ("s3.access-key-id", "rest.session-token", "client.secret-access-key", "token"):
        with pytest.raises(ConfigError, match="standard AWS chain"):
            catalog_properties(CatalogOptions(type="rest", uri=glue.uri, properties={key: "x"}), env)


def test_sql_catalog_paths_are_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    env = PluginEnv("p", AwsSettings(region="us-east-1", endpoints={"s3": "http://127.0.0.1:5"}), tmp_path, "s")
    props = catalog_properties(CatalogOptions(type="sql", path="out/cat.db", warehouse="out/wh"), env)
    assert props["uri"] == f"sqlite:///{tmp_path / 'out' / 'cat.db'}"
    assert props["warehouse"] == (tmp_path / "out" / "wh").as_uri()
    assert props["s3.endpoint"] == "http://127.0.0.1:5"
    assert not (tmp_path / "out").exists(), "nothing is made before start-up"


def test_without_pyiceberg_the_sink_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from streamkit.config import convert
    from streamkit.connectors.iceberg.settings import IcebergOptions
    from streamkit.connectors.iceberg.sink import IcebergSink

    monkeypatch.delitem(sys.modules, "streamkit.connectors.iceberg.table", raising=False)
    for name in [n for n in sys.modules if n == "pyiceberg" or n.startswith("pyiceberg.")]:
        monkeypatch.setitem(sys.modules, name, None)  # an import of it now fails, as when not installed
    section = {"catalog": {"type": "sql", "path": "c.db", "warehouse": "wh"}, "table": "a.b"}
    env = PluginEnv("p", AwsSettings(), tmp_path, "sinks[0]")
    with pytest.raises(ConfigError) as caught:
        IcebergSink(convert(section, IcebergOptions, "sinks[0]"), env)
    assert caught.value.path == "sinks[0].type"
    assert "pip install 'streamkit[iceberg]'" in str(caught.value)
