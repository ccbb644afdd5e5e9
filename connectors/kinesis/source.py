"""``kinesis``: read shards with KCL-compatible leases in DynamoDB.

The lease coordinator (``streamkit.connectors.dynamodb``) decides which shards this worker reads; each
acquired lease becomes a :class:`ShardReader` task in the runtime, each lost lease stops one. Checkpoints
go to the lease table, conditional on still holding the lease (fencing). A steal from a live worker is a
graceful hand-off: the owner drains and checkpoints the shard before ownership moves. At the end of a
closed shard the runtime checkpoints, then the reader writes SHARD_END and creates the children's leases;
a child lease is only handed out once all its parents reached SHARD_END, so per-key order holds across a
split or merge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import Counter
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal

import msgspec
import structlog

from streamkit.batch import Partition
from streamkit.checkpoint import CheckpointStore
from streamkit.config import AwsSettings, PositiveInt, PositiveSeconds, Size
from streamkit.connectors.aws_clients import AwsClient, lease_table_options
from streamkit.connectors.dynamodb import (
    SHARD_END,
    Lease,
    LeaseCoordinator,
    LeaseLostError,
    LeaseTable,
    LeaseTableError,
    ShardInfo,
    default_worker_id,
    lease_retry,
)
from streamkit.connectors.kinesis.client import KinesisClient
from streamkit.connectors.kinesis.decode import ChildShard
from streamkit.connectors.kinesis.efo import FanOut, FanOutOptions, GivenConsumer
from streamkit.connectors.kinesis.positions import KinesisPosition, checkpoint_for, parse_checkpoint
from streamkit.connectors.kinesis.reader import ReadSettings, ShardReader, StartAt
from streamkit.connectors.kinesis.streams import ConfiguredStream, StreamOptions, describe_stream, stream_name_of
from streamkit.errors import CheckpointDeferred, CheckpointRejected, ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.retry import RetryPolicy, retry
from streamkit.share import process_share
from streamkit.source import PartitionHost, Source

log = structlog.get_logger("streamkit.kinesis")


class KinesisSourceOptions(msgspec.Struct, forbid_unknown_fields=True):
    stream: str | None = None
    """The stream to read, by name or ARN (single-stream lease keys: the shard id, as the KCL)."""
    role_arn: str | None = None
    """IAM role to assume to read ``stream`` (another account's stream; give ``stream`` as an ARN)."""
    streams: list[StreamOptions] | None = None
    """Several streams in one lease table and one balance, instead of ``stream``; lease keys are the KCL's
    multi-stream keys ``account:stream:creationEpoch:shardId``. A stream removed from this list is no longer
    read, and its leases are left as they are."""
    initial_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = "TRIM_HORIZON"
    initial_timestamp: str | None = None
    """ISO 8601, required with AT_TIMESTAMP."""
    lease_table: str | None = None
    """DynamoDB lease table; default ``<pipeline name>-leases``. Created if missing (on-demand billing)."""
    worker_id: str | None = None
    """Unique per process; default hostname + PID + a random suffix (every container is PID 1)."""
    failover_time_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    """A lease whose counter has not moved this long is expired (KCL's failoverTimeMillis)."""
    taker_interval_s: PositiveSeconds | None = None
    """How often to take and balance leases; default failover_time_s."""
    max_leases: PositiveInt | None = None
    graceful_handoff: bool = True
    max_records_per_call: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10_000
    reads_per_second: Annotated[float, msgspec.Meta(gt=0, le=5)] = 5.0
    """GetRecords calls per shard per second for this consumer. The service allows 5 per shard for all
    polling consumers together: give each application its share."""
    read_bytes_per_second: Size = Size(2 * 1024**2)
    """Bytes per shard per second for this consumer (the service allows 2 MiB/s for all together)."""
    idle_poll_s: PositiveSeconds = 1.0
    """Poll interval once a shard is at its tip."""
    shard_sync_interval_s: PositiveSeconds = 30.0
    """How often new shards (after resharding) are discovered."""
    finished_lease_retention_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86_400)] | None = 300.0
    """Delete a finished (SHARD_END) lease this long after every child shard started (the KCL's lease
    clean-up); null keeps finished leases."""
    deaggregate: bool = True
    retry: RetryPolicy = RetryPolicy(max_elapsed_s=0, base_delay_s=0.2, max_delay_s=10.0)
    """Kinesis and lease-table calls are retried until shutdown by default (max_elapsed_s 0): a stream
    outage pauses reading, and nothing is lost by waiting."""
    consumer: Literal["polling", "efo"] = "polling"
    """polling: GetRecords, shared read limits. efo: enhanced fan-out (SubscribeToShard), see ``efo``."""
    efo: FanOutOptions = msgspec.field(default_factory=FanOutOptions)


