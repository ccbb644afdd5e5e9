"""``json.project`` gives what ``json.decode -> filter -> map`` gives, and dead-letters what it cannot read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamkit.acks import PartitionTracker
from streamkit.batch import RecordBatch
from streamkit.chain import Chain
from streamkit.config import AwsSettings
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.plugins import load_plugin
from streamkit.processor import Failure
from streamkit.processors.filter import Filter
from streamkit.processors.json_codec import JsonDecode
from streamkit.processors.json_project import JsonProject
from streamkit.processors.project import Map
from tests.helpers import P

ENV = PluginEnv("t", AwsSettings(), Path.cwd(), where="processors[0]")

ROWS: list[Any] = [
    {"id": 1, "status": "ok", "event": "click", "user": {"id": 7, "country": "DE"}, "amount": 1.5, "pad": "x" * 50},
    {"id": 2, "status": "err", "event": "view", "user": {"id": 8}, "amount": 2},
    {"id": 3, "status": "ok", "event": "buy", "amount": None, "tags": ["a", "b"]},
    {"id": 4, "event": "signup", "user": {"id": 9, "country": "US"}, "amount": 2**62},
    {"status": "ok", "event": "view", "user": [1, 2, {"x": "ü"}]},
    {"id": "5", "status": "OK", "ignored": {"deep": [{"a": 1}]}},
]


def batch_of(payloads: list[bytes]) -> RecordBatch:
    batch = RecordBatch(P, payloads=payloads)
    batch.ticket = PartitionTracker(P).open(list(range(100, 100 + len(payloads))), batch.total_bytes())
    return batch


async def run(processors: list[Any], payloads: list[bytes]) -> tuple[list[Any], list[Failure], list[int]]:
    """Output values (decoded), failures, and the source positions of the outputs."""
    outputs, failures = await Chain(processors).run(batch_of(payloads))
    values = [orjson.loads(p) for out in outputs for p in out.payloads]
    positions = [out.position(i) for out in outputs for i in range(len(out))]
    return values, failures, positions


def failed(failures: list[Failure]) -> dict[int, str]:
    """Source position -> reason, for every failed record."""
    return {f.batch.position(i): f.reason for f in failures for i in range(len(f.batch))}


def project(**options: Any) -> JsonProject:
    return JsonProject(JsonProject.Options(**options), ENV)


def reference(where: dict[str, Any] | None, fields: Any, missing: str = "omit") -> list[Any]:
    chain: list[Any] = [JsonDecode()]
    if where is not None:
        chain.append(Filter(Filter.Options(where=where), ENV))
    chain.append(Map(Map.Options(fields=fields, missing=missing), ENV))  # type: ignore[arg-type]
    return chain


PAYLOADS = [orjson.dumps(r) for r in ROWS]

CASES: list[tuple[dict[str, Any] | None, Any]] = [
    ({"field": "status", "not_equals": "err"}, ["id", "event", "user", "amount"]),
    ({"field": "status", "equals": "ok"}, ["id", "user"]),
    ({"field": "event", "in": ["view", "buy"]}, ["id", "event"]),
    ({"field": "user.country", "exists": True}, ["id", "amount"]),
    ({"any": [{"field": "id", "gt": 2}, {"not": {"field": "status", "equals": "ok"}}]}, ["status", "tags"]),
    ({"field": "event", "matches": "^s"}, {"kind": "event", "who": "user"}),
    (None, ["amount", "id"]),
]


@pytest.mark.parametrize(("where", "fields"), CASES)
async def test_same_records_as_decode_filter_map(where: dict[str, Any] | None, fields: Any) -> None:
    options: dict[str, Any] = {"fields": fields} if where is None else {"fields": fields, "where": where}
    got, failures, positions = await run([project(**options)], PAYLOADS)
    want, _, want_positions = await run(reference(where, fields), PAYLOADS)
    assert got == want
    assert positions == want_positions  # acknowledgements reach the right source records
    assert failures == []


async def test_output_keeps_field_order_and_leaves_out_fields_only_the_filter_read() -> None:
    got, _, _ = await run([project(fields=["user", "id"], where={"field": "status", "equals": "ok"})], PAYLOADS[:1])
    assert got == [{"user": {"id": 7, "country": "DE"}, "id": 1}]
    outputs, _ = await Chain([project(fields=["user", "id"])]).run(batch_of(PAYLOADS[:1]))
    assert outputs[0].payloads == [b'{"user":{"id":7,"country":"DE"},"id":1}']
    assert not outputs[0].decoded  # bytes out: a later reader of fields needs json.decode


@pytest.mark.parametrize("missing", ["null", "fail"])
async def test_missing_fields_like_map(missing: str) -> None:
    where = {"field": "status", "not_equals": "err"}
    got, failures, _ = await run([project(fields=["id", "user"], where=where, missing=missing)], PAYLOADS)
    want, want_failures, _ = await run(reference(where, ["id", "user"], missing), PAYLOADS)
    assert got == want
    assert failed(failures) == failed(want_failures)


async def test_a_record_the_filter_drops_never_fails_for_a_missing_field() -> None:
    payloads = [b'{"status":"err"}', b'{"status":"ok","id":1}']
    got, failures, _ = await run(
        [project(fields=["id"], where={"field": "status", "equals": "ok"}, missing="fail")], payloads
    )
    assert got == [{"id": 1}]
    assert failures == []


async def test_unreadable_records_go_to_the_dead_letter_queue_and_the_rest_go_on() -> None:
    payloads = [PAYLOADS[0], b'{"id": 1, not json', b"[1, 2]", b'"text"', PAYLOADS[2]]
    got, failures, positions = await run([project(fields=["id"], where={"field": "status", "equals": "ok"})], payloads)
    assert got == [{"id": 1}, {"id": 3}]
    assert positions == [100, 104]
    reasons = failed(failures)
    assert set(reasons) == {101, 102, 103}
    assert reasons[101].startswith("invalid JSON")
    assert reasons[102].startswith("not a JSON object")


async def test_invalid_utf8_in_a_projected_field_is_dead_lettered() -> None:
    payloads = [b'{"id": "\xff", "status": "ok"}', b'{"id": 2, "skipped": "\xff"}']
    got, failures, positions = await run([project(fields=["id"])], payloads)
    assert got == [{"id": 2}]  # text of skipped fields is not validated (documented)
    assert positions == [101]
    assert list(failed(failures)) == [100]
    assert "UTF-8" in failures[0].reason


async def test_renames_and_missing_null_with_a_filtered_field() -> None:
    where = {"field": "event", "not_equals": "view"}
    fields = {"event_name": "event", "who": "user"}
    got, _, _ = await run([project(fields=fields, where=where, missing="null")], PAYLOADS)
    want, _, _ = await run(reference(where, fields, "null"), PAYLOADS)
    assert got == want


def test_configuration_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"processors\[0\]\.fields.*nested"):
        project(fields=["user.country"])
    with pytest.raises(ConfigError, match=r"processors\[0\]\.fields"):
        project(fields={"a": "id", "b": "id"})
    with pytest.raises(ConfigError, match=r"processors\[0\]\.where"):
        project(fields=["id"], where={"callable": "os.path:exists"})
    with pytest.raises(ConfigError, match=r"processors\[0\]\.fields"):
        project(fields=[])


def test_registered_as_json_project() -> None:
    assert load_plugin("processor", "json.project", "processors[0].type") is JsonProject
