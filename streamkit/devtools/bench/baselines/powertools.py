"""AWS Lambda Powertools' BatchProcessor fed the same records as Lambda Kinesis events.

Lambda hands a function at most 6 MB per invocation, so each recorded body becomes the events Lambda would
deliver: as many records as fit 6 MB (about 3,900 of these ~940-byte records), shaped exactly as Lambda
sends them. The events are built before timing (Lambda's own work); the timed part is the handler:
``process_partial_response`` with ``BatchProcessor(EventType.KinesisDataStreams)`` and a record handler
doing the same work (Powertools base64-decodes with the standard library), then NDJSON + gzip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from streamkit.devtools.bench.inputs import SyntheticInput
from streamkit.devtools.bench.measure import Figures, clocked

from .work import FIELDS, NdjsonGzip

DESCRIPTION = "BatchProcessor(KinesisDataStreams) + process_partial_response, Lambda events of <= 6 MB"
LAMBDA_PAYLOAD_LIMIT = 6_000_000  # "6 MB", read as decimal megabytes: the stricter reading
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/bench"


class _Context:
    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 900_000


def lambda_events(shard: str, body: bytes) -> Iterator[dict[str, Any]]:
    """The Lambda events carrying the records of one GetRecords body, each within the 6 MB payload limit."""
    batch: list[dict[str, Any]] = []
    size = len(b'{"Records":[]}')
    for r in orjson.loads(body)["Records"]:
        record = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": r["PartitionKey"],
                "sequenceNumber": r["SequenceNumber"],
                "data": r["Data"],
                "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"],
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{shard}:{r['SequenceNumber']}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/bench",
            "awsRegion": "us-east-1",
            "eventSourceARN": STREAM_ARN,
        }
        n = len(orjson.dumps(record)) + 1
        if batch and size + n > LAMBDA_PAYLOAD_LIMIT:
            yield {"Records": batch}
            batch, size = [], len(b'{"Records":[]}')
        batch.append(record)
        size += n
    if batch:
        yield {"Records": batch}


def synthetic(data: SyntheticInput) -> Figures:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

    # Every shard replays the same bodies: build their events once, invoke them once per shard.
    events: dict[int, list[dict[str, Any]]] = {}
    for bodies in data.shards.values():
        for body in bodies:
            if id(body) not in events:
                events[id(body)] = list(lambda_events("shardId-000000000000", body))
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
    out = NdjsonGzip()
    lines: list[bytes] = []
    loads, dumps = orjson.loads, orjson.dumps

    def record_handler(record: KinesisStreamRecord) -> None:
        value = loads(record.kinesis.data_as_bytes())
        if value.get("status") != "err":
            lines.append(dumps({k: value[k] for k in FIELDS if k in value}))

    context = _Context()
    records = 0
    invocations = 0
    with clocked() as clock:
        for bodies in data.shards.values():
            for body in bodies:
                for event in events[id(body)]:
                    response = process_partial_response(event, record_handler, processor, context)  # type: ignore[arg-type]
                    if response.get("batchItemFailures"):
                        raise RuntimeError(f"Powertools reported failures: {response}")
                    records += len(event["Records"])
                    invocations += 1
                    out.add(lines)
                    lines.clear()
        out.flush()
    return Figures.timed(
        clock,
        name="Powertools BatchProcessor",
        description=DESCRIPTION,
        records=records,
        records_out=out.records_out,
        bytes=data.payload_bytes,
        note=f"{invocations} invocations of ~{records // max(invocations, 1):,} records",
    )
