"""S3 requests of the sink and the dead-letter queue: conditional creates, multipart uploads, retries.

Every object is created with ``If-None-Match: *`` (PutObject and CompleteMultipartUpload), so a write
never replaces an object: the answer is either "written" or "it already exists" (412). What a 412 proves
depends on the key; the callers decide (see docs/sinks-s3.md).

Errors are classified once, here:

- 412 PreconditionFailed: :class:`Outcome.EXISTED` (or ``True`` for :meth:`S3Requests.exists`).
- 409 ConditionalRequestConflict: a concurrent write of the same key. A PutObject is sent again (we still
  hold the bytes); a CompleteMultipartUpload cannot be repeated without re-uploading, so it raises.
- throttling (503 SlowDown), 5xx, timeouts and dropped connections: retried with exponential back-off and
  full jitter (``RetryPolicy``); each retry is reported through ``on_retry(throttled)``.
- everything else (AccessDenied, NoSuchBucket, InvalidRequest, KMS errors): :class:`SinkError`, nothing
  acknowledged; the pipeline stops and a restart replays the records.

Only ``s3:PutObject`` and ``s3:AbortMultipartUpload`` are needed (plus KMS for SSE-KMS). Existence checks
use a PutObject with ``If-Match`` on an ETag no object has: S3 answers 412 when the key exists and 404
when it does not, and never writes.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
import structlog

from streamkit.connectors.aws_clients import (
    SDK_ERRORS,
    AwsClient,
    describe_error,
    error_code,
    is_access_error,
    is_throttling,
    is_transient,
)
from streamkit.errors import SinkError
from streamkit.retry import RetryPolicy, retry

__all__ = [
    "ACCOUNT_ID",
    "MAX_PART_SIZE",
    "MultipartUpload",
    "Outcome",
    "S3Requests",
    "SseOptions",
    "owner_refused",
    "send_expected_owner",
]

log = structlog.get_logger("streamkit.connectors.s3")

T = TypeVar("T")

MAX_PART_SIZE: Final = 5 * 1024**3
_MAX_PARTS: Final = 10_000
# An ETag no object can have (ETags are hex digests): If-Match on it turns a PutObject into a pure
# existence check.
_NO_ETAG: Final = '"streamkit-existence-probe"'
# Answers to an existence check that mean "no such key" (403: see S3Requests.exists).
_ABSENT_CODES: Final = frozenset({"NoSuchKey", "404", "AccessDenied", "403"})


ACCOUNT_ID: Final = r"^[0-9]{12}$"
"""What ``expected_bucket_owner`` takes: a 12-digit AWS account id."""


def send_expected_owner(aws: AwsClient, account_id: str) -> None:
    """Send ``ExpectedBucketOwner`` on every S3 call of ``aws`` that takes it (all object and bucket calls
    streamkit makes), as AWS advises for buckets named in configuration: S3 refuses (403) when the bucket
    belongs to another account, so a mistyped or re-created bucket of someone else never gets the data.
    A client-level hook rather than a parameter per call, so a new call cannot forget it."""

    def add_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
        if "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", account_id)

    aws.register("provide-client-params.s3", add_owner)


def owner_refused(bucket: str, account_id: str) -> str:
    return (
        f"bucket {bucket!r} refused access (403) with expected_bucket_owner {account_id}: the bucket belongs to "
        "another account, or the role may not s3:ListBucket it (needed to check the owner at start-up)"
    )


class SseOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Server-side encryption with KMS (``sse:`` in a sink or dead-letter section)."""

    kms_key_id: str | None = None
    """Key id, ARN or alias; unset means the account's AWS-managed key for S3 (aws/s3)."""
    bucket_key: bool | None = None
    """S3 Bucket Keys: fewer KMS calls (and KMS costs) for many small objects."""

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"ServerSideEncryption": "aws:kms"}
        if self.kms_key_id:
            params["SSEKMSKeyId"] = self.kms_key_id
        if self.bucket_key is not None:
            params["BucketKeyEnabled"] = self.bucket_key
        return params


