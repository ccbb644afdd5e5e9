"""A plain boto3 GetRecords loop doing the work per record: what a hand-written consumer looks like.

On the synthetic source there is no server: each recorded body goes through botocore's JSON parser with the
GetRecords output shape, which is what boto3 does with every response (a dict and a timezone-aware datetime
per record, base64 decoded by botocore), then the work. On the local stack it is a real boto3 client in one
thread, reading the shards round-robin with Limit 10,000 from TRIM_HORIZON, once with the work and once only
counting records: the second is the emulator's ceiling for any client in one thread.
"""

from __future__ import annotations

import time
from typing import Any

from streamkit.devtools.bench.inputs import LocalInput, SyntheticInput
from streamkit.devtools.bench.measure import Figures, clocked

from .work import NdjsonGzip, project_payloads

SYNTHETIC_DESCRIPTION = "botocore's parser on the same bodies (as boto3 receives them), then the same work"
LOCAL_DESCRIPTION = "boto3 client, one thread, shards round-robin, GetRecords Limit 10000, then the same work"
RAW_DESCRIPTION = "boto3 client, one thread, GetRecords only (records counted, no work): the emulator's ceiling"


def _parser() -> Any:
    import botocore.parsers
    import botocore.session

    model = botocore.session.get_session().get_service_model("kinesis")
    shape = model.operation_model("GetRecords").output_shape
    parser = botocore.parsers.create_parser("json")

    def parse(body: bytes) -> dict[str, Any]:
        parsed: dict[str, Any] = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        return parsed

    return parse


def synthetic(data: SyntheticInput) -> Figures:
    parse = _parser()
    out = NdjsonGzip()
    records = 0
    with clocked() as clock:
        for bodies in data.shards.values():
            for body in bodies:
                response = parse(body)
                payloads = [r["Data"] for r in response["Records"]]
                records += len(payloads)
                out.add(project_payloads(payloads))
        out.flush()
    return Figures.timed(
        clock,
        name="boto3 loop",
        description=SYNTHETIC_DESCRIPTION,
        records=records,
        records_out=out.records_out,
        bytes=data.payload_bytes,
    )


def _client(data: LocalInput) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "kinesis",
        endpoint_url=data.endpoint_url,
        region_name=data.region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


def _local(data: LocalInput, *, work: bool) -> Figures:
    client = _client(data)
    out = NdjsonGzip()
    records = 0
    deadline = None if data.duration_s is None else time.perf_counter() + data.duration_s
    with clocked() as clock:
        iterators: dict[str, str | None] = {
            shard: client.get_shard_iterator(StreamName=data.stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
                "ShardIterator"
            ]
            for shard in data.shard_ids
        }
        while records < data.records and any(iterators.values()):
            if deadline is not None and time.perf_counter() >= deadline:
                break
            for shard, iterator in iterators.items():
                if iterator is None:
                    continue
                response = client.get_records(ShardIterator=iterator, Limit=10_000)
                rows = response["Records"]
                records += len(rows)
                if work:
                    out.add(project_payloads([r["Data"] for r in rows]))
                # An empty answer at the tip: this shard is read (the stream was loaded before reading).
                iterators[shard] = response.get("NextShardIterator") if rows else None
        out.flush()
    return Figures.timed(
        clock,
        name="boto3 loop" if work else "raw GetRecords loop",
        description=LOCAL_DESCRIPTION if work else RAW_DESCRIPTION,
        records=records,
        records_out=out.records_out if work else 0,
        bytes=round(records * data.mean_payload),
    )


def local(data: LocalInput) -> Figures:
    return _local(data, work=True)


def local_raw(data: LocalInput) -> Figures:
    return _local(data, work=False)
