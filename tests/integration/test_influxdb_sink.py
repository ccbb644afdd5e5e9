"""The InfluxDB sink against the loopback stand-in of the write endpoints, and moto's Secrets Manager.

No InfluxDB server is installable here: :class:`streamkit.devtools.localstack.InfluxStandIn` implements the
documented ``/api/v3/write_lp`` and ``/api/v2/write`` endpoints (auth, gzip, precision, partial writes,
their error bodies) over real HTTP on 127.0.0.1. Faults the stand-in does not produce by itself (429 and
503 with Retry-After, v2 parse errors for lines our encoder never writes wrong) are injected as whole
responses with :meth:`InfluxStandIn.inject`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import msgspec
import orjson
import pytest
import structlog

from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, convert, load_config
from streamkit.connectors.influxdb import InfluxDBOptions, InfluxDBSink
from streamkit.connectors.local.generator import GeneratorOptions, make_payload
from streamkit.connectors.local.memory_sink import MemoryDeadLetter
from streamkit.devtools.localstack import InfluxStandIn, MotoServer
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Runtime
from tests.helpers import started, ticketed, wait_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "apiv3_s3cr3t-t0ken-value"
REGION = "us-east-1"
FAST_RETRY = {"base_delay_s": 0.001, "max_delay_s": 0.01, "max_attempts": 4}


@pytest.fixture(scope="module")
def influx_session() -> Iterator[InfluxStandIn]:
    with InfluxStandIn.start(TOKEN, org="acme", buckets=("metrics",)) as server:
        yield server


@pytest.fixture
def influx(influx_session: InfluxStandIn, monkeypatch: pytest.MonkeyPatch) -> InfluxStandIn:
    influx_session.reset()
    influx_session.rotate_token(TOKEN)
    influx_session.max_body_bytes = 10 * 1024 * 1024
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    return influx_session


def section(server: InfluxStandIn, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": server.url,
        "database": "sensors",
        "measurement": "clicks",
        "tags": ["site", {"name": "country", "field": "user.country"}],
        "fields": [{"name": "seq", "type": "integer"}, "amount"],
        "time": {"field": "ts"},
        "token_env": "INFLUX_TOKEN",
        "retry": FAST_RETRY,
    }
    return {**base, **overrides}


def make_sink(
    server: InfluxStandIn, aws: AwsSettings | None = None, **overrides: Any
) -> tuple[InfluxDBSink, MemoryDeadLetter]:
    options = convert(section(server, **overrides), InfluxDBOptions, "sinks[0]")
    sink = InfluxDBSink(options, PluginEnv("test", aws or AwsSettings(region=REGION), Path.cwd(), "sinks[0]"))
    dlq = MemoryDeadLetter()
    sink.bind("influx", dlq, None)
    return sink, dlq


def clicks(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"seq": i, "ts": 1_795_000_000_000 + i, "site": "shop", "user": {"country": "DE"}, "amount": i / 4}
        for i in range(start, start + n)
    ]


async def write(sink: InfluxDBSink, values: list[dict[str, Any]]) -> Any:
    batch, tracker = ticketed(values)
    async with started(sink):
        await sink.submit(batch)
        await sink.flush()
    assert sink.dead_letters is not None
    await sink.dead_letters.flush()
    return tracker


# -- writing -----------------------------------------------------------------------------------------------
async def test_v3_writes_gzip_line_protocol_and_reads_back_every_value(influx: InfluxStandIn) -> None:
    sink, dlq = make_sink(influx, max_records=40)
    tracker = await write(sink, clicks(100))
    points = influx.points("sensors")
    assert [p.fields["seq"] for p in points] == list(range(100))
    first = points[1]
    assert first.table == "clicks" and first.tags == {"country": "DE", "site": "shop"}
    assert first.fields == {"seq": 1, "amount": 0.25}
    assert first.time_ns == (1_795_000_000_000 + 1) * 1_000_000
    # 40 lines per request, gzip, the v3 parameters, the Bearer token.
    assert [len(r.lines) for r in influx.requests] == [40, 40, 20]
    request = influx.requests[0]
    assert request.path == "/api/v3/write_lp" and request.content_encoding == "gzip"
    assert request.query == {"db": "sensors", "precision": "millisecond"}
    assert all(r.authorized for r in influx.requests)
    assert dlq.entries == []
    assert tracker.checkpoint_position() == 199
    assert sink.lines_written == 100


async def test_v2_writes_to_an_org_bucket_with_a_token_header(influx: InfluxStandIn) -> None:
    sink, _ = make_sink(
        influx,
        api="v2",
        org="acme",
        bucket="metrics",
        database=None,
        gzip=False,
        time={"field": "ts", "unit": "SECONDS"},
    )
    tracker = await write(sink, [{**c, "ts": 1_795_000_000 + i} for i, c in enumerate(clicks(5))])
    request = influx.requests[0]
    assert request.path == "/api/v2/write" and request.content_encoding is None and request.authorized
    assert request.query == {"org": "acme", "bucket": "metrics", "precision": "s"}
    assert [p.time_ns for p in influx.points("metrics")] == [(1_795_000_000 + i) * 10**9 for i in range(5)]
    assert tracker.checkpoint_position() == 104


async def test_unmappable_records_are_dead_lettered_before_sending(influx: InfluxStandIn) -> None:
    values = clicks(6)
    values[2] = {**values[2], "seq": "many"}
    values[4] = {**values[4], "site": "two\nlines"}
    sink, dlq = make_sink(influx)
    tracker = await write(sink, values)
    assert sorted(p.fields["seq"] for p in influx.points("sensors")) == [0, 1, 3, 5]
    reasons = {int(e["position"]) - 100: e["reason"] for e in dlq.entries}
    assert set(reasons) == {2, 4}
    assert "field 'seq' (integer)" in reasons[2] and "newline" in reasons[4]
    assert all(e["attempts"] == 0 for e in dlq.entries)
    assert tracker.checkpoint_position() == 105


# -- partial writes, mapped line by line ---------------------------------------------------------------------
async def test_v3_partial_write_dead_letters_exactly_the_refused_lines(influx: InfluxStandIn) -> None:
    # The first write fixes `amount` as a float; later lines sending it as a string conflict.
    sink, dlq = make_sink(influx, fields=[{"name": "seq", "type": "integer"}, {"name": "amount", "type": "auto"}])
    await write(sink, clicks(1, start=1000))
    values = clicks(10)
    for i in (3, 7):
        values[i] = {**values[i], "amount": "lots"}
    sink, dlq = make_sink(influx, fields=[{"name": "seq", "type": "integer"}, {"name": "amount", "type": "auto"}])
    tracker = await write(sink, values)
    assert len(influx.requests) == 2  # one request: nothing resent
    assert sorted(p.fields["seq"] for p in influx.points("sensors")) == [0, 1, 2, 4, 5, 6, 8, 9, 1000]
    reasons = {int(e["position"]) - 100: e["reason"] for e in dlq.entries}
    assert set(reasons) == {3, 7}
    assert (
        reasons[3] == "InfluxDB refused the line: invalid column type for column 'amount', expected float, got string"
    )
    assert tracker.checkpoint_position() == 109


async def test_v3_without_partial_writes_drops_the_named_line_and_resends_the_rest(influx: InfluxStandIn) -> None:
    fields = [{"name": "seq", "type": "integer"}, {"name": "amount", "type": "auto"}]
    sink, _ = make_sink(influx, fields=fields)
    await write(sink, clicks(1, start=1000))
    values = clicks(6)
    values[1] = {**values[1], "amount": "lots"}
    values[4] = {**values[4], "amount": "more"}
    sink, dlq = make_sink(influx, fields=fields, accept_partial=False)
    tracker = await write(sink, values)
    assert influx.requests[1].query["accept_partial"] == "false"
    # 6 lines refused at line 2, then 5 lines refused at line 3 (the original 5th), then 4 lines written.
    assert [len(r.lines) for r in influx.requests[1:]] == [6, 5, 4]
    assert sorted(p.fields["seq"] for p in influx.points("sensors")) == [0, 2, 3, 5, 1000]
    assert sorted(int(e["position"]) - 100 for e in dlq.entries) == [1, 4]
    assert tracker.checkpoint_position() == 105


@pytest.mark.parametrize("names_line", [True, False])
async def test_v2_parse_error_rejects_the_request_and_names_the_first_bad_line(
    influx: InfluxStandIn, names_line: bool
) -> None:
    sink, dlq = make_sink(influx, api="v2", org="acme", bucket="metrics", database=None, gzip=False)
    values = clicks(4)
    bad_line = f"clicks,country=DE,site=shop seq=2i,amount=0.5 {values[2]['ts']}"
    answer: dict[str, Any] = {"code": "invalid", "message": f"unable to parse '{bad_line}': injected"}
    if names_line:
        answer["line"] = 3
    influx.inject(400, answer)
    tracker = await write(sink, values)
    assert influx.requests[0].lines[2] == bad_line  # the stand-in saw exactly the line the answer quotes
    assert [len(r.lines) for r in influx.requests] == [4, 3]
    assert sorted(p.fields["seq"] for p in influx.points("metrics")) == [0, 1, 3]
    assert [(int(e["position"]), e["reason"]) for e in dlq.entries] == [
        (102, f"InfluxDB refused the line: unable to parse '{bad_line}': injected")
    ]
    assert tracker.checkpoint_position() == 103


async def test_v2_partial_write_without_line_numbers_is_narrowed_down_by_halving(influx: InfluxStandIn) -> None:
    fields = [{"name": "seq", "type": "integer"}, {"name": "amount", "type": "auto"}]
    sink, _ = make_sink(influx, api="v2", org="acme", bucket="metrics", database=None, fields=fields)
    await write(sink, clicks(1, start=1000))
    values = clicks(16)
    values[11] = {**values[11], "amount": "lots"}
    sink, dlq = make_sink(influx, api="v2", org="acme", bucket="metrics", database=None, fields=fields)
    tracker = await write(sink, values)
    statuses = [r.status for r in influx.requests[1:]]
    assert statuses[0] == 422 and statuses.count(422) == 5  # 16 -> 8 -> 4 -> 2 -> 1
    # Lines written by a 422 answer were sent again: the same point, stored once.
    assert sorted(p.fields["seq"] for p in influx.points("metrics")) == [*range(11), *range(12, 16), 1000]
    assert [int(e["position"]) for e in dlq.entries] == [111]
    assert "HTTP 422" in dlq.entries[0]["reason"] and "field type conflict" in dlq.entries[0]["reason"]
    assert tracker.checkpoint_position() == 115


async def test_a_request_too_large_is_halved_and_a_line_too_large_dead_lettered(influx: InfluxStandIn) -> None:
    influx.max_body_bytes = 400
    values = [{**c, "site": "s" * (500 if c["seq"] == 5 else 20)} for c in clicks(12)]
    sink, dlq = make_sink(influx, gzip=False)
    tracker = await write(sink, values)
    assert sorted(p.fields["seq"] for p in influx.points("sensors")) == [i for i in range(12) if i != 5]
    assert [int(e["position"]) for e in dlq.entries] == [105]
    assert "HTTP 413" in dlq.entries[0]["reason"]
    assert tracker.checkpoint_position() == 111


async def test_a_request_refused_whatever_the_lines_stops_instead_of_dead_lettering(influx: InfluxStandIn) -> None:
    for _ in range(7):  # 4 lines, then 2 + 2, then 1 + 1 + 1 + 1: nothing ever written
        influx.inject(400, {"error": "invalid database name"})
    sink, dlq = make_sink(influx)
    batch, tracker = ticketed(clicks(4))
    with pytest.raises(SinkError, match="the request, not the data, is wrong"):
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()
    assert dlq.entries == [] and tracker.checkpoint_position() is None


# -- retries ---------------------------------------------------------------------------------------------
async def test_429_and_503_are_retried_after_retry_after(influx: InfluxStandIn) -> None:
    influx.inject(429, {"code": "too many requests", "message": "slow down"}, {"Retry-After": "1"})
    influx.inject(503, b"", {"Retry-After": "0"})
    influx.inject(502, b"bad gateway")
    sink, dlq = make_sink(influx)
    began = time.monotonic()
    tracker = await write(sink, clicks(3))
    elapsed = time.monotonic() - began
    assert [r.status for r in influx.requests] == [429, 503, 502, 204]
    assert elapsed >= 1.0  # the server asked for a second; the jittered back-off alone is ~10 ms
    assert sink.retries == 3 and len(influx.points("sensors")) == 3
    assert dlq.entries == [] and tracker.checkpoint_position() == 102


async def test_retries_that_run_out_acknowledge_nothing(influx: InfluxStandIn) -> None:
    for _ in range(4):
        influx.inject(503, b"busy", {"Retry-After": "0"})
    sink, dlq = make_sink(influx)
    batch, tracker = ticketed(clicks(3))
    with pytest.raises(SinkError, match="still HTTP 503: busy after 4 attempts") as caught:
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert caught.value.retryable
    await dlq.flush()
    assert dlq.entries == [] and tracker.checkpoint_position() is None


async def test_a_dropped_connection_is_retried(influx: InfluxStandIn) -> None:
    sink, _ = make_sink(influx, url="http://127.0.0.1:9", retry={**FAST_RETRY, "max_attempts": 2})
    batch, tracker = ticketed(clicks(1))
    with pytest.raises(SinkError, match=r"ClientConnectorError.*after 2 attempts"):
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert sink.retries == 1 and tracker.checkpoint_position() is None


async def test_a_wrong_token_stops_the_pipeline_and_is_never_shown(influx: InfluxStandIn) -> None:
    influx.rotate_token("another-token")
    sink, dlq = make_sink(influx)
    batch, tracker = ticketed(clicks(2))
    with structlog.testing.capture_logs() as logs, pytest.raises(SinkError, match="HTTP 401") as caught:
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    assert "environment variable INFLUX_TOKEN" in str(caught.value)
    assert tracker.checkpoint_position() is None and dlq.entries == []
    shown = [str(caught.value), repr(sink), repr(sink.options), repr(sink.tokens), repr(sink._token), str(logs)]
    assert all(TOKEN not in text for text in shown)
    assert sink.options.token_env == "INFLUX_TOKEN"


@pytest.mark.parametrize(
    ("overrides", "injected", "message"),
    [
        (
            {"api": "v2", "org": "acme", "bucket": "nope", "database": None},
            None,
            "HTTP 404 .*nope.* not found",
        ),
        ({}, (403, {"error": "forbidden"}), "HTTP 403"),
        ({}, (307, {}), "redirect"),
    ],
)
async def test_destination_problems_stop_without_dead_lettering(
    influx: InfluxStandIn, overrides: dict[str, Any], injected: tuple[int, dict[str, Any]] | None, message: str
) -> None:
    if injected is not None:
        influx.inject(injected[0], injected[1], {"Location": "http://elsewhere.example/api/v3/write_lp"})
    sink, dlq = make_sink(influx, **overrides)
    batch, tracker = ticketed(clicks(3))
    with pytest.raises(SinkError, match=message):
        async with started(sink):
            await sink.submit(batch)
            await sink.flush()
    await dlq.flush()
    assert dlq.entries == [] and tracker.checkpoint_position() is None
    assert len(influx.requests) == 1  # not retried, not halved, and the redirect was not followed


# -- the token from Secrets Manager (moto) ---------------------------------------------------------------------
def secrets(moto: MotoServer) -> Any:
    return boto3.client("secretsmanager", endpoint_url=moto.endpoint_url, region_name=REGION)


def moto_aws(moto: MotoServer) -> AwsSettings:
    return AwsSettings(region=REGION, endpoints={"secretsmanager": moto.endpoint_url})


async def test_the_token_comes_from_a_json_secret_and_is_read_again_after_rotation(
    influx: InfluxStandIn, moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    arn = secrets(moto_server).create_secret(
        Name="influx/writer", SecretString=orjson.dumps({"engine": "timestream-influxdb", "token": TOKEN}).decode()
    )["ARN"]
    sink, _ = make_sink(influx, aws=moto_aws(moto_server), token_env=None, token_secret=arn)
    first, _ = ticketed(clicks(2))
    second, tracker = ticketed(clicks(2, start=2))
    with structlog.testing.capture_logs() as logs:
        async with started(sink):
            await sink.submit(first)
            await sink.flush()
            assert len(influx.points("sensors")) == 2
            # Rotation: the secret and the server change; the next write gets a 401 and reads the secret again.
            rotated = orjson.dumps({"token": "rotated"}).decode()
            secrets(moto_server).put_secret_value(SecretId=arn, SecretString=rotated)
            influx.rotate_token("rotated")
            await sink.submit(second)
            await sink.flush()
    assert tracker.checkpoint_position() == 101
    assert len(influx.points("sensors")) == 4
    assert [r.status for r in influx.requests] == [204, 401, 204]
    assert TOKEN not in str(logs) and "rotated" not in str(logs)


async def test_a_bare_secret_string_is_the_token(
    influx: InfluxStandIn, moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    secrets(moto_server).create_secret(Name="influx-token", SecretString=TOKEN)
    sink, _ = make_sink(influx, aws=moto_aws(moto_server), token_env=None, token_secret="influx-token")
    await write(sink, clicks(1))
    assert influx.requests[0].authorized


@pytest.mark.parametrize(
    ("secret_string", "message"),
    [(None, "ResourceNotFoundException"), ('{"password": "hunter2-value"}', "without a string 'token' key")],
)
async def test_an_unusable_secret_fails_start_up_naming_the_key(
    influx: InfluxStandIn, moto_server: MotoServer, aws_env: dict[str, str], secret_string: str | None, message: str
) -> None:
    if secret_string is not None:
        secrets(moto_server).create_secret(Name="influx-token", SecretString=secret_string)
    sink, _ = make_sink(influx, aws=moto_aws(moto_server), token_env=None, token_secret="influx-token")
    with pytest.raises(ConfigError, match=message) as caught:
        await sink.start()
    assert caught.value.path == "sinks[0].token_secret"
    assert "hunter2-value" not in str(caught.value)  # the key names, never a value


# -- configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"token_env": None}, "sinks[0].token_secret", "exactly one"),
        ({"token_secret": "arn"}, "sinks[0].token_secret", "exactly one"),
        ({"database": None}, "sinks[0].database", "set database"),
        ({"api": "v2"}, "sinks[0].bucket", "set org and bucket"),
        ({"url": "http://influx.example.com:8086"}, "sinks[0].url", "clear text"),
        ({"url": "influx:8086"}, "sinks[0].url", "http"),
    ],
)
def test_configuration_mistakes_fail_with_the_key_path(
    influx: InfluxStandIn, overrides: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make_sink(influx, **overrides)
    assert caught.value.path == key


# -- in a pipeline ------------------------------------------------------------------------------------------
EXAMPLE = Path(__file__).parents[2] / "examples" / "pipelines" / "generator-to-influxdb.yaml"


def test_the_example_pipeline_validates() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    result = subprocess.run(
        [sys.executable, "-m", "streamkit", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "valid pipeline 'clicks-to-influxdb'" in result.stdout


async def test_the_example_pipeline_runs_against_the_stand_in_and_checkpoints_what_was_written(
    influx: InfluxStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFLUXDB_URL", influx.url)
    monkeypatch.setenv("INFLUXDB_TOKEN", TOKEN)
    monkeypatch.setenv("RECORDS", "300")
    example = load_config(EXAMPLE)
    config = dataclasses.replace(
        example,
        dead_letter={"type": "memory"},
        checkpoint={"type": "memory", "interval_s": 0.05},
        runtime=msgspec.structs.replace(example.runtime, gc_tuning=False),
    )
    pipeline = build_pipeline(config)
    summary = await Runtime(pipeline).run(asyncio.Event())
    # Regenerate what the source produced: every valid record whose status is not "err" is a point.
    source = {k: v for k, v in example.source.items() if k != "type"}
    options = convert(source, GeneratorOptions, "source")
    expected, poison = set(), 0
    for partition in range(4):
        for index in range(300):
            try:
                record = orjson.loads(make_payload(options, partition, index))
            except orjson.JSONDecodeError:
                poison += 1
                continue
            if record["status"] != "err":
                expected.add(record["ts"] * 1_000_000)
    points = influx.points("clicks")
    assert sorted(p.time_ns for p in points) == sorted(expected)
    assert all(
        p.tags.keys() == {"event", "country"} and p.fields.keys() == {"amount", "seq", "user_id", "status"}
        for p in points
    )
    assert len(MemoryDeadLetter.instances[-1].entries) == poison > 0
    assert summary.checkpoints and set(summary.checkpoints.values()) == {"299"}
    assert all(r.content_encoding == "gzip" and r.query["precision"] == "millisecond" for r in influx.requests)


async def test_a_quiet_sink_writes_on_age_without_a_flush(influx: InfluxStandIn) -> None:
    sink, _ = make_sink(influx, max_age_s=0.1, max_records=1000)
    batch, tracker = ticketed(clicks(3))
    stop = asyncio.Event()
    async with started(sink):
        timer = asyncio.create_task(sink.run(stop))
        await sink.submit(batch)
        await wait_for(lambda: tracker.checkpoint_position() == 102, timeout=5)
        stop.set()
        await timer
    assert len(influx.points("sensors")) == 3 and len(influx.requests) == 1
