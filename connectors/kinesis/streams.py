"""The streams one Kinesis source reads: by name or ARN, in this account or another (through a role).

One stream (``source.stream``) keeps the KCL's single-stream lease keys: the shard id. Several streams
(``source.streams``) use the KCL's multi-stream keys, ``account:streamName:creationEpoch:shardId``, in one
lease table and one balance, as a KCL MultiStreamTracker application does. The creation epoch makes a
stream deleted and created again under the same name a different stream, whose leases start afresh.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import msgspec

from streamkit.connectors.kinesis.client import KinesisClient, stream_argument

__all__ = ["ConfiguredStream", "StreamOptions", "describe_stream", "stream_name_of"]


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of ``source.streams``."""

    stream: str
    """Stream name (this account) or ARN (any account; needed for another account's stream)."""
    role_arn: str | None = None
    """IAM role to assume (STS AssumeRole with the standard chain's credentials) to read this stream, e.g. a
    role in the stream's account that trusts this worker's role."""
    external_id: str | None = None
    """The role's ExternalId, if its trust policy requires one."""
    consumer_arn: str | None = None
    """``consumer: efo`` only: subscribe with this consumer of the stream, registered beforehand (e.g. by
    infrastructure code; the KCL's per-stream ``consumerArn``) instead of registering ``efo.consumer_name``."""


@dataclass(frozen=True, slots=True)
class ConfiguredStream:
    """A stream this source reads, resolved at start-up (DescribeStreamSummary)."""

    stream: str
    """As configured: the name or ARN used in every Kinesis call."""
    name: str
    arn: str
    account: str
    creation_epoch: int
    lease_key_prefix: str
    """Empty in single-stream mode; ``account:name:creationEpoch:`` with several streams."""
    client: KinesisClient

    def lease_key(self, shard_id: str) -> str:
        return self.lease_key_prefix + shard_id

    def owns(self, lease_key: str) -> bool:
        return lease_key.startswith(self.lease_key_prefix) if self.lease_key_prefix else ":" not in lease_key

    def shard_id(self, lease_key: str) -> str:
        return lease_key[len(self.lease_key_prefix) :]


def stream_name_of(stream: str) -> str:
    """The name in ``arn:aws:kinesis:region:account:stream/NAME``, or the name itself."""
    return stream.rpartition("stream/")[2] if stream.startswith("arn:") else stream


async def describe_stream(client: KinesisClient, stream: str, *, multi_stream: bool) -> ConfiguredStream:
    """Resolve a configured stream: its ARN, account and creation time give the multi-stream lease prefix."""
    response = await client.client.describe_stream_summary(**stream_argument(stream))
    summary: dict[str, Any] = response["StreamDescriptionSummary"]
    arn = str(summary["StreamARN"])
    account = arn.split(":")[4]
    created = summary.get("StreamCreationTimestamp")
    epoch = int(created.timestamp()) if isinstance(created, dt.datetime) else int(created or 0)
    name = str(summary.get("StreamName") or stream_name_of(stream))
    prefix = f"{account}:{name}:{epoch}:" if multi_stream else ""
    return ConfiguredStream(stream, name, arn, account, epoch, prefix, client)
