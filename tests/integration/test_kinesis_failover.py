"""Kinesis worker fleets as users run them: `python -m streamkit run` processes sharing one lease table.

kinesalite for Kinesis, moto for the DynamoDB lease table. Every worker writes to its own `file` sink
directory (gzip NDJSON), so the test knows which worker delivered which record. The writer records the
shard and sequence number Kinesis gave each record (PutRecords answers with them), so a record id maps
to its position without any help from the consumer.

Measured times are printed (run with `-s`) and written to `kinesis-takeover.json` in the test's tmp dir.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import yaml

from tests.integration.kinesis_helpers import create_stream

CLI = [sys.executable, "-m", "streamkit"]
TABLE = "fleet-leases"


# --- the fleet ----------------------------------------------------------------------------------------------


def write_pipeline(directory: Path, *, failover_s: float, taker_s: float, checkpoint_s: float) -> Path:
    """One pipeline file for every worker: identity, endpoints and stream come from the environment."""
    config = {
        "name": "fleet",
        "source": {
            "type": "kinesis",
            "stream": "${STREAM}",
            "worker_id": "${WORKER}",
            "lease_table": TABLE,
            "failover_time_s": failover_s,
            "taker_interval_s": taker_s,
            "idle_poll_s": 0.2,
            "shard_sync_interval_s": 60,
        },
        "sinks": [
            {
                "type": "file",
                "path": "out-${WORKER}",
                "compression": "gzip",
                "max_records": 2000,
                "max_age_s": 0.2,
                # One write at a time: acknowledgements follow file order, which the duplicate bound uses.
                "max_concurrent_writes": 1,
            }
        ],
        "checkpoint": {"interval_s": checkpoint_s},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": "${KINESIS}", "dynamodb": "${DYNAMODB}"}},
        "runtime": {"shutdown_grace_s": 10},
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Fleet:
    directory: Path
    pipeline: Path
    env: dict[str, str]
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self, name: str) -> Worker:
        log_path = self.directory / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*CLI, "--log-format", "json", "run", str(self.pipeline)],
                cwd=self.directory,
                env={**self.env, "WORKER": name},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(name, proc, log_path)
        self.workers[name] = worker
        return worker

    def stop_all(self) -> None:
        """Only the processes this test started, by their own PID."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} (exit {w.proc.poll()}) ---\n{w.log_tail()}" for w in self.workers.values())


@pytest.fixture
def fleet(tmp_path: Path, kinesalite: Any, moto_server: Any, aws_env: dict[str, str]) -> Iterator[Fleet]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMKIT_")}
    env.update(
        {
            "KINESIS": kinesalite.endpoint_url,
            "DYNAMODB": moto_server.endpoint_url,
            "STREAM": "fleet",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH", "")])),
        }
    )
    pipeline = write_pipeline(tmp_path, failover_s=3.0, taker_s=1.5, checkpoint_s=1.0)
    running = Fleet(tmp_path, pipeline, env)
    try:
        yield running
    finally:
        running.stop_all()


# --- reading back ---------------------------------------------------------------------------------------------


