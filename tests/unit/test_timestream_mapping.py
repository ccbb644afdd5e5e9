"""Timestream record mapping: fields to dimensions and measures, time, version, validation, hoisting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamkit.acks import PartitionTracker
from streamkit.batch import RecordBatch
from streamkit.build import build_plugin
from streamkit.config import AwsSettings
from streamkit.connectors.timestream.mapping import (
    VERSION_SCALE,
    DimensionOptions,
    MeasureOptions,
    RecordMapping,
    TimeOptions,
    hoist,
)
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from tests.helpers import P, json_batch, ticketed


def mapping(**overrides: Any) -> RecordMapping:
    options: dict[str, Any] = {
        "time": TimeOptions(field="ts", unit="SECONDS"),
        "dimensions": ["host", DimensionOptions(name="country", field="user.country")],
        "measures": [
            MeasureOptions(name="cpu"),
            MeasureOptions(name="requests", type="BIGINT"),
            MeasureOptions(name="state", type="VARCHAR", optional=True),
            MeasureOptions(name="up", type="BOOLEAN", optional=True),
            MeasureOptions(name="booted", field="boot_ms", type="TIMESTAMP", optional=True),
        ],
        "measure_name": "metrics",
    }
    options.update(overrides)
    return RecordMapping(**options)


def decoded(values: list[Any]) -> RecordBatch:
    return RecordBatch(P, payloads=None, values=values)


GOOD: dict[str, Any] = {"ts": 1_795_000_000, "host": "web-1", "user": {"country": "DE"}, "cpu": 0.5, "requests": 12}


def test_a_multi_measure_record_with_dimensions_time_and_typed_values() -> None:
    value = {**GOOD, "state": "ok", "up": True, "boot_ms": 1_794_000_000_000}
    records, failures = mapping().map_batch(decoded([value]))
    assert failures == []
    assert records == [
        {
            "Time": "1795000000",
            "TimeUnit": "SECONDS",
            "Dimensions": [{"Name": "host", "Value": "web-1"}, {"Name": "country", "Value": "DE"}],
            "MeasureName": "metrics",
            "MeasureValueType": "MULTI",
            "MeasureValues": [
                {"Name": "cpu", "Value": "0.5", "Type": "DOUBLE"},
                {"Name": "requests", "Value": "12", "Type": "BIGINT"},
                {"Name": "state", "Value": "ok", "Type": "VARCHAR"},
                {"Name": "up", "Value": "true", "Type": "BOOLEAN"},
                {"Name": "booted", "Value": "1794000000000", "Type": "TIMESTAMP"},
            ],
        }
    ]


def test_a_single_measure_needs_no_measure_name() -> None:
    m = RecordMapping(time=TimeOptions(), dimensions=["host"], measures=[MeasureOptions(name="cpu")], measure_name=None)
    batch = decoded([{"host": "a", "cpu": 3}]).with_event_ms(np.array([1_795_000_000_123]))
    [record], _ = m.map_batch(batch)
    assert record == {
        "Time": "1795000000123",
        "TimeUnit": "MILLISECONDS",
        "Dimensions": [{"Name": "host", "Value": "a"}],
        "MeasureName": "cpu",
        "MeasureValueType": "DOUBLE",
        "MeasureValue": "3",
    }


def test_without_a_time_field_the_event_time_is_used_then_the_arrival_time() -> None:
    m = mapping(time=TimeOptions())
    batch = decoded([GOOD, GOOD])
    batch.arrival_ms = np.array([1_795_000_000_001, 0])
    records, failures = m.map_batch(batch)
    assert records[0] is not None and records[0]["Time"] == "1795000000001"
    assert failures == [(1, "the record has no event or arrival time (set time.field or add a timestamp)")]
    records, failures = m.map_batch(batch.with_event_ms(np.array([5, 6])))
    assert [r["Time"] for r in records if r] == ["5", "6"] and failures == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ts": None}, "time field 'ts' is missing"),
        ({"ts": "soon"}, "time field 'ts': could not convert string to float: 'soon'"),
        ({"ts": -5}, "time field 'ts': -5 is not a positive epoch time"),
        ({"cpu": None}, "measure 'cpu': field 'cpu' is missing"),
        ({"cpu": "nan"}, "measure 'cpu' (DOUBLE): 'nan' is not a finite number"),
        ({"cpu": True}, "measure 'cpu' (DOUBLE): is a boolean, expected a number"),
        ({"requests": 2**64}, "measure 'requests' (BIGINT): 18446744073709551616 is not a 64-bit integer"),
        ({"requests": 1.5}, "measure 'requests' (BIGINT): 1.5 is not a 64-bit integer"),
        ({"up": "yes"}, "measure 'up' (BOOLEAN): 'yes' is not a boolean"),
        ({"state": ""}, "measure 'state' is empty"),
        ({"host": {"a": 1}}, "dimension 'host' is a dict, expected a scalar"),
        ({"state": "x" * 2100}, "exceeds Timestream's 2,048-byte limit"),
    ],
)
def test_records_that_cannot_be_mapped_fail_with_a_reason(change: dict[str, Any], reason: str) -> None:
    records, failures = mapping().map_batch(decoded([GOOD, {**GOOD, **change}]))
    assert records[0] is not None and records[1] is None
    [(index, why)] = failures
    assert index == 1 and reason in why


def test_optional_measures_are_left_out_but_a_record_needs_one_measure() -> None:
    m = mapping(measures=[MeasureOptions(name="a", optional=True), MeasureOptions(name="b", optional=True)])
    records, failures = m.map_batch(decoded([{**GOOD, "b": 2}, dict(GOOD)]))
    assert records[0] is not None and records[0]["MeasureValues"] == [{"Name": "b", "Value": "2", "Type": "DOUBLE"}]
    assert failures == [(1, "no measure value present")]


def test_missing_dimensions_are_omitted_and_scalars_become_text() -> None:
    records, _ = mapping().map_batch(decoded([{**GOOD, "host": 7, "user": {}}]))
    assert records[0] is not None and records[0]["Dimensions"] == [{"Name": "host", "Value": "7"}]


def test_undecoded_payloads_are_parsed_and_bad_json_fails() -> None:
    batch = RecordBatch(P, payloads=[orjson.dumps(GOOD), b"{nope", b"[1]"])
    records, failures = mapping().map_batch(batch)
    assert records[0] is not None
    assert [i for i, _ in failures] == [1, 2]
    assert failures[0][1].startswith("payload is not JSON")
    assert failures[1][1] == "expected a JSON object, got list"


def test_version_from_integer_positions_is_the_offset_plus_one() -> None:
    batch, _ = ticketed([GOOD, GOOD, GOOD])  # positions 100, 101, 102
    records, _ = mapping(version="position").map_batch(batch)
    assert [r["Version"] for r in records if r] == [101, 102, 103]


def test_version_from_kinesis_sequence_numbers_follows_arrival_time_then_source_order() -> None:
    batch = json_batch([GOOD] * 4)
    tracker = PartitionTracker(P)
    seqs = [f"4959{i:052d}" for i in range(4)]  # 56 digits: no int64 holds them
    batch.ticket = tracker.open(seqs, batch.total_bytes())
    batch.arrival_ms = np.array([1_795_000_000_000, 1_795_000_000_000, 1_795_000_000_000, 1_795_000_000_007])
    records, _ = mapping(version="position").map_batch(batch)
    versions = [r["Version"] for r in records if r]
    base = 1_795_000_000_000 * VERSION_SCALE
    assert versions == [base, base + 1, base + 2, base + 7 * VERSION_SCALE]
    assert all(v < 2**63 for v in versions)


def test_hoisting_moves_what_every_record_shares_into_common_attributes() -> None:
    values = [{**GOOD, "host": "web-1", "ts": GOOD["ts"] + i} for i in range(3)]
    values[2]["user"] = {"country": "US"}
    records, _ = mapping().map_batch(decoded(values))
    full = [r for r in records if r]
    common, slim = hoist(full)
    assert common == {
        "MeasureName": "metrics",
        "MeasureValueType": "MULTI",
        "TimeUnit": "SECONDS",
        "Dimensions": [{"Name": "host", "Value": "web-1"}],
    }
    assert [r.get("Dimensions") for r in slim] == [
        [{"Name": "country", "Value": "DE"}],
        [{"Name": "country", "Value": "DE"}],
        [{"Name": "country", "Value": "US"}],
    ]
    assert all("MeasureName" not in r and "TimeUnit" not in r for r in slim)
    assert full[0]["MeasureName"] == "metrics"  # the input records are not modified
    assert hoist(full[:1]) == ({}, full[:1])


def _build(section: dict[str, Any]) -> Any:
    env = PluginEnv("test", AwsSettings(), Path.cwd())
    return build_plugin("sink", {"type": "timestream", **section}, "sinks[2]", env, {"name", "when"})


BASE = {"database": "db", "table": "t", "measures": ["cpu"]}


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({"dimensions": [f"d{i}" for i in range(129)]}, "sinks[2].dimensions", "Timestream allows 128"),
        ({"measures": [f"m{i}" for i in range(257)], "measure_name": "x"}, "sinks[2].measures", "holds 256"),
        ({"measures": ["a", "b"]}, "sinks[2].measure_name", "2 measures need a measure_name"),
        ({"dimensions": ["time"]}, "sinks[2].dimensions[0]", "reserved"),
        ({"dimensions": ["cpu"]}, "sinks[2].measures[0]", "used twice"),
        ({"measures": [{"name": "x", "type": "FLOAT"}]}, "sinks[2].measures[0].type", "Invalid enum value"),
        ({"time": {"unit": "HOURS"}}, "sinks[2].time.unit", "Invalid enum value"),
        ({"version": "sequence"}, "sinks[2].version", "Invalid enum value"),
        ({"table": None}, "sinks[2].table", "Expected"),
    ],
)
def test_the_mapping_is_validated_when_the_pipeline_is_built(section: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build({**BASE, **section})
    assert info.value.path == path
    assert message in info.value.message


def test_a_valid_section_builds_without_connecting() -> None:
    sink = _build(
        {
            **BASE,
            "dimensions": ["host", {"name": "country", "field": "user.country"}],
            "measures": [{"name": "cpu"}, {"name": "n", "type": "BIGINT"}],
            "measure_name": "m",
            "version": "position",
        }
    )
    assert sink.options.max_records == 100
    assert sink.aws.endpoint == "the AWS timestream-write endpoint of the default region"
