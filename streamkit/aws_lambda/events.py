"""Lambda event source mapping events turned into record batches, one per Kinesis shard or Kafka partition.

Lambda hands the function an already parsed event: Kinesis records under ``Records`` (one shard per
invocation in practice), Kafka records under ``records`` keyed by ``"<topic>-<partition>"``. This module is
the part every event shares: the batch of one shard or partition (:class:`EventPartition`), the base64 pass,
and :func:`decode_event`, which finds the decoder for the event's ``eventSource`` among the
``streamkit.lambda_events`` entry points. The decoders live next to their connectors
(``streamkit.connectors.kinesis.lambda_event``, ``streamkit.connectors.kafka.lambda_event``), so the core
imports no connector, and a package can add an event source the same way it adds a sink.

A record that cannot be decoded (bad base64, a malformed KPL aggregate) does not fail the invocation: it
stays in the batch as its raw bytes and is listed in :attr:`EventPartition.decode_failures`, so the handler
can dead-letter it or report it like any other failed record.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import repeat
from typing import Any, Literal, Protocol

import pybase64

from streamkit.batch import Partition, RecordBatch
from streamkit.plugins import available, load_plugin

__all__ = [
    "KAFKA_PARTITION_KEY",
    "EventDecoder",
    "EventFormatError",
    "EventKind",
    "EventPartition",
    "b64decode_all",
    "decode_event",
]

EventKind = Literal["kinesis", "kafka"]

KAFKA_PARTITION_KEY = "partition"
"""The key of a Kafka ``itemIdentifier`` naming the ``"<topic>-<partition>"`` (docs/lambda.md cites the
sources). Lambda fails the whole batch on an identifier with a bad key name, so it lives in one place."""


class EventFormatError(ValueError):
    """The event is not a Kinesis or Kafka event as Lambda delivers them."""


@dataclass(slots=True)
class EventPartition:
    """The records of one shard or topic-partition of an event, in order."""

    kind: EventKind
    partition: Partition
    batch: RecordBatch
    positions: Sequence[Any]
    """Per record: a Kinesis ``KinesisPosition`` (sequence number and KPL sub-sequence, built on demand,
    the same positions as the Kinesis source's) or a Kafka offset."""
    item_ids: Sequence[Any]
    """Per record: the sequence number or offset that Lambda's partial batch response names."""
    event_key: str = ""
    """Kafka: the ``records`` key (``"<topic>-<partition>"``), which the Kafka response repeats."""
    decode_failures: list[tuple[int, str]] = field(default_factory=list)
    """(record index, reason) of records whose bytes could not be decoded."""

    def __len__(self) -> int:
        return len(self.positions)

    def identifier(self, index: int) -> str | dict[str, Any]:
        """The ``itemIdentifier`` that makes Lambda retry from record ``index`` (see docs/lambda.md)."""
        if self.kind == "kinesis":
            return str(self.item_ids[index])
        return {KAFKA_PARTITION_KEY: self.event_key, "offset": self.item_ids[index]}


class EventDecoder(Protocol):
    """A ``streamkit.lambda_events`` entry point, registered under the ``eventSource`` it decodes."""

    def __call__(self, event: Mapping[str, Any], *, deaggregate: bool) -> list[EventPartition]: ...


def decode_event(event: Mapping[str, Any], *, deaggregate: bool = True) -> list[EventPartition]:
    """The partitions of a Kinesis, MSK or self-managed Kafka event, in the order the event lists them."""
    if not isinstance(event, Mapping):
        raise EventFormatError(f"expected the event as a mapping, got {type(event).__name__}")
    source: Any = None
    try:
        if "Records" in event:
            # Kinesis (and other record-list events) name their source on every record.
            records = event["Records"]
            if not records:
                return []
            source = records[0].get("eventSource")
        else:
            source = event.get("eventSource")
        decode = decoder_for(source) if isinstance(source, str) else None
        if decode is None:
            raise EventFormatError(
                f"unsupported event (eventSource {source!r}): streamkit handles {', '.join(_sources())}"
            )
        return decode(event, deaggregate=deaggregate)
    except (KeyError, TypeError, AttributeError) as exc:
        raise EventFormatError(f"malformed {source} event: {type(exc).__name__}: {exc}") from None


@cache
def _sources() -> tuple[str, ...]:
    return tuple(info.name for info in available("lambda_event"))


@cache
def decoder_for(source: str) -> EventDecoder | None:
    """The decoder registered for ``source`` (loaded once per process), or None when none is installed."""
    if source not in _sources():
        return None
    # load_plugin is typed for plugin classes; a decoder is a function, checked against the protocol here.
    loaded: Any = load_plugin("lambda_event", source, "eventSource")
    decoder: EventDecoder = loaded
    return decoder


# -------------------------------------------------------------------------------------------- base64

_b64 = pybase64.b64decode


def b64decode_all(texts: list[str]) -> tuple[list[bytes], list[tuple[int, str]]]:
    """Decode every base64 text; bad ones keep their text as bytes and are returned with the reason.

    One C-level pybase64 pass (the stdlib decoder costs as much as the JSON work, PERF_FACTS.md); only when
    that pass fails does decoding go record by record to find the bad ones.
    """
    try:
        # validate=True is pybase64's SIMD fast path and rejects junk instead of skipping it; positional
        # arguments because map() cannot pass keywords.
        return list(map(_b64, texts, repeat(None), repeat(True))), []
    except (binascii.Error, ValueError, TypeError):
        pass
    payloads: list[bytes] = []
    bad: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        try:
            payloads.append(_b64(text, None, True))
        except (binascii.Error, ValueError, TypeError) as exc:
            payloads.append(text.encode() if isinstance(text, str) else b"")
            bad.append((i, f"payload is not valid base64: {exc}"))
    return payloads, bad
