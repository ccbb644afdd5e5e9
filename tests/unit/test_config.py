from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamkit.build import build_pipeline
from streamkit.config import load_config, parse_config, parse_size
from streamkit.errors import ConfigError


def minimal(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "source": {"type": "generator", "count": 10},
        "sinks": [{"type": "memory"}],
    }
    config.update(overrides)
    return config


def build(data: dict[str, Any]) -> Any:
    return build_pipeline(parse_config(data, origin="test.yaml"))


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (minimal(sinks=[{"type": "memory", "max_recordz": 5}]), "sinks[0].max_recordz", "unknown key"),
        (
            minimal(sinks=[{"type": "memory", "max_records": "many"}]),
            "sinks[0].max_records",
            "Expected 'int'",
        ),
        (minimal(sinks=[{"type": "memory", "max_bytes": "4 parsecs"}]), "sinks[0].max_bytes", "4MiB"),
        (minimal(source={"type": "generatr"}), "source.type", "unknown source type 'generatr'; installed: "),
        (minimal(sinks=[{"max_records": 5}]), "sinks[0].type", "missing"),
        (minimal(processors=[{"type": "filter"}]), "processors[0].where", "missing required key"),
        (
            minimal(processors=[{"type": "filter", "where": {"field": "a", "equal": 1}}]),
            "processors[0].where",
            "exactly one comparison",
        ),
        (
            minimal(processors=[{"callable": "nosuchmodule:fn"}]),
            "processors[0].callable",
            "cannot import module",
        ),
        (minimal(runtime={"shutdown_grace_s": "soon"}), "runtime.shutdown_grace_s", "Expected 'float'"),
        (minimal(sourc={}), "sourc", "unknown top-level key"),
        ({"sinks": [{"type": "memory"}]}, "source", "missing required section"),
        (minimal(sinks=[{"type": "memory"}, {"type": "memory", "name": "memory-0"}]), "sinks", "unique"),
    ],
)
def test_config_errors_name_the_key_path_and_what_is_allowed(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(data)
    text = str(info.value)
    assert text.startswith(f"test.yaml: {path}: "), text
    assert message in text


def test_env_interpolation_with_defaults_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SK_COUNT", "25")
    config = parse_config(minimal(source={"type": "generator", "count": "${SK_COUNT}", "stream": "s-${SK_NAME:-dflt}"}))
    assert config.source == {"type": "generator", "count": 25, "stream": "s-dflt"}


def test_unset_env_var_without_default_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SK_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"source.stream: environment variable SK_MISSING is not set"):
        parse_config(minimal(source={"type": "generator", "stream": "${SK_MISSING}"}))


def test_sizes() -> None:
    assert parse_size("4MiB", "x") == 4 * 1024**2
    assert parse_size("500kB", "x") == 500_000
    assert parse_size(1024, "x") == 1024
    with pytest.raises(ConfigError):
        parse_size("-1", "x")


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match=r"p.yaml: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read pipeline file"):
        load_config(tmp_path / "missing.yaml")


def test_a_complete_pipeline_file_builds(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        """
name: orders
source: {type: generator, count: 100, partitions: 2}
processors:
  - type: json.decode
  - type: filter
    where: {all: [{field: status, equals: ok}, {not: {field: event, in: [logout]}}]}
  - type: map
    fields: {id: id, country: user.country}
  - callable: tests.unit.test_config:upper_id
sinks:
  - {type: memory, name: everything}
  - {type: file, name: de, path: out, when: {field: country, equals: DE}, max_bytes: 1MiB}
dead_letter: {type: file, path: dlq}
checkpoint: {type: file, path: cp.json, interval_s: 2}
runtime: {max_bytes_in_flight: 8MiB}
"""
    )
    pipeline = build_pipeline(load_config(tmp_path / "p.yaml"))
    assert [r.name for r in pipeline.routes] == ["everything", "de"]
    assert pipeline.routes[1].sink.buffer_options.max_bytes == 1024**2  # type: ignore[attr-defined]
    assert pipeline.checkpoint_interval_s == 2
    assert pipeline.settings.max_bytes_in_flight == 8 * 1024**2
    assert len(pipeline.chain.processors) == 4


def upper_id(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "id": str(value["id"]).upper()}
