"""A stalled lease table: leases expire, a second worker takes them, the first takes some back (issue 12.2).

Two workers run in this process, Kinesis (kinesalite) -> S3 (moto), sharing one lease table on moto.
Worker A reaches DynamoDB through a loopback TCP proxy (tests.tcp_proxy) that hangs mid-run: A's renewals
and checkpoints wait, while it goes on reading and writing. Worker B, connected directly, sees A's leases
expire and takes all of them. When the proxy forwards again, A learns it lost its leases, and balancing
makes it take two back from B, from B's checkpoints.

A sink that kept a lost partition's open segment appended that replay to it: objects whose records ran
backwards, keys whose positions lied, and hundreds of duplicates per shard. With ``Sink.revoke`` the
lost partition's unacknowledged records are dropped, so the replay rebuilds the same objects (same keys:
412, no duplicate) and every object is exactly the run of records its key names.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import boto3
import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.devtools.localstack import Kinesalite, MotoServer
from streamkit.runtime import Pipeline, Runtime
from tests.integration.kinesis_helpers import create_stream
from tests.integration.s3_audit import Audit, read_objects
from tests.integration.test_kinesis_failover import Writer, leases, owner
from tests.tcp_proxy import TcpProxy

TABLE = "fleet-leases"  # the name the fleet helpers read
BUCKET = "stall-lake"
STREAM = "stall"
SHARDS = 4
FAILOVER_S = 3.0
TAKER_S = 1.0
CHECKPOINT_S = 1.0
RATE = 400  # records/s across the shards


def worker(name: str, kinesis: str, dynamodb: str, s3: str) -> Pipeline:
    config: dict[str, Any] = {
        "name": "stall",
        "source": {
            "type": "kinesis",
            "stream": STREAM,
            "worker_id": name,
            "lease_table": TABLE,
            "failover_time_s": FAILOVER_S,
            "taker_interval_s": TAKER_S,
            "idle_poll_s": 0.2,
            "shard_sync_interval_s": 60,
        },
        # Deterministic cuts only while running (max_records); the age timer never fires in this test, so
        # an open segment lives as long as its lease, which is what the defect needed.
        "sinks": [
            {
                "type": "s3",
                "bucket": BUCKET,
                "window_s": 0,
                "partition_template": "",
                "max_records": 200,
                "max_age_s": 120,
                "retry": {"max_attempts": 30, "base_delay_s": 0.01, "max_delay_s": 0.2},
            }
        ],
        "checkpoint": {"interval_s": CHECKPOINT_S},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb, "s3": s3}},
        "runtime": {"shutdown_grace_s": 15},
    }
    return build_pipeline(parse_config(config))


async def until(predicate: Any, timeout: float, what: str) -> None:
    """Poll a blocking predicate (boto3 scans) off the event loop the workers run on."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


def held_by(dynamodb: str) -> Counter[str | None]:
    return Counter(owner(item) for item in leases(dynamodb).values())


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_leases_lost_to_a_stalled_table_and_taken_back_leave_honest_objects(
    kinesalite: Kinesalite, moto_server: MotoServer
) -> None:
    dynamodb, s3 = moto_server.endpoint_url, moto_server.endpoint_url
    create_stream(kinesalite.endpoint_url, STREAM, shards=SHARDS)
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    total = 4000
    writer = Writer(kinesalite.endpoint_url, STREAM, total, per_second=RATE)
    writer.stream = STREAM

    with TcpProxy.running(dynamodb) as proxy:
        a = worker("a", kinesalite.endpoint_url, proxy.endpoint_url, s3)
        b = worker("b", kinesalite.endpoint_url, dynamodb, s3)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        run_a = asyncio.create_task(Runtime(a).run(stop_a))
        run_b: asyncio.Task[Any] | None = None
        try:
            await until(lambda: held_by(dynamodb)["a"] == SHARDS, 30, "worker a to hold every lease")
            writer.start()
            await until(lambda: writer.written >= total // 4 or writer.error is not None, 30, "a quarter written")

            proxy.hang()
            stalled_at = time.monotonic()
            run_b = asyncio.create_task(Runtime(b).run(stop_b))
            await until(lambda: held_by(dynamodb)["b"] == SHARDS, 30, "worker b to take every lease")
            proxy.restore()
            stall_s = time.monotonic() - stalled_at

            # A learns it lost them, then balancing takes some back from B (a hand-off: B checkpoints first).
            await until(lambda: a.metrics.leases["lost"] >= SHARDS, 30, "worker a to notice its leases are lost")
            await until(lambda: held_by(dynamodb)["a"] >= 1, 30, "worker a to take leases back")
            await asyncio.to_thread(writer.join, 60)
            assert writer.error is None and len(writer.positions) == total, writer.error
            await asyncio.sleep(2 * CHECKPOINT_S)  # both read to the end of the stream
        finally:
            writer.stop_event.set()
            stop_a.set()
            stop_b.set()
            async with asyncio.timeout(40):
                outcomes = await asyncio.gather(run_a, *([run_b] if run_b else []), return_exceptions=True)
        for outcome in outcomes:
            assert not isinstance(outcome, BaseException), repr(outcome)

    objects = await asyncio.to_thread(read_objects, s3, BUCKET)
    audit = Audit(writer.positions).check(objects)
    per_shard = audit.per_shard_duplicates()
    print(
        f"\n[lease stall] stall_s={stall_s:.1f} objects={len(objects)} duplicates={audit.duplicates} "
        f"per_shard={dict(per_shard)} out_of_order={len(audit.out_of_order)} lying_keys={len(audit.lying_keys)} "
        f"a_leases={dict(a.metrics.leases)} b_leases={dict(b.metrics.leases)}"
    )
    assert a.metrics.leases["taken"] > SHARDS, "the scenario: worker a took leases back after losing them"
    assert set(audit.copies) == set(range(total)), "every record reached S3"
    assert audit.out_of_order == [], f"objects whose records run backwards: {audit.out_of_order[:5]}"
    assert audit.lying_keys == [], f"objects that are not the run of records their key names: {audit.lying_keys[:5]}"
    assert max(audit.copies.values()) <= 2, "a record was written more than twice"
    # Duplicates only from one checkpoint interval of records (what a worker may have written and not yet
    # checkpointed when a lease moved), per shard.
    bound = RATE / SHARDS * CHECKPOINT_S
    assert all(n <= bound for n in per_shard.values()), f"duplicates per shard {dict(per_shard)} over {bound}"
