"""The health endpoint against hostile or broken clients, over a real socket on loopback: it answers with
an HTTP error and one structured log line, never a traceback, and keeps serving."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import cast

import orjson
import pytest
import structlog

from streamkit import log as logsetup
from streamkit.config import RuntimeSettings, parse_config
from streamkit.errors import ConfigError
from streamkit.health import MAX_HEADER_LINES, MAX_LINE_BYTES, HealthServer
from streamkit.observe import Observability
from streamkit.runtime import Runtime


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What streamkit's own JSON logging writes, line by line."""
    out = io.StringIO()
    logsetup.configure("json", "INFO", out=out)
    yield out
    structlog.reset_defaults()


@pytest.fixture
async def server(logs: io.StringIO) -> AsyncIterator[HealthServer]:
    health = HealthServer("127.0.0.1", 0, live=lambda: (True, "ok"), ready=lambda: (True, "1 partition(s) held"))
    await health.start()
    try:
        yield health
    finally:
        await health.stop()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b"\r\n", 1)[0].split()[1])


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), f"plain text in the JSON log stream: {text[:500]}"
    return [orjson.loads(line) for line in lines]


async def test_an_oversized_request_line_gets_431_and_one_structured_log_line(
    server: HealthServer, logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    logs.seek(0)
    logs.truncate()
    caplog.set_level(logging.DEBUG)
    response = await exchange(server.port, b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 431
    assert b"Connection: close" in response
    rejected = [line for line in json_lines(logs.getvalue()) if line["event"] == "health request rejected"]
    assert len(rejected) == 1 and rejected[0]["status"] == 431 and rejected[0]["level"] == "warning"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "asyncio logged a traceback"
    # The endpoint keeps answering.
    assert status_of(await exchange(server.port, b"GET /health/live HTTP/1.1\r\n\r\n")) == 200


async def test_an_oversized_header_line_and_too_many_headers_get_431(server: HealthServer, logs: io.StringIO) -> None:
    long_header = b"GET /health/live HTTP/1.1\r\nX-Big: " + b"b" * (MAX_LINE_BYTES + 1) + b"\r\n\r\n"
    assert status_of(await exchange(server.port, long_header)) == 431
    many = b"GET /health/live HTTP/1.1\r\n" + b"X-A: 1\r\n" * (MAX_HEADER_LINES + 1) + b"\r\n"
    assert status_of(await exchange(server.port, many)) == 431
    events = [line["event"] for line in json_lines(logs.getvalue())]
    assert events.count("health request rejected") == 2


async def test_a_malformed_request_line_gets_400(server: HealthServer, logs: io.StringIO) -> None:
    assert status_of(await exchange(server.port, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n")) == 400
    assert status_of(await exchange(server.port, b"GET\r\n\r\n")) == 400
    json_lines(logs.getvalue())


async def test_a_tcp_check_that_sends_nothing_is_not_logged(server: HealthServer, logs: io.StringIO) -> None:
    logs.seek(0)
    logs.truncate()
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()
        await writer.wait_closed()
    assert status_of(await exchange(server.port, b"GET /health/live HTTP/1.1\r\n\r\n")) == 200
    assert json_lines(logs.getvalue()) == []


async def test_a_probe_that_raises_gets_500_and_a_structured_line(logs: io.StringIO) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("probe bug")

    health = HealthServer("127.0.0.1", 0, live=lambda: (True, "ok"), ready=broken)
    await health.start()
    try:
        assert status_of(await exchange(health.port, b"GET /health/ready HTTP/1.1\r\n\r\n")) == 500
    finally:
        await health.stop()
    failed = [line for line in json_lines(logs.getvalue()) if line["event"] == "health request failed"]
    assert len(failed) == 1 and "probe bug" in str(failed[0]["error"])


def observability(**runtime: object) -> Observability:
    settings = parse_config(
        {
            "source": {"type": "generator"},
            "sinks": [{"type": "memory"}],
            "runtime": {**runtime, "metrics": {"emf": False}},
        }
    ).runtime
    # Binding the endpoint needs no runtime (the probes read it only when asked).
    return Observability(cast(Runtime, object()), settings)


async def test_the_bind_address_is_the_health_host_setting(logs: io.StringIO) -> None:
    assert RuntimeSettings().health_host == "0.0.0.0", "the default docs/observability.md states"
    observed = observability(health_host="127.0.0.1", health_port=0)
    await observed.start()
    try:
        assert observed.health is not None and observed.health._server is not None
        assert {s.getsockname()[0] for s in observed.health._server.sockets} == {"127.0.0.1"}
        assert status_of(await exchange(observed.health.port, b"GET /health/live HTTP/1.1\r\n\r\n")) == 200
    finally:
        await observed.stop()


async def test_a_port_in_use_is_a_config_error_naming_the_setting(logs: io.StringIO) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        observed = observability(health_host="127.0.0.1", health_port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match=r"runtime\.health_port: cannot listen on 127\.0\.0\.1:\d+"):
            await observed.start()
        await observed.stop()
