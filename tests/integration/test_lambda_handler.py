"""The Lambda handler end to end: events as Lambda delivers them, real sinks, the partial batch response.

Pipelines come from YAML files (as deployed with STREAMKIT_CONFIG) or are built in code; sinks are the
file and memory sinks, an aiobotocore S3 client on moto (a client bound to the event loop, which is what
warm invocations must keep working), and the Firehose sink on moto.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aws_kinesis_agg.aggregator as agg
import boto3
import orjson
import pytest
import structlog.testing
import yaml
from aiobotocore.session import get_session

from streamkit import aws_lambda
from streamkit.aws_lambda import make_handler
from streamkit.aws_lambda.app import LambdaApp
from streamkit.aws_lambda.events import EventFormatError
from streamkit.aws_lambda.pipeline import LambdaEventSource, LambdaOptions
from streamkit.aws_lambda.pipeline import load as load_pipeline
from streamkit.batch import RecordBatch, concat_payloads
from streamkit.chain import Chain
from streamkit.checkpoint import MemoryCheckpointStore
from streamkit.connectors.kinesis.kpl import MAGIC
from streamkit.connectors.local.memory_sink import MemoryDeadLetter, MemorySink
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError
from streamkit.processors.json_codec import JsonDecode
from streamkit.runtime import Pipeline, Route
from streamkit.sink import BufferedSink, BufferOptions, Rejection
from tests.helpers import modelled_response

pytestmark = pytest.mark.timeout(120)

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
SHARD = "shardId-000000000003"
SEQ = "4959033827149025660855969253836157109592157598913658"
REGION = "us-east-1"


# ------------------------------------------------------------------------------------------------ events


def seq(i: int) -> str:
    return f"{SEQ}{i:04d}"


def kinesis_event(payloads: Sequence[bytes], keys: Sequence[str] | None = None, first: int = 0) -> dict[str, Any]:
    records = []
    for i, data in enumerate(payloads, first):
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": keys[i - first] if keys else f"user-{i % 5}",
                    "sequenceNumber": seq(i),
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": 1_795_000_000.5 + i,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{SHARD}:{seq(i)}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda",
                "awsRegion": REGION,
                "eventSourceARN": STREAM_ARN,
            }
        )
    return {"Records": records}


def kafka_event(
    partitions: dict[int, Sequence[bytes]], source: str = "aws:kafka", topic: str = "orders"
) -> dict[str, Any]:
    records = {}
    for partition, values in partitions.items():
        records[f"{topic}-{partition}"] = [
            {
                "topic": topic,
                "partition": partition,
                "offset": 100 + i,
                "timestamp": 1_795_000_000_000 + i,
                "timestampType": "CREATE_TIME",
                "key": base64.b64encode(b"k%d" % (i % 3)).decode(),
                "value": base64.b64encode(v).decode(),
                "headers": [{"trace": list(b"t%d" % i)}],
            }
            for i, v in enumerate(values)
        ]
    event: dict[str, Any] = {"eventSource": source, "bootstrapServers": "b-1:9092", "records": records}
    if source == "aws:kafka":
        event["eventSourceArn"] = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc"
    return event


def js(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"id": i, "status": "err" if i % 10 == 9 else "ok", "pad": "x" * 20, **extra})


BAD = b"{not json"


class Context:
    """The parts of Lambda's context object the handler reads; remaining time from a function."""

    def __init__(self, remaining: Callable[[], int] = lambda: 300_000, request_id: str = "req-1") -> None:
        self.aws_request_id = request_id
        self._remaining = remaining
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        return self._remaining()


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def apps() -> Iterator[list[LambdaApp]]:
    made: list[LambdaApp] = []
    yield made
    for app in made:
        app.close()


def write_pipeline(directory: Path, **sections: Any) -> Path:
    config: dict[str, Any] = {
        "name": "lambda-test",
        "source": {"type": "lambda"},
        "processors": [{"type": "json.decode"}],
        "sinks": [{"type": "memory", "name": "out"}],
    }
    config.update(sections)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def handler_for(
    apps: list[LambdaApp], directory: Path, options: dict[str, Any] | None = None, **sections: Any
) -> LambdaApp:
    app = make_handler(write_pipeline(directory, **sections), **(options or {}))
    apps.append(app)
    return app


def ids(payloads: Sequence[bytes]) -> list[int]:
    return [orjson.loads(p)["id"] for p in payloads]


