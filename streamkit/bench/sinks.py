"""Sinks ``streamkit bench --sink NAME`` measures against a loopback stand-in of their service.

Each entry maps a ``--sink`` name to a context manager that starts what the sink writes to, yields the
pipeline's sink section and a line for the report, and stops everything on exit. Adding a sink to the
benchmark is one entry here (``--sink`` lists the names, and the synthetic source uses them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

StandInSink = tuple[dict[str, Any], str]
"""(the sink section, what the report says about it)."""


@contextlib.contextmanager
def influxdb() -> Iterator[StandInSink]:
    """The InfluxDB sink (v3 write_lp, gzip) against the stand-in, in a child process of its own."""
    from streamkit.localstack.influxdb import InfluxStandInProcess

    variable = "STREAMKIT_BENCH_INFLUXDB_TOKEN"
    token = secrets.token_hex(16)
    previous = os.environ.get(variable)
    os.environ[variable] = token
    try:
        with InfluxStandInProcess.start(token) as server:
            section = {
                "type": "influxdb",
                "name": "out",
                "url": server.url,
                "database": "bench",
                "measurement": "events",
                "tags": ["event", {"name": "country", "field": "user.country"}],
                "fields": [
                    "amount",
                    {"name": "id", "type": "string"},
                    {"name": "user_id", "field": "user.id", "type": "integer"},
                ],
                "token_env": variable,
                "max_records": 5000,
                "max_bytes": "4MiB",
                "max_age_s": 1.0,
            }
            yield (
                section,
                (
                    "influxdb: line protocol, gzip, POST /api/v3/write_lp to the loopback stand-in (a child "
                    "process; no InfluxDB server is installable here)"
                ),
            )
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


STAND_IN_SINKS: dict[str, Callable[[], contextlib.AbstractContextManager[StandInSink]]] = {
    "influxdb": influxdb,
}
