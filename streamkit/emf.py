"""CloudWatch Embedded Metric Format: metrics as structured log lines, no agent needed.

In Lambda and in ECS with the awslogs driver, CloudWatch Logs turns every line carrying an ``_aws``
member into metrics. One document is written per partition (dimensions Pipeline, Partition), per sink
(Pipeline, Sink) and for the pipeline (Pipeline), every ``interval_s`` and once more at shutdown.
Counters are reported as the change since the previous report.

Metric names (documented in docs/observability.md): RecordsIn, BytesIn, RecordsOut, DeadLettered,
Checkpoints, MillisBehindLatest, ProcessingLatencyP50, ProcessingLatencyP99 (per partition);
SinkRecords, SinkRequests, SinkFailures, SinkThrottles, SinkRetries, SinkLatencyP50, SinkLatencyP99 (per
sink); LeasesHeld, LeasesTaken, LeasesLost (per pipeline).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

import orjson

from streamkit.metrics import Metrics, percentiles

PARTITION_COUNTERS = {
    "RecordsIn": ("records_in", "Count"),
    "BytesIn": ("bytes_in", "Bytes"),
    "RecordsOut": ("records_out", "Count"),
    "DeadLettered": ("dead_lettered", "Count"),
    "Checkpoints": ("checkpoints", "Count"),
}
SINK_COUNTERS = {
    "SinkRecords": ("records", "Count"),
    "SinkRequests": ("requests", "Count"),
    "SinkFailures": ("failures", "Count"),
    "SinkThrottles": ("throttles", "Count"),
    "SinkRetries": ("retries", "Count"),
}
METRIC_NAMES = (
    *PARTITION_COUNTERS,
    "MillisBehindLatest",
    "ProcessingLatencyP50",
    "ProcessingLatencyP99",
    *SINK_COUNTERS,
    "SinkLatencyP50",
    "SinkLatencyP99",
    "LeasesHeld",
    "LeasesTaken",
    "LeasesLost",
)


class EmfReporter:
    def __init__(
        self, metrics: Metrics, pipeline: str, *, namespace: str = "streamkit", out: IO[str] | None = None
    ) -> None:
        self.metrics = metrics
        self.pipeline = pipeline
        self.namespace = namespace
        self._out = out
        self._previous: dict[tuple[str, str, str], float] = {}

    def _delta(self, scope: str, name: str, metric: str, value: float) -> float:
        key = (scope, name, metric)
        change = value - self._previous.get(key, 0)
        self._previous[key] = value
        return change

    def _document(self, dimensions: dict[str, str], values: dict[str, tuple[float, str]]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [list(dimensions)],
                        "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                    }
                ],
            },
            **dimensions,
        }
        doc.update({name: value for name, (value, _) in values.items()})
        return doc

    def documents(self) -> list[dict[str, Any]]:
        docs = []
        m = self.metrics
        for partition, stats in list(m.partitions.items()):
            key = str(partition)
            values = {
                metric: (self._delta("p", key, metric, getattr(stats, attr)), unit)
                for metric, (attr, unit) in PARTITION_COUNTERS.items()
            }
            if stats.millis_behind is not None:
                values["MillisBehindLatest"] = (stats.millis_behind, "Milliseconds")
            if (p := percentiles(stats.processing_ms)) is not None:
                values["ProcessingLatencyP50"] = (p[0], "Milliseconds")
                values["ProcessingLatencyP99"] = (p[1], "Milliseconds")
            docs.append(self._document({"Pipeline": self.pipeline, "Partition": key}, values))
        for sink, sstats in list(m.sinks.items()):
            values = {
                metric: (self._delta("s", sink, metric, getattr(sstats, attr)), unit)
                for metric, (attr, unit) in SINK_COUNTERS.items()
            }
            if (p := percentiles(sstats.latency_ms)) is not None:
                values["SinkLatencyP50"] = (p[0], "Milliseconds")
                values["SinkLatencyP99"] = (p[1], "Milliseconds")
            docs.append(self._document({"Pipeline": self.pipeline, "Sink": sink}, values))
        pipeline_values = {
            "LeasesHeld": (float(m.leases_held), "Count"),
            "LeasesTaken": (self._delta("l", "", "taken", m.leases.get("taken", 0)), "Count"),
            "LeasesLost": (self._delta("l", "", "lost", m.leases.get("lost", 0)), "Count"),
        }
        docs.append(self._document({"Pipeline": self.pipeline}, pipeline_values))
        return docs

    def emit(self) -> None:
        lines = b"".join(orjson.dumps(doc) + b"\n" for doc in self.documents())
        out = self._out or sys.stdout  # looked up per report, so redirections of stdout apply
        out.write(lines.decode())
        out.flush()

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(interval_s):
                    await stop.wait()
            except TimeoutError:
                self.emit()
        self.emit()
