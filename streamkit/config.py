"""The pipeline file: loading, ``${ENV}`` interpolation, and complete validation at start-up.

Everything is checked before any connection is made, so a typo fails the deploy, not the 3 a.m. batch. An
error names the key path (``sinks[1].max_records``), the bad value and what is allowed. Each plugin's own
section is validated by the plugin's ``Options`` struct under the same path rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

from streamkit.errors import ConfigError
from streamkit.redact import MASK, is_secret

T = TypeVar("T")

_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

TOP_LEVEL_KEYS = ("name", "source", "processors", "sinks", "dead_letter", "checkpoint", "aws", "runtime")


def parse_size(value: Any, where: str) -> int:
    """``"4MiB"``, ``"500kb"`` or a number of bytes, as an int."""
    if isinstance(value, bool):
        raise ConfigError(where, f"expected a size such as 4MiB or 1048576, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(where, f"expected a positive size, got {value}")
        return value
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(where, f"expected a size such as 4MiB, 500kB or 1048576, got {value!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ConfigError(where, f"expected a positive size, got {value!r}")
    return size


class Size(int):
    """A byte size in options: accepts ``4MiB`` / ``500kB`` strings or a number of bytes (always positive)."""


# Every numeric setting carries its bounds in its type, so msgspec rejects a bad value at start-up with the
# key path (tests/unit/test_config_bounds.py fails for a numeric setting without one). Fields with a
# natural upper limit (ports, ratios, service limits) spell it out with their own msgspec.Meta.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Size:
        try:
            return Size(parse_size(obj, ""))
        except ConfigError as exc:
            # msgspec adds the key path to a ValueError raised here.
            raise ValueError(str(exc).removeprefix(": ")) from None
    raise NotImplementedError(f"cannot convert {obj!r} to {tp}")


def convert(data: Any, kind: type[T], where: str) -> T:
    """Validate ``data`` as ``kind`` (a msgspec Struct), with errors that name ``where`` + the inner path."""
    try:
        return msgspec.convert(data, kind, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `")
        inner = at.rstrip("`").removeprefix("$")
        if not inner and (unknown := re.search(r"field `([^`]+)`", message)):
            # msgspec reports unknown and missing keys at the parent; name the key itself.
            inner = f".{unknown.group(1)}"
        path = f"{where}{inner}".lstrip(".")
        raise ConfigError(path or "(top level)", _friendly(message, data, inner)) from None


_BOUND = re.compile(r"^Expected `(int|float)` (>=|>|<=|<) (-?[0-9.e+]+)$")
_MISSING = object()


def _friendly(message: str, data: Any, inner: str) -> str:
    if bound := _BOUND.match(message):
        kind, op, limit = bound.groups()
        if op == ">=" and float(limit) == 0:
            wanted = "zero or more"
        elif (op == ">" and float(limit) == 0) or (op == ">=" and kind == "int" and limit == "1"):
            wanted = "a positive number"
        else:
            wanted = f"{'an integer' if kind == 'int' else 'a number'} {op} {limit.removesuffix('.0')}"
        value = _value_at(data, inner)
        return wanted if value is _MISSING else f"expected {wanted}, got {_shown(inner, value)}"
    message = message.replace("Object contains unknown field", "unknown key")
    message = message.replace("Object missing required field", "missing required key")
    return message.replace("`", "'")


def _value_at(data: Any, inner: str) -> Any:
    """The value at msgspec's error path (``.sinks[0].max_records``) within ``data``, if it is there."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", inner):
        try:
            data = data[name] if name else data[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _shown(inner: str, value: Any) -> str:
    return MASK if is_secret(inner.rpartition(".")[2]) else repr(value)


def interpolate(node: Any, path: str = "", env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; an unset variable without default fails."""
    environ = os.environ if env is None else env
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(path or "(top level)", f"environment variable {name} is not set and has no default")

        replaced = _ENV.sub(substitute, node)
        if replaced != node and _ENV.fullmatch(node):
            # A whole-value reference may be a number or boolean: let YAML type it like a literal.
            try:
                return yaml.safe_load(replaced) if replaced.strip() else replaced
            except yaml.YAMLError:
                return replaced
        return replaced
    if isinstance(node, list):
        return [interpolate(item, f"{path}[{i}]", environ) for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), environ) for k, v in node.items()}
    return node


class AwsSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Region and endpoints. Credentials come only from the standard AWS chain, never from this file."""

    region: str | None = None
    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    """Service name (kinesis, dynamodb, s3, firehose, timestream-write) -> endpoint URL, for local stand-ins."""

    def client_kwargs(self, service: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.region:
            kwargs["region_name"] = self.region
        endpoint = self.endpoints.get(service)
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return kwargs


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True):
    emf: bool = True
    """CloudWatch Embedded Metric Format lines on stdout (picked up by Lambda and the awslogs driver)."""
    namespace: str = "streamkit"
    interval_s: PositiveSeconds = 60.0
    prometheus: bool = False
    """Serve /metrics on the health endpoint (needs the prometheus extra and runtime.health_port)."""


class RuntimeSettings(msgspec.Struct, forbid_unknown_fields=True):
    shutdown_grace_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 25.0
    """SIGTERM -> drained, checkpointed and exited within this many seconds (ECS stopTimeout is 30 s)."""
    max_bytes_in_flight: Size = Size(64 * 1024**2)
    """Memory budget: the measured footprint (streamkit.footprint) of records taken from sources and not yet
    finished: payloads, decoded values sinks keep, positions. Fetching waits above it."""
    fail_fast: bool = False
    """Stop the pipeline at the first record a processor fails on, instead of dead-lettering it."""
    progress_interval_s: PositiveSeconds = 5.0
    health_port: Port | None = None
    """HTTP port for /health/live, /health/ready (and /metrics); off when unset. 0 picks a free port."""
    health_host: str = "0.0.0.0"
    """Address the health endpoint binds (all interfaces, so the container runtime can reach it)."""
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    gc_tuning: bool = True
    """Run the cyclic garbage collector less often (see streamkit.runtime.tune_gc); off for debugging."""
    processes: Annotated[int, msgspec.Meta(ge=1, le=256)] | Literal["auto"] = 1
    """Worker processes on this host (`streamkit run --processes`); `auto` is one per CPU. See supervisor.py."""


class CheckpointSettings(msgspec.Struct, forbid_unknown_fields=False):
    type: str = "memory"
    interval_s: PositiveSeconds = 5.0
    """How often acknowledged positions are written; also written on shutdown and partition hand-off."""


@dataclass
class PipelineConfig:
    """The validated, unbuilt pipeline file. Plugin sections stay mappings until :mod:`streamkit.build`."""

    name: str
    source: dict[str, Any]
    processors: list[dict[str, Any]]
    sinks: list[dict[str, Any]]
    dead_letter: dict[str, Any] | None
    checkpoint: dict[str, Any] | None
    aws: AwsSettings
    runtime: RuntimeSettings
    base_dir: Path = field(default_factory=Path.cwd)
    origin: str = "<config>"


def _section(data: Mapping[str, Any], key: str, kind: type, required: bool) -> Any:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(key, "missing required section")
        return None
    if not isinstance(value, kind):
        expected = "a mapping" if kind is dict else "a list"
        raise ConfigError(key, f"expected {expected}, got {type(value).__name__}")
    return value


def parse_config(data: Any, *, origin: str = "<config>", base_dir: Path | None = None) -> PipelineConfig:
    """Validate the top level of a pipeline file (plugin sections are checked when built)."""
    if not isinstance(data, dict):
        raise ConfigError("", "a pipeline file must be a mapping with source, processors and sinks", source=origin)
    try:
        unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown top-level key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
        data = interpolate(data)
        name = data.get("name", "pipeline")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name):
            raise ConfigError("name", f"expected letters, digits, '.', '_' or '-' (1-128), got {name!r}")
        source = _section(data, "source", dict, True)
        processors = _section(data, "processors", list, False) or []
        sinks = _section(data, "sinks", list, True)
        if not sinks:
            raise ConfigError("sinks", "at least one sink is required")
        for key, items in (("processors", processors), ("sinks", sinks)):
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ConfigError(f"{key}[{i}]", f"expected a mapping, got {item!r}")
        return PipelineConfig(
            name=name,
            source=source,
            processors=processors,
            sinks=sinks,
            dead_letter=_section(data, "dead_letter", dict, False),
            checkpoint=_section(data, "checkpoint", dict, False),
            aws=convert(data.get("aws") or {}, AwsSettings, "aws"),
            runtime=convert(data.get("runtime") or {}, RuntimeSettings, "runtime"),
            base_dir=base_dir or Path.cwd(),
            origin=origin,
        )
    except ConfigError as exc:
        raise exc.within(origin) from None


def apply_overrides(data: Any, overrides: list[str], origin: str) -> Any:
    """Apply ``key.path=value`` overrides (``sinks[0].max_records=100``); values are YAML scalars."""
    for override in overrides:
        path, sep, raw = override.partition("=")
        if not sep or not path.strip():
            shown = MASK if is_secret(override) else repr(override)  # a mistyped --set may hold a password
            raise ConfigError("", f"override {shown} is not KEY.PATH=VALUE", source=origin)
        tokens = re.findall(r"[^.\[\]]+|\[\d+\]", path.strip())
        node = data
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            key: Any = int(token[1:-1]) if token.startswith("[") else token
            if isinstance(key, int):
                if not isinstance(node, list) or key >= len(node):
                    raise ConfigError(path, f"override names list item {key}, which does not exist", source=origin)
            elif not isinstance(node, dict):
                raise ConfigError(path, "override path goes through a value that is not a mapping", source=origin)
            if last:
                node[key] = yaml.safe_load(raw) if raw.strip() else raw
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return data


def env_overrides() -> list[str]:
    """Overrides from ``STREAMKIT_SET`` (``;``- or newline-separated), for container deployments."""
    return [item.strip() for item in re.split(r"[;\n]", os.environ.get("STREAMKIT_SET", "")) if item.strip()]


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> PipelineConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read pipeline file: {exc.strerror}", source=str(file)) from None
    except UnicodeDecodeError as exc:
        raw = file.read_bytes()
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            "", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line}; save the file as UTF-8", source=str(file)
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", source=str(file)) from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, str(file))
    return parse_config(data, origin=str(file), base_dir=file.resolve().parent)
