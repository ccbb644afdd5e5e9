"""What a Firehose request carries for each record: the bytes, the delimiter and the optional record id.

Kept apart from the sink so the byte rules (what counts towards the 1,024,000-byte record limit and the
4 MiB request limit) can be read and tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

from streamkit.batch import Int64Array, RecordBatch, occurrence_rank
from streamkit.json_bytes import dumps_tight

log = structlog.get_logger("streamkit.connectors.firehose")

MAX_RECORD_BYTES = 1_024_000
"""Firehose's record limit, checked by the service on the bytes before base64: exactly this, not 1 MiB."""
MAX_REQUEST_RECORDS = 500
MAX_REQUEST_BYTES = 4 * 1024 * 1024
NEWLINE = b"\n"


def record_ids(batch: RecordBatch) -> list[str]:
    """``source/partition/position`` of each record's origin; records split from one origin get ``#k``.

    The id depends only on where the record came from (and, for split records, on its place among its
    siblings), so a replay after a crash or a timed-out call produces the same ids and the destination
    can drop the duplicates.
    """
    prefix = f"{batch.partition.source}/{batch.partition.key}/"
    origin = batch.origin
    if batch.ticket is not None:
        positions: Sequence[Any] = batch.ticket.positions
        base = [f"{prefix}{positions[o]}" for o in origin.tolist()]
    else:
        base = [f"{prefix}{o}" for o in origin.tolist()]
    if batch.origin_unique:
        return base
    rank = occurrence_rank(origin)
    _, inverse, counts = np.unique(origin, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    return [f"{b}#{r}" if s else b for b, r, s in zip(base, rank.tolist(), shared.tolist(), strict=True)]


class RecordEncoder:
    """Turns batches into the ``Data`` bytes of Firehose records."""

    def __init__(self, *, newline: bool, id_field: str | None) -> None:
        self.delimiter = NEWLINE if newline else b""
        self.id_field = id_field
        self._warned_undecoded = False

    @property
    def overhead(self) -> int:
        """Bytes added to every record (the delimiter), counted towards both service limits."""
        return len(self.delimiter)

    def payloads(self, batch: RecordBatch) -> list[bytes]:
        """The records' bytes without the delimiter, with the id field added where configured."""
        if self.id_field is None:
            return batch.payloads
        if not batch.decoded:
            if not self._warned_undecoded:
                self._warned_undecoded = True
                log.warning(
                    "record_id_field needs decoded JSON objects: put json.decode before this sink; "
                    "records are sent without an id",
                    partition=str(batch.partition),
                    field=self.id_field,
                )
            return batch.payloads
        field = self.id_field
        values = batch.values
        original = batch.payloads if batch.has_payloads else None
        dumps = dumps_tight  # right-sized: these bytes wait in request buffers (see streamkit.json_bytes)
        out: list[bytes] = []
        for i, (value, rid) in enumerate(zip(values, record_ids(batch), strict=True)):
            if isinstance(value, dict):
                out.append(dumps({**value, field: rid}))
            else:
                # Only objects can carry a field; arrays and scalars go out unchanged.
                out.append(original[i] if original is not None else dumps(value))
        return out

    def encode(self, batches: Sequence[RecordBatch]) -> tuple[list[bytes], Int64Array]:
        """``Data`` of every record across ``batches`` (delimiter included) and the sizes without it."""
        payloads: list[bytes] = []
        for batch in batches:
            payloads.extend(self.payloads(batch))
        sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
        if self.delimiter:
            delimiter = self.delimiter
            payloads = [p + delimiter for p in payloads]
        return payloads, sizes


def oversize_reason(size: int, overhead: int) -> str:
    with_delimiter = " (with its newline delimiter)" if overhead else ""
    return (
        f"record of {size + overhead:,} bytes{with_delimiter} exceeds Firehose's record limit of "
        f"{MAX_RECORD_BYTES:,} bytes (before base64); it was not sent"
    )
