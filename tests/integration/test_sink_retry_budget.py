"""A sink out of retries gives up after ``retry.max_elapsed_s``, not after a number of attempts: S3 on moto
answering 503 SlowDown to every PutObject (a before-call hook), the records left unacknowledged."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import SinkError
from tests.helpers import modelled_response
from tests.integration.test_s3_sink import BUCKET, REGION, make_sink, records, routed, write_all

pytestmark = pytest.mark.timeout(60)


class AlwaysSlowDown:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        self.calls += 1
        return modelled_response(503, {"Error": {"Code": "SlowDown", "Message": "injected"}})


async def test_an_s3_outage_is_ridden_out_for_max_elapsed_s_then_stops_unacknowledged(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION).create_bucket(Bucket=BUCKET)
    budget_s = 1.5
    sink = make_sink(
        moto_server.endpoint_url, retry={"max_elapsed_s": budget_s, "base_delay_s": 0.01, "max_delay_s": 0.05}
    )
    outage = AlwaysSlowDown()
    sink.aws.register("before-call.s3.PutObject", outage)
    tracker = PartitionTracker(Partition("kinesis:orders", "shardId-0"))
    began = time.monotonic()
    with pytest.raises(SinkError, match=r"still failing after \d+ attempts in 1\.\d s: SlowDown"):
        await write_all(sink, routed(records(100), 100, tracker))
    assert time.monotonic() - began >= budget_s
    # Far more than the old budget of 10 attempts: the time, not the count, decided.
    assert outage.calls > 10
    assert tracker.checkpoint_position() is None
