"""The work every side does per record, written the way a hand-written consumer would write it.

Parse the JSON payload, drop records whose status is "err", keep four fields, serialize; join the kept
lines as NDJSON and gzip every 10,000 of them. orjson and ISA-L gzip level 1, the same libraries streamkit's
memory sink and processors use, so the comparison is of the framework around the work, not of libraries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from isal import igzip

from streamkit.devtools.bench.data import PROJECTED_FIELDS

FIELDS = PROJECTED_FIELDS
GZIP_EVERY = 10_000
"""Lines per gzip member: the streamkit side's sink writes every 10,000 records too."""


class NdjsonGzip:
    """Kept lines, joined and compressed in chunks like an object writer would."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.records_out = 0
        self.compressed_bytes = 0

    def add(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)
        if len(self.lines) >= GZIP_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.records_out += len(self.lines)
            self.compressed_bytes += len(igzip.compress(b"\n".join(self.lines), compresslevel=1))
            self.lines = []


def project_payloads(payloads: Iterable[bytes]) -> list[bytes]:
    """W on raw payloads: the inner loop of every baseline that gets bytes."""
    loads, dumps = orjson.loads, orjson.dumps
    out = []
    for raw in payloads:
        value = loads(raw)
        if value.get("status") == "err":
            continue
        out.append(dumps({k: value[k] for k in FIELDS if k in value}))
    return out


def project_values(values: Iterable[dict[str, Any]]) -> list[bytes]:
    """W on values already decoded (async-kinesis hands out decoded JSON)."""
    dumps = orjson.dumps
    return [dumps({k: v[k] for k in FIELDS if k in v}) for v in values if v.get("status") != "err"]
