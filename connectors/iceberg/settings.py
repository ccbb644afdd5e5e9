"""Settings of the ``iceberg`` sink, and the pyiceberg catalog properties they stand for.

Catalogs:

- ``rest``: an Iceberg REST catalog with SigV4 signing: the Amazon S3 Tables endpoint
  (``https://s3tables.<region>.amazonaws.com/iceberg``, warehouse = the table bucket ARN) or the AWS Glue
  endpoint (``https://glue.<region>.amazonaws.com/iceberg``, warehouse = the account id or
  ``<account>:s3tablescatalog/<bucket>``). The signing name is derived from the host unless given.
- ``sql``: pyiceberg's SQL catalog in a sqlite file, for local use and tests; the warehouse is a directory
  or an ``s3://`` prefix.

Credentials come only from the standard AWS chain (pyiceberg signs with a boto3 session, pyarrow's S3
filesystem uses the SDK's default chain): a credential key among ``properties`` fails at start-up.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import msgspec

from streamkit.config import NonNegativeSeconds, PositiveInt, PositiveSeconds, Size
from streamkit.errors import ConfigError
from streamkit.plugin_env import PluginEnv
from streamkit.sink import BufferOptions

MIB = 1024 * 1024

# Keys that would put a secret in the pipeline file (pyiceberg accepts all of these).
_CREDENTIAL_KEYS = ("access-key-id", "secret-access-key", "session-token", "credential", "token", "password")


class ColumnOptions(msgspec.Struct, forbid_unknown_fields=True):
    """One column of the table the sink creates."""

    name: str
    type: str
    """An Iceberg primitive: boolean, int, long, float, double, string, binary, date, time, timestamp,
    timestamptz, decimal(P,S)."""
    required: bool = False
    doc: str | None = None


class CatalogOptions(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["rest", "sql"]
    uri: str | None = None
    """rest: the endpoint; sql: a SQLAlchemy URL (``sqlite:///catalog.db``). Use ``path`` for a sqlite file."""
    path: str | None = None
    """sql: the sqlite file, relative to the pipeline file."""
    warehouse: str | None = None
    """rest: the table bucket ARN (S3 Tables) or catalog id (Glue); sql: an ``s3://`` prefix or a directory."""
    name: str = "streamkit"
    sigv4: bool = True
    """rest: sign requests with SigV4 (S3 Tables and Glue require it)."""
    signing_name: str | None = None
    """rest: the SigV4 service name; default from the host (``s3tables`` or ``glue``)."""
    signing_region: str | None = None
    """rest: the SigV4 region; default ``aws.region``."""
    properties: dict[str, str] = msgspec.field(default_factory=dict)
    """Further pyiceberg catalog properties, passed as they are (never credentials)."""


class IcebergOptions(BufferOptions, kw_only=True, forbid_unknown_fields=True):
    catalog: CatalogOptions
    table: str
    """``namespace.table`` (S3 Tables: the namespace and table inside the table bucket)."""
    create: bool = True
    """Create the namespace and table when missing, with ``columns`` or the first records' fields."""
    columns: list[ColumnOptions] | None = None
    partition_by: list[str] = []
    """Partition fields for a table the sink creates: ``day(ts)``, ``hour(ts)``, ``month(ts)``, ``year(ts)``,
    ``bucket(16, id)``, ``truncate(4, name)`` or a bare column (identity)."""
    table_properties: dict[str, str] = {}
    """Properties of a table the sink creates (``write.parquet.compression-codec``, ...)."""
    new_columns: Literal["add", "ignore", "reject"] = "add"
    scope: str | None = None
    """Name of the position ledger in the snapshot summary; default the pipeline name. Two pipelines
    writing one table need different scopes; a renamed pipeline must keep its scope."""
    # A commit is a catalog round trip and a snapshot: commit on size or age, never per batch.
    max_records: PositiveInt = 1_000_000
    max_bytes: Size = Size(0)
    """Source bytes held for the next commit; default (0) 3/4 of runtime.max_bytes_in_flight, at most 48MiB."""
    max_age_s: PositiveSeconds = 60.0
    """The commit interval: records wait at most this long for their commit (and acknowledgement)."""
    max_concurrent_writes: PositiveInt = 1
    orphan_min_age_s: NonNegativeSeconds = 3600.0
    """At start-up, files of this scope's commits that never landed (a crash between writing and committing)
    are deleted once older than this: younger ones may be another worker's commit still in flight."""


def checked(options: IcebergOptions, env: PluginEnv) -> IcebergOptions:
    """The options with derived defaults, or ConfigError naming the key."""
    where = env.where or "sink"
    if options.max_concurrent_writes != 1:
        raise ConfigError(
            f"{where}.max_concurrent_writes", "must be 1: commits to one table are serial (each carries the ledger)"
        )
    if "." not in options.table.strip("."):
        raise ConfigError(f"{where}.table", f"expected namespace.table, got {options.table!r}")
    budget = env.runtime.max_bytes_in_flight
    max_bytes = options.max_bytes or Size(min(48 * MIB, budget * 3 // 4))
    if max_bytes >= budget:
        raise ConfigError(
            f"{where}.max_bytes",
            f"{max_bytes} bytes must be below runtime.max_bytes_in_flight ({budget}): the runtime stops "
            "fetching at its budget, before this sink would commit",
        )
    return msgspec.structs.replace(options, max_bytes=max_bytes)


def catalog_properties(options: CatalogOptions, env: PluginEnv) -> dict[str, str]:
    """pyiceberg ``load_catalog`` properties for the catalog section (no secrets: none are accepted)."""
    where = f"{env.where or 'sink'}.catalog"
    for key in options.properties:
        if any(part in key.lower() for part in _CREDENTIAL_KEYS):
            raise ConfigError(
                f"{where}.properties.{key}", "credentials come only from the standard AWS chain, never from the file"
            )
    props: dict[str, str] = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
    region = env.aws.region
    if region:
        props["s3.region"] = region
        props["client.region"] = region
    s3_endpoint = env.aws.endpoints.get("s3")
    if s3_endpoint:
        props["s3.endpoint"] = s3_endpoint
    if options.type == "sql":
        props.update(_sql(options, env, where))
    else:
        props.update(_rest(options, env, where))
    props.update(options.properties)
    return props


def _sql(options: CatalogOptions, env: PluginEnv, where: str) -> dict[str, str]:
    if (options.uri is None) == (options.path is None):
        raise ConfigError(f"{where}.path", "a sql catalog needs exactly one of path (a sqlite file) or uri")
    # A path's directory is made at start-up, not here: `streamkit validate` must not create anything.
    uri = f"sqlite:///{env.path(options.path)}" if options.path is not None else str(options.uri)
    if not options.warehouse:
        raise ConfigError(f"{where}.warehouse", "a sql catalog needs a warehouse: an s3:// prefix or a directory")
    warehouse = options.warehouse
    if "://" not in warehouse:
        warehouse = env.path(warehouse).as_uri()  # made at start-up
    # init_catalog_tables: create the catalog's own tables in a new sqlite file.
    return {"type": "sql", "uri": uri, "warehouse": warehouse, "init_catalog_tables": "true"}


def _rest(options: CatalogOptions, env: PluginEnv, where: str) -> dict[str, str]:
    if not options.uri:
        raise ConfigError(
            f"{where}.uri", "a rest catalog needs its uri (https://s3tables.<region>.amazonaws.com/iceberg)"
        )
    props = {"type": "rest", "uri": options.uri}
    if options.warehouse:
        props["warehouse"] = options.warehouse
    if options.sigv4:
        region = options.signing_region or env.aws.region
        if not region:
            raise ConfigError(f"{where}.signing_region", "SigV4 needs a region: set aws.region or signing_region")
        props["rest.sigv4-enabled"] = "true"
        props["rest.signing-region"] = region
        props["rest.signing-name"] = options.signing_name or _signing_name(options.uri, where)
    return props


def _signing_name(uri: str, where: str) -> str:
    host = urlsplit(uri).hostname or ""
    for service in ("s3tables", "glue"):
        if host.startswith(f"{service}."):
            return service
    raise ConfigError(f"{where}.signing_name", f"cannot tell the SigV4 service from {host!r}; set signing_name")
