"""Reading back what Kinesis -> S3 workers wrote, and checking it against what the writer put in the stream.

The writer (tests.integration.test_kinesis_failover.Writer) remembers the shard and sequence number
Kinesis gave every record id, so the audit knows, per shard, the exact ordered run of records between
two positions. An object is honest when its records are exactly that run between the first and last
positions its key names: in stream order, nothing missing, nothing from elsewhere.
"""

from __future__ import annotations

import gzip
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import orjson


@dataclass(frozen=True)
class StoredObject:
    key: str
    shard: str
    first: int
    last: int
    """Sequence numbers the key names."""
    ids: tuple[int, ...]


def key_range(key: str) -> tuple[str, int, int]:
    """(shard, first, last) from ``{stream}/{shard}/{first}.{sub}-{last}.{sub}.ndjson.gz``."""
    head, name = key.rsplit("/", 1)
    shard = head.rsplit("/", 1)[1]
    first, last = name.split(".ndjson", 1)[0].split("-")
    return shard, int(first.split(".")[0]), int(last.split(".")[0])


def data_keys(s3: Any, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sorted(k for k in keys if not k.rsplit("/", 1)[1].startswith("_"))


def read_objects(endpoint: str, bucket: str) -> list[StoredObject]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def read(key: str) -> StoredObject:
        data = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        shard, first, last = key_range(key)
        return StoredObject(key, shard, first, last, tuple(orjson.loads(line)["id"] for line in data.splitlines()))

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(read, data_keys(s3, bucket)))


@dataclass
class Audit:
    """What is wrong with the stored objects, given the writer's positions."""

    positions: dict[int, tuple[str, int]]
    out_of_order: list[str] = field(default_factory=list)
    lying_keys: list[str] = field(default_factory=list)
    copies: Counter[int] = field(default_factory=Counter)

    def check(self, objects: list[StoredObject]) -> Audit:
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for record_id, (shard, sequence) in self.positions.items():
            by_shard.setdefault(shard, []).append((sequence, record_id))
        for run in by_shard.values():
            run.sort()
        for obj in objects:
            self.copies.update(obj.ids)
            sequences = [self.positions[i][1] for i in obj.ids]
            if sequences != sorted(sequences) or len(set(sequences)) != len(sequences):
                self.out_of_order.append(obj.key)
            expected = tuple(i for seq, i in by_shard.get(obj.shard, []) if obj.first <= seq <= obj.last)
            if obj.ids != expected:
                self.lying_keys.append(obj.key)
        return self

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.copies.values())

    def per_shard_duplicates(self) -> Counter[str]:
        return Counter(self.positions[i][0] for i, n in self.copies.items() for _ in range(n - 1))
