"""One bounded run, Kinesis -> S3, in which S3, Kinesis and DynamoDB are cut in turn (issue 12).

The worker reaches each stand-in through its own loopback TCP proxy (tests.tcp_proxy); the stand-ins keep
their state, only the network path is cut: every open connection is reset and new ones are refused for a
while. DynamoDB stays cut for longer than three checkpoint intervals but less than the failover time: the
worker keeps its leases and its checkpoints wait. (Leases lost to a longer outage are the subject of
test_lease_stall.py. There the bound is different: every record after the last checkpoint that could be
written is replayed, and the replay only rebuilds the same objects where they were cut deterministically;
an object cut by age during the outage comes back under other keys, as duplicates.)

A sampler thread reads, straight from the stand-ins and without proxy, the checkpoints in the lease table
and then the object keys in the bucket, every few hundred milliseconds. Afterwards every sample is checked:
a checkpoint may only name a position whose records, and all earlier ones of the shard, were already in
objects listed after it (keys are proved honest by the audit, so a key's range is what the object holds).

Asserted: every record arrives; every object is exactly the run of records its key names, in order;
duplicates stay within one checkpoint interval per shard; no checkpoint ever passed an unwritten record.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from streamkit.build import build_pipeline
from streamkit.config import parse_config
from streamkit.devtools.localstack import Kinesalite, MotoServer
from streamkit.runtime import Pipeline, Runtime
from tests.integration.kinesis_helpers import create_stream
from tests.integration.s3_audit import Audit, data_keys, key_range, read_objects
from tests.integration.test_kinesis_failover import Writer, leases
from tests.tcp_proxy import TcpProxy

TABLE = "fleet-leases"
BUCKET = "fault-lake"
STREAM = "faults"
SHARDS = 2
TOTAL = 3000
RATE = 300  # records/s across the shards
FAILOVER_S = 8.0
CHECKPOINT_S = 1.0


def pipeline(kinesis: str, dynamodb: str, s3: str) -> Pipeline:
    config: dict[str, Any] = {
        "name": "faults",
        "source": {
            "type": "kinesis",
            "stream": STREAM,
            "worker_id": "solo",
            "lease_table": TABLE,
            "failover_time_s": FAILOVER_S,
            "taker_interval_s": 1.0,
            "idle_poll_s": 0.2,
            "shard_sync_interval_s": 60,
        },
        "sinks": [
            {
                "type": "s3",
                "bucket": BUCKET,
                "window_s": 0,
                "partition_template": "",
                # As docs/sinks-s3.md advises: a busy shard fills a segment (max_records, a deterministic cut)
                # well before max_age_s, so a replay rebuilds the same objects; only the quiet tail is aged.
                "max_records": 150,
                "max_age_s": 5.0,
                # Rides out a 2 s cut: the retry budget covers it (capped back-off 0.3 s, 60 attempts).
                "retry": {"max_attempts": 60, "base_delay_s": 0.02, "max_delay_s": 0.3},
                "client": {"connect_timeout_s": 1.0, "read_timeout_s": 5.0},
            }
        ],
        "checkpoint": {"interval_s": CHECKPOINT_S},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb, "s3": s3}},
        "runtime": {"shutdown_grace_s": 15},
    }
    return build_pipeline(parse_config(config))


@dataclass(frozen=True)
class Sample:
    checkpoints: dict[str, int]
    """Sequence number checkpointed per shard (read first)."""
    keys: list[str]
    """Object keys listed afterwards."""


def checkpointed(item: dict[str, Any]) -> int:
    """The lease's checkpointed sequence number (-1 for TRIM_HORIZON or none)."""
    text = item.get("checkpoint", {}).get("S", "")
    return int(text) if text.isdigit() else -1


