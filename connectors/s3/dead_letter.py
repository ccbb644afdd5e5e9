"""``s3`` dead-letter store: the standard entries (streamkit.deadletter) as NDJSON objects on S3.

Objects land under ``{prefix}dt=YYYY-MM-DD/`` (the UTC day of the write, a Hive partition Athena can
prune on), one object per write, optionally gzip-compressed:

    dead-letter/dt=2026-11-26/clicks-3f9c0e21d4a7b658-500.ndjson.gz

Each line is one entry: pipeline, source, partition, position, key, stage, reason, attempts, failed_at,
payload_base64 and payload_text. ``zcat | jq``, DuckDB ``read_json_auto`` and Athena's JSON SerDe read
them as they are.

The name is a digest of the pipeline and of where every record came from (source, partition, position)
and why it failed (stage, reason), plus the number of entries. A replay that dead-letters the same
records on the same day therefore writes the same key, and ``If-None-Match: *`` turns the second write
into a 412, which counts as written: no duplicate entries. (A replay on another day writes them again
under that day.) Records are acknowledged only once their object is durable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Annotated, Literal

import msgspec
import structlog
from isal import igzip

from streamkit.config import PositiveInt, PositiveSeconds, Size
from streamkit.connectors.aws_clients import SDK_ERRORS, AwsClient, ClientOptions, describe_error, error_code
from streamkit.connectors.s3.upload import ACCOUNT_ID, Outcome, S3Requests, SseOptions, owner_refused
from streamkit.deadletter import DeadLetterQueue, encode_entries
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.processor import Failure
from streamkit.sink import BufferOptions

__all__ = ["S3DeadLetter", "S3DeadLetterOptions", "dead_letter_key"]

log = structlog.get_logger("streamkit.connectors.s3")


class S3DeadLetterOptions(BufferOptions, kw_only=True, forbid_unknown_fields=True):
    bucket: str
    expected_bucket_owner: Annotated[str, msgspec.Meta(pattern=ACCOUNT_ID)] | None = None
    """The bucket owner's 12-digit account id, sent as ExpectedBucketOwner on every S3 call."""
    prefix: str = "dead-letter/"
    compression: Literal["gzip", "none"] = "gzip"
    max_records: PositiveInt = 10_000
    max_bytes: Size = Size(16 * 1024**2)
    max_age_s: PositiveSeconds = 5.0
    sse: SseOptions | None = None
    client: ClientOptions = ClientOptions()


def dead_letter_key(prefix: str, pipeline: str, failures: list[Failure], *, day: dt.date, extension: str) -> str:
    """The object key of one write: deterministic in the failed records, the reasons and the day."""
    digest = hashlib.sha256(pipeline.encode())
    count = 0
    for failure in failures:
        batch = failure.batch
        head = f"\0{batch.partition.source}\0{batch.partition.key}\0{failure.stage}\0{failure.reason}\0"
        digest.update(head.encode())
        for i in range(len(batch)):
            digest.update(f"{batch.position(i)}\n".encode())
        count += len(batch)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in pipeline) or "pipeline"
    return f"{prefix}dt={day.isoformat()}/{name}-{digest.hexdigest()[:16]}-{count}{extension}"


class S3DeadLetter(DeadLetterQueue):
    """Writes dead-letter entries to S3 (see the module docstring)."""

    Options = S3DeadLetterOptions

    def __init__(self, options: S3DeadLetterOptions, env: PluginEnv) -> None:
        super().__init__(options)
        where = env.where or "dead_letter"
        prefix = options.prefix
        if prefix.startswith("/") or "//" in prefix or (prefix and not prefix.endswith("/")):
            raise ConfigError(f"{where}.prefix", f"{prefix!r} must be empty or end with '/', without a leading '/'")
        if not options.bucket:
            raise ConfigError(f"{where}.bucket", "expected a bucket name")
        self.options = options
        self.where = where
        self.gzip = options.compression == "gzip"
        self.aws = AwsClient(env.aws, "s3", options.client)
        self.requests = S3Requests(
            self.aws, options.bucket, retry=options.retry, sse=options.sse, expected_owner=options.expected_bucket_owner
        )
        self.objects_written = 0
        self.objects_existing = 0

    async def start(self) -> None:
        client = await self.aws.start()
        bucket = self.options.bucket
        try:
            await client.head_bucket(Bucket=bucket)
        except SDK_ERRORS as exc:
            code = error_code(exc)
            owner = self.options.expected_bucket_owner
            if code in ("403", "AccessDenied") and owner:
                await self.aws.close()
                raise ConfigError(f"{self.where}.bucket", owner_refused(bucket, owner)) from None
            if code in ("403", "AccessDenied"):
                return  # HeadBucket needs s3:ListBucket; writes will tell whether the bucket works
            await self.aws.close()
            problem = "not found" if code in ("404", "NoSuchBucket") else f"unreachable: {describe_error(exc)}"
            raise ConfigError(f"{self.where}.bucket", f"bucket {bucket!r} {problem} at {self.aws.endpoint}") from None

    async def close(self) -> None:
        await self.aws.close()

    async def write_entries(self, failures: list[Failure]) -> None:
        data = encode_entries(failures, self.pipeline)
        if not data:
            return
        extension = ".ndjson"
        encoding = None
        if self.gzip:
            data = igzip.compress(data, compresslevel=1)
            extension, encoding = ".ndjson.gz", "gzip"
        day = dt.datetime.now(dt.UTC).date()
        key = dead_letter_key(self.options.prefix, self.pipeline, failures, day=day, extension=extension)
        try:
            outcome = await self.requests.put(key, data, content_type="application/x-ndjson", content_encoding=encoding)
        except SinkError as exc:
            raise SinkError(f"dead-letter queue: {exc}", retryable=exc.retryable) from exc
        if outcome is Outcome.WRITTEN:
            self.objects_written += 1
        else:
            self.objects_existing += 1
        log.info(
            "dead-letter entries written",
            key=key,
            records=sum(len(f.batch) for f in failures),
            existed=outcome is Outcome.EXISTED,
        )
