"""Small builders shared by tests (no mocks of AWS: only our own objects)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson
from aiobotocore.session import get_session
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


def injected_error(status: int, code: str) -> tuple[AWSResponse, dict[str, Any]]:
    """A modelled whole-call error (``code`` with HTTP ``status``) answered by a before-call hook."""
    return modelled_response(status, {"Error": {"Code": code, "Message": f"injected {code}"}})


class ForwardingFaults:
    """Base of the before-call hooks that answer some calls with modelled errors and let the rest reach the
    emulator: a ``gate`` that holds every call until set, whole-call errors (``call_errors``: (status,
    code), answered in order), and ``forward``, a client of the same service on the emulator, for a hook
    that sends part of a call itself (the records it does not fail). Use it as ``async with``."""

    def __init__(self, service: str, endpoint_url: str, region: str = "us-east-1") -> None:
        self.service = service
        self.endpoint_url = endpoint_url
        self.region = region
        self.call_errors: list[tuple[int, str]] = []
        self.gate: asyncio.Event | None = None
        self.forward: Any = None

    async def __aenter__(self) -> Self:
        self._client = get_session().create_client(
            self.service, endpoint_url=self.endpoint_url, region_name=self.region
        )
        self.forward = await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(None, None, None)

    async def held(self) -> None:
        """Wait at the gate (if one is set)."""
        if self.gate is not None:
            await self.gate.wait()


def traced(build: Callable[[], Any]) -> tuple[Any, int]:
    """What ``build()`` returns and the memory it still holds (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = build()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def written_ids(directory: Path) -> list[str]:
    """The ``id`` of every record a file sink wrote as gzip NDJSON under ``directory/out``, in file order."""
    ids: list[str] = []
    for file in sorted((directory / "out").glob("*.ndjson.gz")):
        ids.extend(orjson.loads(line)["id"] for line in gzip.decompress(file.read_bytes()).splitlines())
    return ids