def leases(dynamodb: str) -> dict[str, dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1")
    try:
        items = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    except client.exceptions.ResourceNotFoundException:
        return {}
    return {i["leaseKey"]["S"]: i for i in items}


def owner(item: dict[str, Any]) -> str | None:
    """Who processes the shard now: during a hand-off the previous owner (checkpointOwner)."""
    for name in ("checkpointOwner", "leaseOwner"):
        if name in item:
            return str(item[name]["S"])
    return None


def owners(dynamodb: str) -> dict[str, str | None]:
    return {key: owner(item) for key, item in leases(dynamodb).items()}


@dataclass(frozen=True)
class Delivery:
    worker: str
    record_id: int
    written_ns: int
    """When the file holding it was named (just before it was written and acknowledged)."""


def delivered(directory: Path, worker: str) -> list[Delivery]:
    out: list[Delivery] = []
    for file in sorted((directory / f"out-{worker}").glob("part-*.ndjson.gz")):
        written_ns = int(file.name.split("-")[1])
        for line in gzip.decompress(file.read_bytes()).splitlines():
            out.append(Delivery(worker, orjson.loads(line)["id"], written_ns))
    return out


def delivered_ids(directory: Path, workers: list[str]) -> set[int]:
    return {d.record_id for w in workers for d in delivered(directory, w)}


# --- the writer -----------------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """PutRecords of 500 at a steady pace; remembers each record's shard and sequence number."""

    def __init__(self, endpoint: str, stream: str, total: int, *, per_second: float) -> None:
        super().__init__(daemon=True, name="kinesis-writer")
        self.client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
        self.stream = stream
        self.total = total
        self.per_second = per_second
        self.positions: dict[int, tuple[str, int]] = {}
        self.written = 0
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            started = time.monotonic()
            for first in range(0, self.total, 500):
                if self.stop_event.is_set():
                    return
                ids = list(range(first, min(first + 500, self.total)))
                self._put(ids)
                self.written = ids[-1] + 1
                due = started + self.written / self.per_second
                time.sleep(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _put(self, ids: list[int]) -> None:
        pending = ids
        while pending:
            entries = [{"Data": orjson.dumps({"id": i, "pad": "x" * 64}), "PartitionKey": f"key-{i}"} for i in pending]
            response = self.client.put_records(StreamName=self.stream, Records=entries)
            failed = []
            for i, result in zip(pending, response["Records"], strict=True):
                if "ErrorCode" in result:
                    failed.append(i)
                else:
                    self.positions[i] = (result["ShardId"], int(result["SequenceNumber"]))
            pending = failed
            if pending:
                time.sleep(0.05)


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def report(tmp_path: Path, name: str, values: dict[str, Any]) -> None:
    print(f"\n[{name}] " + json.dumps(values, sort_keys=True))
    path = tmp_path / "kinesis-takeover.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[name] = values
    path.write_text(json.dumps(existing, indent=2, sort_keys=True))


# --- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sigkill_one_of_three_workers_loses_nothing_and_bounds_duplicates(
    fleet: Fleet, kinesalite: Any, moto_server: Any, tmp_path: Path
) -> None:
    """3 workers, 8 shards, 50,000 records written while they run; the busiest worker is SIGKILLed mid-stream.

    Bounds asserted:

    * every record reaches some worker's sink (at least once);
    * duplicates: a record is delivered twice only if the killed worker D delivered it *after its last
      checkpoint* of that shard (its sequence number is above the checkpoint D left in the lease table), and
      then exactly twice (once by D, once by the new owner). Every such record sits in a file D wrote within
      ``checkpoint interval + 1 s`` before the kill (the checkpoint loop runs every interval; the 1 s covers
      the checkpoint writes and a busy 2-core machine): so duplicates stay within one checkpoint interval of
      D's deliveries per shard;
    * takeover: from the SIGKILL to the two survivors holding all 8 leases (lease table scans every 50 ms)
      takes at most ``failover_time + 2 x 1.1 x taker_interval + 0.5 s`` = 3 + 3.3 + 0.5 = 6.8 s. D's last
      renewal or checkpoint preceded the kill; a survivor sees that counter change at its next scan (within
      one jittered taker interval, 1.1 x 1.5 s), calls the lease expired failover_time later and takes it in
      a pass scheduled just after. It takes only up to its target share, though, and the other survivor,
      whose scans saw the last change at another moment, may still count D as alive and steal from it
      instead of taking D's leases: then the last of D's leases waits for one more pass (up to another
      1.1 x taker_interval). 0.5 s covers the scans and conditional writes on a busy 2-core machine.
    """
    failover_s, taker_s, checkpoint_s = 3.0, 1.5, 1.0
    total, shards = 50_000, 8
    dynamodb = moto_server.endpoint_url
    create_stream(kinesalite.endpoint_url, "fleet", shards=shards)
    names = ["w1", "w2", "w3"]
    for name in names:
        fleet.start(name)

    def balanced() -> bool:
        held = Counter(owners(dynamodb).values())
        return len(leases(dynamodb)) == shards and all(2 <= held[n] <= 3 for n in names)

    try:
        wait_until(balanced, timeout=40, what="3 workers to share 8 leases")
    except TimeoutError:
        pytest.fail(f"fleet did not balance: {owners(dynamodb)}\n{fleet.logs()}")

    writer = Writer(kinesalite.endpoint_url, "fleet", total, per_second=5000)
    writer.start()
    try:
        wait_until(lambda: writer.written >= 20_000 or writer.error is not None, timeout=30, what="20,000 written")
        assert writer.error is None, writer.error
        # Kill the busiest worker: the most shards to take over.
        held = Counter(owners(dynamodb).values())
        victim = max(names, key=lambda n: (held[n], n))
        assert all(w.proc.poll() is None for w in fleet.workers.values()), fleet.logs()
        # Kill right after it wrote a file: those records are (very likely) not checkpointed yet, so the
        # duplicate bound has something to bound.
        files = len(list((tmp_path / f"out-{victim}").glob("part-*")))
        wait_until(
            lambda: len(list((tmp_path / f"out-{victim}").glob("part-*"))) > files,
            timeout=10,
            interval=0.01,
            what=f"{victim} to write a file",
        )
        killed_wall_ns = time.time_ns()
        killed = time.monotonic()
        fleet.workers[victim].proc.send_signal(signal.SIGKILL)
        fleet.workers[victim].proc.wait(timeout=10)
        time.sleep(0.2)  # a request it sent just before dying may still land
        snapshot = leases(dynamodb)
        victim_shards = {key: item for key, item in snapshot.items() if owner(item) == victim}
        assert victim_shards, f"{victim} held nothing at the kill: {owners(dynamodb)}"
        survivors = [n for n in names if n != victim]

        def taken_over() -> bool:
            now = owners(dynamodb)
            return len(now) == shards and all(o in survivors for o in now.values())

        wait_until(taken_over, timeout=30, interval=0.05, what="survivors to hold every lease")
        takeover_s = time.monotonic() - killed

        writer.join(timeout=60)
        assert not writer.is_alive() and writer.error is None, writer.error
        assert len(writer.positions) == total
        try:
            wait_until(
                lambda: len(delivered_ids(tmp_path, names)) >= total, timeout=60, interval=0.5, what="every record"
            )
        except TimeoutError:
            missing = set(range(total)) - delivered_ids(tmp_path, names)
            pytest.fail(f"{len(missing)} records missing, e.g. {sorted(missing)[:10]}\n{fleet.logs()}")
    finally:
        writer.stop_event.set()

    for name in survivors:
        fleet.workers[name].proc.send_signal(signal.SIGTERM)
    for name in survivors:
        assert fleet.workers[name].proc.wait(timeout=20) == 0, fleet.logs()
    final = leases(dynamodb)
    assert all("leaseOwner" not in item for item in final.values()), f"released on SIGTERM: {owners(dynamodb)}"

    # -- at least once -------------------------------------------------------------------------------------
    deliveries = [d for name in names for d in delivered(tmp_path, name)]
    copies = Counter(d.record_id for d in deliveries)
    assert set(copies) == set(range(total)), "every record reached a sink"

    # -- duplicates only from the killed worker's last checkpoint interval ------------------------------------
    def checkpoint_of(shard: str) -> int:
        text = victim_shards[shard].get("checkpoint", {}).get("S", "TRIM_HORIZON")
        return int(text) if text.isdigit() else -1  # never checkpointed: everything it delivered can repeat

    by_victim = [d for d in deliveries if d.worker == victim]
    after_checkpoint = {
        d.record_id
        for d in by_victim
        if writer.positions[d.record_id][0] in victim_shards
        and writer.positions[d.record_id][1] > checkpoint_of(writer.positions[d.record_id][0])
    }
    duplicated = {record_id for record_id, n in copies.items() if n > 1}
    assert all(copies[r] == 2 for r in duplicated), "a record was delivered more than twice"
    assert duplicated <= after_checkpoint, (
        f"{len(duplicated - after_checkpoint)} duplicates were not the killed worker's uncheckpointed records"
    )
    window_ns = int((checkpoint_s + 1.0) * 1e9)
    old = [d for d in by_victim if d.record_id in after_checkpoint and d.written_ns < killed_wall_ns - window_ns]
    assert not old, f"{len(old)} records delivered more than one checkpoint interval before the kill were replayed"
    per_shard = Counter(writer.positions[r][0] for r in duplicated)
    bound = Counter(writer.positions[r][0] for r in after_checkpoint)
    assert all(per_shard[s] <= bound[s] for s in per_shard)

    # -- takeover time -------------------------------------------------------------------------------------
    takeover_bound = failover_s + 2 * 1.1 * taker_s + 0.5
    report(
        tmp_path,
        "sigkill_takeover",
        {
            "takeover_s": round(takeover_s, 3),
            "bound_s": takeover_bound,
            "failover_time_s": failover_s,
            "taker_interval_s": taker_s,
            "victim_shards": len(victim_shards),
            "duplicates": sum(n - 1 for n in copies.values()),
            "duplicates_per_shard": dict(per_shard),
            "uncheckpointed_by_victim": len(after_checkpoint),
            "oldest_replayed_delivery_s_before_kill": round(
                max(((killed_wall_ns - d.written_ns) / 1e9 for d in by_victim if d.record_id in duplicated), default=0),
                3,
            ),
            "records": total,
        },
    )
    assert takeover_s <= takeover_bound, f"takeover took {takeover_s:.2f} s (bound {takeover_bound:.2f} s)"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_clean_shutdown_hands_shards_to_the_other_worker_within_one_taker_interval(
    fleet: Fleet, kinesalite: Any, moto_server: Any, tmp_path: Path
) -> None:
    """Two workers, 4 shards, records flowing; SIGTERM one. It drains, checkpoints and releases its leases;
    the other takes them at its next taker pass: within 1.1 x taker_interval (the +-10% jitter) + 0.5 s for
    the scan and writes, measured from the first scan showing a lease released. Nothing is lost and, since
    every hand-over (the balancing at start-up, the shutdown) checkpoints first, nothing is duplicated."""
    taker_s = 1.5
    total, shards = 8000, 4
    dynamodb = moto_server.endpoint_url
    create_stream(kinesalite.endpoint_url, "fleet", shards=shards)
    fleet.start("a")
    fleet.start("b")
    wait_until(lambda: Counter(owners(dynamodb).values()) == {"a": 2, "b": 2}, timeout=40, what="2 leases each")
    writer = Writer(kinesalite.endpoint_url, "fleet", total, per_second=2000)
    writer.start()
    try:
        wait_until(lambda: writer.written >= total // 2, timeout=30, what="half the records written")
        assert writer.error is None, writer.error
        mine = {key for key, who in owners(dynamodb).items() if who == "a"}
        signalled = time.monotonic()
        fleet.workers["a"].proc.send_signal(signal.SIGTERM)
        released_at: float | None = None
        while True:
            now = leases(dynamodb)
            if released_at is None and any("leaseOwner" not in now[key] for key in mine):
                released_at = time.monotonic()
            if all(owner(now[key]) == "b" for key in mine):
                taken_at = time.monotonic()
                break
            assert time.monotonic() - signalled < 30, f"not handed over: {owners(dynamodb)}"
            time.sleep(0.05)
        assert fleet.workers["a"].proc.wait(timeout=20) == 0, fleet.logs()
        writer.join(timeout=30)
        assert writer.error is None, writer.error
        wait_until(
            lambda: len(delivered_ids(tmp_path, ["a", "b"])) >= total, timeout=30, interval=0.3, what="every record"
        )
    finally:
        writer.stop_event.set()
    fleet.workers["b"].proc.send_signal(signal.SIGTERM)
    assert fleet.workers["b"].proc.wait(timeout=20) == 0, fleet.logs()

    copies = Counter(d.record_id for name in ("a", "b") for d in delivered(tmp_path, name))
    assert set(copies) == set(range(total))
    assert max(copies.values()) == 1, f"{sum(n - 1 for n in copies.values())} duplicates after clean hand-overs"

    since_release = taken_at - (released_at if released_at is not None else taken_at)
    bound = 1.1 * taker_s + 0.5
    report(
        tmp_path,
        "clean_shutdown_handover",
        {
            "sigterm_to_taken_s": round(taken_at - signalled, 3),
            "release_to_taken_s": round(since_release, 3),
            "bound_s": bound,
            "taker_interval_s": taker_s,
            "shards_handed_over": len(mine),
        },
    )
    assert released_at is not None or since_release == 0
    assert since_release <= bound, f"taken {since_release:.2f} s after the release (bound {bound:.2f} s)"


# --- in-process: stopping, and taking over from a KCL fleet -------------------------------------------------------


def _in_process(kinesis: str, dynamodb: str, stream: str, **source: Any) -> Any:
    from streamkit.build import build_pipeline
    from streamkit.config import parse_config

    config = {
        "name": "fleet",
        "source": {"type": "kinesis", "stream": stream, "lease_table": TABLE, "idle_poll_s": 0.1, **source},
        "sinks": [{"type": "memory", "name": "out", "max_age_s": 0.05}],
        "checkpoint": {"interval_s": 0.2},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 5},
    }
    return build_pipeline(parse_config(config))


class _RecordingHost:
    def __init__(self) -> None:
        self.assigned: list[str] = []

    async def assign(self, reader: Any) -> None:
        self.assigned.append(reader.partition.key)

    async def revoke(self, partition: Any, *, graceful: bool) -> None:
        return None


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_leases_acquired_while_stopping_are_not_read_and_are_released(kinesalite: Any, moto_server: Any) -> None:
    """A worker that is draining may still win leases (a peer released them, its taker pass was running).
    Reading them then would start a partition the drain never stops: they are held, not read, and released
    when the source closes."""
    import asyncio

    from streamkit.checkpoint import MemoryCheckpointStore

    create_stream(kinesalite.endpoint_url, "fleet", shards=2)
    built = _in_process(kinesalite.endpoint_url, moto_server.endpoint_url, "fleet", failover_time_s=3)
    source = built.source
    await source.start(MemoryCheckpointStore())
    host, stop = _RecordingHost(), asyncio.Event()
    stop.set()  # the runtime is already draining
    running = asyncio.create_task(source.run(host, stop))
    await asyncio.sleep(0.1)
    # A stopping source pauses its taker; simulate a taker pass that was already under way when stop came.
    source.coordinator._taking_paused = False
    async with asyncio.timeout(10):
        while len(source.coordinator.held()) < 2:  # noqa: ASYNC110 - the coordinator's own state
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert host.assigned == []
    await source.close()
    await running
    assert all("leaseOwner" not in item for item in leases(moto_server.endpoint_url).values())


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_a_kcl_fleets_lease_table_is_taken_over_and_its_checkpoints_honoured(
    kinesalite: Any, moto_server: Any
) -> None:
    """A KCL 2.x table (no owner index) whose workers are gone: leases still owned (the KCL does not
    release on shutdown), one checkpointed at a sequence number, one at TRIM_HORIZON. streamkit pointed at
    it with `lease_table` takes both once they expire and resumes right after the KCL's checkpoint."""
    import asyncio

    from streamkit.connectors.local.memory_sink import MemorySink
    from streamkit.runtime import Runtime

    kinesis = create_stream(kinesalite.endpoint_url, "fleet", shards=2)
    shard_ids = [s["ShardId"] for s in kinesis.list_shards(StreamName="fleet")["Shards"]]
    by_shard: dict[str, list[tuple[int, int]]] = {s: [] for s in shard_ids}
    for first in range(0, 400, 100):
        entries = [{"Data": orjson.dumps({"id": i}), "PartitionKey": f"key-{i}"} for i in range(first, first + 100)]
        answer = kinesis.put_records(StreamName="fleet", Records=entries)
        for i, result in zip(range(first, first + 100), answer["Records"], strict=True):
            by_shard[result["ShardId"]].append((int(result["SequenceNumber"]), i))
    checkpointed_shard, fresh_shard = shard_ids
    checkpoint_seq, _ = by_shard[checkpointed_shard][len(by_shard[checkpointed_shard]) // 2]

    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for shard, owner_id, checkpoint in (
        (checkpointed_shard, "kcl-host-a", str(checkpoint_seq)),
        (fresh_shard, "kcl-host-b", "TRIM_HORIZON"),
    ):
        dynamodb.put_item(
            TableName=TABLE,
            Item={
                "leaseKey": {"S": shard},
                "leaseOwner": {"S": owner_id},
                "leaseCounter": {"N": "41"},
                "checkpoint": {"S": checkpoint},
                "checkpointSubSequenceNumber": {"N": "0"},
                "ownerSwitchesSinceCheckpoint": {"N": "0"},
            },
        )

    built = _in_process(
        kinesalite.endpoint_url, moto_server.endpoint_url, "fleet", failover_time_s=1, worker_id="streamkit-1"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(built).run(stop))
    expected = {i for seq, i in by_shard[checkpointed_shard] if seq > checkpoint_seq} | {
        i for _, i in by_shard[fresh_shard]
    }

    def written() -> int:
        memory = MemorySink.instances.get("out")
        return memory.written_records if memory is not None else 0

    try:
        async with asyncio.timeout(20):
            while written() < len(expected):  # noqa: ASYNC110 - the runtime's sink fills it
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
    async with asyncio.timeout(20):
        await task
    memory = MemorySink.instances.get("out")
    assert memory is not None
    got = [orjson.loads(p)["id"] for p in memory.payloads()]
    assert sorted(got) == sorted(expected), "resumed after the KCL checkpoint; nothing before it, nothing twice"
    items = leases(moto_server.endpoint_url)
    assert items[checkpointed_shard]["checkpoint"]["S"] == str(by_shard[checkpointed_shard][-1][0])
    assert all(int(item["ownerSwitchesSinceCheckpoint"]["N"]) == 0 for item in items.values())


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("aws_env")
async def test_a_kcl_multi_stream_lease_table_is_refused_at_start_up(kinesalite: Any, moto_server: Any) -> None:
    from streamkit.checkpoint import MemoryCheckpointStore
    from streamkit.errors import ConfigError

    create_stream(kinesalite.endpoint_url, "fleet", shards=1)
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    key = "123456789012:fleet:1700000000:shardId-000000000000"
    dynamodb.put_item(TableName=TABLE, Item={"leaseKey": {"S": key}, "leaseCounter": {"N": "1"}})
    source = _in_process(kinesalite.endpoint_url, moto_server.endpoint_url, "fleet").source
    with pytest.raises(ConfigError, match="multi-stream"):
        await source.start(MemoryCheckpointStore())
    assert set(leases(moto_server.endpoint_url)) == {key}, "nothing was written to the table"


def test_the_kinesis_example_pipelines_validate() -> None:
    examples = sorted((Path(__file__).parents[2] / "examples" / "pipelines").glob("kinesis-*.yaml"))
    assert examples
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMKIT_")}
    for example in examples:
        result = subprocess.run([*CLI, "validate", str(example)], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_a_stopping_source_takes_no_leases(kinesalite: Any, moto_server: Any) -> None:
    """Draining for shutdown pauses the taker: no lease is taken only to be released moments later."""
    import asyncio

    from streamkit.checkpoint import MemoryCheckpointStore

    create_stream(kinesalite.endpoint_url, "fleet", shards=2)
    built = _in_process(kinesalite.endpoint_url, moto_server.endpoint_url, "fleet", failover_time_s=1)
    source = built.source
    await source.start(MemoryCheckpointStore())
    host, stop = _RecordingHost(), asyncio.Event()
    stop.set()
    running = asyncio.create_task(source.run(host, stop))
    await asyncio.sleep(2.5)  # two taker intervals
    assert source.coordinator.held() == set()
    await source.close()
    await running
