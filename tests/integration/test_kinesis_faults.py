"""Faults no emulator produces, injected with botocore event hooks, plus pacing and metrics of the reader.

* ExpiredIteratorException and ProvisionedThroughputExceededException: a ``before-call`` hook on the
  source's Kinesis client answers GetRecords with the modelled error (botocore's own retries are skipped,
  so the reader sees every injected fault);
* ConditionalCheckFailedException on a checkpoint: a ``before-parameter-build`` hook on the lease table's
  DynamoDB client lets another worker steal the lease (a KCL 2.x-style take) just before the checkpoint
  is sent, so DynamoDB itself refuses it;
* pacing: a ShardReader against kinesalite, counting calls and bytes over a bounded run (upper bounds only);
* metrics: MillisBehindLatest on kinesis-local (kinesalite always answers 0), leases taken and lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import boto3
import orjson
import pytest

from streamkit.batch import Partition
from streamkit.build import build_pipeline
from streamkit.config import AwsSettings, parse_config
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import DecodedRecords
from streamkit.connectors.kinesis.reader import ReadPacer, ReadSettings, ShardReader, StartAt
from streamkit.connectors.kinesis.source import KinesisSource
from streamkit.connectors.local.memory_sink import MemorySink
from streamkit.errors import CheckpointRejected
from streamkit.retry import RetryPolicy
from streamkit.runtime import Pipeline, Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream, put_json

TABLE = "faults-leases"


def pipeline(kinesis: str, dynamodb: str, stream: str, *, sink: str = "out", **source: Any) -> Pipeline:
    config = {
        "name": "faults",
        "source": {
            "type": "kinesis",
            "stream": stream,
            "lease_table": TABLE,
            "failover_time_s": 3,
            "taker_interval_s": 0.5,
            "idle_poll_s": 0.1,
            "retry": {"max_attempts": 0, "base_delay_s": 0.05, "max_delay_s": 0.4},
            **source,
        },
        "sinks": [{"type": "memory", "name": sink, "max_age_s": 0.05}],
        "checkpoint": {"interval_s": 0.2},
        "aws": {"region": "us-east-1", "endpoints": {"kinesis": kinesis, "dynamodb": dynamodb}},
        "runtime": {"shutdown_grace_s": 5},
    }
    return build_pipeline(parse_config(config))


class Running:
    """A runtime on a task of this event loop."""

    def __init__(self, built: Pipeline) -> None:
        self.pipeline = built
        self.runtime = Runtime(built)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.runtime.run(self.stop))

    @property
    def source(self) -> KinesisSource:
        source = self.pipeline.source
        assert isinstance(source, KinesisSource)
        return source

    async def ready(self) -> None:
        async with asyncio.timeout(20):
            await self.runtime.ready.wait()
        assert self.source.kinesis is not None and self.source.dynamodb is not None

    async def finish(self) -> Any:
        self.stop.set()
        async with asyncio.timeout(20):
            return await self.task


def sink(name: str = "out") -> MemorySink:
    return MemorySink.instances[name]


def ids_of(memory: MemorySink) -> list[int]:
    return [orjson.loads(p)["id"] for p in memory.payloads()]


def delivered(name: str = "out") -> int:
    memory = MemorySink.instances.get(name)
    return memory.written_records if memory is not None else 0


class _ErrorResponse:
    status_code = 400


def modelled_error(code: str, message: str) -> tuple[_ErrorResponse, dict[str, Any]]:
    """What a before-call handler returns to make botocore raise the service's modelled exception."""
    return _ErrorResponse(), {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}}


class FaultHook:
    """A ``before-call.kinesis.GetRecords`` handler: answers the next ``times`` calls with ``code``.

    Every call's monotonic time is kept, with whether it was refused.
    """

    def __init__(self, code: str, times: int) -> None:
        self.code = code
        self.remaining = times
        self.calls: list[tuple[float, bool]] = []

    def __call__(self, **_: Any) -> tuple[_ErrorResponse, dict[str, Any]] | None:
        refuse = self.remaining > 0
        self.calls.append((time.monotonic(), refuse))
        if not refuse:
            return None
        self.remaining -= 1
        return modelled_error(self.code, f"injected {self.code}")


def records(start: int, count: int) -> list[dict[str, Any]]:
    return [{"id": i} for i in range(start, start + count)]


