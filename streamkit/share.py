"""Which share of a source's partitions this process reads when ``streamkit run --processes N`` started it.

Kinesis (leases) and Kafka (the consumer group) divide partitions between processes by themselves. Sources
with no coordination of their own (generator, file) read partition ``p`` in process ``p % N`` instead, so N
processes together read each partition exactly once. The supervisor tells each child its index and N
through the environment; a process started any other way reads everything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from streamkit.errors import ConfigError

PROCESS_INDEX_ENV = "STREAMKIT_PROCESS_INDEX"
PROCESS_COUNT_ENV = "STREAMKIT_PROCESS_COUNT"


@dataclass(frozen=True)
class ProcessShare:
    index: int = 0
    count: int = 1

    def owns(self, number: int) -> bool:
        """Whether partition number ``number`` (0, 1, ... in the source's own order) is read here."""
        return number % self.count == self.index


def process_share(environ: Mapping[str, str] = os.environ) -> ProcessShare:
    raw_index, raw_count = environ.get(PROCESS_INDEX_ENV), environ.get(PROCESS_COUNT_ENV)
    if raw_index is None and raw_count is None:
        return ProcessShare()
    try:
        index, count = int(raw_index or ""), int(raw_count or "")
    except ValueError:
        raise ConfigError(PROCESS_INDEX_ENV, f"expected integers, got {raw_index!r} of {raw_count!r}") from None
    if not 0 <= index < count:
        raise ConfigError(PROCESS_INDEX_ENV, f"index {index} is not within 0..{count - 1}")
    return ProcessShare(index, count)
