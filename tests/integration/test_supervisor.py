"""``streamkit run --processes N`` as users run it: real child processes, real signals, real files and HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import yaml

from streamkit.devtools.localstack import free_port
from tests.helpers import written_ids

CLI = [sys.executable, "-m", "streamkit", "--log-format", "json"]


def write_pipeline(directory: Path, *, count: int, partitions: int, rate: float, **runtime: Any) -> Path:
    config = {
        "name": "processes-test",
        "source": {"type": "generator", "count": count, "partitions": partitions, "batch_size": 100, "rate": rate},
        "processors": [{"type": "json.decode"}, {"type": "map", "fields": ["id", "seq"]}, {"type": "json.encode"}],
        "sinks": [{"type": "file", "path": "out", "compression": "gzip", "max_records": 500, "max_age_s": 0.2}],
        "dead_letter": {"type": "file", "path": "dlq"},
        "checkpoint": {"type": "file", "path": "checkpoints.json", "interval_s": 0.2},
        "runtime": {"shutdown_grace_s": 5, "metrics": {"emf": False}, **runtime},
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class LogLines:
    """The JSON log lines a process writes to stderr, collected by a thread as they come."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.raw.append(line)
            with suppress(orjson.JSONDecodeError):
                self.lines.append(orjson.loads(line))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events(event)) < count:
            assert time.monotonic() < deadline, f"no {count} x {event!r} in: {self.tail()}"
            time.sleep(0.05)
        return self.events(event)

    def tail(self) -> str:
        return b"".join(self.raw[-40:]).decode(errors="replace")


@contextmanager
def supervisor(pipeline: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], LogLines]]:
    proc = subprocess.Popen([*CLI, "run", str(pipeline), *args], stderr=subprocess.PIPE, cwd=pipeline.parent)
    assert proc.stderr is not None
    logs = LogLines(proc.stderr)
    try:
        yield proc, logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        # Children started by this test: end any that outlived the supervisor, by PID.
        for event in logs.events("worker process started"):
            _kill_quietly(event["pid"])


def _kill_quietly(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ", 1)[1][0] != "Z"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_two_processes_split_the_partitions_and_together_write_everything_once(tmp_path: Path) -> None:
    count, partitions = 1500, 4
    pipeline = write_pipeline(tmp_path, count=count, partitions=partitions, rate=0)
    with supervisor(pipeline, "--processes", "2") as (proc, logs):
        assert proc.wait(timeout=90) == 0, logs.tail()
    started = logs.events("worker process started")
    assert sorted(e["process"] for e in started) == [0, 1]
    assert len({e["pid"] for e in started}) == 2
    ids = written_ids(tmp_path)
    assert sorted(ids) == sorted(f"{p}-{i}" for p in range(partitions) for i in range(count)), "each record once"
    # Both processes wrote their checkpoints into the one file without undoing each other's.
    checkpoints = orjson.loads((tmp_path / "checkpoints.json").read_bytes())
    assert checkpoints == {f"generator:generator/{p}": str(count - 1) for p in range(partitions)}


def test_a_crashed_child_is_restarted_and_sigterm_drains_every_child(tmp_path: Path) -> None:
    port = free_port()
    pipeline = write_pipeline(
        tmp_path, count=0, partitions=4, rate=300, health_port=port, metrics={"emf": False, "prometheus": True}
    )
    with supervisor(pipeline, "--processes", "2") as (proc, logs):
        first = logs.wait_for("worker process started", 2)
        victim = first[0]["pid"]
        deadline = time.monotonic() + 30
        while get(port, "/health/ready")[0] != 200:
            assert time.monotonic() < deadline, f"supervisor never ready: {get(port, '/health/ready')}"
            time.sleep(0.2)
        status, body = get(port, "/health/ready")
        assert "process 0" in body and "process 1" in body
        # The supervisor polls each child's /metrics once a second: both appear within a few polls.
        while not all(f'process="{i}"' in get(port, "/metrics")[1] for i in (0, 1)):
            assert time.monotonic() < deadline, get(port, "/metrics")
            time.sleep(0.2)
        status, metrics = get(port, "/metrics")
        assert status == 200 and "# TYPE streamkit_records_in_total counter" in metrics
        assert metrics.count("# TYPE streamkit_records_in_total counter") == 1, "one family, samples of both"

        os.kill(victim, signal.SIGKILL)
        crashed = logs.wait_for("worker process crashed: restarting")
        assert crashed[0]["pid"] == victim and crashed[0]["exit_code"] == -signal.SIGKILL
        restarted = logs.wait_for("worker process started", 3)[-1]
        assert restarted["process"] == first[0]["process"] and restarted["restarts"] == 1
        # The restarted child reads and checkpoints its partitions again.
        checkpoints_file = tmp_path / "checkpoints.json"
        deadline = time.monotonic() + 30
        while not checkpoints_file.exists() or len(orjson.loads(checkpoints_file.read_bytes())) < 4:
            assert time.monotonic() < deadline, logs.tail()
            time.sleep(0.1)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, logs.tail()
    survivors = [e["pid"] for e in logs.events("worker process started") if alive(e["pid"])]
    assert survivors == [], "every child stopped with the supervisor"
    ids = written_ids(tmp_path)
    checkpoints = orjson.loads((tmp_path / "checkpoints.json").read_bytes())
    assert set(checkpoints) == {f"generator:generator/{p}" for p in range(4)}
    for key, checkpoint in checkpoints.items():
        partition = key.rsplit("/", 1)[1]
        # Nothing is checkpointed past what the sink holds, across the crash and the restart.
        assert {f"{partition}-{i}" for i in range(int(checkpoint) + 1)} <= set(ids)


def test_children_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, count=0, partitions=2, rate=200)
    with supervisor(pipeline, "--processes", "2") as (proc, logs):
        children = [e["pid"] for e in logs.wait_for("worker process started", 2)]
        time.sleep(1.0)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in children):
            assert time.monotonic() < deadline, f"children outlived their supervisor: {logs.tail()}"
            time.sleep(0.1)


def test_a_bad_pipeline_fails_before_any_child_starts(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, count=10, partitions=2, rate=0)
    result = subprocess.run(
        [*CLI, "run", str(pipeline), "--processes", "2", "--set", "source.count=ten"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "source.count" in result.stderr
    assert "worker process started" not in result.stderr


def test_processes_setting_is_validated_with_its_key_path(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, count=10, partitions=2, rate=0, processes=0)
    result = subprocess.run([*CLI, "validate", str(pipeline)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "runtime.processes" in result.stderr
