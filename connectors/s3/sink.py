"""``s3``: records as NDJSON (gzip/zstd), Avro or Parquet objects, partitioned Hive-style, replay-safe.

How it works (docs/sinks-s3.md has the whole story, docs/s3-objects.md the object formats and keys):

- Records are cut into segments per source partition (:mod:`.segments`): deterministic cuts on record
  count, encoded size and arrival-time window, so a replay after a crash rebuilds the same objects.
  Forced cuts: age (``max_age_s``, a timer in :meth:`S3Sink.run`), memory pressure, and ``flush``.
- Every object is created with ``If-None-Match: *`` under a key made of its source positions. 412 means
  the records are stored already: they are acknowledged, nothing is duplicated.
- A segment's records are acknowledged only when every object of the segment is durable (200 or 412);
  records that fail to encode go to the dead-letter queue with the segment.
- Objects that grow past ``multipart_threshold`` are streamed as multipart parts, so an open object
  holds at most about one part in memory. Their key is fixed when streaming starts, before their last
  record is known; an empty end marker written after completion keeps replays exact (see the doc).
- One memory budget covers every open object of the sink: over it, the largest segment is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass

import structlog

from streamkit.batch import Partition, RecordBatch
from streamkit.connectors.aws_clients import SDK_ERRORS, AwsClient, describe_error, error_code
from streamkit.connectors.s3.keys import PositionLike, TemplateError, compile_key_template, compile_partitioner
from streamkit.connectors.s3.segments import OpenObject, Segment, ShardSegments
from streamkit.connectors.s3.settings import (
    S3SinkOptions,
    check_options,
    segment_rules,
    unacked_limit,
    writer_factory,
)
from streamkit.connectors.s3.upload import Outcome, S3Requests, owner_refused
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.sink import Sink

__all__ = ["S3Sink", "S3SinkOptions", "S3SinkStats", "marker_key"]

log = structlog.get_logger("streamkit.connectors.s3")

_MARKER_SUFFIX = ".written"


@dataclass
class S3SinkStats:
    """What the sink did, for logs, tests and benchmarks."""

    segments: int = 0
    forced_segments: int = 0
    objects_written: int = 0
    objects_existing: int = 0
    """Objects not written because S3 proved the records were stored already (412, or an end marker)."""
    bytes_written: int = 0
    multipart_objects: int = 0
    parts: int = 0
    markers: int = 0
    fallbacks: int = 0
    """Streamed objects whose anchored key existed already (a replay), kept in memory instead."""
    peak_buffered_bytes: int = 0
    peak_unacked_bytes: int = 0


def marker_key(key: str) -> str:
    """The empty object that says "an object with exactly the records of ``key`` was completed".

    The ``_`` prefix hides it from Athena, Hive, Spark, pyarrow and DuckDB's hive readers."""
    head, _, name = key.rpartition("/")
    return f"{head}/_{name}{_MARKER_SUFFIX}" if head else f"_{name}{_MARKER_SUFFIX}"


@dataclass(eq=False)
class _Shard:
    segments: ShardSegments
    lock: asyncio.Lock


