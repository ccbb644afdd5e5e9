"""AWS-side chores of ``streamkit demo`` on the local stand-ins: create the stream and the bucket, produce
sample events, and list what landed. Kept out of the core so that it imports no AWS SDK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3

from streamkit.connectors.local.generator import GeneratorOptions, make_payload


def _client(service: str, endpoints: dict[str, str]) -> Any:
    return boto3.client(service, endpoint_url=endpoints[service], region_name="us-east-1")


def create_resources(endpoints: dict[str, str], stream: str, shards: int, bucket: str) -> None:
    kinesis = _client("kinesis", endpoints)
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    deadline = time.monotonic() + 30
    while kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream} did not become ACTIVE")
        time.sleep(0.05)
    _client("s3", endpoints).create_bucket(Bucket=bucket)


def produce(endpoints: dict[str, str], stream: str, records: int, invalid_ratio: float) -> int:
    """Write ``records`` generated events with PutRecords (500 per call), retrying refused entries."""
    kinesis = _client("kinesis", endpoints)
    options = GeneratorOptions(record_bytes=700, invalid_ratio=invalid_ratio, error_ratio=0.1)
    sent = 0
    for start in range(0, records, 500):
        entries = [
            {"Data": make_payload(options, 0, i), "PartitionKey": f"user-{i % 997}"}
            for i in range(start, min(start + 500, records))
        ]
        while entries:
            response = kinesis.put_records(StreamName=stream, Records=entries)
            sent += len(entries) - response.get("FailedRecordCount", 0)
            entries = [e for e, r in zip(entries, response["Records"], strict=True) if "ErrorCode" in r]
    return sent


def download(endpoints: dict[str, str], bucket: str, target: Path) -> list[tuple[str, int]]:
    """Copy every object of the bucket under ``target`` (keeping keys as paths); returns (key, size)."""
    s3 = _client("s3", endpoints)
    found: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            path = target / item["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            found.append((item["Key"], item["Size"]))
    return found


def lease_checkpoints(endpoints: dict[str, str], table: str) -> dict[str, str]:
    items = _client("dynamodb", endpoints).scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["leaseKey"]["S"]: i.get("checkpoint", {}).get("S", "-") for i in items}
