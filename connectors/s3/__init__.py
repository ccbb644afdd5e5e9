"""Amazon S3 sink.

The pure parts live here so they can be tested without a network:

- :mod:`streamkit.connectors.s3.formats`: streaming object writers (NDJSON with gzip or zstd, Avro
  object container files, Parquet) that measure encoded bytes and hand out multipart-upload parts.
- :mod:`streamkit.connectors.s3.keys`: deterministic, replay-stable object keys and Hive-style
  partitions.

See ``docs/s3-objects.md`` for the object layout and the rules that keep replays idempotent.
"""
