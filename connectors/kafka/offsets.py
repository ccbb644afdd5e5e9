"""The Kafka source's checkpoint store: the consumer group's committed offsets.

A checkpoint is the offset of the last record every sink acknowledged; Kafka's committed offset is the
next offset to read, so what is committed is checkpoint + 1. :meth:`save` hands the offset to the
consumer thread, which commits all partitions' pending offsets in one synchronous request within
``poll_timeout_s`` (the runtime saves partitions one by one; waiting for a broker round trip each time
would make a checkpoint round of 100 partitions take seconds). The thread retries failed commits, commits
revoked partitions before the rebalance goes on, and commits what is pending before it leaves the group.

:meth:`load` returns None: the consumer resumes from the committed offset by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streamkit.batch import Partition
from streamkit.checkpoint import CheckpointStore
from streamkit.errors import CheckpointRejected

from .feed import TopicPartitionKey

if TYPE_CHECKING:
    from .consumer import ConsumerThread

PREFIX = "kafka:"


def partition_of(topic: str, number: int) -> Partition:
    return Partition(f"{PREFIX}{topic}", str(number))


def key_of(partition: Partition) -> TopicPartitionKey:
    return partition.source.removeprefix(PREFIX), int(partition.key)


class KafkaOffsetStore(CheckpointStore):
    """Commits checkpoints as consumer-group offsets through the consumer thread."""

    def __init__(self, thread: Callable[[], ConsumerThread | None]) -> None:
        self._thread = thread

    async def load(self, partition: Partition) -> str | None:
        return None

    async def save(self, partition: Partition, checkpoint: str) -> None:
        thread = self._thread()
        key = key_of(partition)
        if thread is None or key not in thread.owned:
            # Revoked or lost: another member owns the partition now; a commit could move its offset back.
            raise CheckpointRejected(f"{partition} is no longer assigned to this consumer")
        thread.commit(key, int(checkpoint) + 1)

    def committed(self) -> dict[Partition, int]:
        """Offsets this worker committed so far (next offset to read), by partition."""
        thread = self._thread()
        return {} if thread is None else {partition_of(*k): o for k, o in dict(thread.committed).items()}
