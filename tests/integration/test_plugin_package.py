"""A third-party processor package registers through entry points and runs like a built-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_example_plugin_installs_lists_and_runs(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT / "examples" / "processor-plugin")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    plugins = subprocess.run(
        [sys.executable, "-m", "streamkit", "plugins"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "geo.enrich" in plugins.stdout and "streamkit_geo:GeoEnrich" in plugins.stdout

    config = {
        "source": {"type": "generator", "count": 300},
        "processors": [{"type": "json.decode"}, {"type": "geo.enrich", "field": "user.country"}],
        "sinks": [{"type": "file", "path": "out"}],
        "dead_letter": {"type": "file", "path": "dlq"},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    # Values are nested (user.country) but the plugin reads a flat field: every record fails, by design,
    # and lands in the dead-letter queue with the plugin's reason.
    run = subprocess.run(
        [sys.executable, "-m", "streamkit", "run", str(tmp_path / "p.yaml")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    entries = [orjson.loads(line) for f in (tmp_path / "dlq").glob("*.ndjson") for line in f.read_bytes().splitlines()]
    assert len(entries) == 300
    assert entries[0]["stage"] == "geo.enrich" and entries[0]["reason"].startswith("no region for user.country")

    bad = {**config, "processors": [{"type": "json.decode"}, {"type": "geo.enrich", "feild": "x"}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    validate = subprocess.run(
        [sys.executable, "-m", "streamkit", "validate", str(tmp_path / "bad.yaml")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert validate.returncode == 2
    assert "processors[1].feild: unknown key" in validate.stderr
