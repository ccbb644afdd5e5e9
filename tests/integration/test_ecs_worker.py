"""`streamkit run` as an ECS task: health endpoint, SIGTERM hand-over, EMF metrics on stdout."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import yaml

from streamkit.devtools.localstack import free_port
from streamkit.emf import METRIC_NAMES
from tests.integration.kinesis_helpers import create_stream, put_json

CLI = [sys.executable, "-m", "streamkit"]


def http_status(url: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body, or (0, {}) for no answer: not listening yet, or listening but no answer
    within 2 s (a worker starting on a loaded machine accepts connections seconds before its loop answers;
    a read timeout is raised as TimeoutError, not as URLError)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def first_answer(url: str, worker: subprocess.Popen[bytes], timeout: float) -> tuple[int, dict[str, Any]]:
    """The first answer of an endpoint of a starting worker (failing if the worker exits first)."""
    deadline = time.monotonic() + timeout
    while (answer := http_status(url))[0] == 0:
        assert worker.poll() is None, f"the worker exited ({worker.returncode}) before answering"
        assert time.monotonic() < deadline, f"no answer from {url} in {timeout} s"
        time.sleep(0.05)
    return answer


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def read_ids(directory: Path) -> list[int]:
    ids: list[int] = []
    for file in sorted(directory.glob("*.ndjson.gz")):
        ids.extend(orjson.loads(line)["id"] for line in gzip.decompress(file.read_bytes()).splitlines())
    return ids


def owners(dynamodb: str, table: str) -> dict[str, str | None]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S") for i in items}


def checkpoints(dynamodb: str, table: str) -> dict[str, str]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i["checkpoint"]["S"] for i in items}


def worker_config(tmp: Path, kinesis: str, dynamodb: str) -> Path:
    config = {
        "name": "ecs",
        "source": {
            "type": "kinesis",
            "stream": "events",
            "worker_id": "${WORKER}",
            "failover_time_s": 3,
            "taker_interval_s": 0.5,
            "idle_poll_s": 0.2,
        },
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "file", "path": "out-${WORKER}", "compression": "gzip", "max_age_s": 0.2}],
        "dead_letter": {"type": "file", "path": "dlq-${WORKER}"},
        "checkpoint": {"interval_s": 0.5},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 10, "health_host": "127.0.0.1", "metrics": {"interval_s": 1}},
    }
    path = tmp / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_worker(config: Path, worker: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WORKER": worker}
    return subprocess.Popen(
        [*CLI, "run", str(config), "--health-port", str(port)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"{worker}.log", "wb"),
    )


@pytest.mark.usefixtures("aws_env")
def test_sigterm_drains_checkpoints_releases_and_the_peer_takes_over_at_once(
    tmp_path: Path, kinesalite: Any, moto_server: Any
) -> None:
    client = create_stream(kinesalite.endpoint_url, "events", shards=4)
    put_json(client, "events", [{"id": i} for i in range(2000)])
    config = worker_config(tmp_path, kinesalite.endpoint_url, moto_server.endpoint_url)
    port_a, port_b = free_port(), free_port()
    a = start_worker(config, "a", port_a, tmp_path)
    b: subprocess.Popen[bytes] | None = None
    try:
        # Live from its first answer on (start-up may take seconds on a loaded machine).
        assert first_answer(f"http://127.0.0.1:{port_a}/health/live", a, 30)[0] == 200
        wait_until(lambda: http_status(f"http://127.0.0.1:{port_a}/health/ready")[0] == 200, 30, "worker a ready")
        wait_until(lambda: len(read_ids(tmp_path / "out-a")) >= 2000, 30, "worker a to read everything")
        b = start_worker(config, "b", port_b, tmp_path)
        wait_until(lambda: http_status(f"http://127.0.0.1:{port_b}/health/live")[0] == 200, 30, "worker b live")
        time.sleep(1.0)

        signalled = time.monotonic()
        a.send_signal(signal.SIGTERM)
        a_out, _ = a.communicate(timeout=15)
        a_exit = time.monotonic()
        assert a.returncode == 0, (tmp_path / "a.log").read_text()[-3000:]
        assert a_exit - signalled < 10, "exited within the grace period"
        # Released on the way out: b holds all four leases within about one taker interval (0.5 s),
        # far sooner than expiry (failover_time_s = 3) would allow.
        wait_until(lambda: set(owners(moto_server.endpoint_url, "ecs-leases").values()) == {"b"}, 2.5, "b owns all")
        takeover = time.monotonic() - a_exit
        print(f"takeover after clean shutdown: {takeover:.2f}s")

        # Every record was checkpointed before the hand-over: b re-delivers nothing.
        shard_ends = {s["ShardId"]: s for s in client.list_shards(StreamName="events")["Shards"]}
        assert set(checkpoints(moto_server.endpoint_url, "ecs-leases")) == set(shard_ends)
        put_json(client, "events", [{"id": i} for i in range(2000, 2100)])
        wait_until(lambda: len(read_ids(tmp_path / "out-b")) >= 100, 30, "b to read the new records")
        time.sleep(1.0)
        all_ids = read_ids(tmp_path / "out-a") + read_ids(tmp_path / "out-b")
        assert sorted(all_ids) == list(range(2100)), "every record once: nothing lost, nothing replayed"

        emf = [orjson.loads(line) for line in a_out.splitlines() if line.startswith(b"{")]
        assert any(doc.get("Pipeline") == "ecs" for doc in emf)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert b is not None and b.returncode == 0


def validate_emf(doc: dict[str, Any]) -> list[str]:
    """Check one document against the Embedded Metric Format specification; returns its metric names."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000
    names: list[str] = []
    for directive in aws["CloudWatchMetrics"]:
        assert isinstance(directive["Namespace"], str) and directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for dimension in dimension_set:
                assert isinstance(doc[dimension], str), f"dimension {dimension} is a top-level string"
        for metric in directive["Metrics"]:
            assert metric["Unit"] in {"Count", "Bytes", "Milliseconds"}
            assert isinstance(doc[metric["Name"]], (int, float)), f"{metric['Name']} is a top-level number"
            names.append(metric["Name"])
    return names