# What DescribeStreamConsumer accepts as a ConsumerARN (the API reference's pattern, anchored).
_CONSUMER_ARN = re.compile(
    r"^arn:aws[a-z-]*:kinesis:[a-z0-9-]+:\d{12}:stream/[a-zA-Z0-9_.-]+/consumer/[a-zA-Z0-9_.-]+:\d+$"
)


def _stream_options(options: KinesisSourceOptions, where: str) -> list[StreamOptions]:
    """The configured streams; exactly one of ``stream`` and ``streams``."""
    if options.streams is not None:
        if options.stream is not None or options.role_arn is not None:
            raise ConfigError(f"{where}.streams", "give either stream (and role_arn) or streams, not both")
        if not options.streams:
            raise ConfigError(f"{where}.streams", "must list at least one stream")
        seen: set[str] = set()
        for index, entry in enumerate(options.streams):
            if not entry.stream:
                raise ConfigError(f"{where}.streams[{index}].stream", "must not be empty")
            # Same-named streams of different accounts are different streams (their lease keys differ by
            # account); the same name or ARN twice is a mistake.
            if entry.stream in seen:
                raise ConfigError(f"{where}.streams[{index}].stream", f"{entry.stream!r} is listed twice")
            seen.add(entry.stream)
            if entry.consumer_arn is not None:
                key = f"{where}.streams[{index}].consumer_arn"
                if options.consumer != "efo":
                    raise ConfigError(key, "only used with consumer: efo")
                if not _CONSUMER_ARN.match(entry.consumer_arn):
                    raise ConfigError(
                        key,
                        "expected a consumer ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME/consumer/NAME:EPOCH)",
                    )
        return list(options.streams)
    if not options.stream:
        raise ConfigError(f"{where}.stream", "required (or streams: a list of several)")
    return [StreamOptions(options.stream, role_arn=options.role_arn)]


def _validate(options: KinesisSourceOptions, where: str) -> None:
    _stream_options(options, where)
    if options.initial_position == "AT_TIMESTAMP" and not options.initial_timestamp:
        raise ConfigError(f"{where}.initial_timestamp", "required with initial_position AT_TIMESTAMP")
    if options.initial_timestamp:
        try:
            dt.datetime.fromisoformat(options.initial_timestamp)
        except ValueError:
            raise ConfigError(f"{where}.initial_timestamp", "expected ISO 8601 such as 2026-11-26T13:00:00Z") from None
    if not 0 < options.reads_per_second <= 5:
        raise ConfigError(f"{where}.reads_per_second", "must be above 0 and at most 5 (the per-shard limit)")
    if not 0 < options.read_bytes_per_second <= 2 * 1024**2:
        raise ConfigError(f"{where}.read_bytes_per_second", "must be above 0 and at most 2MiB (the per-shard limit)")
    if not 1 <= options.max_records_per_call <= 10_000:
        raise ConfigError(f"{where}.max_records_per_call", "must be 1 to 10000 (the GetRecords limit)")
    if options.failover_time_s <= 0:
        raise ConfigError(f"{where}.failover_time_s", "must be positive")