def file_records(directory: Path) -> list[bytes]:
    lines: list[bytes] = []
    for file in sorted(directory.glob("*.ndjson.gz")):
        lines.extend(gzip.decompress(file.read_bytes()).splitlines())
    return lines


def aggregate(users: list[tuple[str, bytes]]) -> bytes:
    aggregator = agg.RecordAggregator()
    for key, data in users:
        aggregator.add_user_record(key, data)
    _, _, blob = aggregator.clear_and_get().get_contents()
    return bytes(blob)


# ------------------------------------------------------------------------------------- the happy paths


def test_kinesis_event_runs_through_the_pipeline_file_into_every_routed_sink(
    apps: list[LambdaApp], tmp_path: Path
) -> None:
    app = handler_for(
        apps,
        tmp_path,
        processors=[
            {"type": "json.decode"},
            {"type": "filter", "where": {"field": "status", "not_equals": "err"}},
            {"type": "map", "fields": ["id", "status"]},
            {"type": "json.encode"},
        ],
        sinks=[
            {"type": "file", "name": "files", "path": "out", "compression": "gzip"},
            {"type": "memory", "name": "small", "when": {"field": "id", "lt": 5}},
        ],
    )
    response = app(kinesis_event([js(i) for i in range(50)]), Context())
    assert response == {"batchItemFailures": []}
    kept = [i for i in range(50) if i % 10 != 9]
    assert ids(file_records(tmp_path / "out")) == kept
    assert orjson.loads(file_records(tmp_path / "out")[0]) == {"id": 0, "status": "ok"}
    assert ids(MemorySink.instances["small"].payloads()) == [0, 1, 2, 3, 4]


def test_a_when_sink_reads_fields_decoded_in_the_fused_pass(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(
        apps,
        tmp_path,
        processors=[{"type": "json.decode"}, {"type": "filter", "where": {"field": "status", "not_equals": "err"}}],
        sinks=[
            {"type": "memory", "name": "all"},
            {"type": "memory", "name": "small", "when": {"field": "id", "lt": 5}},
        ],
    )
    assert app.chain.steps[-1].sink_fields == ["id"]
    assert app(kinesis_event([js(i) for i in range(20)]), Context()) == {"batchItemFailures": []}
    assert ids(MemorySink.instances["all"].payloads()) == [i for i in range(20) if i % 10 != 9]
    assert ids(MemorySink.instances["small"].payloads()) == [0, 1, 2, 3, 4]


def test_kpl_aggregated_records_are_deaggregated_in_order(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path)
    blobs = [aggregate([(f"k{j}", js(i * 10 + j)) for j in range(4)]) for i in range(3)]
    event = kinesis_event([blobs[0], js(100), blobs[1], blobs[2]])
    assert app(event, Context()) == {"batchItemFailures": []}
    sink = MemorySink.instances["out"]
    assert ids(sink.payloads()) == [0, 1, 2, 3, 100, 10, 11, 12, 13, 20, 21, 22, 23]
    positions = [str(p) for p, _ in next(iter(sink.records.values()))]
    assert positions[:5] == [f"{seq(0)}:0", f"{seq(0)}:1", f"{seq(0)}:2", f"{seq(0)}:3", f"{seq(1)}:0"]


@pytest.mark.parametrize("source", ["aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka"])
def test_kafka_events_reach_the_sinks_per_partition(apps: list[LambdaApp], tmp_path: Path, source: str) -> None:
    app = handler_for(apps, tmp_path)
    event = kafka_event({0: [js(i) for i in range(5)], 1: [js(i) for i in range(5, 8)]}, source)
    assert app(event, Context()) == {"batchItemFailures": []}
    sink = MemorySink.instances["out"]
    by_partition = {p.key: ids([payload for _, payload in items]) for p, items in sink.records.items()}
    assert by_partition == {"0": [0, 1, 2, 3, 4], "1": [5, 6, 7]}
    assert {p.source for p in sink.records} == {"kafka:orders"}


def test_the_handler_named_by_streamkit_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, sinks=[{"type": "file", "path": "out"}])
    monkeypatch.setenv(aws_lambda.CONFIG_ENV, str(path))
    monkeypatch.setattr(aws_lambda, "_app", None)
    try:
        assert aws_lambda.handler(kinesis_event([js(1), js(2)]), Context()) == {"batchItemFailures": []}
        assert aws_lambda.handler(kinesis_event([js(3)], first=2), Context()) == {"batchItemFailures": []}
        lines = [line for f in sorted((tmp_path / "out").glob("*.ndjson")) for line in f.read_bytes().splitlines()]
        assert ids(lines) == [1, 2, 3]
    finally:
        if aws_lambda._app is not None:
            aws_lambda._app.close()


