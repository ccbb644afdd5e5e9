"""The Kinesis Client Library's DynamoDB lease table, read and written the way the KCL does.

A lease binds one shard to one worker. This module is the table I/O only: the :class:`Lease` value, item
conversion, table creation, and one conditional write per state change. The decisions (which lease to
take, when, how to hand one over) live in :mod:`streamkit.connectors.dynamodb.coordinator`.

Compatibility rules this module keeps (see docs/leases.md):

* Attribute names and types are the KCL's, so a KCL worker can read what we write and the other way round.
* After an item exists it is only ever changed with ``UpdateItem`` on named attributes, never replaced with
  ``PutItem``: attributes we do not know (a newer KCL's, multi-stream ``streamName``/``shardId``) survive.
* Every change is conditional on what the writer believes (counter, owner); a failed condition becomes a
  :class:`LeaseLostError` or :class:`LeaseContendedError` naming the lease and the worker.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from streamkit.connectors.aws_clients import is_transient
from streamkit.retry import RetryPolicy, retry

__all__ = [
    "AT_TIMESTAMP",
    "DEFAULT_LEASE_RETRY",
    "LATEST",
    "OWNER_INDEX_NAME",
    "SENTINEL_CHECKPOINTS",
    "SHARD_END",
    "TRIM_HORIZON",
    "Lease",
    "LeaseContendedError",
    "LeaseError",
    "LeaseLostError",
    "LeaseTable",
    "LeaseTableError",
    "ShardInfo",
    "has_started",
    "is_lease_item",
    "is_ready",
    "lease_key_for",
    "lease_key_prefix_of",
    "lease_retry",
    "parent_lease_keys",
]

log = structlog.get_logger(__name__)

# aiobotocore ships no type information; its clients are built at run time from the service model.
DynamoDBClient = Any
AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
SHARD_END = "SHARD_END"
AT_TIMESTAMP = "AT_TIMESTAMP"
SENTINEL_CHECKPOINTS = frozenset({TRIM_HORIZON, LATEST, SHARD_END, AT_TIMESTAMP})

# The KCL 3.x index; a table created by KCL 2.x lacks it, which is fine (see LeaseTable.lease_keys_of).
OWNER_INDEX_NAME = "LeaseOwnerToLeaseKeyIndex"

# Attribute names exactly as the KCL's DynamoDBLeaseSerializer writes them.
LEASE_KEY = "leaseKey"
LEASE_OWNER = "leaseOwner"
LEASE_COUNTER = "leaseCounter"
CHECKPOINT = "checkpoint"
CHECKPOINT_SUB = "checkpointSubSequenceNumber"
OWNER_SWITCHES = "ownerSwitchesSinceCheckpoint"
PARENT_SHARD_IDS = "parentShardId"
CHILD_SHARD_IDS = "childShardIds"
STARTING_HASH_KEY = "startingHashKey"
ENDING_HASH_KEY = "endingHashKey"
PENDING_CHECKPOINT = "pendingCheckpoint"
PENDING_CHECKPOINT_SUB = "pendingCheckpointSubSequenceNumber"
PENDING_CHECKPOINT_STATE = "pendingCheckpointState"
CHECKPOINT_OWNER = "checkpointOwner"
THROUGHPUT_KBPS = "throughputKBps"
# KCL 3.x may keep rows that are not leases in the lease table, marked with this attribute (a lease has none,
# or the value "LEASE"): worker metrics, coordinator/leader state, migration markers.
ENTITY_TYPE = "entityType"
LEASE_ENTITY_TYPE = "lease"

_KNOWN_ATTRIBUTES = frozenset(
    {
        LEASE_KEY,
        LEASE_OWNER,
        LEASE_COUNTER,
        CHECKPOINT,
        CHECKPOINT_SUB,
        OWNER_SWITCHES,
        PARENT_SHARD_IDS,
        CHILD_SHARD_IDS,
        STARTING_HASH_KEY,
        ENDING_HASH_KEY,
        PENDING_CHECKPOINT,
        PENDING_CHECKPOINT_SUB,
        CHECKPOINT_OWNER,
        THROUGHPUT_KBPS,
    }
)

# "The worker actually holds this lease": it owns it and no hand-off is pending, or it is the previous owner
# finishing a hand-off (KCL 3.x semantics: leaseOwner is already the next owner, checkpointOwner the current).
_HOLDS = "((#leaseOwner = :me AND attribute_not_exists(#checkpointOwner)) OR #checkpointOwner = :me)"


class LeaseError(Exception):
    """A lease operation failed because of the lease's state in the table."""

    def __init__(self, message: str, *, lease_key: str, worker_id: str) -> None:
        super().__init__(message)
        self.lease_key = lease_key
        self.worker_id = worker_id


