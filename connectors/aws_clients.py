"""AWS clients for connectors: one way to create them, configure them and classify their errors.

Every aiobotocore client streamkit creates comes from :class:`AwsClient` (the Kinesis source's through
``KinesisClient``, the lease table's with :func:`lease_table_options`), so timeouts, connection pools and the
SDK's own retries are explicit everywhere and an endpoint from ``aws.endpoints`` is always honoured. Errors
are classified here once (:func:`transient_reason`, :func:`is_throttling`, :func:`is_access_error`); a
connector adds only the codes its service documents as its own. Retrying is :mod:`streamkit.retry`'s job.

- Credentials come only from the standard chain (environment, shared files, container or instance role).
  Nothing here accepts, stores or logs them; messages name the service, the region and the endpoint only.
- The SDK retries a failed *call* a few times in ``standard`` mode (throttling, 5xx, connection errors,
  with its own token bucket). It never looks inside a 200 answer, so per-record results (Firehose
  ``RequestResponses``, Timestream ``RejectedRecords``) are the connector's job, with
  :class:`streamkit.retry.RetryPolicy`, which also retries what the SDK gave up on.

Usage::

    async with AwsClient(env.aws, "firehose") as client:
        await client.put_record_batch(...)

or ``start()`` / ``close()`` from a sink's own ``start`` / ``close``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Annotated, Any

import aiohttp
import msgspec
from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from streamkit.config import AwsSettings, PositiveInt, PositiveSeconds

__all__ = [
    "ACCESS_CODES",
    "DEFAULT_CLIENT_OPTIONS",
    "KINESIS_CLIENT_OPTIONS",
    "KINESIS_TRANSIENT_CODES",
    "SDK_ERRORS",
    "STS_CLIENT_OPTIONS",
    "THROTTLING_CODES",
    "AwsClient",
    "ClientOptions",
    "aws_client",
    "client_config",
    "describe_error",
    "error_code",
    "error_message",
    "is_access_error",
    "is_throttling",
    "is_transient",
    "lease_table_options",
    "transient_reason",
]


class ClientOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Connection settings of a connector's AWS client (the ``client:`` key of a sink section)."""

    connect_timeout_s: PositiveSeconds = 5.0
    read_timeout_s: PositiveSeconds = 30.0
    """Long enough for a 4 MiB request on a slow link; a timed-out call is retried (and may duplicate)."""
    max_pool_connections: PositiveInt = 32
    """HTTP connections kept per client: at least the sink's ``max_concurrent_writes``."""
    sdk_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    """Attempts the SDK makes per call before the connector's own retry policy takes over."""


DEFAULT_CLIENT_OPTIONS = ClientOptions()

KINESIS_CLIENT_OPTIONS = ClientOptions(max_pool_connections=64)
"""The Kinesis source's control and GetRecords client: one connection per shard read at once (64 shards per
worker before calls queue for a connection); a GetRecords answer (10 MB at most) fits in the read timeout."""

STS_CLIENT_OPTIONS = ClientOptions(read_timeout_s=10.0, max_pool_connections=2)
"""The STS client that assumes a source's role_arn: AssumeRole answers in well under a second, and botocore
refreshes the credentials 15 minutes before they expire, so a slow answer is retried long before it matters."""

LEASE_CONNECT_TIMEOUT_S = 1.0
LEASE_READ_TIMEOUT_S = 2.0


def lease_table_options(failover_time_s: float) -> ClientOptions:
    """The DynamoDB client of a lease table: every call answers, or fails, well within a renewal interval.

    A lease is renewed every ``failover_time / 3``. botocore's defaults (60 s to read an answer, several
    attempts) let a renewal wait on a stalled DynamoDB for minutes while peers take the lease. Here one
    attempt waits at most ``min(1 s, failover/10)`` to connect and ``min(2 s, failover/5)`` for the answer
    (DynamoDB answers lease writes in milliseconds): 3 s in all for the default 10 s failover, under the
    3.3 s renewal interval. The SDK makes one attempt per call because
    :class:`~streamkit.connectors.dynamodb.LeaseTable` retries with :mod:`streamkit.retry` itself.
    """
    return ClientOptions(
        connect_timeout_s=min(LEASE_CONNECT_TIMEOUT_S, failover_time_s / 10),
        read_timeout_s=min(LEASE_READ_TIMEOUT_S, failover_time_s / 5),
        max_pool_connections=DEFAULT_CLIENT_OPTIONS.max_pool_connections,
        sdk_max_attempts=1,
    )


# Error codes that mean "slow down and try again" across services (the SDK's standard-mode list, plus the
# service-specific spellings Firehose, Timestream and S3 use).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InvalidEndpointException",  # a stale discovered endpoint: the SDK re-discovers on the next call
    }
)
# Codes of their own that Kinesis documents as retryable: KMSThrottlingException (GetRecords and PutRecords on
# an encrypted stream) and InternalFailureException (an error event inside a SubscribeToShard stream).
KINESIS_TRANSIENT_CODES = frozenset({"KMSThrottlingException", "InternalFailureException"})
# The caller is not allowed to do this, or its credentials are unusable: retrying cannot help.
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
        "NotAuthorized",
    }
)