# --- Kinesis faults -------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_an_expired_iterator_is_renewed_at_the_last_delivered_record(kinesalite: Any, moto_server: Any) -> None:
    client = create_stream(kinesalite.endpoint_url, "expiry", shards=2)
    put_json(client, "expiry", records(0, 1000))
    running = Running(pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "expiry"))
    await running.ready()
    await wait_for(lambda: delivered() >= 1000, timeout=20)

    # Mid-stream: the next two GetRecords calls (one per shard, or both on one) find their iterator expired.
    hook = FaultHook("ExpiredIteratorException", times=2)
    assert running.source.kinesis is not None
    running.source.kinesis.client.meta.events.register("before-call.kinesis.GetRecords", hook)
    put_json(client, "expiry", records(1000, 1000))
    await wait_for(lambda: hook.remaining == 0 and delivered() >= 2000, timeout=20)
    await asyncio.sleep(0.3)  # anything read twice would show up by now
    summary = await running.finish()

    assert summary.drained
    assert running.source.read_counts["expired_iterators"] == 2
    # Renewed AT the last delivered sequence number, which is skipped: nothing lost, nothing read twice.
    assert sorted(ids_of(sink())) == list(range(2000))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_throttled_reads_back_off_and_lose_nothing(kinesalite: Any, moto_server: Any) -> None:
    client = create_stream(kinesalite.endpoint_url, "throttled", shards=1)
    put_json(client, "throttled", records(0, 500))
    running = Running(
        pipeline(kinesalite.endpoint_url, moto_server.endpoint_url, "throttled", max_records_per_call=200)
    )
    await running.ready()
    await wait_for(lambda: delivered() >= 500, timeout=20)

    hook = FaultHook("ProvisionedThroughputExceededException", times=4)
    assert running.source.kinesis is not None
    running.source.kinesis.client.meta.events.register("before-call.kinesis.GetRecords", hook)
    put_json(client, "throttled", records(500, 1500))
    await wait_for(lambda: delivered() >= 2000, timeout=20)
    summary = await running.finish()

    assert summary.drained
    assert running.source.read_counts["throttled"] == 4
    assert sorted(ids_of(sink())) == list(range(2000)), "nothing lost, nothing twice"
    # One shard, so every call is the same reader's. After a refused call the pacer's gap (1/5 s at the
    # default 5 calls/s) is kept before the next one, plus the jittered exponential back-off.
    refused = [i for i, (_, was_refused) in enumerate(hook.calls) if was_refused]
    assert len(refused) == 4
    assert refused[-1] + 1 < len(hook.calls), "reading resumed after the throttling"
    gaps = [hook.calls[i + 1][0] - hook.calls[i][0] for i in refused]
    assert min(gaps) >= 0.2 - 0.01, gaps


# --- DynamoDB fencing -----------------------------------------------------------------------------------------


class StealBeforeCheckpoint:
    """``before-parameter-build.dynamodb.UpdateItem`` on worker a's lease client: the first time worker a
    checkpoints ``shard``, another worker ("b") takes the lease first, as a KCL 2.x steal does (owner and
    counter + 1, conditional on the counter it read). a's checkpoint then fails its condition in DynamoDB.
    ``after-call`` records what DynamoDB answered to that checkpoint."""

    def __init__(self, dynamodb_url: str, shard: str) -> None:
        self.table = boto3.client("dynamodb", endpoint_url=dynamodb_url, region_name="us-east-1")
        self.shard = shard
        self.stolen_at_checkpoint: str | None = None
        self.answer: str | None = None

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        is_checkpoint = "#checkpoint = :checkpoint" in params.get("UpdateExpression", "")
        if self.stolen_at_checkpoint is not None or not is_checkpoint:
            return
        if params["Key"]["leaseKey"]["S"] != self.shard:
            return
        item = self.table.get_item(TableName=TABLE, Key={"leaseKey": {"S": self.shard}}, ConsistentRead=True)["Item"]
        counter = item["leaseCounter"]["N"]
        self.table.update_item(
            TableName=TABLE,
            Key={"leaseKey": {"S": self.shard}},
            UpdateExpression="SET leaseOwner = :b, leaseCounter = leaseCounter + :one",
            ConditionExpression="leaseCounter = :seen",
            ExpressionAttributeValues={":b": {"S": "b"}, ":one": {"N": "1"}, ":seen": {"N": counter}},
        )
        self.stolen_at_checkpoint = item.get("checkpoint", {}).get("S", "TRIM_HORIZON")
        context["stolen-checkpoint"] = True

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("stolen-checkpoint"):
            self.answer = parsed.get("Error", {}).get("Code", "OK")


