"""Multi-stream partition keys contain ':' (``account:stream:creationEpoch:shardId``): everything that names
something after a partition must stay valid with them.

Two streams on kinesalite (polling), read into a real S3 sink on moto, then the metrics exporters
(Prometheus text, CloudWatch EMF) of the same run. The file checkpoint store keeps partitions in a JSON
document (never in a file name); its round trip with such a key is in the last test.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamkit.batch import Partition
from streamkit.build import build_pipeline
from streamkit.checkpoint import FileCheckpointStore
from streamkit.config import AwsSettings, parse_config
from streamkit.emf import EmfReporter
from streamkit.plugin_env import PluginEnv
from streamkit.prometheus import renderer
from streamkit.runtime import Runtime
from tests.helpers import wait_for
from tests.integration.kinesis_helpers import create_stream, put_json
from tests.integration.test_kinesis_multi_stream import prefix_of

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("aws_env")]

BUCKET = "lake"
# Characters a Windows file name cannot hold (aws s3 sync / cp of these keys to a Windows disk), besides '/'.
WINDOWS_RESERVED = re.compile(r'[<>:"\\|?*\x00-\x1f]')


def s3_keys(moto: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    return [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


async def test_s3_keys_and_metric_labels_of_multi_stream_partitions_are_safe(kinesalite: Any, moto_server: Any) -> None:
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    client = create_stream(kinesalite.endpoint_url, "orders", shards=1)
    create_stream(kinesalite.endpoint_url, "payments", shards=1)
    put_json(client, "orders", [{"s": "orders", "id": i} for i in range(60)])
    put_json(client, "payments", [{"s": "payments", "id": i} for i in range(40)])
    config = {
        "name": "names",
        "source": {
            "type": "kinesis",
            "streams": [{"stream": "orders"}, {"stream": "payments"}],
            "lease_table": "names-leases",
            "failover_time_s": 1.5,
            "idle_poll_s": 0.1,
        },
        "sinks": [
            {"type": "s3", "bucket": BUCKET, "prefix": "raw/", "window_s": 0, "max_age_s": 0.2, "compression": "none"}
        ],
        "checkpoint": {"interval_s": 0.2},
        "aws": {
            "region": "us-east-1",
            "endpoints": {
                "kinesis": kinesalite.endpoint_url,
                "dynamodb": moto_server.endpoint_url,
                "s3": moto_server.endpoint_url,
            },
        },
        "runtime": {"shutdown_grace_s": 10},
    }
    built = build_pipeline(parse_config(config))
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(built).run(stop))
    written: dict[str, list[int]] = {}

    def all_written() -> bool:
        written.clear()
        s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
        for key in s3_keys(moto_server.endpoint_url):
            for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().splitlines():
                value = orjson.loads(line)
                written.setdefault(value["s"], []).append(value["id"])
        return sum(map(len, written.values())) >= 100

    try:
        await wait_for(all_written, timeout=40)
    finally:
        stop.set()
        summary = await asyncio.wait_for(task, 30)
    assert summary.drained
    assert sorted(written["orders"]) == list(range(60)) and sorted(written["payments"]) == list(range(40))

    # Keys: {stream} is the record's own stream, {shard} the lease key percent-encoded (no ':' anywhere).
    lease_keys = {
        "orders": f"{prefix_of(client, 'orders')}shardId-000000000000",
        "payments": f"{prefix_of(client, 'payments')}shardId-000000000000",
    }
    keys = s3_keys(moto_server.endpoint_url)
    assert keys
    seen_streams = set()
    for key in keys:
        assert ":" not in key, key
        segments = key.split("/")
        assert not any(WINDOWS_RESERVED.search(segment) for segment in segments), key
        assert segments[0] == "raw" and segments[1].startswith("dt=") and segments[2].startswith("hour=")
        stream, shard = segments[3], segments[4]
        assert unquote(shard) == lease_keys[stream], key
        seen_streams.add(stream)
    assert seen_streams == {"orders", "payments"}

    # Metrics of the same run: one series per partition, labels and dimensions exactly the partition.
    partitions = {str(p) for p in built.metrics.partitions}
    assert partitions == {f"kinesis:{stream}/{key}" for stream, key in lease_keys.items()}
    families = {f.name: f for f in text_string_to_metric_families(renderer(built.metrics, "names")())}
    labels = {sample.labels["partition"] for sample in families["streamkit_records_in"].samples}
    assert labels == partitions
    records_in = {s.labels["partition"]: s.value for s in families["streamkit_records_in"].samples}
    assert records_in == {
        f"kinesis:orders/{lease_keys['orders']}": 60,
        f"kinesis:payments/{lease_keys['payments']}": 40,
    }
    documents = EmfReporter(built.metrics, "names").documents()
    dimensions = {doc["Partition"] for doc in documents if "Partition" in doc}
    assert dimensions == partitions
    # CloudWatch takes ASCII dimension values of 1 to 1,024 characters.
    assert all(value.isascii() and 1 <= len(value) <= 1024 for value in dimensions)


async def test_the_file_checkpoint_store_keeps_multi_stream_partitions_in_its_document(tmp_path: Path) -> None:
    partition = Partition("kinesis:orders", "123456789012:orders:1733300000:shardId-000000000007")
    path = tmp_path / "checkpoints.json"
    env = PluginEnv("t", AwsSettings(region="us-east-1"), tmp_path, "checkpoint")
    checkpoint = "49590338271490256608559692538361571095921575989136588898:0"
    store = FileCheckpointStore(FileCheckpointStore.Options(path=str(path)), env)
    await store.start()
    await store.save(partition, checkpoint)
    again = FileCheckpointStore(FileCheckpointStore.Options(path=str(path)), env)
    await again.start()
    assert await again.load(partition) == checkpoint
    # No file is named after the partition: only the document and its lock.
    names = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert names == ["checkpoints.json", "checkpoints.json.lock"]
    assert orjson.loads(await asyncio.to_thread(path.read_bytes)) == {str(partition): checkpoint}
