"""Kinesis calls the source makes, with GetRecords decoded by our column decoder instead of botocore.

botocore parses every GetRecords response into a dict and a datetime per record, which caps a core near
60k records/s. A ``before-parse`` hook takes the raw body of successful GetRecords responses and hands
botocore an empty one to parse instead; :func:`decode_get_records` then builds columns from the raw bytes.
Error responses are left untouched, so botocore still raises its modelled exceptions
(ExpiredIteratorException, ProvisionedThroughputExceededException, ...).
"""

from __future__ import annotations

import datetime as dt
from contextlib import AsyncExitStack
from typing import Any

from botocore.config import Config

from streamkit.config import AwsSettings
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
    """An aiobotocore Kinesis client plus the raw GetRecords path. Use as an async context manager."""

    def __init__(
        self, aws: AwsSettings, *, max_pool_connections: int = 64, read_timeout: float = 30, session: Any = None
    ) -> None:
        """``session``: an aiobotocore session to create the client from (e.g. one acting as an assumed role,
        see streamkit.connectors.assume_role); default a new session on the standard credential chain."""
        self.aws = aws
        self._session = session
        self._config = Config(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        self._stack = AsyncExitStack()
        self.client: Any = None

    async def __aenter__(self) -> KinesisClient:
        from aiobotocore.session import get_session

        session = self._session or get_session()
        self.client = await self._stack.enter_async_context(
            session.create_client("kinesis", config=self._config, **self.aws.client_kwargs("kinesis"))
        )
        self.client.meta.events.register("before-parse.kinesis.GetRecords", _keep_raw_body)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

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
