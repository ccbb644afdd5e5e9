"""``timestream``: Amazon Timestream for LiveAnalytics, with rejected records dead-lettered, not retried.

- Records are mapped by :mod:`.mapping` and checked before sending; what cannot be mapped goes to the
  dead-letter queue with the reason.
- WriteRecords takes at most 100 records; what all records of a request share is sent once in
  CommonAttributes.
- RejectedRecordsException names the rejected records (RecordIndex, Reason, ExistingVersion): they go to
  the dead-letter queue and are not retried (the service would reject them again); the other records of
  the call were written and are acknowledged.
- ThrottlingException, InternalServerException, 5xx and connection errors retry the request with
  exponential back-off and full jitter (rewriting records Timestream already holds is idempotent).
- A table that does not exist, missing permissions or a ValidationException for the whole call stop the
  pipeline (SinkError): the records are not acknowledged and are replayed after a restart.
- With ``aws.endpoints.timestream-write`` the client uses that endpoint and skips endpoint discovery
  (without it, the SDK discovers the cell endpoint as Timestream requires).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import structlog

from streamkit.batch import RecordBatch
from streamkit.config import PositiveInt
from streamkit.connectors.aws_clients import (
    SDK_ERRORS,
    AwsClient,
    ClientOptions,
    describe_error,
    error_code,
    is_access_error,
    is_transient,
)
from streamkit.connectors.timestream.mapping import (
    MAX_REQUEST_RECORDS,
    DimensionOptions,
    MeasureOptions,
    RecordMapping,
    TimeOptions,
    hoist,
)
from streamkit.errors import ConfigError, SinkError
from streamkit.plugin_env import PluginEnv
from streamkit.retry import RetryBudget, retry
from streamkit.sink import BufferedSink, BufferOptions, Rejection

log = structlog.get_logger("streamkit.connectors.timestream")

SERVICE = "timestream-write"
_STOP_CODES = frozenset({"ResourceNotFoundException", "ValidationException", "ConflictException"})


class TimestreamOptions(BufferOptions, kw_only=True, forbid_unknown_fields=True):
    database: str
    table: str
    measures: list[str | MeasureOptions]
    dimensions: list[str | DimensionOptions] = []
    time: TimeOptions = TimeOptions()
    measure_name: str | None = None
    """Name of the multi-measure record (MeasureValueType MULTI); optional with a single measure."""
    version: Literal["none", "position"] = "none"
    max_records: PositiveInt = MAX_REQUEST_RECORDS
    """Records buffered before a write; a write sends them in requests of at most the service's limit."""
    client: ClientOptions = ClientOptions()