def test_a_pipeline_file_written_for_streamkit_run_works_unchanged(apps: list[LambdaApp], tmp_path: Path) -> None:
    # A Kafka source whose plugin is not even installed here, and a checkpoint section: both ignored.
    app = handler_for(
        apps,
        tmp_path,
        {"ordering": "per_key"},
        source={"type": "kafka", "topics": ["orders"], "group": "g"},
        checkpoint={"type": "file", "path": "nowhere/checkpoints.json"},
    )
    assert app.options.ordering == "per_key"
    assert app(kinesis_event([js(1)]), Context()) == {"batchItemFailures": []}


def test_streamkit_set_overrides_the_file_as_for_streamkit_run(
    apps: list[LambdaApp], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMKIT_SET", "source.ordering=per_key; source.chunk_records=5")
    app = handler_for(apps, tmp_path)
    assert (app.options.ordering, app.options.chunk_records) == ("per_key", 5)


def test_a_pipeline_built_in_code(apps: list[LambdaApp]) -> None:
    sink = MemorySink()

    def build() -> Pipeline:
        return Pipeline(
            name="in-code",
            source=LambdaEventSource(LambdaOptions(chunk_records=2)),
            chain=Chain([JsonDecode()]),
            routes=[Route("mem", sink)],
            dead_letters=None,
            store=MemoryCheckpointStore(),
        )

    app = make_handler(build, chunk_records=3)
    apps.append(app)
    assert app.options.chunk_records == 3  # keyword options override the pipeline's
    assert app(kinesis_event([js(i) for i in range(7)]), Context()) == {"batchItemFailures": []}
    assert ids(sink.payloads()) == list(range(7))


# -------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("chunk", [1000, 7])
def test_a_failure_mid_shard_is_reported_and_nothing_after_it_is_written(
    apps: list[LambdaApp], tmp_path: Path, chunk: int
) -> None:
    app = handler_for(
        apps, tmp_path, {"chunk_records": chunk}, sinks=[{"type": "file", "path": "out", "compression": "gzip"}]
    )
    payloads = [js(i) for i in range(60)]
    payloads[23] = BAD
    response = app(kinesis_event(payloads), Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(23)}]}
    assert ids(file_records(tmp_path / "out")) == list(range(23))
    # Lambda redelivers from the failed record; once it is fixed everything after it arrives.
    payloads[23] = js(23)
    assert app(kinesis_event(payloads[23:], first=23), Context()) == {"batchItemFailures": []}
    assert ids(file_records(tmp_path / "out")) == list(range(60))