class LeaseCheckpointStore(CheckpointStore):
    """Checkpoints as lease-table writes, conditional on holding the lease."""

    def __init__(self, source: KinesisSource) -> None:
        self.source = source

    async def load(self, partition: Partition) -> str | None:
        lease = self.source.coordinator.lease(partition.key) if self.source.coordinator else None
        if lease is None or lease.checkpoint is None:
            return None
        return f"{lease.checkpoint}:{lease.checkpoint_sub_sequence}"

    async def save(self, partition: Partition, checkpoint: str) -> None:
        coordinator = self.source.coordinator
        if coordinator is None:
            raise CheckpointRejected(f"{partition}: the lease coordinator is not running")
        parsed = parse_checkpoint(checkpoint)
        sequence, sub = (parsed, 0) if isinstance(parsed, str) else (parsed.sequence, parsed.sub_sequence)
        try:
            await coordinator.checkpoint(partition.key, sequence, sub)
        except LeaseLostError as exc:
            raise CheckpointRejected(str(exc)) from exc
        except LeaseTableError as exc:
            if not exc.retryable:
                raise
            # DynamoDB throttled or failed beyond the lease table's retries. The lease is still ours (or the
            # renewals will find out it is not): the runtime writes this checkpoint again at the next
            # interval instead of stopping the worker (at-least-once, never lost).
            raise CheckpointDeferred(str(exc)) from exc


