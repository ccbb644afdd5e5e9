"""``kafka``: a consumer group member reading topics of Kafka or Amazon MSK.

The broker's group coordinator decides which partitions this worker reads (cooperative-sticky, so a
rebalance only stops the partitions that move). Each assigned partition gets its own
:class:`KafkaPartitionReader` in the runtime, fed by the consumer thread (see :mod:`.consumer`), so
records of one partition are processed in offset order. Offsets are committed to the group only for
records every sink acknowledged (:mod:`.offsets`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from streamkit.batch import Partition
from streamkit.checkpoint import CheckpointStore
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.redact import redacted, scrub
from streamkit.source import PartitionHost, PartitionReader, Source, SourceBatch

from .auth import check_auth, check_files
from .feed import PartitionFeed, TopicPartitionKey, to_batch
from .lag import PartitionLag
from .logs import KafkaErrors, LibrdkafkaLog
from .offsets import PREFIX, KafkaOffsetStore, partition_of
from .options import KafkaOptions, check_options, consumer_config, is_loopback, topic_list

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from .consumer import ConsumerThread

log = structlog.get_logger("streamkit.kafka")

_CONNECT_TIMEOUT_S = 15.0
_CLOSE_TIMEOUT_S = 30.0


class KafkaPartitionReader(PartitionReader):
    """Batches of one topic-partition, in offset order, as the consumer thread fetched them."""

    def __init__(self, feed: PartitionFeed, thread: ConsumerThread, max_records: int) -> None:
        super().__init__(feed.partition)
        self.feed = feed
        self.thread = thread
        self.max_records = max_records

    async def batches(self) -> AsyncIterator[SourceBatch]:
        feed = self.feed
        while not self.stopping.is_set() and not feed.closed:
            if not feed.chunks:
                feed.ready.clear()
                await feed.ready.wait()
                continue
            yield self._take(feed)

    def _take(self, feed: PartitionFeed) -> SourceBatch:
        """The next batch from the feed. Built here, not in batches(), so that generator's frame keeps no
        reference to the records while the runtime processes them."""
        chunks = feed.take(self.max_records)
        batch, offsets, nbytes = to_batch(self.partition, chunks)
        # The feed no longer holds these bytes (the runtime's byte budget does): may resume fetching.
        self.thread.taken(feed, nbytes)
        return SourceBatch(batch, offsets)

    def stop(self) -> None:
        super().stop()
        self.feed.ready.set()


class KafkaSource(Source):
    """Topics of one consumer group; positions are offsets, checkpoints are committed offsets."""

    Options = KafkaOptions

    def __init__(self, options: KafkaOptions, env: PluginEnv) -> None:
        self.where = env.where or "source"
        check_options(options, self.where)
        self.options = options
        self.topics = topic_list(options, self.where)
        self.auth = check_auth(options.auth, self.where, env.aws.region)
        self._resolve = env.path
        self.client_id = options.client_id or f"streamkit-{env.pipeline}"
        self.name = PREFIX + ",".join(self.topics)
        self._consumer: Consumer | None = None
        self._thread: ConsumerThread | None = None
        self._store = KafkaOffsetStore(lambda: self._thread)
        self._host: PartitionHost | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors = KafkaErrors()

    def checkpoint_store(self) -> CheckpointStore:
        return self._store

    @property
    def offsets(self) -> KafkaOffsetStore:
        return self._store

    def lag(self) -> dict[Partition, PartitionLag]:
        """The latest lag sample per held partition (taken every ``lag_interval_s``)."""
        thread = self._thread
        return {} if thread is None else {partition_of(*k): v for k, v in thread.lag.latest.items()}

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, store: CheckpointStore) -> None:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            raise ConfigError(f"{self.where}.type", "the kafka source needs `pip install streamkit[kafka]`") from None
        self.auth = check_files(self.auth, self.where, self._resolve)
        if self.auth.mechanism == "plaintext" and not is_loopback(self.options.bootstrap_servers):
            log.warning("kafka connection is not encrypted (auth.mechanism: plaintext); meant for local runs")
        self._consumer = await asyncio.to_thread(self._connect)

    def _connect(self) -> Consumer:
        from confluent_kafka import Consumer, KafkaException

        config = consumer_config(self.options, self.auth, self.client_id)
        config["error_cb"] = self._errors
        config["logger"] = LibrdkafkaLog()
        try:
            consumer = Consumer(config)
        except KafkaException as exc:
            # librdkafka quotes the rejected value ("Invalid value ... for ssl.key.pem"): never a secret in it.
            message = scrub(exc.args[0].str(), config)
            raise ConfigError(f"{self.where}.librdkafka", f"rejected by librdkafka: {message}") from None
        try:
            metadata = consumer.list_topics(timeout=_CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            consumer.close()
            raise ConfigError(
                f"{self.where}.bootstrap_servers",
                f"cannot reach {self.options.bootstrap_servers} within {_CONNECT_TIMEOUT_S:.0f} s: {exc.args[0].str()}",
            ) from None
        missing = [t for t in self.topics if not t.startswith("^") and t not in metadata.topics]
        if missing:
            consumer.close()
            raise ConfigError(f"{self.where}.topics", f"no such topic: {', '.join(missing)}")
        log.info(
            "kafka consumer connected",
            group=self.options.group_id,
            topics=self.topics,
            brokers=len(metadata.brokers),
            config=redacted({k: v for k, v in config.items() if k not in ("error_cb", "logger")}),
        )
        return consumer

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        from .consumer import ConsumerThread

        assert self._consumer is not None, "start() first"
        self._host = host
        self._loop = asyncio.get_running_loop()
        thread = ConsumerThread(
            self._consumer, self.topics, self.options, self._loop, self, partition_of, errors=self._errors
        )
        self._thread = thread
        thread.start()
        finished = asyncio.wrap_future(thread.done)
        stopped = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {finished, stopped}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            thread.stop_fetching()
        if finished.done():
            finished.result()  # the thread's error fails the pipeline
            raise RuntimeError("the kafka consumer thread ended before the pipeline stopped")

    async def close(self) -> None:
        # The thread object stays around after it ended: committed offsets and lag remain readable.
        thread = self._thread
        if thread is not None and not thread.done.done():
            thread.close()
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(thread.done)), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("kafka consumer did not close in time", timeout_s=_CLOSE_TIMEOUT_S)
            except Exception:
                pass  # the consumer thread logged why it failed
            self._consumer = None
        elif thread is None and self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await asyncio.to_thread(consumer.close)

    # -- RebalanceListener (called from the consumer thread) ---------------------------------------
    def assigned(self, feeds: Sequence[PartitionFeed]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(self._assign(feeds), self._running_loop())

    def revoked(self, feeds: Sequence[PartitionFeed], *, graceful: bool) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(self._revoke(feeds, graceful), self._running_loop())

    def lag_sampled(self, lag: Mapping[TopicPartitionKey, PartitionLag]) -> None:
        """Publish a lag sample as the partitions' ``millis_behind`` metric (on the event loop)."""
        if self.metrics is not None:
            for key, sample in lag.items():
                self.metrics.partitions[partition_of(*key)].millis_behind = sample.millis_behind

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def _assign(self, feeds: Sequence[PartitionFeed]) -> None:
        host, thread = self._host, self._thread
        assert host is not None and thread is not None
        for feed in feeds:
            await host.assign(KafkaPartitionReader(feed, thread, self.options.batch_size))

    async def _revoke(self, feeds: Sequence[PartitionFeed], graceful: bool) -> None:
        host = self._host
        assert host is not None
        for feed in feeds:
            feed.close()
            if self.metrics is not None and feed.partition in self.metrics.partitions:
                self.metrics.partitions[feed.partition].millis_behind = None  # no longer measured here
        await asyncio.gather(*(host.revoke(feed.partition, graceful=graceful) for feed in feeds))
