from __future__ import annotations

import asyncio
import io
from typing import Any

import orjson
import pytest

from streamkit.batch import Partition
from streamkit.config import apply_overrides, parse_config
from streamkit.emf import METRIC_NAMES, EmfReporter
from streamkit.errors import ConfigError
from streamkit.health import HealthServer
from streamkit.metrics import Metrics

P = Partition("kinesis:s", "shardId-0")


def test_emf_reports_counter_deltas_and_latency_percentiles() -> None:
    metrics = Metrics()
    metrics.records_in(P, 100, 1000)
    for ms in range(1, 101):
        metrics.processed(P, 90, ms / 1000)
    metrics.sink_records("lake", 90)
    metrics.sink_write("lake", 0.05)
    metrics.sink_retry("lake", throttled=True)
    out = io.StringIO()
    reporter = EmfReporter(metrics, "orders", out=out)
    reporter.emit()
    metrics.records_in(P, 5, 50)
    reporter.emit()
    docs = [orjson.loads(line) for line in out.getvalue().splitlines()]
    partition_docs = [d for d in docs if "Partition" in d]
    assert [d["RecordsIn"] for d in partition_docs] == [100, 5]
    assert partition_docs[0]["ProcessingLatencyP50"] == pytest.approx(50.5, abs=1)
    sink = next(d for d in docs if d.get("Sink") == "lake")
    assert sink["SinkThrottles"] == 1 and sink["SinkRetries"] == 1 and sink["SinkRequests"] == 1
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            assert {m["Name"] for m in directive["Metrics"]} <= set(METRIC_NAMES)


def test_overrides_set_nested_keys_and_list_items() -> None:
    data: dict[str, Any] = {"source": {"type": "generator"}, "sinks": [{"type": "memory"}]}
    apply_overrides(data, ["sinks[0].max_records=7", "runtime.shutdown_grace_s=3.5", "source.stream=x"], "t")
    config = parse_config(data)
    assert config.sinks[0]["max_records"] == 7
    assert config.runtime.shutdown_grace_s == 3.5
    assert config.source["stream"] == "x"
    with pytest.raises(ConfigError, match=r"sinks\[3\]\.type: override names list item 3"):
        apply_overrides(data, ["sinks[3].type=file"], "t")
    with pytest.raises(ConfigError, match=r"not KEY\.PATH=VALUE"):
        apply_overrides(data, ["oops"], "t")


async def http(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_health_routes() -> None:
    state = {"ready": False}
    server = HealthServer(
        "127.0.0.1",
        0,
        live=lambda: (True, "ok"),
        ready=lambda: (state["ready"], "holds no partition" if not state["ready"] else "1 held"),
        metrics=lambda: "streamkit_x 1\n",
    )
    await server.start()
    try:
        assert (await http(server.port, "/health/live"))[0] == 200
        status, body = await http(server.port, "/health/ready")
        assert status == 503 and orjson.loads(body)["reason"] == "holds no partition"
        state["ready"] = True
        assert (await http(server.port, "/health/ready"))[0] == 200
        assert await http(server.port, "/metrics") == (200, b"streamkit_x 1\n")
        assert (await http(server.port, "/other"))[0] == 404
        assert (await http(server.port, "/health/live", "POST"))[0] == 405
    finally:
        await server.stop()
