"""What a baseline is handed: the same records streamkit reads in the same run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticInput:
    """Recorded GetRecords bodies, per shard."""

    shards: dict[str, list[bytes]]
    records: int
    """Records in all bodies of all shards."""
    payload_bytes: int
    expected_out: int
    """Records the representative filter keeps."""


@dataclass(frozen=True)
class LocalInput:
    """A stream on the local Kinesis emulator, loaded before anyone reads it."""

    endpoint_url: str
    region: str
    stream: str
    shard_ids: list[str]
    records: int
    payload_bytes: int
    expected_out: int
    duration_s: float | None = None
    """Stop after this long even if not every record was read."""

    @property
    def mean_payload(self) -> float:
        return self.payload_bytes / self.records if self.records else 0.0
