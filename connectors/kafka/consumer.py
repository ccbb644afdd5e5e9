"""The consumer thread: the only thread that ever calls the confluent-kafka Consumer.

confluent-kafka's Consumer must not be called from two threads at once, and its rebalance callbacks run
inside ``consume()`` on the calling thread. So one dedicated thread owns it and everything else talks to
it through a command queue (commits, stop, close). The loop of the thread:

1. serve commands (offsets to commit are coalesced per partition, latest wins);
2. ``consume()`` up to ``consume_batch`` messages (this is where librdkafka calls the rebalance callbacks);
3. cut the messages into runs per topic-partition (:mod:`.demux`) and hand each run to its partition's
   feed on the event loop (one ``call_soon_threadsafe`` per fetch);
4. commit pending offsets synchronously, one request for all partitions;
5. now and then, measure lag.

Backpressure: once the feeds hold more than ``buffer`` bytes, no messages are taken from librdkafka's
queue (bounded by its own ``queued.max.messages.kbytes``) until the readers have taken half of it; only
a one-message ``consume()`` now and then keeps serving rebalances meanwhile. Pausing partitions at the
broker instead would make librdkafka drop what it prefetched and fetch it again on resume: measured here,
that halves throughput whenever the pipeline is slower than the broker, which is the normal state of a
busy consumer. Pausing is kept for a partition that holds more than twice its fair share of the buffer:
one stuck partition must not starve the others.

On revoke (cooperative: only the partitions that move), the callback asks the runtime to drain those
partitions to the sinks and checkpoint them, and keeps serving commands while it waits, because the
runtime's checkpoint of the revoked partitions arrives as a commit command; then it commits and returns,
all within ``revoke_timeout_s``. Commits are therefore never concurrent with ``consume()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from .demux import Demux
from .feed import Backlog, Chunk, PartitionFeed, TopicPartitionKey
from .lag import LagTracker, PartitionLag
from .logs import KafkaErrors
from .options import KafkaOptions

log = structlog.get_logger("streamkit.kafka")

_WAKE = ("wake",)
_RETRY_COMMIT_S = 0.5
_REVOKE_COMMIT_RETRIES = 3
_KEEPALIVE_S = 0.5
_STALL_S = 5.0
"""Over the buffer for this long, the pipeline is stalled (a sink is down, not just slower than the broker):
every partition is paused at the broker so that the keepalive consumes stop adding messages."""
"""Under backpressure, how often a one-message consume() serves rebalance callbacks."""
_ASSIGN_TIMEOUT_S = 30.0


class RebalanceListener(Protocol):
    """The source side of a rebalance: runs the runtime's assign/revoke on the event loop."""

    def assigned(self, feeds: Sequence[PartitionFeed]) -> concurrent.futures.Future[None]: ...

    def revoked(self, feeds: Sequence[PartitionFeed], *, graceful: bool) -> concurrent.futures.Future[None]: ...

    def lag_sampled(self, lag: Mapping[TopicPartitionKey, PartitionLag]) -> None: ...


def _names(keys: Sequence[TopicPartitionKey]) -> list[str]:
    return [f"{t}/{p}" for t, p in sorted(keys)]