class S3Sink(Sink):
    """Writes records to S3 objects; see the module docstring and docs/sinks-s3.md."""

    Options = S3SinkOptions

    def __init__(self, options: S3SinkOptions, env: PluginEnv) -> None:
        where = env.where or "sink"
        check_options(options, where)
        self.max_unacked_bytes = unacked_limit(options, env.runtime.max_bytes_in_flight, where)
        self.options = options
        self.where = where
        try:
            self.keys = compile_key_template(options.key_template, prefix=options.prefix)
        except TemplateError as exc:
            key = "prefix" if str(exc).startswith("prefix") else "key_template"
            raise ConfigError(f"{where}.{key}", str(exc)) from None
        try:
            self.partitioner = compile_partitioner(options.partition_template, hive=options.hive)
        except TemplateError as exc:
            raise ConfigError(f"{where}.partition_template", str(exc)) from None
        # NDJSON objects are written from payload bytes; values are read only by a partition template's
        # fields and by the Avro and Parquet writers. Otherwise the runtime releases them before submit.
        self.keeps_values = options.format != "ndjson" or bool(self.partitioner.fields)
        if options.format == "ndjson" and self.partitioner.fields:
            # The template is all that reads values: the planner may hand it views of just these fields.
            self.value_fields = tuple(self.partitioner.fields)
        self._new_writer, sample = writer_factory(options, env, where)
        self.extension = sample.extension
        self.content_type = sample.content_type
        self.content_encoding = sample.content_encoding
        self.rules = segment_rules(options)
        self.aws = AwsClient(env.aws, "s3", options.client)
        self.requests = S3Requests(
            self.aws,
            options.bucket,
            retry=options.retry,
            sse=options.sse,
            max_concurrent=options.max_concurrent_uploads,
            on_retry=lambda throttled: self.record_retry(throttled=throttled),
            on_write=self.observe_write,
            expected_owner=options.expected_bucket_owner,
        )
        self.stats = S3SinkStats()
        self._shards: dict[Partition, _Shard] = {}
        self._closing: dict[asyncio.Task[None], Segment] = {}
        self._errors: list[tuple[Partition, BaseException]] = []
        """Errors of segment writes, with the source partition of the segment."""
        self._failed = asyncio.Event()
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        client = await self.aws.start()
        bucket = self.options.bucket
        where = f"{self.where}.bucket"
        try:
            await client.head_bucket(Bucket=bucket)
        except SDK_ERRORS as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchBucket"):
                await self.aws.close()
                raise ConfigError(where, f"bucket {bucket!r} not found at {self.aws.endpoint}") from None
            if code not in ("403", "AccessDenied"):
                await self.aws.close()
                raise ConfigError(where, f"cannot reach bucket {bucket!r}: {describe_error(exc)}") from None
            if self.options.expected_bucket_owner:  # the probe below reads a 403 as "absent": decide here
                await self.aws.close()
                raise ConfigError(where, owner_refused(bucket, self.options.expected_bucket_owner)) from None
            # HeadBucket needs s3:ListBucket, which the sink does not: check with a write right instead.
            try:
                await self.requests.exists(f"{self.options.prefix}_streamkit-access-check")
            except SinkError as denied:
                await self.aws.close()
                raise ConfigError(where, f"cannot write to bucket {bucket!r}: {denied}") from None
        log.info("s3 sink ready", sink=self.name, bucket=bucket, prefix=self.options.prefix, endpoint=self.aws.endpoint)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        if self._closing:
            await asyncio.wait(list(self._closing))
        # Uploads of segments that never completed (after an error): drop their parts.
        for shard in self._shards.values():
            if shard.segments.segment is not None:
                await self._abort(shard.segments.segment)
        await self.aws.close()

    # -- records in ------------------------------------------------------------------------------
    async def submit(self, batch: RecordBatch) -> None:
        self._raise_error()
        if not len(batch):
            return
        # Over the budget: wait (backpressure) before taking more, so a segment that is being written and
        # the one that replaces it do not add up. The budget can then be passed by one batch at most.
        await self._relieve()
        shard = self._shard(batch.partition)
        async with shard.lock:
            segments = shard.segments
            was_open = segments.segment is not None and not segments.segment.empty
            for segment in segments.add(batch):
                self._close(segment)
            current = segments.segment
            if current is not None and not current.empty:
                if not was_open:
                    self._wake.set()  # a new segment: the age timer has a new deadline
                await self._stream(current)
        await self._relieve()

    def _shard(self, partition: Partition) -> _Shard:
        shard = self._shards.get(partition)
        if shard is None:
            segments = ShardSegments(partition, self.rules, self.partitioner, self._new_writer)
            shard = self._shards[partition] = _Shard(segments, asyncio.Lock())
        return shard

    async def _stream(self, segment: Segment) -> None:
        """Start multipart uploads for newly anchored objects and upload the parts that are ready."""
        for obj in list(segment.objects.values()):
            if obj.anchor is None or obj.fallback:
                continue
            if obj.upload is None:
                key = self._key(segment.partition, obj, obj.anchor)
                if await self.requests.exists(key):
                    # A replay: an earlier run streamed from the same anchor. Keep this one in memory
                    # and decide at its end whether that object holds exactly its records.
                    obj.fallback = True
                    self.stats.fallbacks += 1
                    log.info("anchored s3 object exists already; keeping the replay in memory", key=key)
                    continue
                obj.upload = await self.requests.create_upload(
                    key, content_type=self.content_type, content_encoding=self.content_encoding
                )
                self.stats.multipart_objects += 1
            while (part := obj.writer.take_ready(self.options.part_size)) is not None:
                await obj.upload.upload_part(part)
                obj.uploaded += len(part)
                self.stats.parts += 1

    # -- cutting and memory ----------------------------------------------------------------------
    def _close(self, segment: Segment) -> asyncio.Task[None]:
        self.stats.segments += 1
        self.stats.forced_segments += segment.forced
        task = asyncio.get_running_loop().create_task(self._write_segment(segment))
        self._closing[task] = segment
        task.add_done_callback(self._closed)
        self._measure()  # with the segment among the closing ones: it holds its bytes until written
        return task

    def _closed(self, task: asyncio.Task[None]) -> None:
        segment = self._closing.pop(task, None)
        error = None if task.cancelled() else task.exception()
        if error is not None and segment is not None:
            self._errors.append((segment.partition, error))
            self._failed.set()

    def _totals(self) -> tuple[int, int]:
        """(encoded bytes held, source bytes unacknowledged) across open and closing segments."""
        segments = [s.segments.segment for s in self._shards.values() if s.segments.segment is not None]
        segments.extend(self._closing.values())
        return sum(s.buffered for s in segments), sum(s.raw_bytes for s in segments)

    def _measure(self) -> tuple[int, int]:
        buffered, unacked = self._totals()
        self.stats.peak_buffered_bytes = max(self.stats.peak_buffered_bytes, buffered)
        self.stats.peak_unacked_bytes = max(self.stats.peak_unacked_bytes, unacked)
        return buffered, unacked

    async def _relieve(self) -> None:
        """Over the memory budget or the unacknowledged-bytes limit: write the largest open segment,
        or wait for segments being written (cutting more would not free anything sooner).

        A cut frees nothing until its segment is written, so after one this waits for that write
        before measuring again. Measuring right after the cut is not enough: the cut feeds the
        segment's pending records to its writers, so they are counted at their encoded size instead of
        their raw size, and that alone can take the total just under the budget. Going on then would
        let the next records open a new segment (one object per Hive partition, each with its fixed
        overhead) next to the one being written: twice the budget. That happened whenever a source
        batch reached the sink in several slices, which leaves a part-filled slice pending."""
        options = self.options
        while True:
            buffered, unacked = self._measure()
            over_memory = buffered > options.memory_budget
            if not over_memory and unacked <= self.max_unacked_bytes:
                return
            if self._closing:
                await asyncio.wait(list(self._closing), return_when=asyncio.FIRST_COMPLETED)
                self._raise_error()
                continue
            open_segments = [s.segments.segment for s in self._shards.values() if s.segments.segment is not None]
            size = (lambda s: s.buffered) if over_memory else (lambda s: s.raw_bytes)
            largest = max(open_segments, key=size, default=None)
            if largest is None or largest.empty:
                return
            shard = self._shards[largest.partition]
            async with shard.lock:
                segment = shard.segments.cut("memory_budget" if over_memory else "max_unacked_bytes")
                written = self._close(segment) if segment is not None else None
            if written is not None:
                await asyncio.wait([written])
                self._raise_error()

    async def run(self, stop: asyncio.Event) -> None:
        """The age timer: a segment open for max_age_s is written; write errors surface here."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._raise_error()
                opened = [
                    s.segments.segment.opened
                    for s in self._shards.values()
                    if s.segments.segment is not None and not s.segments.segment.empty
                ]
                timeout = None if not opened else max(0.0, min(opened) + self.options.max_age_s - time.monotonic())
                woken = asyncio.ensure_future(self._wake.wait())
                failed = asyncio.ensure_future(self._failed.wait())
                await asyncio.wait({stopping, woken, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                failed.cancel()
                self._wake.clear()
                self._raise_error()
                await self._cut_aged()
        finally:
            stopping.cancel()

    async def _cut_aged(self) -> None:
        now = time.monotonic()
        for shard in list(self._shards.values()):
            segment = shard.segments.segment
            if segment is None or segment.empty or now - segment.opened < self.options.max_age_s:
                continue
            async with shard.lock:
                current = shard.segments.segment
                if current is segment and time.monotonic() - segment.opened >= self.options.max_age_s:
                    cut = shard.segments.cut("max_age")
                    if cut is not None:
                        self._close(cut)

    async def flush(self) -> None:
        """Write every open segment and wait until everything submitted is acknowledged or dead-lettered."""
        self._raise_error()
        for shard in list(self._shards.values()):
            async with shard.lock:
                segment = shard.segments.cut("flush")
                if segment is not None:
                    self._close(segment)
        while self._closing:
            await asyncio.wait(list(self._closing))
        self._raise_error()

    def _raise_error(self) -> None:
        if self._errors:
            raise self._errors[0][1]

    # -- partitions that moved away --------------------------------------------------------------
    async def revoke(self, partitions: Collection[Partition]) -> None:
        """Drop the open segment and the segments being written of each partition, never writing them.

        Their records are not acknowledged: the next owner (or the next Lambda invocation) replays them
        from the checkpoint, and since segments are cut deterministically from the checkpoint on, the
        replay writes the same keys. Kept, the open segment would receive that replay after its own
        records: an object whose order runs backwards under a key whose positions are wrong."""
        gone = set(partitions)
        dropped: list[Segment] = []
        for partition in gone:
            shard = self._shards.get(partition)
            if shard is None:
                continue
            async with shard.lock:
                if shard.segments.segment is not None:
                    dropped.append(shard.segments.segment)
                    shard.segments.segment = None
                if self._shards.get(partition) is shard:
                    del self._shards[partition]
        writing = [task for task, segment in self._closing.items() if segment.partition in gone]
        for task in writing:
            dropped.append(self._closing[task])
            task.cancel()
        if writing:
            await asyncio.wait(writing)
        for segment in dropped:
            await self._abort(segment)  # parts of a streamed object: never completed
        self._errors = [(partition, error) for partition, error in self._errors if partition not in gone]
        if not self._errors:
            self._failed.clear()
        records = sum(s.records + s.pending_records for s in dropped)
        if records:
            log.info(
                "revoked partitions: unwritten s3 segments dropped",
                sink=self.name,
                partitions=sorted(map(str, gone)),
                segments=len(dropped),
                records=records,
            )

    # -- writing objects -------------------------------------------------------------------------
    def _key(self, partition: Partition, obj: OpenObject, last: PositionLike) -> str:
        try:
            return self.keys.key(
                stream=partition.source.split(":", 1)[-1],
                shard=partition.key,
                first_position=obj.first,
                last_position=last,
                partition=obj.partition,
                extension=self.extension,
            )
        except ValueError as exc:
            raise SinkError(f"cannot name the S3 object for {partition}: {exc}") from exc

    async def _write_segment(self, segment: Segment) -> None:
        """Make every object of the segment durable, then acknowledge and dead-letter its records."""
        results = await asyncio.gather(
            *(self._write_object(segment, obj) for obj in segment.objects.values()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._abort(segment)
            raise errors[0]
        for piece in segment.acks:
            self.acknowledge(piece.batch())
        for rejected in segment.rejects:
            await self.reject(rejected)
        log.debug(
            "s3 segment written",
            partition=str(segment.partition),
            objects=len(segment.objects),
            records=segment.records,
            reason=segment.reason,
        )

    async def _write_object(self, segment: Segment, obj: OpenObject) -> None:
        try:
            if obj.records:
                await self._write_records(segment, obj)
            elif obj.upload is not None:
                await obj.upload.abort()
        finally:
            obj.done = True

    async def _write_records(self, segment: Segment, obj: OpenObject) -> None:
        data = obj.writer.finish()
        key = self._key(segment.partition, obj, obj.last)
        if obj.anchor is None:
            self._count(await self._put(key, data), len(data))
            return
        if obj.upload is not None:
            # Streamed under the anchored key: the last part, then complete it.
            if data or not obj.upload.parts:
                await obj.upload.upload_part(data)
                self.stats.parts += 1
            if await obj.upload.complete() is Outcome.WRITTEN:
                await self._mark(key)
                self._count(Outcome.WRITTEN, obj.upload.uploaded)
            elif await self.requests.exists(marker_key(key)):
                self._count(Outcome.EXISTED, 0)
            else:
                raise SinkError(
                    f"s3://{self.options.bucket}/{obj.upload.key} was completed meanwhile by another writer "
                    "with records that may differ; nothing is acknowledged, a restart writes them again",
                    retryable=True,
                )
            return
        if not obj.fallback:
            # Anchored, but the segment closed before streaming began: same key, one PutObject.
            anchored = self._key(segment.partition, obj, obj.anchor)
            if await self._put(anchored, data) is Outcome.WRITTEN:
                await self._mark(key)
                self._count(Outcome.WRITTEN, len(data))
                return
            self.stats.fallbacks += 1
        # The anchored key existed: only an end marker proves an object holds exactly these records.
        if await self.requests.exists(marker_key(key)):
            self._count(Outcome.EXISTED, 0)
        else:
            self._count(await self._put(key, data), len(data))

    async def _put(self, key: str, data: bytes) -> Outcome:
        return await self.requests.put(
            key, data, content_type=self.content_type, content_encoding=self.content_encoding
        )

    async def _mark(self, key: str) -> None:
        await self.requests.put(marker_key(key), b"", content_type="application/octet-stream")
        self.stats.markers += 1

    def _count(self, outcome: Outcome, nbytes: int) -> None:
        if outcome is Outcome.WRITTEN:
            self.stats.objects_written += 1
            self.stats.bytes_written += nbytes
        else:
            self.stats.objects_existing += 1

    async def _abort(self, segment: Segment) -> None:
        for obj in segment.objects.values():
            if obj.upload is not None:
                await obj.upload.abort()
