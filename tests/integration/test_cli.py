"""The ``streamkit`` command as users run it: a real subprocess, real signals, real files."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from tests.helpers import written_ids

CLI = [sys.executable, "-m", "streamkit"]
ROOT = Path(__file__).resolve().parents[2]


def write_pipeline(directory: Path, *, rate: float, count: int, partitions: int = 2) -> Path:
    config = {
        "name": "sigterm-test",
        "source": {"type": "generator", "count": count, "partitions": partitions, "batch_size": 100, "rate": rate},
        "processors": [{"type": "json.decode"}, {"type": "map", "fields": ["id", "seq"]}, {"type": "json.encode"}],
        "sinks": [{"type": "file", "path": "out", "compression": "gzip", "max_records": 500, "max_age_s": 0.2}],
        "dead_letter": {"type": "file", "path": "dlq"},
        "checkpoint": {"type": "file", "path": "checkpoints.json", "interval_s": 0.2},
        "runtime": {"shutdown_grace_s": 5},
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigterm_drains_checkpoints_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    count, partitions = 6000, 2
    pipeline = write_pipeline(tmp_path, rate=1500, count=count, partitions=partitions)
    proc = subprocess.Popen([*CLI, "run", str(pipeline)], stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not list((tmp_path / "out").glob("*.ndjson.gz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "the worker should still be running (rate-limited source)"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        stop_seconds = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert stop_seconds < 5, "exited within the grace period"
    checkpoints = orjson.loads((tmp_path / "checkpoints.json").read_bytes())
    first_run = set(written_ids(tmp_path))
    assert 0 < len(first_run) < count * partitions, "stopped mid-stream"
    for key, checkpoint in checkpoints.items():
        partition = key.rsplit("/", 1)[1]
        # Everything at or below the checkpoint is in the sink: the checkpoint never runs ahead.
        assert {f"{partition}-{i}" for i in range(int(checkpoint) + 1)} <= first_run

    rerun = subprocess.run([*CLI, "run", str(pipeline)], capture_output=True, cwd=tmp_path, timeout=60)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    all_ids = written_ids(tmp_path)
    expected = {f"{p}-{i}" for p in range(partitions) for i in range(count)}
    assert set(all_ids) == expected, "every generated record is in the sink at least once"
    duplicates = len(all_ids) - len(expected)
    # Only records written after the last checkpoint of the first run can repeat.
    assert duplicates <= len(first_run) - sum(int(c) + 1 for c in checkpoints.values())


def test_validate_reports_the_key_path_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {type: generator, count: ten}\nsinks: [{type: memory}]\n")
    result = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}: source.count: Expected 'int', got 'str'" in result.stderr


def test_validate_accepts_a_good_file_and_plugins_lists_builtins(tmp_path: Path) -> None:
    good = write_pipeline(tmp_path, rate=0, count=10)
    result = subprocess.run([*CLI, "validate", str(good)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid pipeline 'sigterm-test'" in result.stdout
    plugins = subprocess.run([*CLI, "plugins"], capture_output=True, text=True, timeout=60)
    for name in ("generator", "json.decode", "filter", "map", "timestamp", "file", "memory"):
        assert name in plugins.stdout


def wait_for_line(log: Path, text: bytes, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the worker's log has ``text`` (the worker got that far), failing if it exits first."""
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s: {log.read_text()[-2000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_sigint_is_a_clean_stop_too(tmp_path: Path, signame: str) -> None:
    pipeline = write_pipeline(tmp_path, rate=500, count=100_000, partitions=1)
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([*CLI, "run", str(pipeline)], stderr=stderr, cwd=tmp_path)
    try:
        # Running, not merely started: on a loaded machine imports alone can take seconds.
        wait_for_line(log, b'"partition assigned"', proc)
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert b"pipeline stopped" in log.read_bytes()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_the_pipeline_is_being_built_is_a_clean_stop(tmp_path: Path, signame: str) -> None:
    """Ctrl-C (or ECS' SIGTERM) during start-up: no traceback, no kill; the run that starts stops at once,
    drained, and exits 0."""
    config = yaml.safe_load(write_pipeline(tmp_path, rate=500, count=100_000, partitions=1).read_text())
    config["processors"].insert(0, {"callable": "tests.integration.slow_build:process"})
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    marker = tmp_path / "building"
    env = {**os.environ, "STREAMKIT_TEST_BUILD_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([*CLI, "run", str(pipeline)], stderr=stderr, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():  # the worker is inside build_pipeline, importing the slow processor
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.02)
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text
    assert f'"signal": "{signame}", "event": "stop requested' in text
    stopped = [orjson.loads(line) for line in text.splitlines() if '"pipeline stopped"' in line]
    assert [(s["drained"], s["records_in"] < 100_000) for s in stopped] == [(True, True)], text[-2000:]


def test_demo_runs_kinesis_to_s3_on_local_stand_ins_and_reports_where_output_landed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # no credentials needed
    env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run(
        [*CLI, "demo", "--records", "1500", "--partitions", "2", "--output", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "produced 1,500 events to Kinesis stream" in result.stdout
    assert "read 1,500 in" in result.stdout
    events = list((tmp_path / "demo" / "s3" / "events").rglob("*.ndjson.gz"))
    assert events, result.stdout
    written = sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in events)
    reported = int(result.stdout.split("sink 'lake' wrote ")[1].split(" ")[0].replace(",", ""))
    assert written == reported > 0
    assert list((tmp_path / "demo" / "s3" / "purchases").rglob("*.parquet"))
    assert "lease table checkpoints: {'shardId-000000000000': '4" in result.stdout


def test_demo_without_node_packages_uses_moto_for_kinesis_and_loses_nothing(tmp_path: Path) -> None:
    """What `pip install 'streamkit[demo]'` gets outside a checkout: no node_modules, so moto serves Kinesis."""
    empty = tmp_path / "no-node-modules"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONUNBUFFERED="1", STREAMKIT_NODE_MODULES=str(empty))
    result = subprocess.run(
        [*CLI, "demo", "--records", "1200", "--partitions", "2", "--output", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moto (no Node.js or kinesalite here) for Kinesis" in result.stderr
    assert "read 1,200 in" in result.stdout
    events = list((tmp_path / "demo" / "s3" / "events").rglob("*.ndjson.gz"))
    written = sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in events)
    reported = int(result.stdout.split("sink 'lake' wrote ")[1].split(" ")[0].replace(",", ""))
    assert written == reported > 0


def test_demo_without_its_extra_says_so_in_one_line(tmp_path: Path) -> None:
    """A missing extra is a one-line message naming what to install, never a traceback."""
    hide = tmp_path / "hide"
    hide.mkdir()
    # Run before streamkit starts: a None entry in sys.modules makes moto look uninstalled to imports and find_spec.
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['moto'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [*CLI, "demo", "--output", str(tmp_path / "demo")], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["demo: needs moto: pip install 'streamkit[demo]'"]
    assert "Traceback" not in result.stderr