class TimestreamSink(BufferedSink):
    """Writes records to a Timestream table with WriteRecords."""

    Options = TimestreamOptions

    def __init__(self, options: TimestreamOptions, env: PluginEnv) -> None:
        super().__init__(options)
        self.where = env.where or "sink"
        if options.max_records < 1:
            raise ConfigError(f"{self.where}.max_records", f"expected at least 1, got {options.max_records}")
        self.options = options
        self.mapping = RecordMapping(
            time=options.time,
            dimensions=options.dimensions,
            measures=options.measures,
            measure_name=options.measure_name,
            version=options.version,
            where=self.where,
        )
        # The mapping reads these fields and nothing else of a record: the chain planner may decode just them
        # in its fused pass and hand them over as the values (streamkit.sink_views).
        self.value_fields = self.mapping.fields
        self.retry = options.retry
        self.aws = AwsClient(env.aws, SERVICE, options.client)
        self.requests = 0
        self.records_written = 0
        self.retries = 0

    @property
    def target(self) -> str:
        return f"Timestream table {self.options.database}.{self.options.table} at {self.aws.endpoint}"

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        client = await self.aws.start()
        try:
            described = await client.describe_table(DatabaseName=self.options.database, TableName=self.options.table)
        except BaseException as exc:
            if isinstance(exc, SDK_ERRORS) and error_code(exc) in ("AccessDenied", "AccessDeniedException"):
                # A write-only role (timestream:WriteRecords) is legitimate: the first write will tell.
                log.warning("cannot check the timestream table at start-up (DescribeTable denied)", table=self.target)
                return
            await self.aws.close()
            if not isinstance(exc, SDK_ERRORS):
                raise
            if error_code(exc) == "ResourceNotFoundException":
                problem = f"{self.target} not found ({describe_error(exc)})"
            elif is_access_error(exc):
                problem = f"not allowed to use {self.target}: {describe_error(exc)}"
            else:
                problem = f"cannot reach {self.target}: {describe_error(exc)}"
            raise ConfigError(f"{self.where}.table", problem) from None
        table = described.get("Table", {})
        retention = table.get("RetentionProperties", {}).get("MemoryStoreRetentionPeriodInHours")
        magnetic = table.get("MagneticStoreWriteProperties", {}).get("EnableMagneticStoreWrites", False)
        # Records older than the memory store retention are rejected unless magnetic writes are on: say so
        # once at start-up rather than leave users to puzzle over dead-lettered records.
        log.info(
            "timestream sink ready",
            sink=self.name,
            table=f"{self.options.database}.{self.options.table}",
            endpoint=self.aws.endpoint,
            memory_retention_h=retention,
            magnetic_store_writes=magnetic,
        )

    async def close(self) -> None:
        await self.aws.close()

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, batches: Sequence[RecordBatch]) -> list[Rejection]:
        rejections: list[Rejection] = []
        entries: list[dict[str, Any]] = []
        indices: list[int] = []
        offset = 0
        for batch in batches:
            records, failures = self.mapping.map_batch(batch)
            rejections.extend(Rejection(offset + i, reason, attempts=0) for i, reason in failures)
            for i, record in enumerate(records):
                if record is not None:
                    entries.append(record)
                    indices.append(offset + i)
            offset += len(batch)
        for start in range(0, len(entries), MAX_REQUEST_RECORDS):
            end = start + MAX_REQUEST_RECORDS
            rejections.extend(await self._write_request(entries[start:end], indices[start:end]))
        return rejections

    async def _write_request(self, records: list[dict[str, Any]], indices: list[int]) -> list[Rejection]:
        common, slim = hoist(records)
        request: dict[str, Any] = {
            "DatabaseName": self.options.database,
            "TableName": self.options.table,
            "Records": slim,
        }
        if common:
            request["CommonAttributes"] = common
        client = self.aws.client
        attempts = 0
        budget = self.retry.budget()

        async def write() -> None:
            nonlocal attempts
            attempts += 1
            self.requests += 1
            await client.write_records(**request)

        def on_retry(exc: BaseException, attempt: int) -> None:
            self.retries += 1
            log.info("timestream write failed, retrying", error=describe_error(exc), attempt=attempt)

        try:
            await retry(write, is_transient, self.retry, on_retry, budget=budget)
        except SDK_ERRORS as exc:
            if error_code(exc) == "RejectedRecordsException":
                return self._rejected(exc, indices, attempts)
            raise self._give_up(exc, attempts, budget) from exc
        self.records_written += len(records)
        return []

    def _rejected(self, exc: BaseException, indices: list[int], attempt: int) -> list[Rejection]:
        """The records Timestream refused; the rest of the call was written."""
        response: dict[str, Any] = getattr(exc, "response", {})
        details = response.get("RejectedRecords") or []
        if not details:
            raise SinkError(f"{self.target}: RejectedRecordsException without RejectedRecords; cannot tell which")
        out: list[Rejection] = []
        for item in details:
            index = item.get("RecordIndex")
            if not isinstance(index, int) or not 0 <= index < len(indices):
                raise SinkError(
                    f"{self.target}: rejected RecordIndex {index!r} outside a {len(indices)}-record request"
                )
            reason = f"Timestream rejected the record: {item.get('Reason') or 'no reason given'}"
            existing = item.get("ExistingVersion")
            if existing is not None:
                reason += f" (existing version {existing})"
            out.append(Rejection(indices[index], reason, attempt))
        self.records_written += len(indices) - len({r.index for r in out})
        log.warning("timestream rejected records", table=self.options.table, rejected=len(out), total=len(indices))
        return out

    def _give_up(self, exc: BaseException, attempt: int, budget: RetryBudget) -> SinkError:
        """The error that stops the sink after ``exc`` ended the write's retries."""
        code = error_code(exc)
        if is_access_error(exc) or code in _STOP_CODES:
            return SinkError(f"{self.target}: {describe_error(exc)}; stopping without acknowledging")
        if not is_transient(exc):
            return SinkError(f"{self.target}: unexpected {describe_error(exc)}; stopping")
        return SinkError(
            f"{self.target}: still {describe_error(exc)} {budget.describe(attempt)}; a restart replays the records",
            retryable=True,
        )
