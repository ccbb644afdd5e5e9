"""async-kinesis's Consumer reading the same local stream, as shipped.

Its defaults are what a user gets: one GetRecords per shard per second (``shard_fetch_rate=1``), a fetch
loop that runs every 0.2 s, and a 2 s sleep of the whole fetch loop whenever any shard answers with no
records (``sleep_time_no_records``), which stalls every other shard meanwhile (PERF_FACTS.md). It decodes
each record's JSON itself (its JsonProcessor); the rest of the work is the same as everywhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamkit.devtools.bench.inputs import LocalInput
from streamkit.devtools.bench.measure import Clock, Figures

from .work import NdjsonGzip, project_values

DESCRIPTION = "kinesis.Consumer with its defaults (JSON decoded by its JsonProcessor), then the same work"
BATCH = 1_000
GIVE_UP_S = 120.0
"""Without --duration, stop waiting for records after this long (it can stall: see the module doc)."""


async def _consume(data: LocalInput, out: NdjsonGzip, clock: Clock) -> int:
    from kinesis import Consumer

    records = 0
    pending: list[Any] = []
    deadline = time.perf_counter() + (data.duration_s or GIVE_UP_S)
    async with Consumer(
        data.stream, endpoint_url=data.endpoint_url, region_name=data.region, iterator_type="TRIM_HORIZON"
    ) as consumer:
        # The loop its README shows: iteration ends after idle_timeout (2 s) without a record, which with
        # 10,000-record responses happens before the first one arrives; the outer loop starts it again.
        while records < data.records and time.perf_counter() < deadline:
            async for item in consumer:
                pending.append(item)
                records += 1
                if len(pending) >= BATCH:
                    out.add(project_values(pending))
                    pending = []
                if records >= data.records or time.perf_counter() >= deadline:
                    break
        out.add(project_values(pending))
        out.flush()
        # The clock stops at the last record, as it does for streamkit: closing the consumer is not counted.
        clock.stop()
    return records


def local(data: LocalInput) -> Figures:
    out = NdjsonGzip()
    clock = Clock()
    clock.start()
    records = asyncio.run(_consume(data, out, clock))
    gave_up = "" if records >= data.records or data.duration_s else f"; gave up after {GIVE_UP_S:.0f} s"
    return Figures.timed(
        clock,
        name="async-kinesis",
        description=DESCRIPTION,
        records=records,
        records_out=out.records_out,
        bytes=round(records * data.mean_payload),
        note=f"as shipped: 1 GetRecords/s per shard, a 2 s pause of every shard when one is empty{gave_up}",
    )