def lease_item(dynamodb_url: str, shard: str) -> dict[str, Any]:
    client = boto3.client("dynamodb", endpoint_url=dynamodb_url, region_name="us-east-1")
    item: dict[str, Any] = client.get_item(TableName=TABLE, Key={"leaseKey": {"S": shard}}, ConsistentRead=True)["Item"]
    return item


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("aws_env")
async def test_a_checkpoint_refused_by_dynamodb_fences_the_worker_and_the_new_owner_continues(
    kinesalite: Any, moto_server: Any
) -> None:
    """Worker a reads both shards. Worker b steals shard 0 just before a checkpoints it: DynamoDB answers
    ConditionalCheckFailedException, a drops the shard (a "lost" lease) and every later checkpoint of it is
    rejected; b, started next, reads shard 0 on from a's last checkpoint. Every record arrives; a record
    arrives twice only if a delivered it on shard 0 after that checkpoint."""
    kinesis, dynamodb = kinesalite.endpoint_url, moto_server.endpoint_url
    client = create_stream(kinesis, "fenced", shards=2)
    shard = client.list_shards(StreamName="fenced")["Shards"][0]["ShardId"]
    writer_stop = asyncio.Event()
    written = 0

    async def write() -> None:
        nonlocal written
        while not writer_stop.is_set():
            await asyncio.to_thread(put_json, client, "fenced", records(written, 200))
            written += 200
            await asyncio.sleep(0.1)

    writing = asyncio.create_task(write())
    a = Running(pipeline(kinesis, dynamodb, "fenced", sink="a", worker_id="a"))
    await a.ready()
    await wait_for(lambda: len(a.runtime.held_partitions) == 2 and delivered("a") > 0, timeout=20)

    steal = StealBeforeCheckpoint(dynamodb, shard)
    assert a.source.dynamodb is not None
    a.source.dynamodb.meta.events.register("before-parameter-build.dynamodb.UpdateItem", steal.before)
    a.source.dynamodb.meta.events.register("after-call.dynamodb.UpdateItem", steal.after)
    partition = Partition(a.source.name, shard)
    await wait_for(lambda: steal.answer is not None, timeout=20)
    assert steal.answer == "ConditionalCheckFailedException"
    await wait_for(lambda: partition not in a.runtime.held_partitions, timeout=5)
    # The runtime drops the shard as soon as the checkpoint is refused; the coordinator's "lost" event,
    # which the metrics count, may arrive a moment later.
    await wait_for(lambda: a.pipeline.metrics.leases["lost"] >= 1, timeout=5)
    assert a.pipeline.metrics.leases["lost"] == 1
    with pytest.raises(CheckpointRejected):
        await a.source.checkpoint_store().save(partition, "99999999999999999999999999999999999999999999999999999:0")

    b = Running(pipeline(kinesis, dynamodb, "fenced", sink="b", worker_id="b"))
    await b.ready()
    await wait_for(lambda: partition in b.runtime.held_partitions, timeout=20)
    await asyncio.sleep(1.0)
    writer_stop.set()
    await writing
    await wait_for(lambda: len(set(ids_of(sink("a"))) | set(ids_of(sink("b")))) >= written, timeout=20)
    await b.finish()
    await a.finish()

    # Fenced: a's refused checkpoint never landed; the checkpoint moved on only through b.
    assert lease_item(dynamodb, shard).get("leaseOwner") is None, "released by b on stop"
    assert b.pipeline.metrics.leases["taken"] == 1 and a.pipeline.metrics.leases["taken"] == 2
    assert steal.stolen_at_checkpoint is not None
    stolen_at = int(steal.stolen_at_checkpoint) if steal.stolen_at_checkpoint.isdigit() else -1
    b_positions = [int(pos.sequence) for pos, _ in sink("b").records[partition]]
    assert b_positions and min(b_positions) > stolen_at, "b started after a's last checkpoint"
    assert b_positions == sorted(b_positions)

    a_ids, b_ids = ids_of(sink("a")), ids_of(sink("b"))
    assert set(a_ids) | set(b_ids) == set(range(written)), "every record arrived"
    a_after_checkpoint = {
        orjson.loads(payload)["id"] for pos, payload in sink("a").records[partition] if int(pos.sequence) > stolen_at
    }
    duplicated = {i for i, n in Counter(a_ids + b_ids).items() if n > 1}
    assert duplicated <= a_after_checkpoint


