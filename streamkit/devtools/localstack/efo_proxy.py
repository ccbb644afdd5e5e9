"""A loopback HTTP proxy in front of kinesis-local that makes its SubscribeToShard usable by botocore.

kinesis-local 0.6.2 streams correct ``SubscribeToShardEvent`` messages but sends no ``initial-response``
event first, which botocore (and aiobotocore) require: without it the call fails with "First event was not
of type initial-response". This proxy forwards every request unchanged and, in a SubscribeToShard
response, writes that event before the server's own. kinesis-local also never ends the subscription of a
closed shard (it sends empty events with a ContinuationSequenceNumber forever); the proxy replaces the
first empty event sent after the shard closed by the service's last event: no ContinuationSequenceNumber,
and the ChildShards (from ListShards). Stand-in tooling for tests and ``streamkit bench``
only: the enhanced fan-out reader itself knows nothing of it and talks to AWS as it is.

It also injects the subscription faults the tests need, on the subscriptions open at the time of the call:
:meth:`end_subscriptions` ends them cleanly (what the service does after 5 minutes),
:meth:`cut_subscriptions` drops their connections, :meth:`hang_subscriptions` stops forwarding their events
while keeping the connections open (a stalled stream; optionally one stream's only). :attr:`requests` records
the operations called and :attr:`subscriptions` each SubscribeToShard's shard, StartingPosition and consumer.

It runs its own event loop in a thread, so a test's loop or a benchmark never slows it down.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from ._kinesis_api import _FAKE_AUTH
from ._process import LOOPBACK, LocalStackError

_TARGET_PREFIX = "Kinesis_20131202."
_HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (string headers only): prelude, headers, payload, CRC32s."""
    encoded = b"".join(
        struct.pack("!B", len(name)) + name.encode() + struct.pack("!BH", 7, len(value)) + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack("!I", binascii.crc32(body))


INITIAL_RESPONSE = event_message(
    {":message-type": "event", ":event-type": "initial-response", ":content-type": "application/json"}, b"{}"
)
_EVENT_HEADERS = {":message-type": "event", ":event-type": "SubscribeToShardEvent", ":content-type": "application/json"}


class _Frames:
    """Splits a byte stream into whole event-stream messages (the first 4 bytes give each one's length)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self.buffer += chunk
        frames = []
        while len(self.buffer) >= 4:
            (total,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) < total:
                break
            frames.append(self.buffer[:total])
            self.buffer = self.buffer[total:]
        return frames


@dataclass(eq=False)  # hashed by identity: kept in a set while open
class _Subscription:
    shard_id: str
    stream: str
    session: Any
    transport: Any = None
    closed_seen: bool = False
    hung: bool = False
    ending: bool = False
    events: int = 0


@dataclass
class SubscribeCall:
    shard_id: str
    starting_position: dict[str, Any]
    at: float
    """time.monotonic() when the proxy received the call."""
    consumer_arn: str = ""
    """The ConsumerARN subscribed with (``<stream ARN>/consumer/<name>:<epoch>``)."""

    @property
    def stream(self) -> str:
        """The name of the consumer's stream."""
        return _stream_of_consumer(self.consumer_arn)


def _stream_of_consumer(consumer_arn: str) -> str:
    return consumer_arn.split(":stream/", 1)[1].split("/", 1)[0]


@dataclass
class EventStreamProxy:
    """Start with :meth:`start` (blocks until listening), stop with :meth:`stop` or as a context manager."""

    upstream: str
    port: int = 0
    requests: list[str] = field(default_factory=list)
    """Operation names, in the order they were received."""
    subscriptions: list[SubscribeCall] = field(default_factory=list)
    _open: set[Any] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopped: asyncio.Event | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @classmethod
    def start(cls, upstream: str, *, timeout: float = 10.0) -> Self:
        proxy = cls(upstream)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(proxy._serve(ready))
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()

        proxy._thread = threading.Thread(target=run, name="efo-proxy", daemon=True)
        proxy._thread.start()
        if not ready.wait(timeout) or failure:
            raise LocalStackError(f"the event-stream proxy did not start: {failure[0] if failure else 'timeout'}")
        return proxy

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- faults on the subscriptions open now ---------------------------------------------------------
    def end_subscriptions(self) -> int:
        """End every open subscription cleanly after its next event; returns how many."""
        return self._on_open(lambda s: setattr(s, "ending", True))

    def cut_subscriptions(self) -> int:
        """Drop the connection of every open subscription at once."""
        return self._on_open(lambda s: s.transport.abort())

    def hang_subscriptions(self, stream: str | None = None) -> int:
        """Stop forwarding the events of every open subscription (of ``stream`` only, when given), keeping its
        connection open."""
        return self._on_open(lambda s: setattr(s, "hung", True), stream)

    def open_subscriptions(self) -> int:
        return self._on_open(lambda s: None)

    def _on_open(self, action: Callable[[_Subscription], None], stream: str | None = None) -> int:
        assert self._loop is not None

        async def apply() -> int:
            chosen = [sub for sub in self._open if stream is None or sub.stream == stream]
            for sub in chosen:
                action(sub)
            return len(chosen)

        return asyncio.run_coroutine_threadsafe(apply(), self._loop).result(5)

    # -- serving --------------------------------------------------------------------------------------
    async def _serve(self, ready: threading.Event) -> None:
        import aiohttp
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False) as session:
            app = web.Application(client_max_size=64 * 1024**2)

            async def handle(request: Any) -> Any:
                return await self._handle(session, request)

            app.router.add_route("*", "/{tail:.*}", handle)
            # handler_cancellation: a client that drops a hung subscription ends its handler.
            runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, LOOPBACK, self.port)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set()
            try:
                await self._stopped.wait()
            finally:
                for sub in list(self._open):
                    sub.transport.abort()
                await runner.cleanup()

    async def _handle(self, session: Any, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        operation = request.headers.get("X-Amz-Target", "").removeprefix(_TARGET_PREFIX)
        self.requests.append(operation)
        call: dict[str, Any] = json.loads(body) if operation == "SubscribeToShard" else {}
        if call:
            position = call.get("StartingPosition", {})
            self.subscriptions.append(SubscribeCall(call["ShardId"], position, time.monotonic(), call["ConsumerARN"]))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = await session.request(request.method, self.upstream + request.path_qs, data=body, headers=headers)
        try:
            if operation == "SubscribeToShard" and upstream.status == 200:
                stream_name = _stream_of_consumer(call["ConsumerARN"])
                return await self._stream(request, upstream, _Subscription(call["ShardId"], stream_name, session))
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=data, headers=out)
        finally:
            upstream.release()

    async def _stream(self, request: Any, upstream: Any, sub: _Subscription) -> Any:
        from aiohttp import web

        response = web.StreamResponse(status=200)
        response.content_type = "application/vnd.amazon.eventstream"
        await response.prepare(request)
        await response.write(INITIAL_RESPONSE)
        sub.transport = request.transport
        self._open.add(sub)
        frames = _Frames()
        try:
            async for chunk in upstream.content.iter_any():
                for frame in frames.feed(chunk):
                    if sub.hung:
                        # Forward nothing more; the handler is cancelled when the client drops the connection.
                        await asyncio.Event().wait()
                    last = await self._end_of_closed_shard(sub, frame)
                    await response.write(last or frame)
                    sub.events += 1
                    if sub.ending or last:
                        await response.write_eof()
                        return response

            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (a watchdog, a stop): nothing to tell it
        finally:
            self._open.discard(sub)
        return response

    async def _end_of_closed_shard(self, sub: _Subscription, frame: bytes) -> bytes | None:
        """The service's last event of a closed shard, when ``frame`` is an empty event of one.

        kinesis-local goes on sending empty events with a ContinuationSequenceNumber after a shard closed,
        where the service sends a last event without one that lists the ChildShards. An empty event once the
        shard is known closed (so generated after it closed, with every record delivered) is replaced by it.
        """
        (headers_length,) = struct.unpack_from("!I", frame, 4)
        event = json.loads(frame[12 + headers_length : -4])
        if event.get("Records") or event.get("ContinuationSequenceNumber") is None:
            return None
        shards = await self._list_shards(sub)
        mine = next((s for s in shards if s["ShardId"] == sub.shard_id), None)
        if mine is None or not mine.get("SequenceNumberRange", {}).get("EndingSequenceNumber"):
            return None  # open (kinesis-local lists an open shard's EndingSequenceNumber as null)
        if not sub.closed_seen:
            sub.closed_seen = True  # the next empty event comes from after the close
            return None
        children = [
            {
                "ShardId": s["ShardId"],
                "ParentShards": [p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p],
                "HashKeyRange": s["HashKeyRange"],
            }
            for s in shards
            if sub.shard_id in (s.get("ParentShardId"), s.get("AdjacentParentShardId"))
        ]
        payload = json.dumps({"Records": [], "MillisBehindLatest": 0, "ChildShards": children}).encode()
        return event_message(_EVENT_HEADERS, payload)

    async def _list_shards(self, sub: _Subscription) -> list[dict[str, Any]]:
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": _TARGET_PREFIX + "ListShards",
            "Authorization": _FAKE_AUTH,
            "X-Amz-Date": "20240101T000000Z",
        }
        body = json.dumps({"StreamName": sub.stream}).encode()
        async with sub.session.post(self.upstream + "/", data=body, headers=headers) as answer:
            listed: list[dict[str, Any]] = json.loads(await answer.read())["Shards"]
        return listed