class LeaseLostError(LeaseError):
    """The worker no longer holds the lease: another worker took it, or it expired.

    The worker must stop processing that shard; whatever it did not checkpoint will be processed again by
    the new owner (at-least-once).
    """


class LeaseContendedError(LeaseError):
    """A take, steal or hand-off request lost a race: the lease changed since it was read.

    ``current`` is the lease as it is now (DynamoDB returns it with the failed condition), None if unknown.
    """

    def __init__(self, message: str, *, lease_key: str, worker_id: str, current: Lease | None = None) -> None:
        super().__init__(message, lease_key=lease_key, worker_id=worker_id)
        self.current = current


class LeaseTableError(Exception):
    """The lease table could not be used: it is missing, misconfigured, or DynamoDB kept failing.

    ``retryable`` is True when the cause was throttling or a transient failure that outlasted the retries:
    the coordinator carries on and tries again at its next pass; anything else (access denied, a missing
    table, a validation error) needs an operator and stops the coordinator.
    """

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Lease:
    """One item of the lease table. Immutable: every write returns the new state.

    ``checkpoint`` is a sequence number (a decimal string of up to 128 digits; compare as integers) or one of
    TRIM_HORIZON / LATEST / SHARD_END / AT_TIMESTAMP. ``extra`` keeps attributes this version does not know,
    for inspection only: they are never written back, and they survive because writes name their attributes.
    """

    lease_key: str
    lease_owner: str | None = None
    lease_counter: int = 0
    checkpoint: str | None = None
    checkpoint_sub_sequence: int = 0
    owner_switches_since_checkpoint: int = 0
    parent_shard_ids: frozenset[str] = frozenset()
    child_shard_ids: frozenset[str] = frozenset()
    starting_hash_key: str | None = None
    ending_hash_key: str | None = None
    pending_checkpoint: str | None = None
    pending_checkpoint_sub_sequence: int | None = None
    checkpoint_owner: str | None = None
    throughput_kbps: float | None = None
    extra: Mapping[str, AttributeValue] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def actual_owner(self) -> str | None:
        """The worker processing the shard now: during a hand-off the previous owner, still checkpointing."""
        return self.checkpoint_owner if self.checkpoint_owner is not None else self.lease_owner

    @property
    def handoff_pending(self) -> bool:
        return self.checkpoint_owner is not None

    @property
    def is_finished(self) -> bool:
        """The shard was read to its end and checkpointed: nothing left to process."""
        return self.checkpoint == SHARD_END

    @classmethod
    def from_item(cls, item: Mapping[str, AttributeValue]) -> Lease:
        key = _string(item, LEASE_KEY)
        if key is None:
            raise LeaseTableError(f"lease table item without a string leaseKey: {dict(item)!r}")
        return cls(
            lease_key=key,
            lease_owner=_string(item, LEASE_OWNER),
            lease_counter=_integer(item, LEASE_COUNTER) or 0,
            checkpoint=_string(item, CHECKPOINT),
            checkpoint_sub_sequence=_integer(item, CHECKPOINT_SUB) or 0,
            owner_switches_since_checkpoint=_integer(item, OWNER_SWITCHES) or 0,
            parent_shard_ids=_string_set(item, PARENT_SHARD_IDS),
            child_shard_ids=_string_set(item, CHILD_SHARD_IDS),
            starting_hash_key=_string(item, STARTING_HASH_KEY),
            ending_hash_key=_string(item, ENDING_HASH_KEY),
            pending_checkpoint=_string(item, PENDING_CHECKPOINT),
            pending_checkpoint_sub_sequence=_integer(item, PENDING_CHECKPOINT_SUB),
            checkpoint_owner=_string(item, CHECKPOINT_OWNER),
            throughput_kbps=_number(item, THROUGHPUT_KBPS),
            extra={name: value for name, value in item.items() if name not in _KNOWN_ATTRIBUTES},
        )

    def to_new_item(self) -> Item:
        """The item for a lease that does not exist yet (conditional PutItem); never used to overwrite."""
        item: Item = {
            LEASE_KEY: {"S": self.lease_key},
            LEASE_COUNTER: {"N": str(self.lease_counter)},
            CHECKPOINT_SUB: {"N": str(self.checkpoint_sub_sequence)},
            OWNER_SWITCHES: {"N": str(self.owner_switches_since_checkpoint)},
        }
        optional_strings = {
            LEASE_OWNER: self.lease_owner,
            CHECKPOINT: self.checkpoint,
            STARTING_HASH_KEY: self.starting_hash_key,
            ENDING_HASH_KEY: self.ending_hash_key,
        }
        item.update({name: {"S": value} for name, value in optional_strings.items() if value is not None})
        # DynamoDB rejects empty sets, and the KCL omits the attribute when there is no parent.
        if self.parent_shard_ids:
            item[PARENT_SHARD_IDS] = {"SS": sorted(self.parent_shard_ids)}
        if self.child_shard_ids:
            item[CHILD_SHARD_IDS] = {"SS": sorted(self.child_shard_ids)}
        return item


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What the lease table needs to know about a shard (from ListShards or a ChildShards list)."""

    shard_id: str
    parent_shard_ids: tuple[str, ...] = ()
    starting_hash_key: str | None = None
    ending_hash_key: str | None = None
    ending_sequence_number: str | None = None  # set once the shard is closed (after a reshard)

    @property
    def is_closed(self) -> bool:
        return self.ending_sequence_number is not None

    @classmethod
    def from_list_shards(cls, shard: Mapping[str, Any]) -> ShardInfo:
        """From one entry of ListShards' ``Shards`` (or DescribeStream's)."""
        parents = tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
        hash_range = shard.get("HashKeyRange") or {}
        sequence_range = shard.get("SequenceNumberRange") or {}
        return cls(
            shard_id=shard["ShardId"],
            parent_shard_ids=parents,
            starting_hash_key=hash_range.get("StartingHashKey"),
            ending_hash_key=hash_range.get("EndingHashKey"),
            ending_sequence_number=sequence_range.get("EndingSequenceNumber"),
        )

    @classmethod
    def from_child_shard(cls, child: Mapping[str, Any]) -> ShardInfo:
        """From one entry of the ``ChildShards`` list GetRecords/SubscribeToShard return at a shard's end."""
        hash_range = child.get("HashKeyRange") or {}
        return cls(
            shard_id=child["ShardId"],
            parent_shard_ids=tuple(child.get("ParentShards") or ()),
            starting_hash_key=hash_range.get("StartingHashKey"),
            ending_hash_key=hash_range.get("EndingHashKey"),
        )


