"""What every plugin receives besides its options: :class:`PluginEnv`.

The plugin boundary is ``cls(options, env)`` for every source, sink, dead-letter queue, checkpoint store
and processor, built-in or third-party (docs/plugins.md). This module is a leaf (configuration types and
reference loading only, never the builder or the runtime), so a plugin can import it without pulling in
the runtime, and the builder can import every plugin without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamkit.config import AwsSettings, RuntimeSettings
from streamkit.plugins import resolve_reference


@dataclass(frozen=True)
class PluginEnv:
    """The pipeline a plugin is built for, and where in its configuration the plugin's section is."""

    pipeline: str
    """The pipeline's name (``name:`` in the pipeline file): a prefix for object keys, metric labels."""
    aws: AwsSettings
    """Region, endpoints and timeouts; ``env.aws.client_kwargs("s3")`` for an AWS client."""
    base_dir: Path
    """The folder of the pipeline file: relative paths in the configuration are relative to it."""
    where: str = ""
    """The key path of the section being built (``sinks[1]``), for error messages."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    """The pipeline's runtime settings, for plugins whose limits must fit the memory budget."""

    def at(self, where: str) -> PluginEnv:
        """The same environment for the section at key path ``where``."""
        return replace(self, where=where)

    def path(self, value: str) -> Path:
        """A path from the configuration: relative paths are relative to the pipeline file."""
        return (self.base_dir / value).resolve()

    def resolve(self, reference: str, where: str) -> Any:
        """Load ``package.module:attribute`` named at key path ``where`` (a PluginError names it if not)."""
        return resolve_reference(reference, where)
