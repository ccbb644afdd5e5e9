"""Small builders shared by tests (no mocks of AWS: only our own objects)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from botocore.awsrequest import AWSResponse

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition, RecordBatch
from streamkit.sink import Sink

P = Partition("test:stream", "0")
SinkT = TypeVar("SinkT", bound=Sink)


def json_batch(values: Sequence[Any], partition: Partition = P) -> RecordBatch:
    return RecordBatch(partition, payloads=[orjson.dumps(v) for v in values])


def ticketed(values: Sequence[Any], partition: Partition = P) -> tuple[RecordBatch, PartitionTracker]:
    """A batch opened on a tracker, as the runtime would hand it to processors."""
    batch = json_batch(values, partition)
    tracker = PartitionTracker(partition)
    batch.ticket = tracker.open(list(range(100, 100 + len(values))), batch.total_bytes())
    return batch, tracker


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling state owned by the code under test
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def started(sink: SinkT) -> AsyncIterator[SinkT]:
    """A sink started for a test and closed afterwards, whatever the test did."""
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


def modelled_response(status: int, parsed: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    """What a botocore ``before-call`` hook returns to answer in place of the service (fault injection)."""
    parsed["ResponseMetadata"] = {"HTTPStatusCode": status, "HTTPHeaders": {}}
    return AWSResponse("http://fault-injection", status, {}, None), parsed


def written_ids(directory: Path) -> list[str]:
    """The ``id`` of every record a file sink wrote as gzip NDJSON under ``directory/out``, in file order."""
    ids: list[str] = []
    for file in sorted((directory / "out").glob("*.ndjson.gz")):
        ids.extend(orjson.loads(line)["id"] for line in gzip.decompress(file.read_bytes()).splitlines())
    return ids
