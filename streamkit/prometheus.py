"""Prometheus exposition of the same metrics the EMF reporter sends (``runtime.metrics.prometheus``).

prometheus-client (the ``prometheus`` extra) renders the text format; a custom collector reads our
counters at scrape time, so nothing is double-counted and the hot path does no extra work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from streamkit.metrics import Metrics, percentiles


def renderer(metrics: Metrics, pipeline: str) -> Callable[[], str]:
    """A function returning the current metrics in Prometheus text format."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        from streamkit.errors import ConfigError

        raise ConfigError(
            "runtime.metrics.prometheus", "needs prometheus-client: pip install 'streamkit[prometheus]'"
        ) from exc

    class Collector:
        def collect(self) -> Iterator[Any]:
            part_labels = ["pipeline", "partition"]
            records_in = CounterMetricFamily("streamkit_records_in", "Records read", labels=part_labels)
            bytes_in = CounterMetricFamily("streamkit_bytes_in", "Payload bytes read", labels=part_labels)
            dead = CounterMetricFamily("streamkit_dead_lettered", "Records dead-lettered", labels=part_labels)
            behind = GaugeMetricFamily("streamkit_millis_behind_latest", "Source lag", labels=part_labels)
            latency = GaugeMetricFamily(
                "streamkit_processing_latency_ms", "Processing latency", labels=[*part_labels, "quantile"]
            )
            for partition, stats in list(metrics.partitions.items()):
                labels = [pipeline, str(partition)]
                records_in.add_metric(labels, stats.records_in)
                bytes_in.add_metric(labels, stats.bytes_in)
                dead.add_metric(labels, stats.dead_lettered)
                if stats.millis_behind is not None:
                    behind.add_metric(labels, stats.millis_behind)
                if (p := percentiles(stats.processing_ms)) is not None:
                    latency.add_metric([*labels, "0.5"], p[0])
                    latency.add_metric([*labels, "0.99"], p[1])
            yield from (records_in, bytes_in, dead, behind, latency)
            sink_labels = ["pipeline", "sink"]
            families = {
                name: CounterMetricFamily(f"streamkit_sink_{name}", f"Sink {name}", labels=sink_labels)
                for name in ("records", "requests", "failures", "throttles", "retries")
            }
            for sink, sstats in list(metrics.sinks.items()):
                for name, family in families.items():
                    family.add_metric([pipeline, sink], getattr(sstats, name))
            yield from families.values()
            held = GaugeMetricFamily("streamkit_leases_held", "Partitions held", labels=["pipeline"])
            held.add_metric([pipeline], metrics.leases_held)
            yield held

    registry = CollectorRegistry()
    registry.register(Collector())
    return lambda: generate_latest(registry).decode()
