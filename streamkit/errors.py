"""The exceptions streamkit raises on purpose, as a small hierarchy users can catch."""

from __future__ import annotations


class StreamkitError(Exception):
    """Base of every error streamkit raises on purpose."""


class ConfigError(StreamkitError):
    """The pipeline configuration is invalid. The message names the key path, the value and what is allowed."""

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.source = source
        where = f"{source}: " if source else ""
        self.message = message
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")

    def within(self, source: str) -> ConfigError:
        """The same error, naming the pipeline file it is about (unless it names one already)."""
        if self.source is not None:
            return self
        return type(self)(self.path, self.message, source=source)


class PluginError(ConfigError):
    """A processor, source or sink named in the configuration cannot be found or loaded."""


class ProcessingError(StreamkitError):
    """A processor failed on a record and the pipeline was told to fail fast."""


class SinkError(StreamkitError):
    """A sink could not write and retries are exhausted or the error is permanent."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        self.retryable = retryable
        super().__init__(message)


class CheckpointRejected(StreamkitError):
    """A checkpoint write was refused because this worker no longer owns the partition (fencing)."""


class CheckpointDeferred(StreamkitError):
    """A checkpoint could not be written now (the store is unreachable or throttling beyond its retries), but
    the partition is still this worker's: the runtime writes it again at the next interval."""
