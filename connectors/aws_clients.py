"""AWS clients for connectors: one way to create them, configure them and classify their errors.

Every AWS connector gets its aiobotocore client from :class:`AwsClient`, so timeouts, connection pools and
the SDK's own retries are the same everywhere and an endpoint from ``aws.endpoints`` is always honoured.

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
from collections.abc import Callable
from types import TracebackType
from typing import Annotated, Any

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
    "SDK_ERRORS",
    "THROTTLING_CODES",
    "AwsClient",
    "ClientOptions",
    "aws_client",
    "client_config",
    "describe_error",
    "error_code",
    "error_message",
    "is_access_error",
    "is_transient",
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
        retries={"mode": "standard", "max_attempts": options.sdk_max_attempts},
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


def is_transient(exc: BaseException) -> bool:
    """A call that may succeed if repeated later: throttling, 5xx, timeouts, dropped connections."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in THROTTLING_CODES or code in _TRANSIENT_CODES:
            return True
        return code not in ACCESS_CODES and _status(exc) >= 500
    # HTTPClientError covers read timeouts and connections closed mid-response.
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionClosedError, TimeoutError))


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
