"""``firehose``: Amazon Data Firehose with per-record results, for a stream that accepts direct PUTs.

What it guarantees:

- Requests stay within 500 records and 4 MiB (delimiters counted); a record over 1,024,000 bytes goes to
  the dead-letter queue before anything is sent.
- Every response is read record by record. ``FailedPutCount`` > 0 means some entries of a 200 answer
  failed: only those are sent again, after an exponential back-off with full jitter. Entries with a
  permanent error code go to the dead-letter queue with the code and message.
- A call that fails as a whole is retried when it is throttling or a service fault; a stream that does
  not exist or cannot be written with these credentials stops the pipeline (SinkError) instead of
  dead-lettering everything; an ``InvalidArgumentException`` for the whole call is narrowed down by
  halving the request until the offending record is alone, and only that record is dead-lettered (if
  every record of the request is refused on its own, the request is at fault: SinkError again).
- Retries that run out raise SinkError: nothing of the request is acknowledged, so the records are
  replayed after a restart, never dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import structlog

from streamkit.batch import RecordBatch, chunk_bounds
from streamkit.config import PositiveInt, Size
from streamkit.connectors.aws_clients import (
    SDK_ERRORS,
    AwsClient,
    ClientOptions,
    describe_error,
    error_code,
    error_message,
    is_access_error,
    is_transient,
)
from streamkit.connectors.firehose.records import (
    MAX_RECORD_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_RECORDS,
    RecordEncoder,
    oversize_reason,
)
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.retry import RetryBudget, RetryPolicy
from streamkit.sink import BufferedSink, BufferOptions, Rejection

log = structlog.get_logger("streamkit.connectors.firehose")

# Per-record error codes Firehose documents as transient; anything else in RequestResponses is final.
_RECORD_RETRYABLE = frozenset({"ServiceUnavailableException", "ServiceUnavailable", "InternalFailure"})
# Whole-call errors that say the stream or the account setup is wrong: stop, do not dead-letter.
_CALL_CONFIG_ERRORS = frozenset({"ResourceNotFoundException", "ResourceInUseException", "InvalidKMSResourceException"})
_INVALID_ARGUMENT = "Firehose InvalidArgumentException"
# Authorization (not authentication) refusals of the start-up check: the role may only be allowed to write.
_NOT_AUTHORIZED = frozenset({"AccessDenied", "AccessDeniedException"})
# Stream types fed by a Kinesis stream or MSK refuse PutRecordBatch.
_DIRECT_PUT = "DirectPut"


class FirehoseOptions(BufferOptions, kw_only=True, forbid_unknown_fields=True):
    stream: str
    """The delivery stream name (a DirectPut stream)."""
    max_records: PositiveInt = MAX_REQUEST_RECORDS
    """Records buffered before a write; a write sends them in requests of at most the service's limit."""
    max_bytes: Size = Size(MAX_REQUEST_BYTES)
    newline: bool = True
    """Append ``\\n`` to every record: Firehose concatenates records, so NDJSON needs the delimiter."""
    record_id_field: str | None = None
    """Add this field (e.g. ``_sk_id``) to JSON objects: ``source/partition/position`` for deduplication."""
    client: ClientOptions = ClientOptions()


