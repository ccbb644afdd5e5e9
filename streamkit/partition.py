"""Leaf types shared by the batch and the acknowledgement tickets: the partition and the array aliases.

They live apart so that :mod:`streamkit.acks` and :mod:`streamkit.batch` can both use them without importing
each other (a batch carries its ticket; a ticket knows nothing of batches). Import them from
:mod:`streamkit.batch` as before; this module imports nothing from streamkit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["BoolArray", "Int64Array", "Partition"]

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Partition(NamedTuple):
    """One ordered unit of a source: a Kinesis shard or a Kafka topic-partition."""

    source: str
    """The stream or topic (for example ``kinesis:orders`` or ``kafka:clicks``)."""
    key: str
    """The shard id or partition number within the source."""

    def __str__(self) -> str:
        return f"{self.source}/{self.key}"
