"""Turn a validated :class:`~streamkit.config.PipelineConfig` into a runnable :class:`~streamkit.runtime.Pipeline`.

Every plugin section is validated by the plugin's ``Options`` before anything connects, so ``streamkit
validate`` and ``streamkit run`` report every configuration mistake at start-up with its key path.
"""

from __future__ import annotations

import contextlib
from typing import Any

from streamkit.chain import Chain
from streamkit.checkpoint import CheckpointStore
from streamkit.config import CheckpointSettings, PipelineConfig, convert
from streamkit.deadletter import DeadLetterQueue
from streamkit.errors import ConfigError
from streamkit.metrics import Metrics
from streamkit.plugin_env import PluginEnv
from streamkit.plugins import Kind, load_plugin, resolve_reference
from streamkit.predicates import batch_predicate, compile_values_predicate, predicate_fields
from streamkit.processor import Processor, as_processor
from streamkit.runtime import Pipeline, Route
from streamkit.sink import Sink
from streamkit.sink_views import sink_reads
from streamkit.source import Source


def _plugin_type(section: dict[str, Any], where: str) -> str:
    kind = section.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}.type", "missing: every section names its type (see `streamkit plugins`)")
    return kind


def build_plugin(kind: Kind, section: dict[str, Any], where: str, env: PluginEnv, core_keys: set[str]) -> Any:
    """Load the plugin named by ``section['type']`` and construct it with its validated options."""
    cls = load_plugin(kind, _plugin_type(section, where), f"{where}.type")
    raw = {k: v for k, v in section.items() if k not in core_keys | {"type"}}
    options_type = getattr(cls, "Options", None)
    if options_type is None:
        if raw:
            raise ConfigError(f"{where}.{next(iter(raw))}", f"{section['type']} takes no options")
        return cls(None, env.at(where))
    options = convert(raw, options_type, where)
    return cls(options, env.at(where))


def build_processor(section: dict[str, Any], where: str, env: PluginEnv) -> Processor:
    if "callable" in section:
        allowed = {"callable", "name", "with_metadata", "options"}
        extra = sorted(set(section) - allowed)
        if extra:
            raise ConfigError(f"{where}.{extra[0]}", f"unknown key; a callable processor takes {sorted(allowed)}")
        target = resolve_reference(str(section["callable"]), f"{where}.callable")
        options = section.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.options", "expected a mapping of keyword arguments")
        if not callable(target):
            kind = type(target).__name__
            raise ConfigError(f"{where}.callable", f"{section['callable']} is a {kind}, not callable")
        if isinstance(target, type):
            try:
                target = target(**options)
            except Exception as exc:  # the user's constructor may raise anything
                problem = f"{type(exc).__name__}: {exc}"
                raise ConfigError(f"{where}.options", f"cannot construct {section['callable']}: {problem}") from None
            if not callable(target):
                raise ConfigError(f"{where}.callable", f"instances of {section['callable']} are not callable")
        elif options:
            raise ConfigError(f"{where}.options", "options are only passed to classes; functions take none")
        processor = as_processor(target, with_metadata=bool(section.get("with_metadata", False)))
    else:
        processor = build_plugin("processor", section, where, env, {"name"})
    label = section.get("name")
    if label:
        with contextlib.suppress(AttributeError):  # a plain function keeps its own name
            processor.name = str(label)  # type: ignore[attr-defined]
    return processor


def build_route(section: dict[str, Any], index: int, env: PluginEnv) -> Route:
    where = f"sinks[{index}]"
    sink: Sink = build_plugin("sink", section, where, env, {"name", "when"})
    name = str(section.get("name") or f"{section['type']}-{index}")
    predicate = None
    if section.get("when") is not None:
        when = section["when"]
        compiled = compile_values_predicate(when, f"{where}.when", env.resolve)
        predicate = batch_predicate(compiled, predicate_fields(when))
    return Route(name, sink, predicate)


def build_pipeline(config: PipelineConfig, *, metrics: Metrics | None = None) -> Pipeline:
    try:
        return _build(config, metrics)
    except ConfigError as exc:
        raise exc.within(config.origin) from None


def build_outputs(
    config: PipelineConfig, env: PluginEnv, metrics: Metrics
) -> tuple[Chain, list[Route], DeadLetterQueue | None]:
    """The processor chain, the sink routes and the dead-letter queue: everything after the source, shared
    by the long-lived runtime and the Lambda adapter."""
    processors = [build_processor(p, f"processors[{i}]", env) for i, p in enumerate(config.processors)]
    routes = [build_route(s, i, env) for i, s in enumerate(config.sinks)]
    names = [r.name for r in routes]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError("sinks", f"two sinks are named {duplicate!r}; sink names must be unique")
    dead_letters: DeadLetterQueue | None = None
    if config.dead_letter is not None:
        dead_letters = build_plugin("dead_letter", config.dead_letter, "dead_letter", env, set())
        dead_letters.pipeline = config.name
    for route in routes:
        route.sink.bind(route.name, dead_letters, metrics)
    # Built after the routes: the planner decodes what their when: and templates read in its fused pass.
    chain = Chain(processors, fail_fast=config.runtime.fail_fast, sinks=sink_reads(routes))
    return chain, routes, dead_letters


def _build(config: PipelineConfig, metrics: Metrics | None) -> Pipeline:
    env = PluginEnv(config.name, config.aws, config.base_dir, runtime=config.runtime)
    source: Source = build_plugin("source", config.source, "source", env, set())
    metrics = metrics or Metrics()
    chain, routes, dead_letters = build_outputs(config, env, metrics)
    checkpoint_section = {"type": "memory", **(config.checkpoint or {})}
    settings = convert(
        {k: v for k, v in checkpoint_section.items() if k in ("type", "interval_s")},
        CheckpointSettings,
        "checkpoint",
    )
    store: CheckpointStore = build_plugin("checkpoint", checkpoint_section, "checkpoint", env, {"interval_s"})
    source.metrics = metrics
    return Pipeline(
        name=config.name,
        source=source,
        chain=chain,
        routes=routes,
        dead_letters=dead_letters,
        store=store,
        settings=config.runtime,
        checkpoint_interval_s=settings.interval_s,
        metrics=metrics,
    )
