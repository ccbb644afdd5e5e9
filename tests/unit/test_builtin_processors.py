from __future__ import annotations

import calendar
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamkit.chain import Chain
from streamkit.config import AwsSettings
from streamkit.plugin_env import PluginEnv
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode, JsonEncode
from streamkit.processors.project import Map
from streamkit.processors.timestamp import Timestamp
from tests.helpers import ticketed

ENV = PluginEnv("t", AwsSettings(), Path.cwd(), where="processors[0]")

ROWS = [
    {"id": 1, "status": "ok", "user": {"id": 7, "country": "DE"}, "ts": 1_700_000_000_000},
    {"id": 2, "status": "err", "user": {"id": 8}, "ts": 1_700_000_000_500},
    {"id": 3, "status": "ok", "user": {"id": 9, "country": "US"}},
]


async def run(*processors: Any, rows: list[Any] = ROWS) -> tuple[list[Any], list[Any]]:
    batch, _ = ticketed(rows)
    outputs, failures = await Chain([JsonDecode(), *processors]).run(batch)
    return outputs, failures


async def test_filter_predicates() -> None:
    keep_ok = Filter(Filter.Options(where={"field": "status", "equals": "ok"}), ENV)
    outputs, _ = await run(keep_ok)
    assert [v["id"] for v in outputs[0].values] == [1, 3]
    nested = Filter(Filter.Options(where={"field": "user.country", "in": ["US", "BR"]}), ENV)
    outputs, _ = await run(nested)
    assert [v["id"] for v in outputs[0].values] == [3]
    dropped = Filter(Filter.Options(where={"field": "user.country", "exists": False}, drop=True), ENV)
    outputs, _ = await run(dropped)
    assert [v["id"] for v in outputs[0].values] == [1, 3]
    none = Filter(Filter.Options(where={"field": "id", "gt": 100}), ENV)
    outputs, _ = await run(none)
    assert outputs == []


async def test_map_projects_renames_and_reports_missing_fields() -> None:
    project = Map(Map.Options(fields={"id": "id", "country": "user.country"}), ENV)
    outputs, _ = await run(project)
    assert outputs[0].values == [{"id": 1, "country": "DE"}, {"id": 2}, {"id": 3, "country": "US"}]
    strict = Map(Map.Options(fields={"country": "user.country"}, missing="fail"), ENV)
    outputs, failures = await run(strict)
    assert outputs[0].values == [{"country": "DE"}, {"country": "US"}]
    assert failures[0].reason == "field 'user.country' is missing"
    assert failures[0].batch.position(0) == 101


async def test_timestamp_extracts_event_time_or_falls_back_to_arrival() -> None:
    outputs, _ = await run(Timestamp(Timestamp.Options(field="ts", unit="ms")))
    event = outputs[0].event_ms
    assert event is not None
    assert event.tolist()[:2] == [1_700_000_000_000, 1_700_000_000_500]
    assert event[2] == outputs[0].arrival_ms[2]
    iso_rows = [{"t": "2026-11-26T13:05:00Z"}, {"t": "not a time"}]
    outputs, failures = await run(
        Timestamp(Timestamp.Options(field="t", unit="iso8601", on_missing="fail")), rows=iso_rows
    )
    assert outputs[0].event_ms is not None
    assert outputs[0].event_ms.tolist() == [calendar.timegm((2026, 11, 26, 13, 5, 0)) * 1000]
    assert "no usable iso8601 timestamp" in failures[0].reason


async def test_a_non_finite_or_huge_timestamp_is_not_usable_never_a_garbage_event_time() -> None:
    rows = [{"ts": float("inf")}, {"ts": float("nan")}, {"ts": 1e300}, {"ts": 1_700_000_000}]
    outputs, failures = await run(Timestamp(Timestamp.Options(field="ts", unit="s", on_missing="fail")), rows=rows)
    assert [f.reason for f in failures] == ["field 'ts' has no usable s timestamp"] * 3
    assert outputs[0].event_ms is not None and outputs[0].event_ms.tolist() == [1_700_000_000_000]
    outputs, _ = await run(Timestamp(Timestamp.Options(field="ts", unit="s")), rows=rows)
    event = outputs[0].event_ms
    assert event is not None
    # on_missing: arrival (the default) falls back to the arrival time, as for an absent field.
    assert event[:3].tolist() == outputs[0].arrival_ms[:3].tolist()


async def test_encode_reuses_bytes_when_values_did_not_change_and_encodes_when_they_did() -> None:
    outputs, _ = await run(JsonEncode())
    assert outputs[0].payloads == [orjson.dumps(r) for r in ROWS]
    project = Map(Map.Options(fields=["id"]), ENV)
    outputs, _ = await run(project, JsonEncode())
    assert outputs[0].payloads == [b'{"id":1}', b'{"id":2}', b'{"id":3}']
    assert np.array_equal(outputs[0].origin, [0, 1, 2])


def test_predicate_fields_name_what_a_predicate_reads() -> None:
    from streamkit.predicates import predicate_fields

    spec = {"all": [{"field": "status", "equals": "ok"}, {"not": {"any": [{"field": "user.country", "in": ["DE"]}]}}]}
    assert predicate_fields(spec) == frozenset({"status", "user.country"})
    assert predicate_fields({"any": [{"field": "a", "exists": True}, {"callable": "m:f"}]}) is None