def client_config(options: ClientOptions = DEFAULT_CLIENT_OPTIONS, **extra: Any) -> Config:
    """The botocore Config every connector uses; ``extra`` adds service-specific settings."""
    return Config(
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        max_pool_connections=options.max_pool_connections,
        # total_max_attempts counts the first attempt; botocore's "max_attempts" would count retries only.
        retries={"mode": "standard", "total_max_attempts": options.sdk_max_attempts},
        tcp_keepalive=True,
        user_agent_extra="streamkit",
        **extra,
    )


def error_code(exc: BaseException) -> str | None:
    """The service's error code of a ClientError (``ThrottlingException``), else None."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message") or exc)
    return str(exc) or type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """``Code: message`` for service errors, ``ExceptionType: message`` for everything else."""
    return f"{error_code(exc) or type(exc).__name__}: {error_message(exc)}"


def _status(exc: ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else 0


_NETWORK_ERRORS = (BotoConnectionError, HTTPClientError, ConnectionClosedError, TimeoutError, aiohttp.ClientError)


def is_throttling(exc: BaseException) -> bool:
    """The service asked to slow down (a throttling code, or a 503 without one of the known codes)."""
    if not isinstance(exc, ClientError):
        return False
    return error_code(exc) in THROTTLING_CODES or _status(exc) == 503


def transient_reason(exc: BaseException, extra_codes: Collection[str] = ()) -> str | None:
    """Why ``exc`` may succeed if repeated later (its error code or exception type), or None when it is final.

    Throttling, 5xx, timeouts and dropped connections are transient for every service; ``extra_codes`` adds
    the codes a service documents as retryable on top of these (:data:`KINESIS_TRANSIENT_CODES`), or that an
    operation waits out (a SubscribeToShard refused with ResourceInUseException while the previous one
    closes). Access errors never are.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in THROTTLING_CODES or code in _TRANSIENT_CODES or code in extra_codes:
            return code
        if code not in ACCESS_CODES and _status(exc) >= 500:
            return code or f"HTTP {_status(exc)}"
        return None
    # HTTPClientError covers read timeouts and connections closed mid-response; aiohttp's errors reach us
    # from streamed bodies (an event stream) that botocore does not wrap.
    if isinstance(exc, _NETWORK_ERRORS):
        return type(exc).__name__
    return None


def is_transient(exc: BaseException, extra_codes: Collection[str] = ()) -> bool:
    """A call that may succeed if repeated later: throttling, 5xx, timeouts, dropped connections."""
    return transient_reason(exc, extra_codes) is not None


def is_access_error(exc: BaseException) -> bool:
    """Credentials missing, invalid or not allowed: a deployment problem, not a data problem."""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return True
    return error_code(exc) in ACCESS_CODES


class AwsClient:
    """An aiobotocore client for one service, created from the pipeline's ``aws`` settings.

    ``start()`` opens it, ``client`` is the open client, ``close()`` releases its connections. Event
    handlers (``register``) can be added before ``start()``; they are attached to the client when it opens.
    """

    def __init__(
        self,
        aws: AwsSettings,
        service: str,
        options: ClientOptions = DEFAULT_CLIENT_OPTIONS,
        *,
        session: AioSession | None = None,
        **config_extra: Any,
    ) -> None:
        self.aws = aws
        self.service = service
        self.options = options
        self._session = session
        self._config_extra = config_extra
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._handlers: list[tuple[str, Callable[..., Any]]] = []

    @property
    def endpoint(self) -> str:
        """Where calls go, for messages: the configured endpoint, or the region's AWS endpoint."""
        url = self.aws.endpoints.get(self.service)
        if url:
            return url
        region = self.region or "the default region"
        return f"the AWS {self.service} endpoint of {region}"

    @property
    def region(self) -> str | None:
        if self._client is not None:
            return str(self._client.meta.region_name)
        return self.aws.region

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"the {self.service} client is not started")
        return self._client

    def register(self, event: str, handler: Callable[..., Any]) -> None:
        """Attach a botocore event handler (``before-call.firehose.PutRecordBatch``), now or at start."""
        self._handlers.append((event, handler))
        if self._client is not None:
            self._client.meta.events.register(event, handler)

    async def start(self) -> Any:
        if self._client is not None:
            return self._client
        session = self._session or get_session()
        kwargs = self.aws.client_kwargs(self.service)
        config = client_config(self.options, **self._config_extra)
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(session.create_client(self.service, config=config, **kwargs))
        except BaseException:
            await stack.aclose()
            raise
        for event, handler in self._handlers:
            client.meta.events.register(event, handler)
        self._stack, self._client = stack, client
        return client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AwsClient {self.service} at {self.endpoint}>"


def aws_client(aws: AwsSettings, service: str, options: ClientOptions = DEFAULT_CLIENT_OPTIONS) -> AwsClient:
    """``async with aws_client(env.aws, "firehose") as client: ...``"""
    return AwsClient(aws, service, options)


SDK_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
"""What an SDK call raises: catch these to classify with the helpers above."""