def test_kafka_failure_names_topic_partition_and_offset_and_spares_other_partitions(
    apps: list[LambdaApp], tmp_path: Path
) -> None:
    app = handler_for(apps, tmp_path)
    values = [js(i) for i in range(6)]
    values[2] = BAD
    response = app(kafka_event({0: [js(i) for i in range(10, 14)], 1: values}), Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": {"partition": "orders-1", "offset": 102}}]}
    by_partition = {p.key: ids([v for _, v in items]) for p, items in MemorySink.instances["out"].records.items()}
    assert by_partition == {"0": [10, 11, 12, 13], "1": [0, 1]}


def test_failed_records_go_to_the_dead_letter_queue_when_configured(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path, dead_letter={"type": "memory"})
    assert app.on_record_error == "dead_letter"
    payloads = [js(i) for i in range(10)]
    payloads[4] = BAD
    assert app(kinesis_event(payloads), Context()) == {"batchItemFailures": []}
    assert ids(MemorySink.instances["out"].payloads()) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    [entry] = MemoryDeadLetter.instances[0].entries
    assert entry["position"] == f"{seq(4)}:0" and entry["stage"] == "json.decode"
    assert base64.b64decode(entry["payload_base64"]) == BAD


def test_retry_can_be_chosen_even_with_a_dead_letter_queue(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(
        apps, tmp_path, source={"type": "lambda", "on_record_error": "retry"}, dead_letter={"type": "memory"}
    )
    payloads = [js(i) for i in range(5)]
    payloads[1] = BAD
    assert app(kinesis_event(payloads), Context()) == {"batchItemFailures": [{"itemIdentifier": seq(1)}]}
    assert MemoryDeadLetter.instances[0].entries == []


def test_malformed_kpl_aggregate_is_reported_or_dead_lettered(apps: list[LambdaApp], tmp_path: Path) -> None:
    good = aggregate([("a", js(0)), ("b", js(1))])
    body = good[len(MAGIC) : -16][:-1]
    broken = MAGIC + body + hashlib.md5(body).digest()
    event = kinesis_event([good, broken, js(2)])
    retry = handler_for(apps, tmp_path / "retry")
    assert retry(event, Context()) == {"batchItemFailures": [{"itemIdentifier": seq(1)}]}
    assert ids(MemorySink.instances["out"].payloads()) == [0, 1]
    MemorySink.instances.clear()
    dlq = handler_for(apps, tmp_path / "dlq", dead_letter={"type": "memory"})
    assert dlq(event, Context()) == {"batchItemFailures": []}
    assert ids(MemorySink.instances["out"].payloads()) == [0, 1, 2]
    [entry] = MemoryDeadLetter.instances[0].entries
    assert entry["stage"] == "source:lambda" and "malformed KPL" in entry["reason"]


def test_per_key_ordering_writes_other_keys_and_reports_the_lowest_failure(
    apps: list[LambdaApp], tmp_path: Path
) -> None:
    app = handler_for(apps, tmp_path, {"ordering": "per_key", "chunk_records": 4})
    keys = ["a", "b", "c"] * 6
    payloads = [js(i) for i in range(18)]
    payloads[4] = BAD  # key "b"
    payloads[9] = BAD  # key "a"
    response = app(kinesis_event(payloads, keys), Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(4)}]}
    written = ids(MemorySink.instances["out"].payloads())
    assert written == [0, 1, 2, 3, 5, 6, 8, 11, 14, 17]  # "a" up to 9, "b" before 4, every "c"


class Rejecting(BufferedSink):
    """Refuses (for good) records whose payload carries "reject"; records what it accepted."""

    def __init__(self) -> None:
        super().__init__(BufferOptions(max_records=1000))
        self.accepted: list[bytes] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        rejections = []
        for i, payload in enumerate(concat_payloads(batches)):
            if b"reject" in payload:
                rejections.append(Rejection(i, "ValidationException: refused"))
            else:
                self.accepted.append(payload)
        return rejections


class Exploding(BufferedSink):
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        raise ConnectionError("service unavailable")


def code_pipeline(*sinks: BufferedSink, dead_letters: MemoryDeadLetter | None = None) -> Callable[[], Pipeline]:
    def build() -> Pipeline:
        return Pipeline(
            name="code",
            source=LambdaEventSource(),
            chain=Chain([JsonDecode()]),
            routes=[Route(f"sink{i}", s) for i, s in enumerate(sinks)],
            dead_letters=dead_letters,
            store=MemoryCheckpointStore(),
        )

    return build


def test_records_a_sink_rejects_are_reported_per_shard(apps: list[LambdaApp]) -> None:
    rejecting, memory = Rejecting(), MemorySink()
    app = make_handler(code_pipeline(rejecting, memory))
    apps.append(app)
    payloads = [js(i) for i in range(8)]
    payloads[3] = js(3, note="reject")
    payloads[6] = js(6, note="reject")
    response = app(kinesis_event(payloads), Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(3)}]}
    assert ids(rejecting.accepted) == [0, 1, 2, 4, 5, 7]
    assert ids(memory.payloads()) == list(range(8))  # the other sink took all: at-least-once on retry


def test_sink_rejections_can_go_to_the_dead_letter_queue(apps: list[LambdaApp]) -> None:
    rejecting, dlq = Rejecting(), MemoryDeadLetter()
    app = make_handler(code_pipeline(rejecting, dead_letters=dlq), on_sink_reject="dead_letter")
    apps.append(app)
    payloads = [js(i) for i in range(4)]
    payloads[2] = js(2, note="reject")
    assert app(kinesis_event(payloads), Context()) == {"batchItemFailures": []}
    assert [e["stage"] for e in dlq.entries] == ["sink:sink0"]


def test_a_failing_sink_reports_the_first_record_of_every_partition_it_held(apps: list[LambdaApp]) -> None:
    app = make_handler(code_pipeline(Exploding(BufferOptions())))
    apps.append(app)
    response = app(kafka_event({0: [js(0), js(1)], 1: [js(2)]}), Context())
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "orders-0", "offset": 100}},
            {"itemIdentifier": {"partition": "orders-1", "offset": 100}},
        ]
    }
    # The next invocation starts clean: the sink works again once the service does.
    assert app(kinesis_event([]), Context()) == {"batchItemFailures": []}