class Outcome(enum.Enum):
    WRITTEN = "written"
    EXISTED = "existed"
    """412: an object with this key was there already; nothing was written."""


class _Existed(Exception):
    """412: the key exists."""


class _Conflict(Exception):
    """409: a concurrent write of the same key."""


class _Missing(Exception):
    """An existence check found no object."""


# Error codes that are answers to a conditional request rather than failures.
_ANSWERS: Final[dict[str, type[Exception]]] = {"PreconditionFailed": _Existed, "ConditionalRequestConflict": _Conflict}


class S3Requests:
    """The S3 calls of one bucket, with retries, bounded concurrency and SSE parameters."""

    def __init__(
        self,
        aws: AwsClient,
        bucket: str,
        *,
        retry: RetryPolicy,
        sse: SseOptions | None = None,
        max_concurrent: int = 8,
        on_retry: Callable[[bool], None] | None = None,
        on_write: Callable[[float, bool], None] | None = None,
        expected_owner: str | None = None,
    ) -> None:
        self.aws = aws
        self.bucket = bucket
        self.expected_owner = expected_owner
        if expected_owner:
            send_expected_owner(aws, expected_owner)
        self.retry = retry
        self.sse = sse.params() if sse is not None else {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self._on_retry = on_retry
        self._on_write = on_write
        # Counters for logs and tests.
        self.requests = 0
        self.retries = 0
        self.throttled = 0
        self.conflicts = 0

    # -- objects ---------------------------------------------------------------------------------
    async def put(self, key: str, body: bytes, *, content_type: str, content_encoding: str | None = None) -> Outcome:
        """Create ``key`` unless it exists. A 409 (concurrent write) sends it again: we hold the bytes."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "IfNoneMatch": "*",
            "ContentType": content_type,
            **self.sse,
        }
        if content_encoding:
            params["ContentEncoding"] = content_encoding
        return await self._create(f"PutObject {key}", lambda: self.aws.client.put_object(**params), repeatable=True)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists, with PutObject rights only: ``If-Match`` on an impossible ETag.

        412 means the key exists. 404 means it does not. A 403 is read as "absent" too: S3 may hide a
        missing key behind 403 from a caller without s3:ListBucket, and a real lack of rights shows up
        at the write that follows.
        """
        params = {"Bucket": self.bucket, "Key": key, "Body": b"", "IfMatch": _NO_ETAG, **self.sse}
        try:
            await self._call(f"existence check {key}", lambda: self.aws.client.put_object(**params), probe=True)
        except _Existed:
            return True
        except _Missing:
            return False
        # S3 never writes when If-Match fails; an object whose ETag matched ours cannot exist.
        raise SinkError(f"s3://{self.bucket}/{key}: the existence check wrote an object; stopping")

    async def create_upload(self, key: str, *, content_type: str, content_encoding: str | None) -> MultipartUpload:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type, **self.sse}
        if content_encoding:
            params["ContentEncoding"] = content_encoding
        answer = await self._call(
            f"CreateMultipartUpload {key}", lambda: self.aws.client.create_multipart_upload(**params)
        )
        return MultipartUpload(self, key, str(answer["UploadId"]))

    # -- the retry loop --------------------------------------------------------------------------
    async def _create(self, what: str, operation: Callable[[], Awaitable[Any]], *, repeatable: bool) -> Outcome:
        while True:
            try:
                await self._call(what, operation)
            except _Existed:
                return Outcome.EXISTED
            except _Conflict:
                self.conflicts += 1
                if not repeatable:
                    raise SinkError(
                        f"s3://{self.bucket}: {what}: a concurrent write of the same key (409); nothing of it "
                        "is acknowledged, a restart writes it again",
                        retryable=True,
                    ) from None
                log.info("s3 conditional write conflict, writing again", what=what)
                await asyncio.sleep(self.retry.delay(1))
                continue
            return Outcome.WRITTEN

    async def _call(self, what: str, operation: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        """One request until it is answered: retried while transient; 412, 409 and (for existence checks)
        404 are answers, raised as the private exceptions above; anything else is a SinkError."""
        attempts = 0
        began = time.perf_counter()  # the write's latency includes its retries
        budget = self.retry.budget()

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            async with self._slots:  # a slot per attempt: a request waiting out its back-off holds none
                self.requests += 1
                return await operation()

        def on_retry(failure: BaseException, attempt: int) -> None:
            throttled = is_throttling(failure)
            self.retries += 1
            self.throttled += throttled
            if self._on_retry is not None:
                self._on_retry(throttled)
            log.info("s3 request failed, retrying", what=what, error=describe_error(failure), attempt=attempt)

        try:
            result = await retry(attempt, is_transient, self.retry, on_retry, budget=budget)
        except SDK_ERRORS as failure:
            code = error_code(failure)
            answer = _ANSWERS.get(code or "")
            if answer is None and probe and code in _ABSENT_CODES:
                answer = _Missing
            self._observe(began, failed=answer is None)
            if answer is not None:
                raise answer from None
            if not is_transient(failure):
                problem = f"{describe_error(failure)}{self._owner_hint(failure)}"
                raise SinkError(
                    f"s3://{self.bucket}: {what} failed: {problem}; stopping without "
                    "acknowledging (check the bucket, its policy and the credentials)"
                ) from failure
            raise SinkError(
                f"s3://{self.bucket}: {what} still failing {budget.describe(attempts)}: {describe_error(failure)}",
                retryable=True,
            ) from failure
        self._observe(began, failed=False)
        return result

    def _owner_hint(self, failure: BaseException) -> str:
        if self.expected_owner and is_access_error(failure):
            return (
                f" (S3 refuses every call when the bucket is not owned by expected_bucket_owner {self.expected_owner})"
            )
        return ""

    def _observe(self, began: float, *, failed: bool) -> None:
        if self._on_write is not None:
            self._on_write(time.perf_counter() - began, failed)


class MultipartUpload:
    """One multipart upload: parts in order, completed with ``If-None-Match: *``."""

    def __init__(self, requests: S3Requests, key: str, upload_id: str) -> None:
        self.requests = requests
        self.key = key
        self.upload_id = upload_id
        self.parts: list[dict[str, Any]] = []
        self.uploaded = 0
        self.closed = False

    async def upload_part(self, body: bytes) -> None:
        number = len(self.parts) + 1
        if number > _MAX_PARTS:
            raise SinkError(f"s3 object {self.key} needs more than {_MAX_PARTS} parts: raise part_size")
        if len(body) > MAX_PART_SIZE:
            raise SinkError(f"a part of s3 object {self.key} is over 5 GiB: lower multipart_threshold")
        requests = self.requests
        answer = await requests._call(
            f"UploadPart {number} of {self.key}",
            lambda: requests.aws.client.upload_part(
                Bucket=requests.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
            ),
        )
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"):
            if answer.get(name):
                part[name] = answer[name]
        self.parts.append(part)
        self.uploaded += len(body)

    async def complete(self) -> Outcome:
        """Complete the upload unless the key exists (412: the parts are then discarded)."""
        requests = self.requests
        outcome = await requests._create(
            f"CompleteMultipartUpload {self.key}",
            lambda: requests.aws.client.complete_multipart_upload(
                Bucket=requests.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                IfNoneMatch="*",
                MultipartUpload={"Parts": self.parts},
            ),
            repeatable=False,
        )
        if outcome is Outcome.EXISTED:
            await self.abort()
        self.closed = True
        return outcome

    async def abort(self) -> None:
        """Drop the parts (best effort: a bucket lifecycle rule for incomplete uploads is the backstop)."""
        if self.closed:
            return
        self.closed = True
        requests = self.requests
        try:
            await requests.aws.client.abort_multipart_upload(
                Bucket=requests.bucket, Key=self.key, UploadId=self.upload_id
            )
        except Exception as exc:  # best effort on the way out: never mask the error that led here
            log.warning("could not abort a multipart upload", key=self.key, error=describe_error(exc))
