"""Every numeric setting has bounds in its schema, and a value outside them fails at start-up (exit 2) with
the key path, before anything connects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
import yaml

from streamkit import cli
from streamkit.aws_lambda.pipeline import LambdaOptions
from streamkit.config import AwsSettings, CheckpointSettings, RuntimeSettings
from streamkit.plugins import GROUPS, available, load_plugin


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    # cli.main configures logging onto the sys.stderr capsys installed; later tests must not write to it.
    yield
    structlog.reset_defaults()


CORE_SETTINGS: list[type[msgspec.Struct]] = [RuntimeSettings, CheckpointSettings, AwsSettings, LambdaOptions]


def settings_structs() -> Iterator[tuple[str, type[msgspec.Struct]]]:
    """The core settings and the Options of every installed plugin (built-ins included)."""
    for struct in CORE_SETTINGS:
        yield struct.__name__, struct
    for kind in GROUPS:
        for info in available(kind):
            options = getattr(load_plugin(kind, info.name, "type"), "Options", None)
            if options is not None:
                yield f"{kind} {info.name}", options


def unbounded_numbers(info: msgspec.inspect.Type, path: str, seen: set[type]) -> Iterator[str]:
    """Key paths of int/float settings reachable from ``info`` with neither a lower nor an upper bound."""
    if isinstance(info, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        if info.ge is None and info.gt is None and info.le is None and info.lt is None:
            yield path
    elif isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            yield from unbounded_numbers(member, path, seen)
    elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)):
        yield from unbounded_numbers(info.item_type, f"{path}[]", seen)
    elif isinstance(info, msgspec.inspect.StructType) and info.cls not in seen:
        seen.add(info.cls)
        for field in info.fields:
            yield from unbounded_numbers(field.type, f"{path}.{field.encode_name}", seen)
    # Size (a custom type) is positive by construction; dict values pass through to libraries
    # (librdkafka, the schema registry client) that check their own settings.


@pytest.mark.parametrize(("name", "struct"), list(settings_structs()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_numeric_setting_has_a_bound(name: str, struct: type[msgspec.Struct]) -> None:
    missing = list(unbounded_numbers(msgspec.inspect.type_info(struct), name, set()))
    assert not missing, f"numeric settings without msgspec.Meta bounds: {missing}"


def test_every_builtin_plugin_is_walked() -> None:
    names = {name for name, _ in settings_structs()}
    assert {"sink s3", "sink firehose", "source kafka", "source kinesis", "source generator"} <= names


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"sinks": [{"type": "memory", "max_concurrent_writes": 0}]}, "sinks[0].max_concurrent_writes"),
    ({"source": {"type": "generator", "batch_size": 0}}, "source.batch_size"),
    ({"source": {"type": "generator", "count": -5}}, "source.count"),
    ({"runtime": {"shutdown_grace_s": -3}}, "runtime.shutdown_grace_s"),
    ({"runtime": {"health_port": 99999}}, "runtime.health_port"),
    ({"runtime": {"metrics": {"interval_s": 0}}}, "runtime.metrics.interval_s"),
    ({"checkpoint": {"interval_s": 0}}, "checkpoint.interval_s"),
    ({"source": {"type": "generator", "error_ratio": 1.5}}, "source.error_ratio"),
    ({"sinks": [{"type": "memory", "retry": {"base_delay_s": 0}}]}, "sinks[0].retry.base_delay_s"),
    ({"sinks": [{"type": "memory", "max_age_s": -1}]}, "sinks[0].max_age_s"),
    ({"sinks": [{"type": "firehose", "stream": "s", "max_records": 0}]}, "sinks[0].max_records"),
    (
        {"sinks": [{"type": "s3", "bucket": "b", "client": {"max_pool_connections": 0}}]},
        "sinks[0].client.max_pool_connections",
    ),
    (
        {"source": {"type": "kafka", "bootstrap_servers": "b:9092", "topics": "t", "group_id": "g", "batch_size": 0}},
        "source.batch_size",
    ),
    ({"source": {"type": "kinesis", "stream": "s", "reads_per_second": 6}}, "source.reads_per_second"),
]


def pipeline_file(tmp_path: Path, change: dict[str, Any]) -> Path:
    data: dict[str, Any] = {"source": {"type": "generator", "count": 10}, "sinks": [{"type": "memory"}]}
    data.update(change)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("change", "key"), BAD_VALUES, ids=[key for _, key in BAD_VALUES])
def test_a_value_out_of_bounds_is_a_config_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str
) -> None:
    path = pipeline_file(tmp_path, change)
    assert cli.main(["validate", str(path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"configuration error: {path}: {key}: " in err, err
    assert "Traceback" not in err


def test_run_with_an_out_of_range_health_port_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(tmp_path, {})
    assert cli.main(["run", str(path), "--health-port", "99999"]) == cli.EXIT_CONFIG
    assert "runtime.health_port: " in capsys.readouterr().err