class Raising:
    """A batch processor with a bug: it raises instead of reporting records."""

    is_async = False

    def __call__(self, batch: RecordBatch, ctx: Any) -> RecordBatch:
        if any(b"boom" in p for p in batch.payloads):
            raise ZeroDivisionError("bug")
        return batch


@pytest.mark.parametrize("ordering", ["per_partition", "per_key"])
def test_a_processor_that_raises_fails_its_whole_chunk_and_loses_nothing(apps: list[LambdaApp], ordering: str) -> None:
    sink = MemorySink()

    def build() -> Pipeline:
        return Pipeline(
            name="raising",
            source=LambdaEventSource(),
            chain=Chain([Raising(), JsonDecode()]),
            routes=[Route("mem", sink)],
            dead_letters=MemoryDeadLetter(),
            store=MemoryCheckpointStore(),
        )

    app = make_handler(build, ordering=ordering, chunk_records=5)
    apps.append(app)
    payloads = [js(i) for i in range(15)]
    payloads[7] = js(7, note="boom")
    response = app(kinesis_event(payloads), Context())
    # Nothing of the chunk [5, 10) was routed, so its first record is where Lambda must resume.
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(5)}]}
    written = ids(sink.payloads())
    assert written[:5] == [0, 1, 2, 3, 4] and not set(range(5, 10)) & set(written)


# -------------------------------------------------------------------------------------------- deadline


def test_short_remaining_time_stops_taking_records_and_reports_the_rest(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(
        apps, tmp_path, {"chunk_records": 10, "deadline_margin_ms": 2000}, sinks=[{"type": "file", "path": "out"}]
    )
    clock = iter([60_000, 60_000, 60_000])  # three chunks' worth of time, then the deadline is near

    context = Context(lambda: next(clock, 1_500))
    response = app(kinesis_event([js(i) for i in range(100)]), context)
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(30)}]}
    lines = [line for f in sorted((tmp_path / "out").glob("*.ndjson")) for line in f.read_bytes().splitlines()]
    assert ids(lines) == list(range(30)), "what was processed was flushed before returning"


def test_no_time_left_processes_nothing_and_reports_every_partition(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path)
    response = app(kafka_event({0: [js(0)], 3: [js(1)]}), Context(lambda: 900))
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "orders-0", "offset": 100}},
            {"itemIdentifier": {"partition": "orders-3", "offset": 100}},
        ]
    }
    assert MemorySink.instances["out"].written_records == 0


class Slow(BufferedSink):
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        await asyncio.sleep(30)
        return []


def test_a_flush_that_would_pass_the_deadline_is_cut_and_its_records_reported(apps: list[LambdaApp]) -> None:
    app = make_handler(code_pipeline(Slow(BufferOptions())), deadline_margin_ms=100, flush_margin_ms=2_800)
    apps.append(app)
    # 3 s left, the flush must end 2.8 s before the deadline: it gets 0.2 s, the write needs 30 s.
    response = app(kinesis_event([js(0), js(1)]), Context(lambda: 3_000))
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(0)}]}


# ---------------------------------------------------------------------------------- warm invocations


