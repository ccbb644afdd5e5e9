"""Files of this sink's commits that never landed: named so they can be told apart, swept at start-up.

An append writes Parquet data files, then manifests and a manifest list, then commits the snapshot in the
catalog. A crash (or SIGKILL) in between leaves those files in the table location with no snapshot
referencing them: invisible to readers, but paid for. pyiceberg deletes the manifests of a commit that
failed in-process; it never deletes data files.

Every commit of this sink uses a commit UUID whose first 8 hex digits are a tag derived from its ledger
scope (``commit_uuid``); pyiceberg puts that UUID into the name of every data file, manifest and manifest
list of the commit. At start-up, ``sweep`` deletes the files in the table's data and metadata locations
that carry this scope's tag, are older than ``orphan_min_age_s``, and that no snapshot of the table
references. Other writers' files (other scopes, Spark, Flink, ...) never carry the tag and are never
touched; the age guard keeps the in-flight commit of another worker of the same pipeline (same scope)
safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog
from pyarrow.fs import FileSelector, FileType
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

log = structlog.get_logger("streamkit.connectors.iceberg")

__all__ = ["commit_uuid", "delete", "scope_tag", "sweep"]


def scope_tag(scope: str) -> str:
    """8 hex digits naming the ledger scope in file names (a hash: the scope itself may be any text)."""
    return hashlib.blake2b(scope.encode(), digest_size=4).hexdigest()


def commit_uuid(tag: str) -> uuid.UUID:
    """A fresh commit UUID whose first 8 hex digits are ``tag``; the rest is random (uuid4's)."""
    return uuid.UUID(hex=tag + uuid.uuid4().hex[8:])


def _owned(tag: str) -> re.Pattern[str]:
    # 00000-0-<uuid>.parquet (data), <uuid>-m0.avro (manifest), snap-<id>-<attempt>-<uuid>.avro (list)
    return re.compile(rf"(?:^|-){tag}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}[-.].*(?:parquet|avro)$")


def sweep(table: Table, tag: str, min_age_s: float) -> list[str]:
    """Delete this scope's files that no snapshot references and are older than ``min_age_s``; their paths."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        log.warning("iceberg orphan sweep skipped: not a pyarrow FileIO", table=str(table.name()))
        return []
    provider = table.location_provider()
    owned = _owned(tag)
    cutoff = datetime.now(UTC) - timedelta(seconds=min_age_s)
    candidates: dict[str, str] = {}  # path as the file system names it -> its URI
    for root in dict.fromkeys((provider.data_path, provider.metadata_path)):
        scheme, netloc, path = io.parse_location(root)
        fs = io.fs_by_scheme(scheme, netloc)
        for info in fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True)):
            if info.type != FileType.File or not owned.search(info.base_name):
                continue
            if info.mtime is None or _aware(info.mtime) > cutoff:
                continue  # maybe the commit of another worker of this scope, still in flight
            candidates[info.path] = f"{scheme}://{info.path}" if scheme != "file" else info.path
    if not candidates:
        return []
    referenced = {io.parse_location(p)[2] for p in _referenced(table, io)}
    orphans = sorted(uri for path, uri in candidates.items() if path not in referenced)
    delete(io, orphans)
    if orphans:
        log.info("iceberg orphan files deleted", table=str(table.name()), files=len(orphans), first=orphans[0])
    return orphans


def delete(io: FileIO, paths: Iterable[str]) -> None:
    """Delete files (already gone is fine: a sweep and a retry may race to it)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            io.delete(path)


def _referenced(table: Table, io: FileIO) -> set[str]:
    """Every manifest list, manifest and data or delete file that a snapshot of the table references."""
    paths: set[str] = set()
    for snapshot in table.metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            paths.add(manifest.manifest_path)
            entries = manifest.fetch_manifest_entry(io, discard_deleted=False)
            paths.update(entry.data_file.file_path for entry in entries)
    return paths


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
