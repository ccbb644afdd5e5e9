"""Kinesis calls the source makes, with GetRecords decoded by our column decoder instead of botocore.

botocore parses every GetRecords response into a dict and a datetime per record, which caps a core near
60k records/s. A ``before-parse`` hook takes the raw body of successful GetRecords responses and hands
botocore an empty one to parse instead; :func:`decode_get_records` then builds columns from the raw bytes.
Error responses are left untouched, so botocore still raises its modelled exceptions
(ExpiredIteratorException, ProvisionedThroughputExceededException, ...).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiobotocore.session import AioSession

from streamkit.config import AwsSettings
from streamkit.connectors.aws_clients import KINESIS_CLIENT_OPTIONS, AwsClient, ClientOptions
from streamkit.connectors.kinesis.decode import DecodedRecords, decode_get_records

_RAW_KEY = "StreamkitRawBody"
_EMPTY_BODY = b'{"Records":[]}'


def _keep_raw_body(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if response_dict.get("status_code", 500) < 300:
        customized_response_dict[_RAW_KEY] = response_dict["body"]
        response_dict["body"] = _EMPTY_BODY


def stream_argument(stream: str) -> dict[str, str]:
    """``StreamARN`` for an ARN (the only way to name another account's stream), else ``StreamName``."""
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


class KinesisClient:
    """An aiobotocore Kinesis client (from :class:`AwsClient`) plus the raw GetRecords path.

    Use as an async context manager.
    """

    def __init__(
        self, aws: AwsSettings, options: ClientOptions = KINESIS_CLIENT_OPTIONS, *, session: AioSession | None = None
    ) -> None:
        """``session``: an aiobotocore session to create the client from (e.g. one acting as an assumed role);
        default a new session on the standard credential chain."""
        self.aws = aws
        self.session = session
        """The session this client acts as (None: the standard chain's); a second client for the same
        identity (enhanced fan-out's subscription client) is created from it."""
        self._aws = AwsClient(aws, "kinesis", options, session=session)
        self._aws.register("before-parse.kinesis.GetRecords", _keep_raw_body)
        self.client: Any = None

    async def __aenter__(self) -> KinesisClient:
        self.client = await self._aws.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client = None
        await self._aws.close()

    async def get_records(self, iterator: str, limit: int) -> tuple[DecodedRecords, int]:
        """One GetRecords call: the decoded records and the size of the response body in bytes."""
        response = await self.client.get_records(ShardIterator=iterator, Limit=limit)
        raw: bytes = response[_RAW_KEY]
        return decode_get_records(raw), len(raw)

    async def shard_iterator(
        self,
        stream: str,
        shard_id: str,
        iterator_type: str,
        *,
        sequence_number: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {**stream_argument(stream), "ShardId": shard_id, "ShardIteratorType": iterator_type}
        if sequence_number is not None:
            kwargs["StartingSequenceNumber"] = sequence_number
        if timestamp is not None:
            kwargs["Timestamp"] = timestamp
        response = await self.client.get_shard_iterator(**kwargs)
        return str(response["ShardIterator"])

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        """Every shard of the stream, open and closed, following pagination."""
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = stream_argument(stream)
        while True:
            response = await self.client.list_shards(**kwargs)
            shards.extend(response.get("Shards", []))
            token = response.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}
