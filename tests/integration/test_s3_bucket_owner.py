"""``expected_bucket_owner``: every S3 call of the sink and of the S3 dead-letter queue carries
ExpectedBucketOwner, and a bucket owned by another account fails at start-up with the setting named.

moto accepts ExpectedBucketOwner but does not enforce it; S3 answers 403 AccessDenied when it does not
match. ``OwnerCheck`` is that rule as a before-call hook answering the modelled 403, with moto's own
account id (from STS on moto) as the bucket's owner.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from streamkit.acks import PartitionTracker
from streamkit.batch import Partition
from streamkit.connectors.s3.sink import S3Sink
from streamkit.devtools.localstack import MotoServer
from streamkit.errors import ConfigError
from tests.helpers import modelled_response
from tests.integration.test_s3_dead_letter import failure, make_dlq
from tests.integration.test_s3_sink import (
    BUCKET,
    REGION,
    STREAMING,
    make_sink,
    object_keys,
    records,
    routed,
    write_all,
)

pytestmark = pytest.mark.timeout(90)

OTHER_ACCOUNT = "111122223333"


def moto_account(moto: MotoServer) -> str:
    sts = boto3.client("sts", endpoint_url=moto.endpoint_url, region_name=REGION)
    return str(sts.get_caller_identity()["Account"])


class Recorder:
    """Records the operation and the final parameters of every S3 call (after streamkit's own hooks)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, params.get("ExpectedBucketOwner")))


class OwnerCheck:
    """S3's rule: a call whose ExpectedBucketOwner is not the bucket's owner gets 403 AccessDenied."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.refused = 0

    def __call__(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        expected = params.get("headers", {}).get("x-amz-expected-bucket-owner")
        if expected is None or expected == self.owner:
            return None
        self.refused += 1
        return modelled_response(403, {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}})


async def test_every_sink_call_carries_the_expected_owner(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION).create_bucket(Bucket=BUCKET)
    owner = moto_account(moto_server)
    # One multipart object (create, parts, complete) and a single PutObject after it.
    sink = make_sink(moto_server.endpoint_url, expected_bucket_owner=owner, max_records=14_000, **STREAMING)
    recorder, check = Recorder(), OwnerCheck(owner)
    sink.aws.register("before-parameter-build.s3", recorder)
    sink.aws.register("before-call.s3", check)
    payloads = records(14_100, pad=1000)
    await write_all(sink, routed(payloads, 500, PartitionTracker(Partition("kinesis:orders", "shardId-0"))))
    operations = {name for name, _ in recorder.calls}
    assert {"HeadBucket", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "PutObject"} <= operations
    assert [c for c in recorder.calls if c[1] != owner] == []
    assert check.refused == 0 and object_keys(moto_server)


async def test_a_bucket_of_another_account_fails_the_sink_at_start_up(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION).create_bucket(Bucket=BUCKET)
    sink: S3Sink = make_sink(moto_server.endpoint_url, expected_bucket_owner=OTHER_ACCOUNT)
    check = OwnerCheck(moto_account(moto_server))
    sink.aws.register("before-call.s3", check)
    with pytest.raises(ConfigError) as error:
        await sink.start()
    message = str(error.value)
    assert message.startswith("sinks[0].bucket: ") and f"expected_bucket_owner {OTHER_ACCOUNT}" in message
    assert check.refused >= 1
    await sink.close()


async def test_the_dead_letter_queue_sends_the_owner_and_names_it_when_refused(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION).create_bucket(Bucket="dead-letters")
    owner = moto_account(moto_server)
    dlq = make_dlq(moto_server, expected_bucket_owner=owner)
    recorder = Recorder()
    dlq.aws.register("before-parameter-build.s3", recorder)
    await dlq.start()
    await dlq.submit(failure(PartitionTracker(Partition("kafka:clicks", "3")), [b"x"]))
    await dlq.flush()
    await dlq.close()
    assert {name for name, _ in recorder.calls} >= {"HeadBucket", "PutObject"}
    assert [c for c in recorder.calls if c[1] != owner] == []

    wrong = make_dlq(moto_server, expected_bucket_owner=OTHER_ACCOUNT)
    wrong.aws.register("before-call.s3", OwnerCheck(owner))
    with pytest.raises(ConfigError, match=rf"dead_letter\.bucket: .*expected_bucket_owner {OTHER_ACCOUNT}"):
        await wrong.start()
    await wrong.close()


@pytest.mark.parametrize("value", ["12345", "abcdefghijkl", "1234567890123"])
def test_the_owner_is_a_12_digit_account_id(moto_server: MotoServer, value: str) -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.expected_bucket_owner"):
        make_sink(moto_server.endpoint_url, expected_bucket_owner=value)
