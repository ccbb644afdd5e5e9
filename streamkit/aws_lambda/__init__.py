"""Lambda consumer mode: the same pipeline behind a Kinesis, MSK or self-managed Kafka event source mapping.

Two ways to deploy (docs/lambda.md):

- Handler ``streamkit.aws_lambda.handler`` with the environment variable ``STREAMKIT_CONFIG`` naming the
  pipeline file. When the Lambda runtime loads this handler, the file is loaded, validated and its sinks
  started during the init phase, so a bad file fails the init with the configuration error.
- Your own module: ``handler = streamkit.aws_lambda.make_handler("pipeline.yaml")``, or with a pipeline
  built in code: ``make_handler(build_pipeline_fn, ordering="per_key")``.

Importing this package costs almost nothing: numpy, the SDK and the pipeline are imported only when a
pipeline is built, so the cold start pays only for what the pipeline uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamkit.aws_lambda.app import LambdaApp, Response
    from streamkit.aws_lambda.pipeline import PipelineSpec

__all__ = ["CONFIG_ENV", "handler", "make_handler"]

CONFIG_ENV = "STREAMKIT_CONFIG"
"""The environment variable naming the pipeline file of :func:`handler`."""

_HANDLER_NAME = f"{__name__}.handler"
_app: LambdaApp | None = None


def make_handler(pipeline: PipelineSpec, /, **options: Any) -> LambdaApp:
    """Build and start ``pipeline`` now (call it at module level: that is the cold start) and return the handler.

    ``pipeline`` is a pipeline file, a parsed :class:`~streamkit.config.PipelineConfig`, a built
    :class:`~streamkit.runtime.Pipeline`, or a function returning one (preferred for pipelines built in code:
    it runs once, before the event loop that the sinks' clients will be bound to is used). ``options`` are
    Lambda options (:class:`~streamkit.aws_lambda.pipeline.LambdaOptions`) and override the file's
    ``source: {type: lambda, ...}`` section. The returned object is called as ``handler(event, context)``.
    """
    from streamkit.aws_lambda.app import LambdaApp

    return LambdaApp.create(pipeline, **options)


def handler(event: Mapping[str, Any], context: Any) -> Response:
    """The Lambda entry point for the pipeline file named by ``STREAMKIT_CONFIG``."""
    global _app
    if _app is None:
        _app = _app_from_environment()
    return _app.handle(event, context)


def _app_from_environment() -> LambdaApp:
    from streamkit import log
    from streamkit.errors import ConfigError

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError("", f"set {CONFIG_ENV} to the pipeline file (relative to the function's directory)")
    level = os.environ.get("STREAMKIT_LOG_LEVEL", "INFO")
    if level.upper() not in log.LEVELS:
        raise ConfigError(
            "STREAMKIT_LOG_LEVEL", f"unknown log level {level!r}; expected one of {', '.join(log.LEVELS)}"
        )
    log.configure("json", level)
    return make_handler(path)


# The Lambda runtime names the handler in _HANDLER. When it is ours, load and start the pipeline during the
# init phase: a bad file then fails the init with its message, and the first event pays for nothing.
if os.environ.get("_HANDLER") == _HANDLER_NAME and os.environ.get(CONFIG_ENV):
    _app = _app_from_environment()