class KinesisSource(Source):
    Options = KinesisSourceOptions

    def __init__(self, options: KinesisSourceOptions, env: PluginEnv) -> None:
        self.where = env.where or "source"
        _validate(options, self.where)
        self.options = options
        self.aws: AwsSettings = env.aws
        self.stream_options = _stream_options(options, self.where)
        self.multi_stream = options.streams is not None
        self.name = "kinesis:" + ",".join(stream_name_of(entry.stream) for entry in self.stream_options)
        self.table_name = options.lease_table or f"{env.pipeline}-leases"
        self.worker_id = options.worker_id or default_worker_id()
        share = process_share()
        if options.worker_id and share.count > 1:
            # `--processes N` runs N workers of one configured id: each needs its own lease owner name.
            self.worker_id = f"{options.worker_id}-p{share.index}"
        self.settings = ReadSettings(
            max_records=options.max_records_per_call,
            reads_per_second=options.reads_per_second,
            read_bytes_per_second=options.read_bytes_per_second,
            idle_poll_s=options.idle_poll_s,
            deaggregate=options.deaggregate,
            retry=options.retry,
        )
        self.coordinator: LeaseCoordinator | None = None
        self.kinesis: KinesisClient | None = None
        """The client of the first stream (the only one with ``stream``)."""
        self.streams: list[ConfiguredStream] = []
        """The configured streams, resolved by start()."""
        self.fan_out: FanOut | None = None
        """The enhanced fan-out consumer and its subscription client (``consumer: efo``), once started."""
        self.dynamodb: Any = None
        """The lease table's aiobotocore DynamoDB client, once started."""
        self._store = LeaseCheckpointStore(self)
        self._stack = AsyncExitStack()
        self._host: PartitionHost | None = None
        self._closing = asyncio.Event()
        self._run_done = asyncio.Event()
        self._running = False
        self._readers: dict[str, ShardReader] = {}
        self.read_counts: Counter[str] = Counter()
        """Totals over every shard reader of this worker: calls, bytes, throttled, expired_iterators,
        kpl_dropped."""
        self._handed_off: set[str] = set()

    def checkpoint_store(self) -> CheckpointStore:
        return self._store

    def checkpoint_of(self, position: Any) -> str | None:
        return checkpoint_for(position)

    async def start(self, store: CheckpointStore) -> None:
        try:
            await self._open_streams()
        except BaseException:
            await self._stack.aclose()
            raise
        self.kinesis = self.streams[0].client
        if self.options.consumer == "efo":
            try:
                given = {
                    stream.arn: GivenConsumer(entry.consumer_arn, f"{self.where}.streams[{index}].consumer_arn")
                    for index, (entry, stream) in enumerate(zip(self.stream_options, self.streams, strict=True))
                    if entry.consumer_arn is not None
                }
                self.fan_out = await FanOut.start(
                    self._stack, self.aws, self.streams, self.options.efo, self.table_name, where=self.where,
                    given=given,
                )  # fmt: skip
            except BaseException:
                await self._stack.aclose()
                raise
        # Timeouts below a third of the failover time: a stalled DynamoDB fails a renewal, it does not hang it.
        lease_client = AwsClient(self.aws, "dynamodb", lease_table_options(self.options.failover_time_s))
        dynamodb = await self._stack.enter_async_context(lease_client)
        self.dynamodb = dynamodb
        table = LeaseTable(dynamodb, self.table_name, retry=lease_retry(self.options.failover_time_s))
        opts = self.options
        self.coordinator = LeaseCoordinator(
            table,
            self.worker_id,
            failover_time=opts.failover_time_s,
            taker_interval=opts.taker_interval_s,
            max_leases=opts.max_leases,
            graceful_handoff=opts.graceful_handoff,
            on_handoff=self._hand_off,
            initial_position=opts.initial_position,
            lease_key_prefix=self.streams[0].lease_key_prefix,
            lease_key_prefixes=[s.lease_key_prefix for s in self.streams] if self.multi_stream else None,
            finished_lease_retention=opts.finished_lease_retention_s,
        )
        try:
            await table.ensure_exists()
            self._check_table_mode(await table.list_leases())
            await self._sync_shards(raise_errors=True)
        except BaseException:
            await self._stack.aclose()  # the runtime does not close a source whose start failed
            raise
        log.info(
            "kinesis source started",
            streams=[s.stream for s in self.streams],
            lease_table=self.table_name,
            worker=self.worker_id,
        )

    async def _open_streams(self) -> None:
        """One Kinesis client per role (the default chain's, and each role_arn's), then every stream described:
        a stream that cannot be read fails start-up, naming its setting."""
        from streamkit.connectors.assume_role import assumed_role_session

        clients: dict[tuple[str | None, str | None], KinesisClient] = {}
        for index, entry in enumerate(self.stream_options):
            where = f"{self.where}.streams[{index}]" if self.multi_stream else self.where
            role = (entry.role_arn, entry.external_id)
            if role not in clients:
                session = None
                if entry.role_arn is not None:
                    try:
                        session = assumed_role_session(self.aws, entry.role_arn, external_id=entry.external_id)
                    except ValueError as exc:
                        raise ConfigError(f"{where}.role_arn", str(exc)) from None
                clients[role] = await self._stack.enter_async_context(KinesisClient(self.aws, session=session))
            try:
                stream = await describe_stream(clients[role], entry.stream, multi_stream=self.multi_stream)
            except Exception as exc:
                through = f" as {entry.role_arn}" if entry.role_arn else ""
                raise ConfigError(f"{where}.stream", f"cannot read stream {entry.stream!r}{through}: {exc}") from None
            if any(known.arn == stream.arn for known in self.streams):
                raise ConfigError(f"{where}.stream", f"{stream.arn} is listed twice (by name and by ARN)")
            self.streams.append(stream)

    def _check_table_mode(self, leases: list[Lease]) -> None:
        """Single-stream and multi-stream lease keys do not mix: the same shard would get two leases."""
        if self.multi_stream:
            single = [lease.lease_key for lease in leases if ":" not in lease.lease_key]
            if single:
                raise ConfigError(
                    f"{self.where}.lease_table",
                    f"{self.table_name!r} holds single-stream leases (such as {single[0]!r}) and this source reads "
                    "several streams (KCL multi-stream keys): give it a table of its own, or use stream: instead",
                )
            return
        multi_stream = [lease.lease_key for lease in leases if ":" in lease.lease_key]
        if multi_stream:
            raise ConfigError(
                f"{self.where}.lease_table",
                f"{self.table_name!r} is a KCL multi-stream lease table (lease keys such as "
                f"{multi_stream[0]!r}) and this source reads one stream: list it under streams: to use this table, "
                "or give this source a table of its own",
            )

    def _stream_of(self, lease_key: str) -> ConfiguredStream | None:
        return next((stream for stream in self.streams if stream.owns(lease_key)), None)

    def _partition(self, lease_key: str) -> Partition:
        """The runtime's partition of a lease: ``kinesis:<stream name>`` and the lease key.

        With several streams the source is the shard's own stream, not this source's name (``kinesis:a,b``):
        what sinks derive from it (the S3 key's ``{stream}``, the Iceberg ledger, dead-letter entries) names
        the stream the records came from, and stays the same when another stream is added to or removed from
        the list, so a replay after such a change writes the same S3 keys."""
        stream = self._stream_of(lease_key) if self.multi_stream else None
        return Partition(f"kinesis:{stream.name}" if stream is not None else self.name, lease_key)

    async def run(self, host: PartitionHost, stop: asyncio.Event) -> None:
        assert self.coordinator is not None
        self._host = host
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                coordinator_task = group.create_task(self.coordinator.run(), name="lease-coordinator")
                helpers = [
                    group.create_task(self._follow_leases(host, stop), name="lease-events"),
                    group.create_task(self._shard_sync_loop(), name="shard-sync"),
                ]
                # Once stopping, take no more leases (they would be released moments later), but keep the
                # held ones renewed until the runtime wrote its final checkpoints and calls close().
                pause = group.create_task(self._pause_taking_on(stop), name="pause-taking")
                await self._closing.wait()
                pause.cancel()
                for task in helpers:
                    task.cancel()
                await self.coordinator.stop(release=True)
                await coordinator_task
        finally:
            self._run_done.set()

    async def _pause_taking_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self.coordinator is not None:
            self.coordinator.pause_taking()

    async def close(self) -> None:
        self._closing.set()
        if self._running:
            await self._run_done.wait()
        elif self.coordinator is not None:
            await self.coordinator.stop(release=True)
        await self._stack.aclose()

    # -- leases ----------------------------------------------------------------------------------
    async def _follow_leases(self, host: PartitionHost, stop: asyncio.Event) -> None:
        assert self.coordinator is not None
        while True:
            event = await self.coordinator.events.get()
            partition = self._partition(event.lease.lease_key)
            if event.kind == "acquired":
                if stop.is_set():
                    # The runtime is draining: a reader started now would never be stopped (and its records
                    # never checkpointed). The lease is released with the others when the source closes.
                    log.info("lease acquired while stopping; not reading it", partition=str(partition))
                    continue
                reader = self._reader_for(event.lease)
                if reader is None:
                    continue
                self._readers[event.lease.lease_key] = reader
                try:
                    await host.assign(reader)
                except RuntimeError:
                    # The runtime still runs an earlier reader of this shard (a "lost" it has not acted on):
                    # the lease's checkpoint is what counts now, so replace it.
                    log.warning("shard still assigned; restarting it from its lease", partition=str(partition))
                    await host.revoke(partition, graceful=False)
                    await host.assign(reader)
                self._count("taken")
            else:
                self._readers.pop(event.lease.lease_key, None)
                await host.revoke(partition, graceful=False)
                self._count("lost")
                if event.lease.lease_key in self._handed_off:
                    self._handed_off.discard(event.lease.lease_key)
                    log.info("lease handed off", partition=str(partition), reason=event.reason)
                else:
                    log.warning("lease lost", partition=str(partition), reason=event.reason)

    async def _hand_off(self, lease_key: str) -> None:
        """Called by the coordinator before a lease moves to another worker: drain and checkpoint first."""
        self._handed_off.add(lease_key)
        if self._host is not None:
            await self._host.revoke(self._partition(lease_key), graceful=True)
        self._readers.pop(lease_key, None)

    def _reader_for(self, lease: Lease) -> ShardReader | None:
        stream = self._stream_of(lease.lease_key)
        if stream is None:  # the coordinator only hands out configured streams' leases; be safe anyway
            log.warning("lease of a stream this source does not read; ignored", lease_key=lease.lease_key)
            return None
        checkpoint = lease.checkpoint or self.options.initial_position
        if checkpoint == SHARD_END:
            return None
        start = self._start_at(checkpoint, lease.checkpoint_sub_sequence)
        hash_range = None
        if lease.starting_hash_key is not None and lease.ending_hash_key is not None:
            hash_range = (int(lease.starting_hash_key), int(lease.ending_hash_key))
        partition = self._partition(lease.lease_key)
        shard_id = stream.shard_id(lease.lease_key) if stream.lease_key_prefix else None
        if self.fan_out is not None:
            return self.fan_out.reader(
                partition,
                stream,
                start,
                self.settings,
                hash_range=hash_range,
                on_end=lambda children: self._shard_ended(lease.lease_key, children),
                on_lag=lambda ms: self._lag(partition, ms),
                totals=self.read_counts,
                shard_id=shard_id,
            )
        return ShardReader(
            partition,
            stream.client,
            stream.stream,
            start,
            self.settings,
            hash_range=hash_range,
            on_end=lambda children: self._shard_ended(lease.lease_key, children),
            on_lag=lambda ms: self._lag(partition, ms),
            totals=self.read_counts,
            shard_id=shard_id,
        )

    def _start_at(self, checkpoint: str, sub_sequence: int) -> StartAt:
        parsed = parse_checkpoint(checkpoint)
        if isinstance(parsed, KinesisPosition):
            position = KinesisPosition(parsed.sequence, sub_sequence)
            return StartAt("AT_SEQUENCE_NUMBER", sequence_number=parsed.sequence, skip_through=position)
        if parsed == "AT_TIMESTAMP":
            if self.options.initial_timestamp is None:
                raise ConfigError(
                    "source.initial_timestamp",
                    f"lease table {self.table_name!r} starts shards AT_TIMESTAMP (as a KCL application configured "
                    "with a timestamp does): set initial_timestamp to that time",
                )
            timestamp = dt.datetime.fromisoformat(self.options.initial_timestamp)
            return StartAt("AT_TIMESTAMP", timestamp=timestamp)
        return StartAt(parsed)

    async def _shard_ended(self, lease_key: str, children: list[ChildShard]) -> None:
        assert self.coordinator is not None
        infos = [
            ShardInfo(
                c.shard_id,
                parent_shard_ids=tuple(c.parent_shards),
                starting_hash_key=str(c.hash_key_range[0]),
                ending_hash_key=str(c.hash_key_range[1]),
            )
            for c in children
        ]
        self._readers.pop(lease_key, None)
        coordinator = self.coordinator

        def retrying(exc: BaseException, attempt: int) -> None:
            log.warning("could not mark the shard's end yet; retrying", shard=lease_key, error=str(exc))

        try:
            # Until SHARD_END is written the children cannot be read: keep trying (the lease stays renewed).
            await retry(
                lambda: coordinator.finish_shard(lease_key, infos),
                lambda exc: isinstance(exc, LeaseTableError) and exc.retryable,
                self.options.retry,
                retrying,
            )
        except LeaseLostError as exc:
            # Fenced at the very end: the new owner reads the shard's tail again and finishes it.
            log.warning(
                "shard ended but its lease was lost; the new owner finishes it", shard=lease_key, error=str(exc)
            )
            return
        log.info("shard ended", shard=lease_key, children=[c.shard_id for c in children])

    # -- shard discovery -------------------------------------------------------------------------
    async def _sync_shards(self, *, raise_errors: bool = False) -> None:
        """Create the leases of new shards, stream by stream: one stream failing does not hold up the others."""
        assert self.coordinator is not None
        for stream in self.streams:
            try:
                shards = await stream.client.list_shards(stream.stream)
                infos = [ShardInfo.from_list_shards(s) for s in shards]
                if stream.lease_key_prefix:
                    created = await self.coordinator.sync_shards(infos, prefix=stream.lease_key_prefix)
                else:  # single-stream: the coordinator's own (empty) prefix
                    created = await self.coordinator.sync_shards(infos)
            except Exception as exc:  # discovery retries at the next interval; reading goes on meanwhile
                if raise_errors:
                    raise
                log.warning("shard discovery failed; retrying later", stream=stream.stream, error=repr(exc))
                continue
            if created:
                log.info("leases created for shards", stream=stream.stream, shards=created)

    async def _shard_sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.shard_sync_interval_s)
            await self._sync_shards()

    # -- metrics ---------------------------------------------------------------------------------
    def _lag(self, partition: Partition, millis_behind: int | None) -> None:
        if self.metrics is not None and millis_behind is not None:
            self.metrics.partitions[partition].millis_behind = millis_behind

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.leases[what] += 1
