"""Apache Iceberg sink (``type: iceberg``): S3 Tables / Glue REST catalogs or a local SQL catalog; see
docs/sinks-iceberg.md."""

from streamkit.connectors.iceberg.settings import IcebergOptions
from streamkit.connectors.iceberg.sink import IcebergSink

__all__ = ["IcebergOptions", "IcebergSink"]
