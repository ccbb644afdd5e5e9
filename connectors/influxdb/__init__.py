"""Timestream for InfluxDB / InfluxDB sink (``type: influxdb``); see docs/sinks-influxdb.md."""

from streamkit.connectors.influxdb.sink import InfluxDBOptions, InfluxDBSink

__all__ = ["InfluxDBOptions", "InfluxDBSink"]