class ThrottleCheckpoints:
    """DynamoDB throttles every checkpoint write (not renewals) while ``on``: ``before-parameter-build``
    marks checkpoint requests, ``before-call`` answers them with ProvisionedThroughputExceededException."""

    def __init__(self) -> None:
        self.on = True
        self.refused = 0

    def mark(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["checkpoint-write"] = "#checkpoint = :checkpoint" in params.get("UpdateExpression", "")

    def refuse(self, context: dict[str, Any], **_: Any) -> tuple[_ErrorResponse, dict[str, Any]] | None:
        if not (self.on and context.get("checkpoint-write")):
            return None
        self.refused += 1
        return modelled_error("ProvisionedThroughputExceededException", "injected lease table throttling")


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_checkpoints_throttled_beyond_the_retries_are_skipped_not_fatal(
    kinesalite: Any, moto_server: Any
) -> None:
    """A checkpoint DynamoDB keeps throttling past the lease table's retries is skipped with a warning; the
    worker keeps its lease (renewals still work), keeps reading, and the next checkpoint covers the records."""
    kinesis, dynamodb = kinesalite.endpoint_url, moto_server.endpoint_url
    client = create_stream(kinesis, "slowtable", shards=1)
    shard = client.list_shards(StreamName="slowtable")["Shards"][0]["ShardId"]
    put_json(client, "slowtable", records(0, 300))
    running = Running(pipeline(kinesis, dynamodb, "slowtable"))
    await running.ready()
    await wait_for(lambda: delivered() >= 300, timeout=20)

    throttle = ThrottleCheckpoints()
    assert running.source.dynamodb is not None
    events = running.source.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb.UpdateItem", throttle.mark)
    events.register("before-call.dynamodb.UpdateItem", throttle.refuse)
    put_json(client, "slowtable", records(300, 300))
    # Two checkpoints in a row exhaust their retries (6 attempts each) while records keep flowing.
    await wait_for(lambda: throttle.refused >= 12 and delivered() >= 600, timeout=20)
    assert not running.task.done(), "the worker kept running"
    assert Partition(running.source.name, shard) in running.runtime.held_partitions

    throttle.on = False
    put_json(client, "slowtable", records(600, 100))
    await wait_for(lambda: delivered() >= 700, timeout=20)
    summary = await running.finish()
    assert summary.drained
    assert sorted(ids_of(sink())) == list(range(700))
    last = max(int(pos.sequence) for pos, _ in sink().records[Partition(running.source.name, shard)])
    assert lease_item(dynamodb, shard)["checkpoint"]["S"] == str(last), "the final checkpoint landed"


# --- pacing ---------------------------------------------------------------------------------------------------


def test_read_pacer_spaces_calls_by_count_and_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("streamkit.connectors.kinesis.reader.time.monotonic", lambda: clock[0])
    pacer = ReadPacer(calls_per_second=2, bytes_per_second=1000)
    assert pacer.delay() == 0.0, "the first call goes at once"
    pacer.record(0)
    assert pacer.delay() == pytest.approx(0.5)
    clock[0] += 0.2
    assert pacer.delay() == pytest.approx(0.3)
    pacer.record(3000)  # 3 s worth of bytes: the byte budget, not the call rate, sets the gap
    assert pacer.delay() == pytest.approx(3.0)
    clock[0] += 3.5
    assert pacer.delay() == 0.0


def _settings(**overrides: Any) -> ReadSettings:
    values: dict[str, Any] = {"retry": RetryPolicy(max_attempts=0, base_delay_s=0.05, max_delay_s=0.2)}
    values.update(overrides)
    return ReadSettings(**values)


async def _read_for(reader: ShardReader, seconds: float) -> tuple[int, float]:
    """Run the reader for ``seconds``; (records read, elapsed seconds measured around the whole run)."""
    count = 0

    async def consume() -> None:
        nonlocal count
        async for batch in reader.batches():
            count += len(batch.batch)

    started = time.monotonic()
    task = asyncio.create_task(consume())
    await asyncio.sleep(seconds)
    reader.stop()
    async with asyncio.timeout(5):
        await task
    return count, time.monotonic() - started


def _decoded(n: int, millis_behind: int | None) -> DecodedRecords:
    import numpy as np

    return DecodedRecords(
        payloads=[b"x"] * n,
        sequence_numbers=[str(i + 1) for i in range(n)],
        partition_keys=["k"] * n,
        arrival_ms=np.zeros(n, dtype=np.int64),
        next_shard_iterator="next",
        millis_behind_latest=millis_behind,
        child_shards=[],
    )


async def _noop(_: Any) -> None:
    return None


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("aws_env")
async def test_the_reader_keeps_to_its_call_and_byte_budgets_and_polls_slowly_at_the_tip(kinesalite: Any) -> None:
    client = create_stream(kinesalite.endpoint_url, "paced", shards=1)
    shard = client.list_shards(StreamName="paced")["Shards"][0]["ShardId"]
    aws = AwsSettings(region="us-east-1", endpoints={"kinesis": kinesalite.endpoint_url})
    partition = Partition("kinesis:paced", shard)

    def reader(kinesis: KinesisClient, settings: ReadSettings) -> ShardReader:
        return ShardReader(
            partition, kinesis, "paced", StartAt("TRIM_HORIZON"), settings, hash_range=None, on_end=_noop
        )

    async with KinesisClient(aws) as kinesis:
        # Calls per second: a backlog read 10 records per call (never "at the tip"), 2 calls/s allowed.
        put_json(client, "paced", records(0, 400))
        calls = reader(kinesis, _settings(reads_per_second=2, max_records=10, idle_poll_s=0))
        read, elapsed = await _read_for(calls, 1.6)
        assert calls.calls <= 2 * elapsed + 1, (calls.calls, elapsed)
        assert read == 10 * calls.calls

        # Bytes per second: ~26 kB records, 4 per call (~140 kB bodies), 150 kB/s allowed.
        bulky_client = create_stream(kinesalite.endpoint_url, "bulky", shards=1)
        put_json(bulky_client, "bulky", [{"id": i, "pad": "x" * 26_000} for i in range(40)])
        bulky_shard = bulky_client.list_shards(StreamName="bulky")["Shards"][0]["ShardId"]
        bulky = ShardReader(
            Partition("kinesis:bulky", bulky_shard),
            kinesis,
            "bulky",
            StartAt("TRIM_HORIZON"),
            _settings(reads_per_second=5, read_bytes_per_second=150_000, max_records=4),
            hash_range=None,
            on_end=_noop,
        )
        _, elapsed = await _read_for(bulky, 2.0)
        # The pacer waits nbytes / budget after each response: over a run, bytes <= budget x time + the
        # last response (whose wait had not passed yet).
        assert bulky.calls >= 1
        assert bulky.bytes_read <= 150_000 * elapsed + 4 * 40_000, (bulky.bytes_read, bulky.calls, elapsed)

        # At the tip: an empty shard is polled every idle_poll_s, not at the 5 calls/s budget.
        empty_stream = create_stream(kinesalite.endpoint_url, "quiet", shards=1)
        quiet_shard = empty_stream.list_shards(StreamName="quiet")["Shards"][0]["ShardId"]
        idle = ShardReader(
            Partition("kinesis:quiet", quiet_shard),
            kinesis,
            "quiet",
            StartAt("TRIM_HORIZON"),
            _settings(reads_per_second=5, idle_poll_s=0.5),
            hash_range=None,
            on_end=_noop,
        )
        _, elapsed = await _read_for(idle, 1.6)
        assert idle.calls <= elapsed / 0.5 + 1, (idle.calls, elapsed)

        # What counts as "at the tip": an empty response, or a partial one with MillisBehindLatest 0. A full
        # response means more is waiting, whatever MillisBehindLatest says (emulators answer 0 throughout).
        probe = reader(kinesis, _settings(max_records=10))
    assert probe._at_tip(_decoded(0, 0))
    assert probe._at_tip(_decoded(3, 0))
    assert not probe._at_tip(_decoded(10, 0))
    assert not probe._at_tip(_decoded(3, 5000))


# --- metrics --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("aws_env")
async def test_millis_behind_latest_and_lease_counts_land_in_the_pipeline_metrics(
    kinesis_local: Any, moto_server: Any
) -> None:
    client = create_stream(kinesis_local.endpoint_url, "lagging", shards=2)
    # kinesis-local measures MillisBehindLatest up to the newest record of the shard: write in two waves
    # 1.5 s apart, so reading the first wave is at least 1.5 s behind.
    put_json(client, "lagging", records(0, 200))
    await asyncio.sleep(1.5)
    put_json(client, "lagging", records(200, 100))
    running = Running(
        pipeline(kinesis_local.endpoint_url, moto_server.endpoint_url, "lagging", max_records_per_call=25)
    )
    await running.ready()
    metrics = running.pipeline.metrics
    seen: dict[Partition, int] = {}

    def sample() -> bool:
        for partition, stats in list(metrics.partitions.items()):
            if stats.millis_behind is not None:
                seen[partition] = max(seen.get(partition, 0), stats.millis_behind)
        return delivered() >= 300

    await wait_for(sample, timeout=30, interval=0.01)
    assert metrics.leases["taken"] == 2
    summary = await running.finish()
    assert summary.drained
    assert len(seen) == 2, "every shard reported MillisBehindLatest"
    assert max(seen.values()) >= 1000, seen
    assert metrics.leases["lost"] == 0
    assert running.source.read_counts["calls"] >= 300 // 25
