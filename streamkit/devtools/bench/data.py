"""Recorded GetRecords bodies for the synthetic source, and the records inside them.

A body is byte for byte what Kinesis sends for a GetRecords call: up to 10,000 records of ~1 KB JSON
events (PERF_FACTS' shape: mean ~920 B, 10% with ``"status": "err"``), base64 in ``Data``, 56-digit
sequence numbers, Java-style float arrival timestamps. Generating is the slow part, so record fragments
are built once and bodies are assembled from them with increasing sequence numbers: every shard replays
the same bodies (sequence numbers are per shard), and no replay repeats a sequence number, so the reader's
resume filter lets every record through exactly as on a real shard.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

RECORDS_PER_BODY = 10_000
"""The GetRecords maximum: a consumer that is behind gets full responses."""
ERROR_RATIO = 0.1
PROJECTED_FIELDS = ("id", "event", "user", "amount")
"""The four fields the representative pipeline keeps."""
FIRST_SEQUENCE = 49_659_234_410_876_543_210_987_654_321_098_765_432_101_234_567_890_123_456  # 56 digits
SEQUENCE_STEP = 8_796_093_022_208  # real sequence numbers grow by large, uneven steps; the digits are what count
FIRST_ARRIVAL_MS = 1_795_000_000_000
ARRIVALS_PER_MS = 1  # 1,000 records/s: a shard written at its write limit

_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "checkout",
    "basket",
    "search",
    "product",
    "review",
    "shipping",
    "invoice",
    "refund",
    "coupon",
    "session",
    "mobile",
    "desktop",
    "tablet",
]
_EVENTS = ("click", "view", "purchase", "signup", "logout", "search")
_COUNTRIES = ("DE", "US", "JP", "BR", "IN", "FR", "GB", "NG")


def make_event(rng: random.Random, index: int) -> dict[str, Any]:
    """One click-stream event, ~920 bytes of JSON on average (650-1200)."""
    return {
        "id": f"evt-{index:09d}",
        "ts": FIRST_ARRIVAL_MS + index,
        "status": "err" if rng.random() < ERROR_RATIO else "ok",
        "event": rng.choice(_EVENTS),
        "user": {"id": rng.randrange(1, 1_000_000), "country": rng.choice(_COUNTRIES), "tier": rng.randrange(4)},
        "amount": round(rng.uniform(0, 500), 2),
        "session": f"{rng.getrandbits(64):016x}",
        "page": f"/shop/{rng.choice(_WORDS)}/{rng.randrange(10_000)}",
        "agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "tags": rng.sample(_WORDS, 4),
        "message": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(50, 125))),
    }


@dataclass(frozen=True)
class RecordedShard:
    """The bodies one shard replays, plus what a check needs to know about their records."""

    bodies: list[bytes]
    records: int
    payload_bytes: int
    """Sum of the decoded payload sizes (what streamkit counts as bytes in)."""
    kept: int
    """Records the representative filter keeps (status != "err")."""
    payloads: list[bytes]
    """The distinct payloads, in order; body ``b`` holds ``payloads[(b * 10000) % len(payloads):...]``."""
    partition_keys: list[str]


def record_payloads(count: int, seed: int = 42) -> tuple[list[bytes], list[str]]:
    """``count`` distinct event payloads and partition keys."""
    rng = random.Random(seed)
    payloads = [orjson.dumps(make_event(rng, i)) for i in range(count)]
    keys = [f"user-{rng.randrange(100_000)}" for _ in range(count)]
    return payloads, keys


def _fragments(payloads: list[bytes], keys: list[str]) -> list[tuple[str, str]]:
    """Each record's JSON after its sequence number and timestamp: base64 once, reused by every body."""
    return [(pybase64.b64encode(p).decode(), k) for p, k in zip(payloads, keys, strict=True)]


def build_body(
    fragments: list[tuple[str, str]], first_index: int, count: int, millis_behind: int, iterator: str | None
) -> bytes:
    """A GetRecords body with records ``first_index .. first_index + count`` of the shard."""
    parts = []
    n = len(fragments)
    for i in range(first_index, first_index + count):
        data, key = fragments[i % n]
        sequence = FIRST_SEQUENCE + i * SEQUENCE_STEP
        # Kinesis writes the arrival time as a Java double: 1.795000000123E9.
        arrival = (FIRST_ARRIVAL_MS + i // ARRIVALS_PER_MS) / 10**12
        parts.append(
            f'{{"SequenceNumber":"{sequence}","ApproximateArrivalTimestamp":{arrival!r}E9,'
            f'"Data":"{data}","PartitionKey":"{key}"}}'
        )
    tail = f'"NextShardIterator":"{iterator}",' if iterator is not None else ""
    return f'{{"Records":[{",".join(parts)}],{tail}"MillisBehindLatest":{millis_behind}}}'.encode()


def recorded_shard(records: int, *, distinct: int = 2 * RECORDS_PER_BODY, seed: int = 42) -> RecordedShard:
    """Bodies holding ``records`` records for one shard (every shard replays the same ones).

    ``distinct`` payloads are generated and cycled through, so generation stays bounded whatever the
    record count; the sequence numbers never repeat.
    """
    payloads, keys = record_payloads(min(distinct, max(records, 1)), seed)
    fragments = _fragments(payloads, keys)
    bodies: list[bytes] = []
    iterator = "AAAAAAAAAAH" + "x" * 250  # an opaque shard iterator of the real length
    start = 0
    while start < records:
        count = min(RECORDS_PER_BODY, records - start)
        # Behind latest by the arrival time of what is still unread (1,000 records/s, the write limit).
        behind = (records - start - count) // ARRIVALS_PER_MS
        bodies.append(build_body(fragments, start, count, behind, iterator))
        start += count
    n = len(payloads)
    full, rest = divmod(records, n)
    payload_bytes = full * sum(map(len, payloads)) + sum(map(len, payloads[:rest]))
    kept_flags = [b'"status":"err"' not in p for p in payloads]
    kept = full * sum(kept_flags) + sum(kept_flags[:rest])
    return RecordedShard(bodies, records, payload_bytes, kept, payloads, keys)