class Sampler(threading.Thread):
    """Checkpoints, then object keys, read directly from the stand-ins at a steady pace."""

    def __init__(self, endpoint: str, interval_s: float = 0.3) -> None:
        super().__init__(daemon=True, name="checkpoint-sampler")
        self.endpoint, self.interval_s = endpoint, interval_s
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval_s):
                checkpoints = {key: checkpointed(item) for key, item in leases(self.endpoint).items()}
                self.samples.append(Sample(checkpoints, data_keys(self.s3, BUCKET)))
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def unwritten_below_checkpoint(sample: Sample, runs: dict[str, list[int]]) -> list[tuple[str, int]]:
    """(shard, sequence) of records at or below the sample's checkpoint that no listed object held."""
    covered: dict[str, list[tuple[int, int]]] = {}
    for key in sample.keys:
        shard, first, last = key_range(key)
        covered.setdefault(shard, []).append((first, last))
    missing = []
    for shard, checkpoint in sample.checkpoints.items():
        ranges = sorted(covered.get(shard, []))
        starts = [first for first, _ in ranges]
        for sequence in runs.get(shard, []):
            if sequence > checkpoint:
                break
            at = bisect.bisect_right(starts, sequence) - 1
            if not any(first <= sequence <= last for first, last in ranges[max(0, at - 8) : at + 1]):
                missing.append((shard, sequence))
    return missing


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("aws_env")
async def test_s3_kinesis_and_dynamodb_cut_in_turn_lose_nothing_and_checkpoint_only_what_is_written(
    kinesalite: Kinesalite, moto_server: MotoServer
) -> None:
    moto = moto_server.endpoint_url
    create_stream(kinesalite.endpoint_url, STREAM, shards=SHARDS)
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    writer = Writer(kinesalite.endpoint_url, STREAM, TOTAL, per_second=RATE)
    sampler = Sampler(moto)
    cuts: dict[str, float] = {}

    with (
        TcpProxy.running(moto) as s3_proxy,
        TcpProxy.running(kinesalite.endpoint_url) as kinesis_proxy,
        TcpProxy.running(moto) as dynamodb_proxy,
    ):
        built = pipeline(kinesis_proxy.endpoint_url, dynamodb_proxy.endpoint_url, s3_proxy.endpoint_url)
        stop = asyncio.Event()
        running = asyncio.create_task(Runtime(built).run(stop))
        started = time.monotonic()
        try:
            await until(
                lambda: len(leases(moto)) == SHARDS and "leaseOwner" in next(iter(leases(moto).values())), 30, "leases"
            )
            writer.start()
            sampler.start()
            for name, proxy, seconds in (
                ("s3", s3_proxy, 2.0),
                ("kinesis", kinesis_proxy, 2.0),
                ("dynamodb", dynamodb_proxy, 3.0),  # renewals and checkpoints fail; shorter than the failover
            ):
                await asyncio.sleep(1.0)
                proxy.cut()
                await asyncio.sleep(seconds)
                proxy.restore()
                cuts[name] = seconds
                assert proxy.stats.reset > 0, f"the {name} cut reset no connection: nothing was cut"
            await asyncio.to_thread(writer.join, 60)
            assert writer.error is None and len(writer.positions) == TOTAL, writer.error
            runs: dict[str, list[int]] = {}
            for shard, sequence in writer.positions.values():
                runs.setdefault(shard, []).append(sequence)
            for run in runs.values():
                run.sort()
            last = {shard: run[-1] for shard, run in runs.items()}
            # Everything written and checkpointed to the end, with the worker still running.
            await until(
                lambda: all(checkpointed(item) >= last[key] for key, item in leases(moto).items() if key in last),
                45,
                "checkpoints at the end of every shard",
            )
        finally:
            writer.stop_event.set()
            sampler.stop_event.set()
            stop.set()
            async with asyncio.timeout(30):
                summary = await running
        elapsed = time.monotonic() - started
    sampler.join(10)
    assert sampler.error is None, sampler.error

    objects = await asyncio.to_thread(read_objects, moto, BUCKET)
    audit = Audit(writer.positions).check(objects)
    per_shard = audit.per_shard_duplicates()
    bad_samples = [
        (i, missing[:3]) for i, s in enumerate(sampler.samples) if (missing := unwritten_below_checkpoint(s, runs))
    ]
    print(
        f"\n[fault scenario] elapsed_s={elapsed:.1f} cuts={cuts} objects={len(objects)} "
        f"duplicates={audit.duplicates} per_shard={dict(per_shard)} samples={len(sampler.samples)} "
        f"leases={dict(built.metrics.leases)} s3_retries={built.metrics.sinks['s3-0'].retries}"
    )
    assert summary.drained
    assert built.metrics.leases["lost"] == 0, "a DynamoDB cut shorter than the failover time costs no lease"
    assert set(audit.copies) == set(range(TOTAL)), "every record reached S3"
    assert audit.out_of_order == [] and audit.lying_keys == [], (audit.out_of_order[:3], audit.lying_keys[:3])
    assert max(audit.copies.values()) <= 2
    bound = RATE / SHARDS * CHECKPOINT_S
    assert all(n <= bound for n in per_shard.values()), f"duplicates per shard {dict(per_shard)} over {bound}"
    assert len(sampler.samples) >= 20
    assert bad_samples == [], f"checkpoints past records not yet in S3 (sample, (shard, sequence)): {bad_samples[:3]}"
