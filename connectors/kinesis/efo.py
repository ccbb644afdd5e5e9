"""Enhanced fan-out (``consumer: efo``): shards pushed over SubscribeToShard instead of polled.

The source registers one stream consumer per stream it reads (:mod:`efo_consumer`; each through the stream's
own client, so another account's stream as its ``role_arn``) and every shard it holds a lease for is read
by a :class:`FanOutShardReader`, a :class:`ShardReader` whose only difference is where responses come from:
deaggregation, resume filtering, positions, batches, end of shard and leases are the polling code.

A subscription pushes ``SubscribeToShardEvent`` messages for at most 5 minutes, then ends. The reader
subscribes again right after the ContinuationSequenceNumber of the last event (AFTER_SEQUENCE_NUMBER), so
nothing is skipped or read twice, whether the subscription ended on time, failed, or was cut. Checkpoints are
the sequence numbers of the records handed on, as in polling mode; the first subscription of a shard starts
at its lease's checkpoint. Like the KCL's FanOutRecordsPublisher:

* at most one SubscribeToShard call per second per shard (the service limit), and refusals
  (LimitExceededException, ResourceInUseException while the previous subscription is still open,
  throttling, 5xx, connection failures, failures pushed inside the stream) back off exponentially;
* a watchdog: when no event arrives for ``stall_timeout_s`` (the service sends one at least every 5 s, even
  when there is nothing to deliver) the subscription is dropped and renewed. The KCL warns after 60 s;
* the last event of a closed shard has no ContinuationSequenceNumber and lists the ChildShards: the reader
  ends the shard and the source hands out the children exactly as in polling mode (parents first).

Events are decoded from their raw bytes by :func:`decode_subscribe_event` (the fast GetRecords decoder)
rather than by botocore's parser, reading aiobotocore's undecoded message iterator; messages other than
events (modelled exceptions) still go through botocore, which raises them as ``EventStreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Annotated, Any

import aiohttp
import msgspec
import structlog
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from streamkit.batch import Partition
from streamkit.config import AwsSettings, PositiveSeconds
from streamkit.connectors.aws_clients import KINESIS_TRANSIENT_CODES, ClientOptions, transient_reason
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import ChildShard, DecodedRecords, decode_subscribe_event
from streamkit.connectors.kinesis.efo_consumer import (
    CREATING_PER_ACCOUNT,
    ConsumerRegistrationError,
    ensure_consumer,
)
from streamkit.connectors.kinesis.reader import ReadPacer, ReadSettings, ShardReader, StartAt
from streamkit.connectors.kinesis.streams import ConfiguredStream
from streamkit.errors import ConfigError

log = structlog.get_logger("streamkit.kinesis")

SUBSCRIBE_CALLS_PER_SECOND = 1.0
"""The service's limit per consumer and shard."""
# Subscriptions hold a connection each for up to 5 minutes: the pool must fit every shard of a worker.
SUBSCRIPTION_CONNECTIONS = 1024
# A reader that started at LATEST and was never told a continuation resubscribes AT_TIMESTAMP this much
# before its first subscription (as the polling reader renews such an iterator).
_LATEST_RENEW_MARGIN_S = 5.0
# Refusals worth waiting out. ResourceInUseException: the previous subscription of this consumer and shard
# is still open at the service (after a cut or a stall), or the consumer is not ACTIVE yet.
_RETRYABLE = KINESIS_TRANSIENT_CODES | {"ResourceInUseException"}


# What RegisterStreamConsumer accepts.
ConsumerName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$")]


class FanOutOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``source.efo``: settings of enhanced fan-out (used with ``consumer: efo``)."""

    consumer_name: ConsumerName | None = None
    """The registered stream consumer; default the lease table's name (the KCL names both after its
    application, so a KCL application's consumer is reused when taking over its table)."""
    stall_timeout_s: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    """Resubscribe when a subscription delivers no event for this long (at least 5: the service sends an
    event at least every 5 s)."""
    register_timeout_s: PositiveSeconds = 300.0
    """How long start-up waits for the consumer to be registered and ACTIVE."""


class SubscriptionStalled(Exception):
    """No event within the stall timeout: the subscription is dropped and renewed."""


def _retry_reason(exc: BaseException) -> str | None:
    """Why a failed subscription is worth renewing after a back-off, or None when it is permanent.

    EventStreamError (a failure pushed inside the stream) is a ClientError, classified by its code too."""
    return transient_reason(exc, _RETRYABLE)


@dataclass(frozen=True, slots=True)
class StreamConsumer:
    """One stream's registered consumer, and the client its subscriptions are signed by."""

    stream: ConfiguredStream
    consumer_arn: str
    client: KinesisClient
    """The subscription client, acting as the same identity as the stream's own client (its ``role_arn``)."""


@dataclass(frozen=True, slots=True)
class GivenConsumer:
    """A consumer named in the configuration (``streams[i].consumer_arn``), and the setting that named it."""

    arn: str
    setting: str


