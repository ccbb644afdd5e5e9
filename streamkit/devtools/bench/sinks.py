"""Sinks ``streamkit bench --sink NAME`` measures against a loopback stand-in of their service (or, for
iceberg, a local catalog).

Each entry maps a ``--sink`` name to a context manager that starts what the sink writes to, yields the
pipeline's sink section and a line for the report, and stops everything on exit. Adding a sink to the
benchmark is one entry here (``--sink`` lists the names, and the synthetic source uses them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

StandInSink = tuple[dict[str, Any], str]
"""(the sink section, what the report says about it)."""


@contextlib.contextmanager
def influxdb() -> Iterator[StandInSink]:
    """The InfluxDB sink (v3 write_lp, gzip) against the stand-in, in a child process of its own."""
    from streamkit.devtools.localstack.influxdb import InfluxStandInProcess

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


@contextlib.contextmanager
def iceberg() -> Iterator[StandInSink]:
    """The iceberg sink on a SQL catalog (sqlite) and a warehouse in a temp dir: real Parquet files and
    snapshot commits, as often as a deployment would make them, without a service."""
    directory = Path(tempfile.mkdtemp(prefix="streamkit-bench-iceberg-"))
    catalog = {"type": "sql", "path": str(directory / "catalog.db"), "warehouse": str(directory / "warehouse")}
    section = {"type": "iceberg", "name": "out", "catalog": catalog, "table": "bench.events",
               "max_records": 50_000, "max_age_s": 5.0}  # fmt: skip
    try:
        yield (
            section,
            "iceberg: Parquet data files appended to a table in a local SQL catalog (sqlite) in a temp dir, "
            "committed every 50,000 records or 5 s",
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _empty_iceberg(section: dict[str, Any]) -> None:
    """A fresh table for the next run: replaying the same positions into the last run's table would be
    acknowledged without writing (the sink's exactly-once ledger), which is not the work to measure."""
    catalog = section["catalog"]
    Path(catalog["path"]).unlink(missing_ok=True)
    shutil.rmtree(catalog["warehouse"], ignore_errors=True)


STAND_IN_SINKS: dict[str, Callable[[], contextlib.AbstractContextManager[StandInSink]]] = {
    "influxdb": influxdb,
    "iceberg": iceberg,
}

RESET_BEFORE_EACH_RUN: dict[str, Callable[[dict[str, Any]], None]] = {"iceberg": _empty_iceberg}
"""Stand-ins that keep state across runs, and how each run starts from nothing."""
