"""Helpers for Kinesis tests: create streams and write records with boto3 against the local stand-ins."""

from __future__ import annotations

import time
from typing import Any

import boto3
import orjson


def kinesis_client(endpoint: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


def create_stream(endpoint: str, name: str, shards: int) -> Any:
    client = kinesis_client(endpoint)
    client.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + 30
    while client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} did not become ACTIVE")
        time.sleep(0.05)
    return client


def put_json(client: Any, stream: str, records: list[dict[str, Any]], key: str = "id") -> None:
    """PutRecords in requests of 500, retrying failed entries (the emulator may throttle)."""
    for start in range(0, len(records), 500):
        entries = [{"Data": orjson.dumps(r), "PartitionKey": str(r[key])} for r in records[start : start + 500]]
        while entries:
            response = client.put_records(StreamName=stream, Records=entries)
            entries = [e for e, r in zip(entries, response["Records"], strict=True) if "ErrorCode" in r]
            if entries:
                time.sleep(0.1)
