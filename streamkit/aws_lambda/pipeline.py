"""What a Lambda consumer runs: the pipeline (from a file or built in code) and the Lambda options.

In Lambda the event is the source and the event source mapping keeps the checkpoints, so a pipeline file's
``source`` and ``checkpoint`` sections do not apply. A file written for ``streamkit run`` (a ``kinesis`` or
``kafka`` source) runs unchanged: its source section is ignored and its plugin is not even loaded (the
function's package need not ship confluent-kafka). A source of ``type: lambda`` instead carries the Lambda
options, validated like any other section::

    source:
      type: lambda
      ordering: per_partition        # or per_key
      on_record_error: dead_letter   # or retry; default: dead_letter when a dead_letter section exists
      deadline_margin_ms: 2000
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
import structlog

from streamkit.build import build_outputs
from streamkit.checkpoint import CheckpointStore, MemoryCheckpointStore
from streamkit.config import PipelineConfig, convert, env_overrides, load_config
from streamkit.errors import ConfigError
from streamkit.metrics import Metrics
from streamkit.plugin_env import PluginEnv
from streamkit.runtime import Pipeline
from streamkit.source import PartitionHost, Source

log = structlog.get_logger("streamkit.aws_lambda")

Ordering = Literal["per_partition", "per_key"]
RecordErrorMode = Literal["dead_letter", "retry"]

PipelineSpec = str | os.PathLike[str] | PipelineConfig | Pipeline | Callable[[], Pipeline]
"""What :func:`streamkit.aws_lambda.make_handler` accepts: a pipeline file, a parsed one, a built
:class:`~streamkit.runtime.Pipeline`, or a function building one (called once, at cold start)."""


class LambdaOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a Lambda invocation treats failures, ordering and its deadline (docs/lambda.md)."""

    ordering: Ordering = "per_partition"
    """per_partition: after the first failed record of a shard or Kafka partition, nothing later of that
    partition is written (Lambda redelivers all of it). per_key: records of other partition keys go on."""
    on_record_error: RecordErrorMode | None = None
    """A record a processor fails on (or that cannot be decoded): dead_letter writes it to the dead-letter
    queue and goes on; retry reports it so Lambda redelivers from it. Default: dead_letter when the pipeline
    has a dead-letter queue (and runtime.fail_fast is off), retry otherwise."""
    on_sink_reject: RecordErrorMode = "retry"
    """A record a sink refused for good: retry reports it; dead_letter sends it to the dead-letter queue."""
    deadline_margin_ms: Annotated[int, msgspec.Meta(ge=0)] = 2000
    """Stop taking new records when less than this is left of the invocation, flush, and report the rest."""
    flush_margin_ms: Annotated[int, msgspec.Meta(ge=0)] = 250
    """The final flush must end this long before the deadline (time to build and return the response)."""
    chunk_records: Annotated[int, msgspec.Meta(ge=1)] = 1000
    """Records per processing step: the deadline is checked between steps."""
    deaggregate: bool = True
    """Expand KPL aggregated Kinesis records into their user records."""


class LambdaEventSource(Source):
    """``type: lambda``: the invocation's event is the source. Holds the Lambda options of a pipeline file.

    It only validates; records arrive through :func:`streamkit.aws_lambda.handler`, never through ``run``.
    """

    name = "lambda"
    Options = LambdaOptions

    def __init__(self, options: LambdaOptions | None = None, env: PluginEnv | None = None) -> None:
        self.options = options or LambdaOptions()

    async def run(self, host: PartitionHost, stop: Any) -> None:
        raise RuntimeError(
            "a 'lambda' source receives records only inside AWS Lambda: deploy with the handler "
            "streamkit.aws_lambda.handler (docs/lambda.md)"
        )

    def checkpoint_store(self) -> CheckpointStore:
        # The event source mapping checkpoints; nothing is stored here.
        return MemoryCheckpointStore()


def load(spec: PipelineSpec, overrides: Mapping[str, Any]) -> tuple[Pipeline, LambdaOptions]:
    """The pipeline and its Lambda options (the file's ``type: lambda`` section, then ``overrides``)."""
    if isinstance(spec, PipelineConfig):
        pipeline = _from_config(spec)
    elif isinstance(spec, str | os.PathLike):
        # STREAMKIT_SET overrides apply as they do for `streamkit run` (Lambda environment variables).
        pipeline = _from_config(load_config(spec, env_overrides()))
    elif isinstance(spec, Pipeline):
        pipeline = spec
    elif callable(spec):
        pipeline = spec()
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"the pipeline factory returned {type(pipeline).__name__}, expected a Pipeline")
    else:
        raise TypeError(f"expected a pipeline file, a PipelineConfig, a Pipeline or a factory, got {spec!r}")
    base = pipeline.source.options if isinstance(pipeline.source, LambdaEventSource) else LambdaOptions()
    options = base
    if overrides:
        merged = {**msgspec.structs.asdict(base), **overrides}
        options = convert(merged, LambdaOptions, "make_handler")
    resolve_record_errors(options, pipeline)
    return pipeline, options


def resolve_record_errors(options: LambdaOptions, pipeline: Pipeline) -> RecordErrorMode:
    """The effective ``on_record_error``; raises ConfigError for combinations that cannot work."""
    dlq = pipeline.dead_letters
    fail_fast = pipeline.settings.fail_fast
    mode = options.on_record_error or ("dead_letter" if dlq is not None and not fail_fast else "retry")
    if mode == "dead_letter" and dlq is None:
        raise ConfigError("source.on_record_error", "dead_letter needs a dead_letter section in the pipeline")
    if mode == "dead_letter" and fail_fast:
        raise ConfigError("source.on_record_error", "dead_letter contradicts runtime.fail_fast: true; use retry")
    if options.on_sink_reject == "dead_letter" and dlq is None:
        raise ConfigError("source.on_sink_reject", "dead_letter needs a dead_letter section in the pipeline")
    return mode


def _from_config(config: PipelineConfig) -> Pipeline:
    try:
        return _build(config)
    except ConfigError as exc:
        raise exc.within(config.origin) from None


def _build(config: PipelineConfig) -> Pipeline:
    """Like streamkit.build.build_pipeline, without building the source and checkpoint sections."""
    env = PluginEnv(config.name, config.aws, config.base_dir, runtime=config.runtime)
    source = _source(config.source, env)
    if config.checkpoint is not None:
        log.info("checkpoint section ignored: the event source mapping checkpoints in Lambda")
    metrics = Metrics()
    chain, routes, dead_letters = build_outputs(config, env, metrics)
    return Pipeline(
        name=config.name,
        source=source,
        chain=chain,
        routes=routes,
        dead_letters=dead_letters,
        store=MemoryCheckpointStore(),
        settings=config.runtime,
        metrics=metrics,
    )


def _source(section: dict[str, Any], env: PluginEnv) -> LambdaEventSource:
    kind = section.get("type")
    if kind != "lambda":
        log.info("source section ignored: in Lambda the event is the source", source_type=kind)
        return LambdaEventSource()
    options = convert({k: v for k, v in section.items() if k != "type"}, LambdaOptions, "source")
    return LambdaEventSource(options, env)