class FanOut:
    """The source's enhanced fan-out side: one registered consumer per stream, and the subscription clients.

    Several streams (``source.streams``) get one consumer each, of the same name (a consumer belongs to one
    stream; the KCL registers its application's name on every stream of a multi-stream application), each
    registered through the stream's own client: another account's stream is registered and subscribed to as
    its ``role_arn``.
    """

    def __init__(self, consumers: Sequence[StreamConsumer], options: FanOutOptions) -> None:
        self.consumers = list(consumers)
        self.options = options
        self._by_arn = {consumer.stream.arn: consumer for consumer in self.consumers}

    @classmethod
    async def start(
        cls, stack: AsyncExitStack, aws: AwsSettings, streams: Sequence[ConfiguredStream], options: FanOutOptions,
        default_name: str, *, where: str = "source", given: Mapping[str, GivenConsumer] | None = None,
    ) -> FanOut:  # fmt: skip
        """Register (or find) every stream's consumer, concurrently, and open one subscription client per
        identity; the clients are closed with ``stack``. Any stream failing fails start-up.

        ``given``: by stream ARN, consumers registered beforehand, used instead of registering one."""
        given = given or {}
        name = options.consumer_name or default_name
        subscription_options = ClientOptions(
            max_pool_connections=SUBSCRIPTION_CONNECTIONS, read_timeout_s=options.stall_timeout_s + 5
        )
        # Its own client per identity: a subscription holds a connection for minutes (the pool must not starve
        # the control calls), and reads may pause up to stall_timeout_s, which the watchdog, not a read timeout,
        # handles. Streams read as the same identity (the same control client) share it.
        clients: dict[int, KinesisClient] = {}
        for stream in streams:
            if id(stream.client) not in clients:
                client = KinesisClient(aws, subscription_options, session=stream.client.session)
                clients[id(stream.client)] = await stack.enter_async_context(client)

        creating = {stream.account: asyncio.Semaphore(CREATING_PER_ACCOUNT) for stream in streams}

        async def register(stream: ConfiguredStream) -> StreamConsumer:
            own = given.get(stream.arn)
            if own is not None and not own.arn.startswith(f"{stream.arn}/consumer/"):
                raise ConfigError(own.setting, f"{own.arn} is not a consumer of {stream.arn}")
            try:
                async with creating[stream.account]:
                    arn = await ensure_consumer(
                        stream.client.client, stream.arn, name, timeout_s=options.register_timeout_s,
                        consumer_arn=own.arn if own else None,
                    )  # fmt: skip
            except ConsumerRegistrationError as exc:
                raise ConfigError(own.setting if own else f"{where}.efo.consumer_name", str(exc)) from None
            log.info("enhanced fan-out consumer ACTIVE", consumer=name, arn=arn)
            return StreamConsumer(stream, arn, clients[id(stream.client)])

        try:
            # Describes are limited per stream, so streams go concurrently: start-up waits for the slowest
            # registration, not the sum; at most CREATING_PER_ACCOUNT registrations of one account at once.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(register(stream)) for stream in streams]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first stream that failed, with its own message
        return cls([task.result() for task in tasks], options)

    def consumer_of(self, stream: ConfiguredStream) -> StreamConsumer:
        return self._by_arn[stream.arn]

    def reader(
        self,
        partition: Partition,
        stream: ConfiguredStream,
        start: StartAt,
        settings: ReadSettings,
        *,
        hash_range: tuple[int, int] | None,
        on_end: Callable[[list[ChildShard]], Awaitable[None]],
        on_lag: Callable[[int | None], None] | None = None,
        totals: Counter[str] | None = None,
        shard_id: str | None = None,
    ) -> FanOutShardReader:
        consumer = self.consumer_of(stream)
        return FanOutShardReader(
            partition,
            consumer.client,
            stream.stream,
            start,
            settings,
            consumer_arn=consumer.consumer_arn,
            stall_timeout_s=self.options.stall_timeout_s,
            hash_range=hash_range,
            on_end=on_end,
            on_lag=on_lag,
            totals=totals,
            shard_id=shard_id,
        )


