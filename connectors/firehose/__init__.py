"""Amazon Data Firehose sink (``type: firehose``); see docs/sinks-firehose-timestream.md."""

from streamkit.connectors.firehose.sink import FirehoseOptions, FirehoseSink

__all__ = ["FirehoseOptions", "FirehoseSink"]