def test_warm_invocations_reuse_one_loop_and_the_same_sinks(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(
        apps,
        tmp_path,
        sinks=[
            {"type": "file", "name": "files", "path": "out", "compression": "gzip"},
            {"type": "memory", "name": "mem"},
        ],
        dead_letter={"type": "file", "path": "dlq"},
    )
    loop, sink = app.loop, MemorySink.instances["mem"]
    for n in range(4):
        payloads = [js(n * 10 + i) for i in range(10)]
        payloads[5] = BAD
        assert app(kinesis_event(payloads, first=n * 10), Context(request_id=f"r{n}")) == {"batchItemFailures": []}
    assert app.loop is loop and not loop.is_closed() and app.invocations == 4
    assert MemorySink.instances["mem"] is sink
    assert len(ids(file_records(tmp_path / "out"))) == 36
    assert len(list((tmp_path / "dlq").glob("*.ndjson"))) == 4


class S3Objects(BufferedSink):
    """Each write is one S3 object, through one aiobotocore client opened at start: bound to the loop."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        super().__init__(BufferOptions(max_records=10_000))
        self.endpoint, self.bucket = endpoint, bucket
        self.stack = contextlib.AsyncExitStack()
        self.client: Any = None
        self.loops: set[int] = set()

    async def start(self) -> None:
        self.client = await self.stack.enter_async_context(
            get_session().create_client("s3", endpoint_url=self.endpoint, region_name=REGION)
        )

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        self.loops.add(id(asyncio.get_running_loop()))
        first = batches[0]
        key = f"{first.partition.key}/{first.position(0)}.ndjson"
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=b"\n".join(concat_payloads(batches)))
        return []

    async def close(self) -> None:
        await self.stack.aclose()


def test_warm_invocations_keep_an_aiobotocore_client_working(
    apps: list[LambdaApp], moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    s3.create_bucket(Bucket="out")
    sink = S3Objects(moto_server.endpoint_url, "out")
    app = make_handler(code_pipeline(sink))
    apps.append(app)
    for n in range(3):
        event = kinesis_event([js(n * 5 + i) for i in range(5)], first=n * 5)
        assert app(event, Context()) == {"batchItemFailures": []}
    assert len(sink.loops) == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]]
    assert len(keys) == 3
    body = b"\n".join(s3.get_object(Bucket="out", Key=k)["Body"].read() for k in sorted(keys))
    assert sorted(ids(body.split(b"\n"))) == list(range(15))


def test_warm_invocations_with_the_firehose_sink_on_moto(
    apps: list[LambdaApp], tmp_path: Path, moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    pytest.importorskip("streamkit.connectors.firehose")
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    s3.create_bucket(Bucket="firehose-out")
    boto3.client("firehose", endpoint_url=moto_server.endpoint_url, region_name=REGION).create_delivery_stream(
        DeliveryStreamName="events",
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": "arn:aws:s3:::firehose-out",
        },
    )
    app = handler_for(
        apps,
        tmp_path,
        sinks=[{"type": "firehose", "stream": "events"}],
        aws={"region": REGION, "endpoints": {"firehose": moto_server.endpoint_url}},
    )
    for n in range(3):
        assert app(kinesis_event([js(n * 4 + i) for i in range(4)], first=n * 4), Context()) == {
            "batchItemFailures": []
        }
    lines: list[bytes] = []
    for item in s3.list_objects_v2(Bucket="firehose-out").get("Contents", []):
        lines.extend(s3.get_object(Bucket="firehose-out", Key=item["Key"])["Body"].read().splitlines())
    assert sorted(ids(lines)) == list(range(12))


# ------------------------------------------------------------------------------ configuration, cold start


def test_a_bad_pipeline_file_fails_the_cold_start_with_its_message(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, sinks=[{"type": "memory", "max_records": "lots"}])
    env = {**os.environ, "STREAMKIT_CONFIG": str(path), "_HANDLER": "streamkit.aws_lambda.handler"}
    proc = subprocess.run(
        [sys.executable, "-c", "import streamkit.aws_lambda"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr
    assert f"{path}: sinks[0].max_records" in proc.stderr


def test_a_good_pipeline_file_is_started_during_the_init_phase(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, sinks=[{"type": "file", "path": "out"}])
    env = {**os.environ, "STREAMKIT_CONFIG": str(path), "_HANDLER": "streamkit.aws_lambda.handler"}
    code = (
        "import json, sys, streamkit.aws_lambda as m\n"
        "assert m._app is not None, 'started at import'\n"
        "print(json.dumps(m.handler(json.loads(sys.stdin.read()), None)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, input=orjson.dumps(kinesis_event([js(7)])).decode(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    *emf, response = proc.stdout.splitlines()  # EMF metric lines come first, then the printed response
    assert orjson.loads(response) == {"batchItemFailures": []}
    assert emf and all('"_aws"' in line for line in emf)
    assert ids((next((tmp_path / "out").glob("*.ndjson"))).read_bytes().splitlines()) == [7]


@pytest.mark.parametrize(
    ("sections", "options", "message"),
    [
        ({"source": {"type": "lambda", "ordering": "random"}}, {}, "source.ordering"),
        ({"source": {"type": "lambda", "bogus": 1}}, {}, "source.bogus"),
        ({}, {"on_record_error": "dead_letter"}, "needs a dead_letter section"),
        ({}, {"on_sink_reject": "dead_letter"}, "needs a dead_letter section"),
        (
            {"dead_letter": {"type": "memory"}, "runtime": {"fail_fast": True}},
            {"on_record_error": "dead_letter"},
            "fail_fast",
        ),
        ({}, {"chunk_records": 0}, "make_handler.chunk_records"),
    ],
)
def test_invalid_lambda_options_are_refused_at_cold_start(
    tmp_path: Path, sections: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_handler(write_pipeline(tmp_path, **sections), **options)


def test_fail_fast_means_retry(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path, dead_letter={"type": "memory"}, runtime={"fail_fast": True})
    assert app.on_record_error == "retry"
    payloads = [js(0), BAD, js(2)]
    assert app(kinesis_event(payloads), Context()) == {"batchItemFailures": [{"itemIdentifier": seq(1)}]}


def test_a_lambda_source_refuses_to_run_outside_lambda() -> None:
    source = LambdaEventSource(LambdaOptions(ordering="per_key"))
    assert source.options.ordering == "per_key"
    with pytest.raises(RuntimeError, match=r"streamkit\.aws_lambda\.handler"):
        asyncio.run(source.run(None, asyncio.Event()))  # type: ignore[arg-type]


def test_events_from_other_services_fail_the_invocation(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path)
    with pytest.raises(EventFormatError):
        app({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, Context())
    assert app(kinesis_event([js(1)]), Context()) == {"batchItemFailures": []}


def test_the_handler_refuses_to_run_inside_a_running_loop(apps: list[LambdaApp], tmp_path: Path) -> None:
    app = handler_for(apps, tmp_path)

    async def inside() -> None:
        app(kinesis_event([js(1)]), Context())

    with pytest.raises(RuntimeError, match="synchronous"):
        asyncio.run(inside())


# ------------------------------------------------------------------------------------------- the example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lambda"


def test_the_example_pipeline_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamkit.connectors.firehose")
    monkeypatch.setenv("DELIVERY_STREAM", "clicks")
    monkeypatch.setenv("AWS_REGION", REGION)
    pipeline, options = load_pipeline(EXAMPLE / "function" / "pipeline.yaml", {})
    assert options.deadline_margin_ms == 5000 and options.ordering == "per_partition"
    assert [r.name for r in pipeline.routes] == ["clicks"]


def test_the_example_event_source_mapping_reports_batch_item_failures() -> None:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # CloudFormation tags
    template = yaml.load((EXAMPLE / "template.yaml").read_text(), Loader=Loader)
    function = template["Resources"]["Consumer"]["Properties"]
    assert function["Handler"] == "streamkit.aws_lambda.handler"
    assert function["Environment"]["Variables"]["STREAMKIT_CONFIG"] == "pipeline.yaml"
    mapping = function["Events"]["Clicks"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["MaximumRetryAttempts"] > 0 and "OnFailure" in mapping["DestinationConfig"]
    assert {"BatchSize", "MaximumBatchingWindowInSeconds"} <= set(mapping)


def test_every_invocation_emits_emf_metrics_on_stdout(
    apps: list[LambdaApp], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = handler_for(apps, tmp_path, runtime={"metrics": {"namespace": "lambda-test"}})
    capsys.readouterr()
    app(kinesis_event([js(i) for i in range(20)]), Context())
    app(kinesis_event([js(i) for i in range(20, 30)], first=20), Context())
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    per_partition = [d for d in docs if "Partition" in d]
    assert [d["RecordsIn"] for d in per_partition] == [20, 10], "one report per invocation, as deltas"
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "lambda-test" for d in docs)
    quiet = handler_for(apps, tmp_path / "quiet", runtime={"metrics": {"emf": False}})
    capsys.readouterr()
    quiet(kinesis_event([js(1)]), Context())
    assert '"_aws"' not in capsys.readouterr().out


# ------------------------------------------------- a failed invocation leaves nothing for the next one


class FailingPuts:
    """A before-call hook answering 500 InternalError to every S3 PutObject while ``on``."""

    def __init__(self) -> None:
        self.on = True
        self.injected = 0

    def __call__(self, **_: Any) -> Any:
        if not self.on:
            return None  # the real call goes to moto
        self.injected += 1
        return modelled_response(500, {"Error": {"Code": "InternalError", "Message": "injected"}})


def s3_records(s3: Any, bucket: str) -> dict[str, list[int]]:
    out = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        data = gzip.decompress(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        out[item["Key"]] = ids(data.splitlines())
    return out


def test_after_a_failed_s3_write_the_next_warm_invocation_starts_with_a_clean_sink(
    apps: list[LambdaApp], tmp_path: Path, moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    """Issue 12.1: one failed S3 write used to fail every later invocation with the same SinkError."""
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    s3.create_bucket(Bucket="lake")
    retry = {"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.01}
    app = handler_for(
        apps,
        tmp_path,
        sinks=[{"type": "s3", "bucket": "lake", "window_s": 0, "partition_template": "", "retry": retry}],
        aws={"region": REGION, "endpoints": {"s3": moto_server.endpoint_url}},
    )
    faults = FailingPuts()
    app.sinks[0].aws.register("before-call.s3.PutObject", faults)  # type: ignore[attr-defined]
    first = kinesis_event([js(i) for i in range(10)])
    assert app(first, Context()) == {"batchItemFailures": [{"itemIdentifier": seq(0)}]}
    assert faults.injected >= 2 and s3_records(s3, "lake") == {}

    faults.on = False
    # The next event of the shard, then Lambda's retry of the failed one: both are written in full.
    assert app(kinesis_event([js(i) for i in range(10, 20)], first=10), Context()) == {"batchItemFailures": []}
    assert app(first, Context()) == {"batchItemFailures": []}
    objects = s3_records(s3, "lake")
    assert sorted(i for found in objects.values() for i in found) == list(range(20))
    for key, found in objects.items():
        # <first sequence>.<sub>-<last sequence>.<sub>.ndjson.gz: the key names the records it holds
        first_pos, last_pos = key.rsplit("/", 1)[1].removesuffix(".ndjson.gz").split("-")
        assert (int(first_pos.split(".")[0]), int(last_pos.split(".")[0])) == (int(seq(found[0])), int(seq(found[-1])))


class StuckOnce(BufferedSink):
    """Its first write never returns (until cancelled); later writes succeed and are recorded."""

    def __init__(self) -> None:
        super().__init__(BufferOptions(max_records=1000))
        self.writes = 0
        self.cancelled = 0
        self.written: list[bytes] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        self.writes += 1
        if self.writes == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.written.extend(concat_payloads(batches))
        return []


def test_a_write_cut_off_by_the_deadline_does_not_reach_into_the_next_invocation(apps: list[LambdaApp]) -> None:
    """The first invocation's flush is cut by its deadline with a write in flight and a dead-letter entry still
    buffered: the write is cancelled and the entry dropped (both are redelivered), and the next invocation
    neither waits for them nor writes them."""
    sink, dlq = StuckOnce(), MemoryDeadLetter()
    app = make_handler(code_pipeline(sink, dead_letters=dlq), deadline_margin_ms=100, flush_margin_ms=2_800)
    apps.append(app)
    payloads = [js(i) for i in range(4)]
    payloads[2] = BAD
    assert app(kinesis_event(payloads), Context(lambda: 3_000)) == {"batchItemFailures": [{"itemIdentifier": seq(0)}]}
    assert sink.cancelled == 1 and dlq.entries == []

    later = [js(i) for i in range(10, 14)]
    later[1] = BAD
    assert app(kinesis_event(later, first=10), Context(lambda: 3_000)) == {"batchItemFailures": []}
    assert ids(sink.written) == [10, 12, 13]
    assert [e["position"] for e in dlq.entries] == [f"{seq(11)}:0"], "only this invocation's dead letter"


class FailingTwice(BufferedSink):
    """Concurrent writes (one per partition); every write fails while ``failing``."""

    def __init__(self) -> None:
        super().__init__(BufferOptions(max_records=1, max_concurrent_writes=4))
        self.failing = True
        self.written: list[bytes] = []

    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        await asyncio.sleep(0.01)
        if self.failing:
            raise ConnectionError("service unavailable")
        self.written.extend(concat_payloads(batches))
        return []


def test_every_write_error_of_a_failed_invocation_is_forgotten(apps: list[LambdaApp]) -> None:
    """Four writes failed: the flush and the age timer raise one error each, the others used to stay queued
    and fail the next invocation."""
    sink = FailingTwice()
    app = make_handler(code_pipeline(sink))
    apps.append(app)
    response = app(kafka_event({p: [js(p)] for p in range(4)}), Context())  # one write per partition
    assert len(response["batchItemFailures"]) == 4
    sink.failing = False
    with structlog.testing.capture_logs() as logs:
        assert app(kinesis_event([js(5), js(6)], first=5), Context()) == {"batchItemFailures": []}
    assert ids(sink.written) == [5, 6]
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert errors == [], "the first invocation's write errors were raised again in the second"