class ConsumerThread:
    """Owns the confluent-kafka Consumer on one dedicated thread (see the module docs)."""

    def __init__(
        self,
        consumer: Consumer,
        topics: list[str],
        options: KafkaOptions,
        loop: asyncio.AbstractEventLoop,
        listener: RebalanceListener,
        make_partition: Callable[[str, int], Any],
        errors: KafkaErrors | None = None,
    ) -> None:
        self._consumer = consumer
        self._topics = topics
        self._options = options
        self._loop = loop
        self._listener = listener
        self._make_partition = make_partition
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # Everything below is owned by the consumer thread. The event loop reads ``owned`` and ``lag.latest``
        # (replaced, never mutated) and copies ``committed`` (one C-level copy under the GIL): no lock.
        self.feeds: dict[TopicPartitionKey, PartitionFeed] = {}
        self.owned: frozenset[TopicPartitionKey] = frozenset()
        self.backlog = Backlog(options.buffer)
        self._last_consume = 0.0
        self._full_since: float | None = None
        self._stalled = False
        self._paused: set[TopicPartitionKey] = set()
        self._pending: dict[TopicPartitionKey, int] = {}
        self.committed: dict[TopicPartitionKey, int] = {}
        self._commit_after = 0.0
        self.lag = LagTracker(options.lag_interval_s)
        self._demux = Demux(topics, options.tombstones == "skip")
        self._fetching = True
        self._closing = False
        self._errors = errors or KafkaErrors()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=f"kafka-consumer:{options.group_id}", daemon=True)

    # -- called from the event loop (thread-safe, never blocking) ---------------------------------
    def start(self) -> None:
        self._thread.start()

    def commit(self, key: TopicPartitionKey, offset: int) -> None:
        """Commit ``offset`` (the next offset to read) for ``key`` at the next turn of the loop."""
        self._command(("commit", key, offset))

    def taken(self, feed: PartitionFeed, nbytes: int) -> None:
        """A reader took ``nbytes`` out of ``feed`` (called on the event loop, after every batch)."""
        self.backlog.note_taken(feed, nbytes)

    def stop_fetching(self) -> None:
        self._command(("stop",))

    def close(self) -> None:
        """Commit what is pending, leave the group, end the thread (see ``done``)."""
        self._command(("close",))

    def _command(self, command: tuple[Any, ...]) -> None:
        self._commands.put(command)
        self.backlog.wake.set()

    # -- the thread -------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._consumer.subscribe(
                self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            while not self._closing:
                self._turn()
            self._commit_pending(force=True)
            self._consumer.close()
            self.done.set_result(None)
        except BaseException as exc:
            log.error("kafka consumer thread failed", error=f"{type(exc).__name__}: {exc}")
            try:
                self._commit_pending(force=True)
                self._consumer.close()
            except Exception as close_error:
                log.warning("kafka consumer close failed", error=str(close_error))
            self.done.set_exception(exc)

    def _turn(self) -> None:
        options = self._options
        self._serve_commands(wait=0.0 if self._fetching else options.poll_timeout_s)
        if self._fetching and not self._closing:
            messages: list[Message] | None = None
            if self.backlog.held <= options.buffer:
                self._full_since = None
                messages = self._consumer.consume(options.consume_batch, options.poll_timeout_s)
                self._last_consume = time.monotonic()
            elif self._wait_for_room():
                now = time.monotonic()
                self._full_since = self._full_since or now
                if not self._stalled and now - self._full_since > _STALL_S:
                    self._pause_all()
                if now - self._last_consume > _KEEPALIVE_S:
                    messages = self._consumer.consume(1, 0)
                    self._last_consume = now
            if self._errors.fatal is not None:
                raise KafkaException(self._errors.fatal)
            if messages:
                self._dispatch(messages)
        if self._paused:
            self._resume_caught_up()
        self._commit_pending()
        if self.lag.due():
            self.lag.sample(self._consumer, self.owned, self.committed)
            self._loop.call_soon_threadsafe(self._listener.lag_sampled, self.lag.latest)

    def _wait_for_room(self) -> bool:
        """Sleep until the readers took half the backlog, a command came, or a keepalive is due.
        True when still over the limit."""
        backlog = self.backlog
        backlog.wake.clear()
        backlog.waiting = True
        try:
            # Re-checked after ``waiting`` is set: a reader may have made room just before.
            if backlog.held > backlog.limit // 2 and self._commands.empty():
                backlog.wake.wait(max(0.0, self._last_consume + _KEEPALIVE_S - time.monotonic()))
        finally:
            backlog.waiting = False
        return backlog.held > backlog.limit

    def _pause_all(self) -> None:
        log.warning(
            "pipeline stalled: pausing every partition until half the buffer is taken",
            buffered_bytes=self.backlog.held,
            stalled_s=_STALL_S,
        )
        self._pause([k for k in self.feeds if k not in self._paused])
        self._stalled = True

    def _pause(self, keys: list[TopicPartitionKey]) -> None:
        if keys:
            self._consumer.pause([TopicPartition(*k) for k in keys])
            self._paused.update(keys)

    def _resume_caught_up(self) -> None:
        if self._stalled:
            if self.backlog.held > self.backlog.limit // 2:
                return
            self._stalled = False
            log.info("pipeline moving again: resuming partitions")
        for key in list(self._paused):
            feed = self.feeds.get(key)
            if feed is None or feed.delivered_bytes - feed.taken_bytes <= self._fair_share() // 2:
                self._paused.discard(key)
                if feed is not None:
                    self._consumer.resume([TopicPartition(*key)])

    def _serve_commands(self, wait: float) -> None:
        try:
            command = self._commands.get(timeout=wait) if wait > 0 else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "commit":
            _, key, offset = command
            if key in self.feeds:
                self._pending[key] = offset
        elif kind == "stop":
            self._fetching = False
        elif kind == "close":
            self._closing = True

    # -- fetched messages -------------------------------------------------------------------------
    def _dispatch(self, messages: list[Message]) -> None:
        deliveries: list[tuple[PartitionFeed, Chunk]] = []
        for key, chunk in self._demux.split(messages):
            feed = self.feeds.get(key)
            if feed is None:
                continue  # a partition revoked a moment ago; its next owner reads these messages
            deliveries.append((feed, chunk))
            self.lag.delivered(key, chunk.offsets[-1], chunk.timestamps[-1][1])
            self._account(feed, chunk.nbytes)
        if deliveries:
            self._loop.call_soon_threadsafe(_deliver, deliveries)

    def _account(self, feed: PartitionFeed, nbytes: int) -> None:
        feed.delivered_bytes += nbytes
        self.backlog.delivered += nbytes
        key = feed.key
        held = feed.delivered_bytes - feed.taken_bytes
        if len(self.feeds) > 2 and held > self._fair_share() and key not in self._paused:
            # A partition whose reader does not keep up while the others do: stop fetching it so its backlog
            # does not take the buffer from them. librdkafka resumes after the last message handed over.
            self._pause([key])

    def _fair_share(self) -> int:
        """Twice a partition's even share of ``buffer`` (with two partitions or fewer: all of it)."""
        return self._options.buffer * 2 // max(2, len(self.feeds))

    # -- commits ----------------------------------------------------------------------------------
    def _commit_pending(self, *, force: bool = False) -> None:
        if not self._pending or (not force and time.monotonic() < self._commit_after):
            return
        pending = self._pending
        offsets = [TopicPartition(t, p, o) for (t, p), o in pending.items()]
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.fatal():
                raise
            # Retried on a later turn; committed offsets only lag behind, which replays, never loses.
            self._commit_after = time.monotonic() + _RETRY_COMMIT_S
            log.warning("kafka commit failed; will retry", error=str(exc), partitions=_names(list(pending)))
            return
        failed = []
        for tp in results or ():
            key = (tp.topic, tp.partition)
            if tp.error is not None:
                failed.append(f"{tp.topic}/{tp.partition}: {tp.error.str()}")
                continue
            self.committed[key] = tp.offset
            if pending.get(key) == tp.offset:
                del pending[key]
        if failed:
            self._commit_after = time.monotonic() + _RETRY_COMMIT_S
            log.warning("kafka commit failed for some partitions; will retry", errors=failed)

    # -- rebalances (called by librdkafka inside consume(), on this thread) -----------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        feeds = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            feed = PartitionFeed(key, self._make_partition(tp.topic, tp.partition))
            self.feeds[key] = feed
            feeds.append(feed)
        self.owned = frozenset(self.feeds)
        if self._stalled:
            self._pause([f.key for f in feeds])
        log.info("kafka partitions assigned", partitions=_names([f.key for f in feeds]), held=len(self.feeds))
        # Wait: a partition must be in the runtime before its first records arrive there.
        self._listener.assigned(feeds).result(timeout=_ASSIGN_TIMEOUT_S)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [k for k in ((tp.topic, tp.partition) for tp in partitions) if k in self.feeds]
        if not keys:
            return
        started = time.monotonic()
        if not self._closing:
            self._drain_revoked([self.feeds[k] for k in keys], started)
        self._commit_pending(force=True)
        for _ in range(_REVOKE_COMMIT_RETRIES):
            # The last chance to commit these partitions: a failure now means their next owner re-reads.
            if not any(k in self._pending for k in keys):
                break
            time.sleep(_RETRY_COMMIT_S / 2)
            self._commit_pending(force=True)
        committed = {f"{t}/{p}": self.committed.get((t, p)) for t, p in sorted(keys)}
        self._forget(keys)
        log.info(
            "kafka partitions revoked",
            partitions=_names(keys),
            committed=committed,
            took_ms=round((time.monotonic() - started) * 1000),
            held=len(self.feeds),
        )

    def _drain_revoked(self, feeds: list[PartitionFeed], started: float) -> None:
        """Let the runtime flush and checkpoint ``feeds`` while serving the commits that produces."""
        future = self._listener.revoked(feeds, graceful=True)
        future.add_done_callback(lambda _: self._commands.put(_WAKE))
        deadline = started + self._options.revoke_timeout_s
        while not future.done() and time.monotonic() < deadline:
            self._serve_commands(wait=min(0.5, max(0.001, deadline - time.monotonic())))
        error = _failure(future)
        if future.done() and error is None:
            return
        future.cancel()
        log.warning(
            "revoked partitions did not drain in time; dropping them uncommitted (their records are replayed)",
            partitions=_names([f.key for f in feeds]),
            revoke_timeout_s=self._options.revoke_timeout_s,
            error=error,
        )
        for feed in feeds:
            self._pending.pop(feed.key, None)
        self._listener.revoked(feeds, graceful=False).result(timeout=_ASSIGN_TIMEOUT_S)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [k for k in ((tp.topic, tp.partition) for tp in partitions) if k in self.feeds]
        if not keys:
            return
        log.warning("kafka partitions lost (session expired or fenced); not committing them", partitions=_names(keys))
        for key in keys:
            self._pending.pop(key, None)
        if not self._closing:
            self._listener.revoked([self.feeds[k] for k in keys], graceful=False).result(timeout=_ASSIGN_TIMEOUT_S)
        self._forget(keys)

    def _forget(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            feed = self.feeds.pop(key, None)
            if feed is not None:  # its reader is gone: what it did not take is dropped, not held
                self.backlog.dropped += feed.delivered_bytes - feed.taken_bytes
            self._paused.discard(key)
            self._pending.pop(key, None)
            self.lag.forget(key)
        self.owned = frozenset(self.feeds)


def _deliver(deliveries: list[tuple[PartitionFeed, Chunk]]) -> None:
    """Runs on the event loop: hand fetched chunks to their feeds."""
    for feed, chunk in deliveries:
        feed.push(chunk)


def _failure(future: concurrent.futures.Future[None]) -> str | None:
    """Why a finished future failed (None if it succeeded or is still running)."""
    if not future.done():
        return None
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    return None if error is None else f"{type(error).__name__}: {error}"
