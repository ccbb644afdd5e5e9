"""Records to line protocol: escaping per the line-protocol reference, types, time, and refusals.

The expected strings of the first tests are the reference's own examples ("Special characters"). The
round-trip tests read the encoder's lines back with the stand-in's parser, which is written from the
reference alone and shares no code with the encoder.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamkit.batch import RecordBatch
from streamkit.connectors.influxdb.lineproto import escape_key, escape_measurement, quote_string
from streamkit.connectors.influxdb.mapping import FieldOptions, LineMapping, Precision, TagOptions
from streamkit.connectors.timestream.mapping import InvalidRecord, TimeOptions
from streamkit.devtools.localstack.influx_lp import UInt, parse_line
from streamkit.errors import ConfigError
from tests.helpers import P, json_batch


def mapping(
    *,
    measurement: str = "m",
    measurement_field: str | None = None,
    tags: list[str | TagOptions] | None = None,
    fields: list[str | FieldOptions] | None = None,
    time: TimeOptions | None = None,
    precision: Precision = "ms",
) -> LineMapping:
    return LineMapping(
        measurement=measurement,
        measurement_field=measurement_field,
        tags=tags or [],
        fields=fields if fields is not None else ["v"],
        time=time or TimeOptions(field="ts"),
        precision=precision,
        where="sinks[0]",
    )


# -- the reference's examples -------------------------------------------------------------------------
def test_the_reference_examples_of_special_characters() -> None:
    assert escape_measurement("my Table") == "my\\ Table"
    assert quote_string('"string" within a string') == '"\\"string\\" within a string"'
    assert escape_key("tag Key1") + "=" + escape_key("tag Value1") == "tag\\ Key1=tag\\ Value1"
    assert escape_key("🍭") == "🍭"  # nothing else needs escaping
    line = mapping(measurement="myTable", tags=["tagKey"], fields=[FieldOptions("fieldKey", type="string")]).line(
        {"tagKey": "🍭", "fieldKey": "Launch 🚀", "ts": 1556813561098}, None
    )
    assert line == 'myTable,tagKey=🍭 fieldKey="Launch 🚀" 1556813561098'


def test_each_element_escapes_exactly_its_special_characters() -> None:
    # measurement: comma, space (an equals sign is literal there); keys and tag values: comma, equals, space.
    assert escape_measurement("a,b c=d") == "a\\,b\\ c=d"
    assert escape_key("a,b c=d") == "a\\,b\\ c\\=d"
    # string field values: double quote and backslash only; commas, spaces and equals stay as they are.
    assert quote_string('a,b c=d"\\') == '"a,b c=d\\"\\\\"'


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "with space",
        "comma,inside",
        "equals=inside",
        "ends with backslash\\",
        "\\starts",
        "double \\\\ backslash",
        "backslash before comma \\,",
        'quote " inside',
        "ünïcödé ✓",
        " leading and trailing ",
    ],
)
def test_names_tags_and_strings_survive_a_round_trip_through_the_reference_parser(text: str) -> None:
    m = mapping(
        measurement_field="table",
        tags=[TagOptions("t"), TagOptions(text, field="k")],
        fields=[FieldOptions("s", type="string"), FieldOptions(text + "!", field="f")],
    )
    record = {"table": text, "t": text, "k": "x", "s": text, "f": 2.5, "ts": 1_700_000_000_000}
    point = parse_line(m.line(record, None))
    assert point.table == text
    assert point.tags == {"t": text, text: "x"}
    assert point.fields == {"s": text, text + "!": 2.5}
    assert point.timestamp == 1_700_000_000_000


# -- types ----------------------------------------------------------------------------------------------
def test_field_types_and_their_suffixes() -> None:
    m = mapping(
        fields=[
            FieldOptions("f", type="float"),
            FieldOptions("i", type="integer"),
            FieldOptions("u", type="uinteger"),
            FieldOptions("b", type="boolean"),
            FieldOptions("s", type="string"),
            FieldOptions("j", type="string"),
        ]
    )
    line = m.line({"f": 3, "i": "42", "u": 2**64 - 1, "b": "TRUE", "s": 7, "j": {"a": [1]}, "ts": 5}, None)
    assert line == 'm f=3,i=42i,u=18446744073709551615u,b=true,s="7",j="{\\"a\\":[1]}" 5'
    point = parse_line(line)
    assert point.fields["u"] == 2**64 - 1 and isinstance(point.fields["u"], UInt)
    assert point.fields["i"] == 42 and point.fields["b"] is True


def test_auto_writes_every_json_number_as_a_float_so_1_and_1_5_never_conflict() -> None:
    m = mapping(fields=["a", "b", "c", "d"])
    line = m.line({"a": 1, "b": 1.5, "c": True, "d": "x", "ts": 5}, None)
    assert line == 'm a=1,b=1.5,c=true,d="x" 5'
    assert parse_line(line).fields == {"a": 1.0, "b": 1.5, "c": True, "d": "x"}


@pytest.mark.parametrize(
    ("spec", "value", "reason"),
    [
        (FieldOptions("v", type="float"), float("nan"), "not a finite number"),
        (FieldOptions("v", type="float"), True, "boolean"),
        (FieldOptions("v", type="integer"), 2**63, "64-bit integer"),
        (FieldOptions("v", type="integer"), 1.5, "64-bit integer"),
        (FieldOptions("v", type="uinteger"), -1, "unsigned"),
        (FieldOptions("v", type="boolean"), "yes", "not a boolean"),
        (FieldOptions("v", type="string"), "two\nlines", "newline"),
    ],
)
def test_values_that_do_not_fit_their_type_are_refused_with_the_field_named(
    spec: FieldOptions, value: Any, reason: str
) -> None:
    with pytest.raises(InvalidRecord, match=reason) as caught:
        mapping(fields=[spec]).line({"v": value, "ts": 5}, None)
    assert "'v'" in str(caught.value)


# -- refusals: the record goes to the dead-letter queue, never altered --------------------------------------
def test_a_newline_in_a_tag_or_a_comment_measurement_is_refused() -> None:
    with pytest.raises(InvalidRecord, match="newline"):
        mapping(tags=["t"]).line({"t": "a\nb", "v": 1, "ts": 5}, None)
    with pytest.raises(InvalidRecord, match="comment"):
        mapping(measurement_field="m").line({"m": "#hidden", "v": 1, "ts": 5}, None)


def test_missing_values_empty_tags_and_optional_fields() -> None:
    m = mapping(tags=["t", "u"], fields=["v", FieldOptions("w", optional=True)])
    # An empty or missing tag is left out (line protocol has no empty tag value); an optional field too.
    assert m.line({"t": "", "v": 1, "ts": 5}, None) == "m v=1 5"
    with pytest.raises(InvalidRecord, match="field 'v'"):
        m.line({"w": 1, "ts": 5}, None)
    with pytest.raises(InvalidRecord, match="time field 'ts' is missing"):
        m.line({"v": 1}, None)
    with pytest.raises(InvalidRecord, match="scalar"):
        m.line({"t": {"nested": 1}, "v": 1, "ts": 5}, None)


def test_map_batch_reports_each_failure_by_index_and_keeps_the_others() -> None:
    batch = RecordBatch(P, payloads=[b'{"v": 1, "ts": 5}', b"not json", b'{"ts": 5}', b'{"v": 2, "ts": 6}'])
    lines, failures = mapping().map_batch(batch)
    assert lines[0] == b"m v=1 5" and lines[3] == b"m v=2 6"
    assert lines[1] is None and lines[2] is None
    assert [i for i, _ in failures] == [1, 2]
    assert "not JSON" in failures[0][1] and "field 'v'" in failures[1][1]


# -- time -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unit", "precision", "value", "expected"),
    [
        ("SECONDS", "ms", 1_700_000_000.5, 1_700_000_000_500),
        ("MILLISECONDS", "ns", 1_700_000_000_123, 1_700_000_000_123_000_000),
        ("NANOSECONDS", "ns", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("NANOSECONDS", "s", 1_700_000_000_999_999_999, 1_700_000_000),
        ("MILLISECONDS", "ms", "1700000000123", 1_700_000_000_123),
    ],
)
def test_time_fields_are_converted_to_the_precision_with_integers(
    unit: Any, precision: Precision, value: Any, expected: int
) -> None:
    m = mapping(time=TimeOptions(field="ts", unit=unit), precision=precision)
    assert parse_line(m.line({"v": 1, "ts": value}, None)).timestamp == expected


def test_without_a_time_field_the_event_or_arrival_time_is_used() -> None:
    m = mapping(time=TimeOptions(), precision="us")
    batch = json_batch([{"v": 1}, {"v": 2}])
    batch.arrival_ms[:] = [1_700_000_000_001, 1_700_000_000_002]
    lines, failures = m.map_batch(batch)
    assert failures == []
    assert [parse_line(line.decode()).timestamp for line in lines if line] == [
        1_700_000_000_001_000,
        1_700_000_000_002_000,
    ]
    assert m.map_batch(json_batch([{"v": 1}]))[1][0][1].startswith("the record has no event or arrival time")


# -- configuration --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"fields": []}, "sinks[0].fields", "at least one field"),
        ({"fields": ["time"]}, "sinks[0].fields[0]", "reserved"),
        ({"tags": ["_internal"]}, "sinks[0].tags[0]", "reserved"),
        ({"tags": ["v"], "fields": ["v"]}, "sinks[0].fields[0]", "used twice"),
        ({"measurement": "#m"}, "sinks[0].measurement", "comment"),
        ({"measurement": ""}, "sinks[0].measurement", "empty"),
    ],
)
def test_configuration_mistakes_name_the_key(kwargs: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        mapping(**kwargs)
    assert caught.value.path == key


def test_lines_are_bytes_in_utf8() -> None:
    lines, _ = mapping(fields=[FieldOptions("s", type="string")]).map_batch(json_batch([{"s": "é", "ts": 5}]))
    assert lines == [b'm s="\xc3\xa9" 5']