class FirehoseSink(BufferedSink):
    """Writes records to a Firehose delivery stream with PutRecordBatch."""

    Options = FirehoseOptions

    def __init__(self, options: FirehoseOptions, env: PluginEnv) -> None:
        super().__init__(options)
        if options.max_records < 1:
            raise ConfigError(f"{env.where}.max_records", f"expected at least 1, got {options.max_records}")
        if options.record_id_field == "":
            raise ConfigError(f"{env.where}.record_id_field", "expected a field name, got an empty string")
        self.options = options
        self.where = env.where or "sink"
        self.stream = options.stream
        self.retry: RetryPolicy = options.retry
        self.encoder = RecordEncoder(newline=options.newline, id_field=options.record_id_field)
        # Only the record id field reads values; otherwise the sink sends payload bytes as they are.
        self.keeps_values = options.record_id_field is not None
        self.aws = AwsClient(env.aws, "firehose", options.client)
        # Counters for logs and tests: what was sent, and how much of it had to be sent again.
        self.requests = 0
        self.records_sent = 0
        self.records_resent = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        client = await self.aws.start()
        try:
            described = await client.describe_delivery_stream(DeliveryStreamName=self.stream)
        except BaseException as exc:
            if isinstance(exc, SDK_ERRORS) and error_code(exc) in _NOT_AUTHORIZED:
                # Write-only roles (firehose:PutRecordBatch alone) are common: the first write will tell.
                log.warning(
                    "cannot check the firehose stream at start-up (firehose:DescribeDeliveryStream denied)",
                    stream=self.stream,
                    endpoint=self.aws.endpoint,
                )
                return
            await self.aws.close()
            if isinstance(exc, SDK_ERRORS):
                raise ConfigError(f"{self.where}.stream", self._start_problem(exc)) from None
            raise
        description = described.get("DeliveryStreamDescription", {})
        kind = description.get("DeliveryStreamType", _DIRECT_PUT)
        if kind != _DIRECT_PUT:
            await self.aws.close()
            raise ConfigError(
                f"{self.where}.stream",
                f"Firehose delivery stream {self.stream!r} at {self.aws.endpoint} reads from {kind}, "
                "so it does not accept PutRecordBatch: use a DirectPut stream",
            )
        status = description.get("DeliveryStreamStatus")
        if status not in (None, "ACTIVE"):
            log.warning("firehose stream is not ACTIVE yet; writes may fail", stream=self.stream, status=status)
        log.info("firehose sink ready", sink=self.name, stream=self.stream, endpoint=self.aws.endpoint)

    def _start_problem(self, exc: BaseException) -> str:
        where = f"at {self.aws.endpoint} (region {self.aws.region or 'from the AWS environment'})"
        if error_code(exc) == "ResourceNotFoundException":
            return f"Firehose delivery stream {self.stream!r} not found {where}"
        if is_access_error(exc):
            return f"cannot use Firehose delivery stream {self.stream!r} {where}: {describe_error(exc)}"
        return f"cannot reach Firehose delivery stream {self.stream!r} {where}: {describe_error(exc)}"

    async def close(self) -> None:
        await self.aws.close()

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        data, sizes = self.encoder.encode(batches)
        overhead = self.encoder.overhead
        oversize = sizes + overhead > MAX_RECORD_BYTES
        rejections = [
            Rejection(int(i), oversize_reason(int(sizes[i]), overhead), attempts=0) for i in np.flatnonzero(oversize)
        ]
        sendable = np.flatnonzero(~oversize)
        for start, end in chunk_bounds(sizes[sendable], MAX_REQUEST_RECORDS, MAX_REQUEST_BYTES, overhead):
            rejections.extend(await self._put(sendable[start:end].tolist(), data))
        return rejections

    async def _put(self, indices: list[int], data: list[bytes], *, half: bool = False) -> list[Rejection]:
        """Send records ``indices`` until each is confirmed or rejected for good; return the rejected."""
        client = self.aws.client
        pending = indices
        rejected: list[Rejection] = []
        attempt = 0
        budget = self.retry.budget()
        while pending:
            attempt += 1
            self.requests += 1
            self.records_sent += len(pending)
            if attempt > 1:
                self.records_resent += len(pending)
            try:
                response = await client.put_record_batch(
                    DeliveryStreamName=self.stream, Records=[{"Data": data[i]} for i in pending]
                )
            except SDK_ERRORS as exc:
                outcome = self._call_failed(exc, pending, attempt, budget)
                if isinstance(outcome, Rejection):
                    return [*rejected, outcome]
                if outcome == "split":
                    return [*rejected, *await self._bisect(pending, data, top=not half)]
                await asyncio.sleep(budget.delay(attempt))
                continue
            pending = self._read_results(response, pending, rejected, attempt)
            if pending:
                if budget.exhausted(attempt):
                    raise SinkError(
                        f"Firehose stream {self.stream!r}: {len(pending)} record(s) still failing "
                        f"{budget.describe(attempt)}; nothing of them is acknowledged, a restart replays them",
                        retryable=True,
                    )
                log.info(
                    "firehose records failed, resending only those",
                    stream=self.stream,
                    failed=len(pending),
                    attempt=attempt,
                )
                await asyncio.sleep(budget.delay(attempt))
        return rejected

    async def _bisect(self, pending: list[int], data: list[bytes], *, top: bool) -> list[Rejection]:
        """Nothing of the refused call was written: halve it until the bad record(s) stand alone."""
        middle = len(pending) // 2
        rejected = await self._put(pending[:middle], data, half=True)
        rejected += await self._put(pending[middle:], data, half=True)
        if top and len(rejected) == len(pending) and all(r.reason.startswith(_INVALID_ARGUMENT) for r in rejected):
            # Every record refused on its own: the request, not the data, is wrong. Stop rather than
            # dead-letter a whole stream's worth of good records.
            raise SinkError(
                f"Firehose stream {self.stream!r} at {self.aws.endpoint} refused each of {len(pending)} records "
                f"with {rejected[0].reason}; stopping"
            )
        return rejected

    def _call_failed(
        self, exc: BaseException, pending: list[int], attempt: int, budget: RetryBudget
    ) -> Rejection | Literal["retry", "split"]:
        """Classify an error of the whole call: ``"retry"``, ``"split"``, a Rejection, or raise SinkError."""
        code = error_code(exc)
        what = f"Firehose stream {self.stream!r} at {self.aws.endpoint}"
        if is_access_error(exc) or code in _CALL_CONFIG_ERRORS:
            raise SinkError(f"{what}: {describe_error(exc)}; stopping (check the stream and the credentials)")
        if code == "InvalidArgumentException":
            if len(pending) == 1:
                return Rejection(pending[0], f"{_INVALID_ARGUMENT}: {error_message(exc)}", attempt)
            return "split"
        if not is_transient(exc):
            raise SinkError(f"{what}: unexpected {describe_error(exc)}; stopping without acknowledging")
        if budget.exhausted(attempt):
            raise SinkError(f"{what}: still {describe_error(exc)} {budget.describe(attempt)}", retryable=True)
        log.info("firehose call failed, retrying", stream=self.stream, error=describe_error(exc), attempt=attempt)
        return "retry"

    def _read_results(
        self, response: dict[str, Any], pending: list[int], rejected: list[Rejection], attempt: int
    ) -> list[int]:
        """The entries of ``pending`` to send again; permanent failures are appended to ``rejected``."""
        results = response.get("RequestResponses") or []
        if len(results) != len(pending):
            # Without index-aligned results nobody can tell which records were written.
            raise SinkError(
                f"Firehose stream {self.stream!r} answered {len(results)} result(s) for {len(pending)} record(s)"
            )
        failed_count = int(response.get("FailedPutCount") or 0)
        if failed_count == 0 and not any("ErrorCode" in r for r in results):
            return []
        retry: list[int] = []
        errors = 0
        for index, result in zip(pending, results, strict=True):
            code = result.get("ErrorCode")
            if not code:
                continue
            errors += 1
            if code in _RECORD_RETRYABLE:
                retry.append(index)
            else:
                message = result.get("ErrorMessage")
                reason = f"Firehose {code}: {message}" if message else f"Firehose {code}"
                rejected.append(Rejection(index, reason, attempt))
        if errors != failed_count:
            log.warning("FailedPutCount disagrees with the per-record results", reported=failed_count, found=errors)
        return retry
