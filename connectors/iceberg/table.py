"""The synchronous side of the iceberg sink: one table, its ledger of committed positions, and commits.

pyiceberg is synchronous (catalog calls, Parquet writes, S3 uploads): every method here runs on the sink's
dedicated one-thread executor, never on the event loop, and that thread serializes them. A commit:

1. refreshes the table and its ledger (``positions``), so records another worker (or this one, before a
   crash) already committed are skipped: acknowledged, not written again;
2. turns the rest into Arrow rows of the table schema, evolving the schema first if the records ask for it
   (``schema.py``); records that cannot fit are returned as failures for the dead-letter queue;
3. appends the rows with the new ledger in the snapshot summary: data files first, then one atomic catalog
   commit. A crash before that commit leaves only unreferenced files, named with this scope's tag, which
   the next start-up deletes (``orphans.py``); after it, the ledger says what the table holds. A lost race
   with another writer deletes the attempt's data files, refreshes, skips again and retries.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow as pa
import structlog
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    ForbiddenError,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    ServerError,
    ServiceUnavailableError,
    TableAlreadyExistsError,
    UnauthorizedError,
)
from pyiceberg.io.pyarrow import _dataframe_to_data_files  # what Table.append writes data files with
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    YearTransform,
)
from pyiceberg.types import LongType
from pyiceberg.utils.properties import property_as_bool

from streamkit.batch import RecordBatch
from streamkit.connectors.iceberg import orphans, positions
from streamkit.connectors.iceberg.schema import Converted, Evolution, RecordConverter, configured_schema, infer_columns
from streamkit.connectors.iceberg.settings import IcebergOptions
from streamkit.errors import ConfigError, SinkError
from streamkit.retry import RetryBudget, RetryPolicy

log = structlog.get_logger("streamkit.connectors.iceberg")

# Conflicts and lost answers: another writer committed first, or the commit's fate is unknown. Both are
# safe to retry: the refreshed ledger skips whatever did get committed.
_RACES = (CommitFailedException, CommitStateUnknownException)
_DENIED = (ForbiddenError, UnauthorizedError)
_MAX_EVOLUTIONS = 4
_TRANSFORMS: dict[str, Callable[[], Transform[Any, Any]]] = {
    "identity": IdentityTransform,
    "year": YearTransform,
    "month": MonthTransform,
    "day": DayTransform,
    "hour": HourTransform,
}
_PARTITION = re.compile(r"(\w+)\(\s*(?:(\d+)\s*,\s*)?([\w.]+)\s*\)")


def _transient(exc: BaseException) -> bool:
    """Errors worth another attempt: the network, the object store, a busy catalog database, 5xx."""
    if isinstance(exc, ServerError | ServiceUnavailableError | OSError):
        return True
    module = type(exc).__module__
    # sqlalchemy's OperationalError ("database is locked") and requests' connection errors.
    return module.startswith(("sqlalchemy", "requests", "urllib3")) and not isinstance(exc, ValueError)


def partition_field(spec: str, where: str) -> tuple[str, Transform[Any, Any], str]:
    """``day(ts)`` -> (column, transform, partition field name); a bare column is an identity partition."""
    text = spec.strip()
    if re.fullmatch(r"[\w.]+", text):
        return text, IdentityTransform(), text
    match = _PARTITION.fullmatch(text)
    if not match:
        raise ConfigError(where, f"cannot read {spec!r}: use day(ts), bucket(16, id), truncate(4, name) or a column")
    name, number, column = match.group(1).lower(), match.group(2), match.group(3)
    if name in ("bucket", "truncate"):
        if number is None:
            raise ConfigError(where, f"{name} needs a width: {name}(N, {column})")
        transform: Transform[Any, Any] = (
            BucketTransform(int(number)) if name == "bucket" else TruncateTransform(int(number))
        )
    elif name in _TRANSFORMS and number is None:
        transform = _TRANSFORMS[name]()
    else:
        raise ConfigError(where, f"unknown transform {spec!r}: identity, year, month, day, hour, bucket, truncate")
    return column, transform, f"{column}_{name}"


@dataclass
class Segment:
    """Rows of one batch: ``rows[j]`` is the batch index of row ``j`` of ``data``, in position order."""

    batch: RecordBatch
    rows: list[int]
    data: pa.Table


@dataclass
class Prepared:
    """What the next commit appends, and what it cannot."""

    segments: list[Segment] = field(default_factory=list)
    failures: list[tuple[RecordBatch, dict[int, str]]] = field(default_factory=list)
    skipped: int = 0
    """Records at or below the ledger: already in the table, acknowledged without writing."""
    last: dict[str, str] = field(default_factory=dict)
    """Partition -> position of its last record handed over in this commit."""


class TableWriter:
    """One Iceberg table, opened through its catalog."""

    def __init__(self, options: IcebergOptions, properties: dict[str, str], scope: str, where: str) -> None:
        self.options = options
        self.properties = properties
        self.where = where
        self.identifier = options.table
        self.prop = positions.PROPERTY_PREFIX + scope
        self.tag = orphans.scope_tag(scope)
        self.swept: list[str] = []
        self.retry: RetryPolicy = options.retry
        self.catalog: Catalog | None = None
        self.table: Table | None = None
        self.converter: RecordConverter | None = None
        self.committed: dict[str, str] = {}
        self._ledgers: dict[int, dict[str, str]] = {}
        self.commits = 0
        self.rows_written = 0
        self.conflicts = 0
        self.evolutions: list[str] = []
        for i, spec in enumerate(options.partition_by):
            partition_field(spec, f"{where}.partition_by[{i}]")

    @property
    def target(self) -> str:
        return f"Iceberg table {self.identifier} ({self.options.catalog.type} catalog {self.properties.get('uri')})"

    # -- opening ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect to the catalog and load (or create) the table; ConfigError for what the user must fix."""
        self._make_local_dirs()
        try:
            self.catalog = load_catalog(self.options.catalog.name, **self.properties)
            try:
                self._use(self.catalog.load_table(self.identifier))
            except NoSuchTableError:
                if not self.options.create:
                    raise ConfigError(f"{self.where}.table", f"{self.target} does not exist (create: false)") from None
                if self.options.columns is not None:
                    self._create(configured_schema(self.options.columns))
        except ConfigError:
            raise
        except _DENIED as exc:
            raise ConfigError(f"{self.where}.catalog", f"not allowed to use {self.target}: {exc}") from None
        except Exception as exc:
            problem = f"cannot open {self.target}: {type(exc).__name__}: {exc}"
            raise ConfigError(f"{self.where}.catalog", problem) from None
        if self.table is not None and self.options.columns:
            self._check_configured(self.table.schema())
        if self.table is not None:
            self._sweep(self.table)

    def _sweep(self, table: Table) -> None:
        """Delete the files of this scope's commits that a crash left unreferenced (``orphans.py``). A
        sweep that fails costs storage, not data: it is logged, and the sink starts."""
        try:
            self.swept = orphans.sweep(table, self.tag, self.options.orphan_min_age_s)
        except Exception as exc:
            log.warning("iceberg orphan sweep failed", table=self.identifier, error=f"{type(exc).__name__}: {exc}")

    def _make_local_dirs(self) -> None:
        """A local catalog file's directory and a local warehouse (a laptop run starts from nothing)."""
        uri, warehouse = self.properties.get("uri", ""), self.properties.get("warehouse", "")
        try:
            if uri.startswith("sqlite:///"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if warehouse.startswith("file://"):
                Path(url2pathname(urlsplit(warehouse).path)).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.where}.catalog", f"cannot make the local catalog directories: {exc}") from None

    def _create(self, schema: Schema | pa.Schema) -> None:
        assert self.catalog is not None
        namespace = self.identifier.rsplit(".", 1)[0]
        with contextlib.suppress(NamespaceAlreadyExistsError):
            self.catalog.create_namespace(namespace)
        try:
            with self.catalog.create_table_transaction(
                self.identifier, schema=schema, properties=self.options.table_properties
            ) as txn:
                if self.options.partition_by:
                    with txn.update_spec() as spec:
                        for i, text in enumerate(self.options.partition_by):
                            column, transform, name = partition_field(text, f"{self.where}.partition_by[{i}]")
                            spec.add_field(column, transform, name)
            log.info("iceberg table created", table=self.identifier, partition_by=self.options.partition_by)
        except TableAlreadyExistsError:
            pass  # another worker created it first
        except NoSuchNamespaceError as exc:
            raise SinkError(f"{self.target}: namespace {namespace} vanished while creating the table: {exc}") from exc
        self._use(self.catalog.load_table(self.identifier))

    def _use(self, table: Table) -> None:
        self.table = table
        self.converter = RecordConverter(table.schema(), self.options.new_columns)
        self.committed, snapshot = positions.committed_positions(table, self.prop, self._ledgers)
        log.info(
            "iceberg table ready",
            table=self.identifier,
            ledger=self.prop,
            partitions=len(self.committed),
            ledger_snapshot=snapshot,
        )

    def _check_configured(self, schema: Schema) -> None:
        """Configured columns must agree with an existing table (the table wins; it is never rewritten)."""
        assert self.options.columns is not None
        wanted = configured_schema(self.options.columns)
        for column in wanted.fields:
            try:
                existing = schema.find_field(column.name)
            except ValueError:
                continue  # added with the first records that carry it
            if existing.field_type != column.field_type:
                raise ConfigError(
                    f"{self.where}.columns",
                    f"column {column.name!r} is {existing.field_type} in {self.target}, configured as "
                    f"{column.field_type}; the sink does not change existing column types",
                )

    # -- preparing a commit ----------------------------------------------------------------------
    def prepare(self, batches: Sequence[RecordBatch]) -> Prepared:
        self._refresh()
        if self.table is None:
            self._create_from(batches)
        for _ in range(_MAX_EVOLUTIONS):
            prepared, evolution = self._convert_all(batches)
            if not evolution:
                return prepared
            self._evolve(evolution)
        raise SinkError(f"{self.target}: the schema kept changing over {_MAX_EVOLUTIONS} evolutions; stopping")

    def _refresh(self) -> None:
        if self.table is None:
            assert self.catalog is not None
            try:
                self._use(self.catalog.load_table(self.identifier))
            except NoSuchTableError:
                return
            return
        self._attempt("refresh", self.table.refresh)
        self.committed, _ = positions.committed_positions(self.table, self.prop, self._ledgers)
        if self.converter is None or self.converter.schema.schema_id != self.table.schema().schema_id:
            self.converter = RecordConverter(self.table.schema(), self.options.new_columns)

    def _create_from(self, batches: Sequence[RecordBatch]) -> None:
        values = [v for b in batches for v in (b.values if b.decoded else _decode(b.payloads))]
        schema = infer_columns(values)
        if not schema.names:
            raise SinkError(f"{self.target}: cannot create the table: the first records have no typed fields")
        self._create(schema)

    def _convert_all(self, batches: Sequence[RecordBatch]) -> tuple[Prepared, Evolution]:
        assert self.converter is not None
        prepared = Prepared()
        evolution = Evolution()
        for batch in batches:
            start = self._first_new(batch)
            prepared.skipped += start
            if start == len(batch):
                continue
            partition = str(batch.partition)
            prepared.last[partition] = str(batch.position(len(batch) - 1))
            sub = batch.slice(start, len(batch))
            converted: Converted = (
                self.converter.convert(sub.payloads, None)
                if sub.has_payloads
                else self.converter.convert(None, sub.values)
            )
            if converted.evolution:
                evolution.add.update(converted.evolution.add)
                evolution.widen_to_long |= converted.evolution.widen_to_long
                continue
            if converted.failures:
                prepared.failures.append((batch, {start + i: reason for i, reason in converted.failures.items()}))
            if converted.data is not None and converted.data.num_rows:
                prepared.segments.append(Segment(batch, [start + r for r in converted.rows], converted.data))
        return prepared, evolution

    def _first_new(self, batch: RecordBatch, rows: Sequence[int] | None = None) -> int:
        """How many leading records (or ``rows``) are at or below the ledger's position for the partition."""
        held = self.committed.get(str(batch.partition))
        indexes: Sequence[int] = rows if rows is not None else range(len(batch))
        if held is None or not indexes:
            return 0
        key = positions.order_key(held)
        # Positions grow along a batch: a binary search reads a handful of them.
        return bisect.bisect_right(indexes, key, key=lambda i: positions.order_key(batch.position(i)))

    def _evolve(self, evolution: Evolution) -> None:
        assert self.table is not None
        log.info("iceberg schema evolves", table=self.identifier, change=evolution.describe())
        with self.table.update_schema() as update:
            if evolution.add:
                update.union_by_name(pa.schema(list(evolution.add.items())))
            for name in sorted(evolution.widen_to_long):
                update.update_column(name, field_type=LongType())
        self.evolutions.append(evolution.describe())
        self.converter = RecordConverter(self.table.schema(), self.options.new_columns)

    # -- committing ------------------------------------------------------------------------------
    def commit(self, prepared: Prepared) -> int:
        """Append the prepared rows with the new ledger in one snapshot; the rows written (0: nothing new)."""
        assert self.table is not None
        budget = self.retry.budget()
        attempt = 0
        while True:
            attempt += 1
            data, last = self._unwritten(prepared)
            if data is None:
                return 0
            ledger = positions.merge(self.committed, last)
            try:
                self._append(data, {self.prop: positions.encode(ledger)})
            except _RACES as exc:
                self.conflicts += 1
                log.info("iceberg commit raced another writer; refreshing", table=self.identifier, error=str(exc))
                self._retry_or_stop(exc, attempt, budget)
                self._refresh()
                continue
            except _DENIED as exc:
                raise SinkError(f"{self.target}: {exc}; stopping without acknowledging") from exc
            except Exception as exc:
                if not _transient(exc):
                    raise SinkError(f"{self.target}: {type(exc).__name__}: {exc}; stopping") from exc
                log.info("iceberg commit failed, retrying", table=self.identifier, error=f"{type(exc).__name__}: {exc}")
                self._retry_or_stop(exc, attempt, budget)
                self._attempt("refresh", self._refresh)
                continue
            self.committed = ledger
            self.commits += 1
            self.rows_written += data.num_rows
            log.info(
                "iceberg commit",
                table=self.identifier,
                rows=data.num_rows,
                skipped=prepared.skipped,
                partitions=len(last),
                attempts=attempt,
            )
            return int(data.num_rows)

    def _append(self, data: pa.Table, summary: dict[str, str]) -> None:
        """``Table.append`` with a commit UUID carrying this scope's tag, so every file of the commit can be
        found after a crash (``orphans.py``). The data files of an attempt that certainly did not land (a
        conflict) are deleted at once; pyiceberg deletes its manifests itself."""
        assert self.table is not None
        table = _without_internal_retries(self.table)
        written: list[str] = []
        try:
            with table.transaction() as txn:
                merge = property_as_bool(
                    txn.table_metadata.properties,
                    TableProperties.MANIFEST_MERGE_ENABLED,
                    TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
                )
                snapshot = txn.update_snapshot(snapshot_properties=summary)
                with snapshot.merge_append() if merge else snapshot.fast_append() as append:
                    append.commit_uuid = orphans.commit_uuid(self.tag)
                    for data_file in _dataframe_to_data_files(
                        table_metadata=txn.table_metadata, df=data, io=table.io, write_uuid=append.commit_uuid
                    ):
                        written.append(data_file.file_path)
                        append.append_data_file(data_file)
        except CommitFailedException:
            orphans.delete(table.io, written)
            raise

    def _unwritten(self, prepared: Prepared) -> tuple[pa.Table | None, dict[str, str]]:
        """The rows still above the ledger (a refreshed ledger may cover some now) and their last positions."""
        tables: list[pa.Table] = []
        last: dict[str, str] = {}
        for segment in prepared.segments:
            skip = self._first_new(segment.batch, segment.rows)
            if skip < len(segment.rows):
                tables.append(segment.data.slice(skip))
        for partition, position in prepared.last.items():
            held = self.committed.get(partition)
            if held is None or positions.order_key(position) > positions.order_key(held):
                last[partition] = position
        if not tables:
            return None, last
        # One schema: prepare() converts every batch again after an evolution.
        return pa.concat_tables(tables), last

    def _retry_or_stop(self, exc: BaseException, attempt: int, budget: RetryBudget) -> None:
        if budget.exhausted(attempt):
            raise SinkError(
                f"{self.target}: still {type(exc).__name__}: {exc} {budget.describe(attempt)}; a restart "
                "replays the records and the ledger skips what was committed",
                retryable=True,
            ) from exc
        time.sleep(budget.delay(attempt))  # on the sink's own thread, never the event loop

    def _attempt(self, what: str, call: Any) -> Any:
        budget = self.retry.budget()
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Exception as exc:
                if isinstance(exc, SinkError) or not _transient(exc):
                    raise
                log.info(f"iceberg {what} failed, retrying", table=self.identifier, error=f"{type(exc).__name__}")
                self._retry_or_stop(exc, attempt, budget)


def _without_internal_retries(table: Table) -> Table:
    """The table with pyiceberg's own commit retries turned off, in memory only.

    On a conflict pyiceberg rebases the append onto the new snapshot with the summary it was given: the
    ledger would miss what the other writer recorded, and records it committed meanwhile would be appended
    again. :meth:`TableWriter.commit` retries instead, after refreshing the ledger and skipping again. A
    commit sends only the new snapshot and its requirements, so this property never reaches the catalog.
    """
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    metadata = table.metadata.model_copy(update={"properties": properties})
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog, config=table.config)


def _decode(payloads: Sequence[bytes]) -> list[Any]:
    from streamkit.connectors.s3.formats import decode_json_payloads

    return decode_json_payloads(payloads)[0]
