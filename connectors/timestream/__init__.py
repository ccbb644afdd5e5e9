"""Amazon Timestream for LiveAnalytics sink (``type: timestream``); see docs/sinks-firehose-timestream.md."""

from streamkit.connectors.timestream.sink import TimestreamOptions, TimestreamSink

__all__ = ["TimestreamOptions", "TimestreamSink"]