def is_lease_item(item: Mapping[str, AttributeValue]) -> bool:
    """True for a lease; False for the other rows a KCL 3.x application may keep in its lease table.

    Such rows carry an ``entityType`` attribute; a lease has none (or ``LEASE``). Every read of the table goes
    through this test, so those rows are never parsed, counted, taken, balanced or deleted.
    """
    entity_type = item.get(ENTITY_TYPE)
    if entity_type is None:
        return True
    return str(entity_type.get("S", "")).lower() == LEASE_ENTITY_TYPE


def lease_key_for(shard_id: str, prefix: str = "") -> str:
    """The lease key of a shard: the shard id, or ``account:stream:creationEpoch:`` + shard id (multi-stream)."""
    return prefix + shard_id


def lease_key_prefix_of(lease_key: str) -> str:
    """``account:stream:creationEpoch:`` of a multi-stream lease key; empty for a single-stream one."""
    prefix = lease_key.rpartition(":")[0]
    return prefix + ":" if prefix else ""


def parent_lease_keys(lease: Lease) -> frozenset[str]:
    """Lease keys of the lease's parents (parentShardId holds shard ids; multi-stream keys add a prefix)."""
    prefix = lease_key_prefix_of(lease.lease_key)
    return frozenset(lease_key_for(parent, prefix) for parent in lease.parent_shard_ids)


def has_started(lease: Lease) -> bool:
    """The shard was read past its starting position: its checkpoint is a sequence number or SHARD_END.

    A started shard's parents were finished when it started (nobody reads a child first), which is what lets
    the finished parents' leases be deleted (as the KCL's LeaseCleanupManager does) without blocking it.
    """
    return lease.checkpoint is not None and lease.checkpoint not in (TRIM_HORIZON, LATEST, AT_TIMESTAMP)


def is_ready(lease: Lease, leases_by_key: Mapping[str, Lease], finished: Collection[str] = ()) -> bool:
    """True when the lease's shard may be read: every parent is checkpointed at SHARD_END.

    A parent with no lease counts as done only when it is known to be finished (``finished``: lease keys of
    shards past retention or deliberately skipped). An unknown absent parent may simply not have its lease
    yet, and reading the child first would break per-key order. A lease that has started (see
    :func:`has_started`) is ready whatever its parents: their leases may have been cleaned up since.
    """
    if has_started(lease):
        return True
    for parent_key in parent_lease_keys(lease):
        parent = leases_by_key.get(parent_key)
        if parent is None:
            if parent_key not in finished:
                return False
        elif not parent.is_finished:
            return False
    return True