class FanOutShardReader(ShardReader):
    """A shard reader fed by SubscribeToShard events instead of GetRecords calls."""

    def __init__(
        self,
        partition: Partition,
        client: KinesisClient,
        stream: str,
        start: StartAt,
        settings: ReadSettings,
        *,
        consumer_arn: str,
        stall_timeout_s: float,
        hash_range: tuple[int, int] | None,
        on_end: Callable[[list[ChildShard]], Awaitable[None]],
        on_lag: Callable[[int | None], None] | None = None,
        totals: Counter[str] | None = None,
        shard_id: str | None = None,
    ) -> None:
        super().__init__(
            partition, client, stream, start, settings, hash_range=hash_range, on_end=on_end, on_lag=on_lag,
            totals=totals, shard_id=shard_id,
        )  # fmt: skip
        self.consumer_arn = consumer_arn
        self.stall_timeout_s = stall_timeout_s
        self.pacer = ReadPacer(SUBSCRIBE_CALLS_PER_SECOND, 2**62)
        self.continuation: str | None = None
        """ContinuationSequenceNumber of the last event: the next subscription starts after it."""
        self.subscriptions = 0
        """SubscribeToShard calls made (``calls`` counts them too)."""
        self.stalls = 0
        """Subscriptions dropped by the watchdog."""
        self.events = 0

    def _starting_position(self) -> dict[str, Any]:
        if self.continuation is not None:
            return {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self.continuation}
        last, s = self.last_delivered, self.start
        if last is not None:
            # AT, then skip what was delivered: right for plain and partly delivered aggregated records.
            return {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": last.sequence}
        if s.iterator_type == "LATEST" and self._latest_from is not None:
            # Subscribed at LATEST before but never told where it got to: a new LATEST would skip what
            # arrived meanwhile. Start (a little before) the first subscription instead.
            before = self._latest_from - dt.timedelta(seconds=_LATEST_RENEW_MARGIN_S)
            return {"Type": "AT_TIMESTAMP", "Timestamp": before}
        if s.iterator_type == "LATEST":
            self._latest_from = dt.datetime.now(dt.UTC)
        position: dict[str, Any] = {"Type": s.iterator_type}
        if s.sequence_number is not None:
            position["SequenceNumber"] = s.sequence_number
        if s.timestamp is not None:
            position["Timestamp"] = s.timestamp
        return position

    async def _subscribe(self) -> Any:
        self.calls += 1
        self.subscriptions += 1
        self._count("subscriptions")
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                response = await self.client.client.subscribe_to_shard(
                    ConsumerARN=self.consumer_arn, ShardId=self.shard_id, StartingPosition=self._starting_position()
                )
        finally:
            # The next call waits a second from this one's answer (or failure), not from its start: the
            # service counts calls as it receives them, and a slow answer must not bring two closer.
            self.pacer.record(0)
        return response["EventStream"]

    async def _responses(self) -> AsyncIterator[DecodedRecords]:
        attempt = 0
        while not self.stopping.is_set():
            await self._sleep(self.pacer.delay())
            if self.stopping.is_set():
                return
            stream = None
            try:
                stream = await self._subscribe()
                async with contextlib.aclosing(self._events(stream)) as events:
                    async for decoded in events:
                        attempt = 0
                        if self._on_lag is not None:
                            self._on_lag(decoded.millis_behind_latest)
                        continuation = decoded.next_shard_iterator
                        yield decoded
                        if continuation is None:
                            self.child_shards = decoded.child_shards
                            self.reached_end = True
                            return
                        self.continuation = continuation
                        if self.stopping.is_set():
                            return
                log.debug("subscription ended; renewing", partition=str(self.partition), after=self.continuation)
            except SubscriptionStalled:
                self.stalls += 1
                self._count("stalls")
                log.warning(
                    "no event from the subscription; renewing it",
                    partition=str(self.partition),
                    stall_timeout_s=self.stall_timeout_s,
                    after=self.continuation,
                )
            except (ClientError, HTTPClientError, ConnectionError, aiohttp.ClientError, TimeoutError) as exc:
                reason = _retry_reason(exc)
                if reason is None:
                    raise
                attempt += 1
                await self._back_off(reason, attempt, "SubscribeToShard")
            finally:
                if stream is not None:
                    stream.close()

    async def _events(self, stream: Any) -> AsyncGenerator[DecodedRecords, None]:
        """The events of one subscription, decoded; raises SubscriptionStalled when none comes in time."""
        # aiobotocore's iterator of undecoded messages (after the initial-response its parser consumed): the
        # payloads go to our column decoder instead of botocore's per-record parsing.
        messages: AsyncIterator[Any] = stream._event_generator
        while True:
            try:
                message = await self._next_message(messages)
            except StopAsyncIteration:
                return
            if message is None:
                return  # asked to stop
            headers = message.headers
            if headers.get(":message-type") != "event":
                await stream._parse_event(message)  # botocore raises the modelled EventStreamError
                raise ConnectionError(error=f"unexpected event-stream message {headers!r}")
            if headers.get(":event-type") != "SubscribeToShardEvent":
                continue
            payload: bytes = message.payload
            self.events += 1
            self.bytes_read += len(payload)
            if self._totals is not None:
                self._totals["bytes"] += len(payload)
            yield decode_subscribe_event(payload)

    async def _next_message(self, messages: AsyncIterator[Any]) -> Any:
        """The next message; None when asked to stop first (the service may be up to 5 s from its next event,
        and a drain or a hand-off should not wait for it). Raises SubscriptionStalled after stall_timeout_s."""
        getter = asyncio.ensure_future(anext(messages))
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=self.stall_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()  # ends the message iterator; the subscription is closed by the caller
        if getter in done:
            return getter.result()
        if stopper in done:
            return None
        raise SubscriptionStalled(f"{self.partition}: no event for {self.stall_timeout_s:g} s")