def test_emf_lines_are_valid_embedded_metric_format_with_documented_names(tmp_path: Path) -> None:
    config = {
        "name": "emf",
        "source": {"type": "generator", "count": 3000, "partitions": 2, "rate": 3000},
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "memory", "name": "mem"}],
        "runtime": {"metrics": {"interval_s": 0.3, "namespace": "streamkit-test"}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([*CLI, "run", str(tmp_path / "p.yaml")], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    docs = [orjson.loads(line) for line in result.stdout.splitlines() if b'"_aws"' in line]
    assert len(docs) >= 4
    seen: set[str] = set()
    for doc in docs:
        seen.update(validate_emf(doc))
    assert seen <= set(METRIC_NAMES)
    assert {"RecordsIn", "BytesIn", "ProcessingLatencyP99", "SinkRequests", "SinkLatencyP50", "LeasesHeld"} <= seen
    # Counters are deltas: summed over all reports they give the totals.
    assert sum(d.get("RecordsIn", 0) for d in docs if "Partition" in d) == 6000
    assert sum(d.get("SinkRecords", 0) for d in docs if d.get("Sink") == "mem") == 6000


def test_prometheus_endpoint_serves_the_same_counters(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "name": "prom",
        "source": {"type": "generator", "count": 0, "rate": 200},
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "memory", "name": "mem"}],
        "runtime": {"health_host": "127.0.0.1", "health_port": port, "metrics": {"emf": False, "prometheus": True}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*CLI, "run", str(tmp_path / "p.yaml")], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/health/ready")[0] == 200, 20, "ready")
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
        assert 'streamkit_records_in_total{partition="generator:generator/0",pipeline="prom"}' in text
        assert "streamkit_leases_held" in text
        assert http_status(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