def lease_retry(failover_time_s: float) -> RetryPolicy:
    """How lease-table calls retry: briefly (about 1.5 s of sleeping at most), and no attempt starts later than
    a third of the failover time after the first. With the lease client's timeouts (each attempt fails within
    0.3 x failover, aws_clients.lease_table_options) a throttled or stalled renewal lands or gives up within
    about two thirds of the failover time, before the lease could expire. The shared default (five minutes)
    suits data-plane calls, not leases."""
    return RetryPolicy(max_elapsed_s=failover_time_s / 3, max_attempts=6, base_delay_s=0.05, max_delay_s=1.0)


DEFAULT_LEASE_RETRY = lease_retry(10.0)
"""For the KCL's default 10 s failover time."""


T = TypeVar("T")


class _ConditionFailed(Exception):
    """Internal: a ConditionalCheckFailedException, with the item as it is now when DynamoDB returned it."""

    def __init__(self, current: Lease | None, attempts: int) -> None:
        super().__init__("conditional check failed")
        self.current = current
        self.attempts = attempts


class LeaseTable:
    """Conditional reads and writes of one KCL-compatible lease table.

    The client is an aiobotocore DynamoDB client owned by the caller (opened and closed by it).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        retry: RetryPolicy = DEFAULT_LEASE_RETRY,
        consistent_reads: bool = True,
    ) -> None:
        self._client = client
        self._name = table_name
        self._retry = retry
        # Expiry is judged from counters seen in scans; a stale (eventually consistent) read could show an
        # old counter, so scans are strongly consistent by default. Lease tables are small.
        self._consistent = consistent_reads
        self._has_owner_index: bool | None = None

    @property
    def name(self) -> str:
        return self._name

    # --- table ---------------------------------------------------------------------------------------------

    async def ensure_exists(self, *, max_wait: float = 300.0, poll_interval: float = 0.5) -> bool:
        """Create the table (with the KCL 3.x owner index, on-demand billing) if missing; wait until ACTIVE.

        Returns True when this call created it. An existing table is used as it is, even without the index.
        """
        created = False
        description = await self._describe()
        if description is None:
            created = await self._create()
        try:
            async with asyncio.timeout(max_wait):
                while description is None or not _is_active(description):
                    await asyncio.sleep(poll_interval)
                    description = await self._describe()
        except TimeoutError:
            raise LeaseTableError(
                f"lease table {self._name!r} did not become ACTIVE within {max_wait} s", retryable=True
            ) from None
        self._has_owner_index = any(
            index["IndexName"] == OWNER_INDEX_NAME for index in description.get("GlobalSecondaryIndexes", ())
        )
        return created

    async def _describe(self) -> dict[str, Any] | None:
        try:
            response = await self._call("DescribeTable", lambda: self._client.describe_table(TableName=self._name))
        except LeaseTableError as error:
            if error.code == "ResourceNotFoundException":
                return None
            raise
        table: dict[str, Any] = response["Table"]
        return table

    async def _create(self) -> bool:
        log.info("lease_table.create", table=self._name)
        try:
            await self._call("CreateTable", lambda: self._client.create_table(**_table_definition(self._name)))
        except LeaseTableError as error:
            if error.code == "ResourceInUseException":  # another worker created it first
                return False
            raise
        return True

    # --- reads ---------------------------------------------------------------------------------------------

    async def list_leases(self) -> list[Lease]:
        """Every lease in the table (a paginated scan)."""
        leases: list[Lease] = []
        start_key: Item | None = None
        while True:
            kwargs: dict[str, Any] = {"TableName": self._name, "ConsistentRead": self._consistent}
            if start_key is not None:
                kwargs["ExclusiveStartKey"] = start_key
            page = await self._call("Scan", functools.partial(self._client.scan, **kwargs))
            leases.extend(Lease.from_item(item) for item in page.get("Items", ()) if is_lease_item(item))
            start_key = page.get("LastEvaluatedKey")
            if not start_key:
                return leases

    async def get_lease(self, lease_key: str) -> Lease | None:
        response = await self._call(
            "GetItem",
            lambda: self._client.get_item(TableName=self._name, Key=_key(lease_key), ConsistentRead=self._consistent),
            lease_key=lease_key,
        )
        item = response.get("Item")
        return Lease.from_item(item) if item and is_lease_item(item) else None

    async def lease_keys_of(self, owner: str) -> list[str]:
        """Keys of the leases whose leaseOwner is ``owner``: the owner index if the table has it, else a scan."""
        if self._has_owner_index is None:
            await self.ensure_exists()
        if not self._has_owner_index:
            return sorted(lease.lease_key for lease in await self.list_leases() if lease.lease_owner == owner)
        keys: list[str] = []
        start_key: Item | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self._name,
                "IndexName": OWNER_INDEX_NAME,
                "KeyConditionExpression": "#leaseOwner = :owner",
                "ExpressionAttributeNames": {"#leaseOwner": LEASE_OWNER},
                "ExpressionAttributeValues": {":owner": {"S": owner}},
            }
            if start_key is not None:
                kwargs["ExclusiveStartKey"] = start_key
            page = await self._call("Query", functools.partial(self._client.query, **kwargs))
            keys.extend(item[LEASE_KEY]["S"] for item in page.get("Items", ()))
            start_key = page.get("LastEvaluatedKey")
            if not start_key:
                return keys

    # --- writes --------------------------------------------------------------------------------------------

    async def create_lease(self, lease: Lease) -> bool:
        """Create the lease if no lease has its key. Returns False (and changes nothing) if one exists."""
        try:
            await self._call(
                "PutItem",
                lambda: self._client.put_item(
                    TableName=self._name,
                    Item=lease.to_new_item(),
                    ConditionExpression="attribute_not_exists(#leaseKey)",
                    ExpressionAttributeNames={"#leaseKey": LEASE_KEY},
                ),
                lease_key=lease.lease_key,
            )
        except _ConditionFailed:
            return False
        return True

    async def delete_finished(self, seen: Lease) -> bool:
        """Delete a finished (SHARD_END) lease, conditional on it being unchanged since it was seen.

        Returns False (and deletes nothing) when the lease changed, was deleted by a peer, or is not finished.
        Used by the clean-up of finished leases (see LeaseCoordinator), never on a lease being read.
        """
        if not seen.is_finished:
            raise ValueError(f"lease {seen.lease_key!r} is not finished (checkpoint {seen.checkpoint!r})")
        condition = "#checkpoint = :shardEnd AND #leaseCounter = :counter"
        try:
            await self._call(
                "DeleteItem",
                lambda: self._client.delete_item(
                    TableName=self._name,
                    Key=_key(seen.lease_key),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names(condition),
                    ExpressionAttributeValues={":shardEnd": _s(SHARD_END), ":counter": _n(seen.lease_counter)},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                ),
                lease_key=seen.lease_key,
            )
        except _ConditionFailed as failure:
            # A retried delete whose first attempt succeeded finds nothing: that is our own deletion.
            return failure.attempts > 1 and failure.current is None
        return True

    async def renew(self, lease: Lease, worker_id: str) -> Lease:
        """Counter + 1, conditional on the counter we hold and on still holding the lease.

        The returned item shows whether someone asked us to hand the lease over (checkpointOwner = us).
        """
        counter = lease.lease_counter
        try:
            return await self._update(
                lease.lease_key,
                update="SET #leaseCounter = :next",
                condition=f"#leaseCounter = :counter AND {_HOLDS}",
                values={":next": _n(counter + 1), ":counter": _n(counter), ":me": _s(worker_id)},
                applied=lambda now: now.lease_counter == counter + 1 and now.actual_owner == worker_id,
            )
        except _ConditionFailed as failure:
            raise _lost("renew", lease, worker_id, failure.current) from None

    async def checkpoint(
        self,
        lease: Lease,
        worker_id: str,
        checkpoint: str,
        sub_sequence: int = 0,
        *,
        child_shard_ids: Collection[str] = (),
    ) -> Lease:
        """Record a position; this is the fence: it fails unless we hold the lease at the counter we know.

        Like the KCL it resets ownerSwitchesSinceCheckpoint, drops a prepared (pending) checkpoint and bumps
        the counter.
        """
        _check_checkpoint(checkpoint, lease.lease_key)
        counter = lease.lease_counter
        update = (
            "SET #leaseCounter = :next, #checkpoint = :checkpoint, #checkpointSubSequenceNumber = :sub, "
            "#ownerSwitchesSinceCheckpoint = :zero"
        )
        values = {
            ":next": _n(counter + 1),
            ":counter": _n(counter),
            ":me": _s(worker_id),
            ":checkpoint": _s(checkpoint),
            ":sub": _n(sub_sequence),
            ":zero": _n(0),
        }
        if child_shard_ids:
            update += ", #childShardIds = :children"
            values[":children"] = {"SS": sorted(child_shard_ids)}
        update += " REMOVE #pendingCheckpoint, #pendingCheckpointSubSequenceNumber, #pendingCheckpointState"
        try:
            return await self._update(
                lease.lease_key,
                update=update,
                condition=f"#leaseCounter = :counter AND {_HOLDS}",
                values=values,
                applied=lambda now: (
                    now.lease_counter == counter + 1
                    and now.actual_owner == worker_id
                    and now.checkpoint == checkpoint
                    and now.checkpoint_sub_sequence == sub_sequence
                ),
            )
        except _ConditionFailed as failure:
            raise _lost("checkpoint", lease, worker_id, failure.current) from None

    async def take(self, seen: Lease, worker_id: str) -> Lease:
        """Become the owner of a lease seen unowned, expired, or handed to us; conditional on what was seen.

        Clears checkpointOwner: the previous owner is done (it removed it) or gone (expired).
        """
        counter = seen.lease_counter
        values = {":next": _n(counter + 1), ":counter": _n(counter), ":me": _s(worker_id)}
        if seen.lease_owner is None:
            owner_condition = "attribute_not_exists(#leaseOwner)"
        else:
            owner_condition = "#leaseOwner = :owner"
            values[":owner"] = _s(seen.lease_owner)
        update = "SET #leaseOwner = :me, #leaseCounter = :next"
        if seen.actual_owner not in (None, worker_id):
            update += ", #ownerSwitchesSinceCheckpoint = if_not_exists(#ownerSwitchesSinceCheckpoint, :zero) + :one"
            values.update({":zero": _n(0), ":one": _n(1)})
        try:
            return await self._update(
                seen.lease_key,
                update=update + " REMOVE #checkpointOwner",
                condition=f"#leaseCounter = :counter AND {owner_condition}",
                values=values,
                applied=lambda now: now.lease_counter == counter + 1 and now.lease_owner == worker_id,
            )
        except _ConditionFailed as failure:
            raise _contended("take", seen, worker_id, failure.current) from None

    async def request_handoff(self, seen: Lease, worker_id: str) -> Lease:
        """Ask the live owner to hand the lease over after checkpointing (KCL 3.x graceful hand-off).

        Sets leaseOwner = us and checkpointOwner = the current owner, who keeps processing, checkpoints, and
        then removes checkpointOwner. The counter is not changed, so the owner's renewals keep working.
        """
        if seen.lease_owner is None:
            raise ValueError(f"lease {seen.lease_key!r} has no owner to hand it over")
        owner = seen.lease_owner
        try:
            return await self._update(
                seen.lease_key,
                update="SET #leaseOwner = :me, #checkpointOwner = :owner",
                condition="#leaseOwner = :owner AND attribute_not_exists(#checkpointOwner)",
                values={":me": _s(worker_id), ":owner": _s(owner)},
                applied=lambda now: now.lease_owner == worker_id and now.checkpoint_owner == owner,
            )
        except _ConditionFailed as failure:
            raise _contended("request a hand-off of", seen, worker_id, failure.current) from None

    async def release(self, lease: Lease, worker_id: str) -> Lease:
        """Give the lease up: remove our ownership and bump the counter, conditional on holding it.

        If a hand-off to another worker is pending, removing checkpointOwner completes it (the next owner is
        already leaseOwner); otherwise leaseOwner is removed and any worker may take the lease at once.
        """
        try:
            return await self._release_once(lease, worker_id)
        except _ConditionFailed as failure:
            current = failure.current
            # Still ours at the same counter, but a hand-off was requested (or withdrawn) since our last
            # renewal: release in the mode the item is in now.
            if (
                current is not None
                and current.actual_owner == worker_id
                and current.lease_counter == lease.lease_counter
                and current.checkpoint_owner != lease.checkpoint_owner
            ):
                try:
                    return await self._release_once(current, worker_id)
                except _ConditionFailed as second:
                    current = second.current
            raise _lost("release", lease, worker_id, current) from None

    async def withdraw_handoff(self, lease: Lease, worker_id: str) -> Lease:
        """Cancel a hand-off we requested (we are stopping): the previous owner keeps the lease.

        Conditional on the request still pending; the previous owner's renewals carry on unchanged.
        """
        previous = lease.checkpoint_owner
        if previous is None or lease.lease_owner != worker_id:
            raise ValueError(f"lease {lease.lease_key!r} has no hand-off pending to worker {worker_id!r}")
        try:
            return await self._update(
                lease.lease_key,
                update="SET #leaseOwner = :previous REMOVE #checkpointOwner",
                condition="#leaseOwner = :me AND #checkpointOwner = :previous",
                values={":me": _s(worker_id), ":previous": _s(previous)},
                applied=lambda now: now.lease_owner == previous and now.checkpoint_owner is None,
            )
        except _ConditionFailed as failure:
            raise _contended("withdraw the hand-off of", lease, worker_id, failure.current) from None

    async def _release_once(self, lease: Lease, worker_id: str) -> Lease:
        counter = lease.lease_counter
        values = {":next": _n(counter + 1), ":counter": _n(counter), ":me": _s(worker_id)}
        if lease.checkpoint_owner == worker_id:
            # Completing a hand-off: the shard changes hands now, which the KCL counts as an owner switch.
            update = (
                "SET #leaseCounter = :next, "
                "#ownerSwitchesSinceCheckpoint = if_not_exists(#ownerSwitchesSinceCheckpoint, :zero) + :one "
                "REMOVE #checkpointOwner"
            )
            condition = "#checkpointOwner = :me"
            values.update({":zero": _n(0), ":one": _n(1)})
        else:
            update = "SET #leaseCounter = :next REMOVE #leaseOwner"
            condition = "#leaseOwner = :me AND attribute_not_exists(#checkpointOwner)"
        return await self._update(
            lease.lease_key,
            update=update,
            condition=f"#leaseCounter = :counter AND {condition}",
            values=values,
            applied=lambda now: now.lease_counter == counter + 1 and now.actual_owner != worker_id,
        )

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _update(
        self,
        lease_key: str,
        *,
        update: str,
        condition: str,
        values: dict[str, AttributeValue],
        applied: Callable[[Lease], bool],
    ) -> Lease:
        """One conditional UpdateItem returning the new item.

        ``applied`` recognises our own earlier attempt: when a retried call fails its condition because the
        first attempt did succeed (its answer was lost), the item already shows our change.
        """
        try:
            response = await self._call(
                "UpdateItem",
                lambda: self._client.update_item(
                    TableName=self._name,
                    Key=_key(lease_key),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_names(update, condition),
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                ),
                lease_key=lease_key,
            )
        except _ConditionFailed as failure:
            if failure.current is None:
                # DynamoDB returns the item with a failed condition (ALL_OLD), unless it no longer exists.
                # Stores without ReturnValuesOnConditionCheckFailure (dynalite, older DynamoDB-compatible
                # servers) never do: read it, so callers still learn who holds the lease (the take budget
                # and the error messages depend on it) and a spurious failure is still recognised.
                failure.current = await self._current_after_failure(lease_key)
            if failure.attempts > 1 and failure.current is not None and applied(failure.current):
                return failure.current
            raise
        return Lease.from_item(response["Attributes"])

    async def _current_after_failure(self, lease_key: str) -> Lease | None:
        """The lease as it is now, after a failed condition that came back without it; None if unreadable."""
        try:
            return await self.get_lease(lease_key)
        except LeaseTableError as error:
            log.debug("lease_table.read_after_condition_failed", lease_key=lease_key, error=str(error))
            return None

    async def _call(self, operation: str, request: Callable[[], Awaitable[T]], *, lease_key: str | None = None) -> T:
        """Run one DynamoDB request, retrying throttling and transient failures (streamkit.retry: exponential
        backoff with full jitter); map what remains to our exceptions."""
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return await request()

        def on_retry(error: BaseException, attempt_number: int) -> None:
            log.debug("lease_table.retry", operation=operation, lease_key=lease_key, error=str(error))

        try:
            return await retry(attempt, is_transient, self._retry, on_retry)
        except ClientError as error:
            code = _error_code(error)
            if code == "ConditionalCheckFailedException":
                item = error.response.get("Item")
                current = Lease.from_item(item) if item and is_lease_item(item) else None
                raise _ConditionFailed(current, attempts) from None
            raise self._table_error(operation, lease_key, code, str(error), attempts, is_transient(error)) from error
        except BotoCoreError as error:
            if not is_transient(error):
                raise  # a deployment problem (no credentials, a bad parameter): not the table's
            raise self._table_error(operation, lease_key, None, str(error), attempts, True) from error

    def _table_error(
        self, operation: str, lease_key: str | None, code: str | None, message: str, attempts: int, transient: bool
    ) -> LeaseTableError:
        subject = f" for lease {lease_key!r}" if lease_key else ""
        hint = ""
        if code == "ResourceNotFoundException":
            hint = " (the table does not exist: call LeaseTable.ensure_exists() or check the table name/region)"
        return LeaseTableError(
            f"{operation}{subject} on lease table {self._name!r} failed after {attempts} attempt(s): {message}{hint}",
            code=code,
            retryable=transient,
        )


# --- helpers ---------------------------------------------------------------------------------------------------


def _error_code(error: ClientError) -> str:
    code: str = error.response.get("Error", {}).get("Code", "")
    return code


def _string(item: Mapping[str, AttributeValue], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if value else None


def _integer(item: Mapping[str, AttributeValue], name: str) -> int | None:
    value = item.get(name)
    if not value or "N" not in value:
        return None
    text: str = value["N"]
    # Java writes longs, but accept "3.0": a tool may have rewritten the number.
    return int(text) if text.lstrip("-").isdigit() else int(float(text))


def _number(item: Mapping[str, AttributeValue], name: str) -> float | None:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else None


def _string_set(item: Mapping[str, AttributeValue], name: str) -> frozenset[str]:
    value = item.get(name)
    if not value:
        return frozenset()
    if "SS" in value:
        return frozenset(value["SS"])
    # Not the KCL's type, but a hand-written item may hold a single parent as a string.
    return frozenset({value["S"]}) if "S" in value else frozenset()


def _s(text: str) -> AttributeValue:
    return {"S": text}


def _n(number: int) -> AttributeValue:
    return {"N": str(number)}


def _key(lease_key: str) -> Item:
    return {LEASE_KEY: {"S": lease_key}}


def _names(*expressions: str) -> dict[str, str]:
    """ExpressionAttributeNames for every ``#name`` used (DynamoDB rejects unused ones).

    Every attribute goes through a placeholder because some KCL names are DynamoDB reserved words.
    """
    return {token: token[1:] for token in re.findall(r"#\w+", " ".join(expressions))}


def _check_checkpoint(checkpoint: str, lease_key: str) -> None:
    if checkpoint not in SENTINEL_CHECKPOINTS and not checkpoint.isdigit():
        raise ValueError(
            f"checkpoint {checkpoint!r} for lease {lease_key!r} is neither a sequence number (decimal digits) "
            f"nor one of {sorted(SENTINEL_CHECKPOINTS)}"
        )


def _describe_owner(lease: Lease | None) -> str:
    if lease is None:
        return "the lease no longer exists"
    holder = lease.actual_owner or "nobody"
    pending = f", hand-off to {lease.lease_owner!r} pending" if lease.handoff_pending else ""
    return f"now held by {holder!r} at counter {lease.lease_counter}{pending}"


def _lost(action: str, lease: Lease, worker_id: str, current: Lease | None) -> LeaseLostError:
    return LeaseLostError(
        f"cannot {action} lease {lease.lease_key!r}: worker {worker_id!r} no longer holds it "
        f"(expected counter {lease.lease_counter}; {_describe_owner(current)}). Stop processing this shard.",
        lease_key=lease.lease_key,
        worker_id=worker_id,
    )


def _contended(action: str, seen: Lease, worker_id: str, current: Lease | None) -> LeaseContendedError:
    return LeaseContendedError(
        f"worker {worker_id!r} could not {action} lease {seen.lease_key!r}: it changed since it was read "
        f"(seen owner {seen.lease_owner!r} at counter {seen.lease_counter}; {_describe_owner(current)})",
        lease_key=seen.lease_key,
        worker_id=worker_id,
        current=current,
    )


def _is_active(description: Mapping[str, Any]) -> bool:
    indexes: Iterable[Mapping[str, Any]] = description.get("GlobalSecondaryIndexes", ())
    return description.get("TableStatus") == "ACTIVE" and all(
        index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes
    )


def _table_definition(table_name: str) -> dict[str, Any]:
    """The KCL 3.x lease table: leaseKey hash key, the owner index (keys only), on-demand billing."""
    return {
        "TableName": table_name,
        "KeySchema": [{"AttributeName": LEASE_KEY, "KeyType": "HASH"}],
        "AttributeDefinitions": [
            {"AttributeName": LEASE_KEY, "AttributeType": "S"},
            {"AttributeName": LEASE_OWNER, "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "GlobalSecondaryIndexes": [
            {
                "IndexName": OWNER_INDEX_NAME,
                "KeySchema": [
                    {"AttributeName": LEASE_OWNER, "KeyType": "HASH"},
                    {"AttributeName": LEASE_KEY, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    }
