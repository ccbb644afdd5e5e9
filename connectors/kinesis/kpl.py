"""KPL aggregated-record format: detection and a hand-written protobuf decoder.

An aggregated record is ``MAGIC + protobuf(AggregatedRecord) + md5(protobuf)``, where::

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;  // Tag { required string key = 1; optional string value = 2; }
    }

The decoder handles exactly this message, so there is no protobuf dependency at runtime. As in
the Kinesis Client Library, a record without the magic, or whose digest does not match, is an
ordinary record and passes through. Unlike the KCL (which passes that through too), a message
whose digest matches but which does not decode raises KplDecodeError: the bytes are what a
producer wrote, so this is a real fault, and handing the blob on as data would hide it.
Key strings that are not valid UTF-8 are decoded with U+FFFD replacements, as protobuf-java does
for the KCL, rather than failing the shard; their hash keys are computed from the raw bytes.

:func:`expand` is the one deaggregation loop over a run of Kinesis records, used by the GetRecords
path (``decode.deaggregate``, for the Kinesis source) and by Lambda's Kinesis events
(``lambda_event``). With ``malformed="fail_record"`` a malformed aggregate does not stop the run:
it stays one record, its raw bytes, listed in ``failures`` with the reason, so the source can
dead-letter it and Lambda can report or dead-letter it like any other failed record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Literal, NamedTuple

__all__ = [
    "MAGIC",
    "Expanded",
    "KplDecodeError",
    "Malformed",
    "UserRecords",
    "any_aggregated",
    "effective_hash_key",
    "expand",
    "is_aggregated",
    "unpack",
]

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST_SIZE = 16
_MASK64 = (1 << 64) - 1
_MAX_HASH_KEY = (1 << 128) - 1
_MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number; a larger one is corruption

# Field keys (field_number << 3 | wire_type) of the fields we read, precomputed so the hot loop
# compares one small int instead of splitting every key.
_KEY_PK_TABLE = 1 << 3 | 2
_KEY_EHK_TABLE = 2 << 3 | 2
_KEY_RECORDS = 3 << 3 | 2
_KEY_PK_INDEX = 1 << 3 | 0
_KEY_EHK_INDEX = 2 << 3 | 0
_KEY_DATA = 3 << 3 | 2
_KEY_TAGS = 4 << 3 | 2
_KEY_TAG_KEY = 1 << 3 | 2


class KplDecodeError(ValueError):
    """An aggregated record with a valid digest whose protobuf cannot be decoded."""

    def __init__(self, sequence_number: str, reason: str) -> None:
        super().__init__(f"malformed KPL aggregated record at sequence number {sequence_number}: {reason}")
        self.sequence_number = sequence_number
        self.reason = reason


class _Malformed(Exception):
    """Internal: raised by the wire decoder, turned into KplDecodeError with the sequence number."""


class UserRecords(NamedTuple):
    """The user records kept from one aggregated record, in order, as columns."""

    payloads: list[bytes]
    partition_keys: list[str]
    explicit_hash_keys: list[str | None]
    # Index of each kept user record in the aggregated record; gaps where records were dropped.
    sub_sequence_numbers: list[int]
    # User records dropped because their effective hash key is outside the shard's range.
    dropped: int


Malformed = Literal["raise", "fail_record"]
"""What :func:`expand` does with a malformed aggregate: raise KplDecodeError, or keep it as one failed record."""


class Expanded(NamedTuple):
    """The user records of a run of Kinesis records, in order, as columns (index i: user record i)."""

    payloads: list[bytes]
    sequence_numbers: list[str]
    """The Kinesis record's sequence number, repeated for each of its user records."""
    sub_sequence_numbers: list[int]
    partition_keys: list[str]
    explicit_hash_keys: list[str | None]
    counts: list[int]
    """Per Kinesis record: how many user records it became (0 when all were dropped), for ``np.repeat``
    of per-record columns such as the arrival time."""
    aggregated: list[bool]
    """Per Kinesis record: whether it was expanded from an aggregate."""
    dropped: int
    """User records dropped because their effective hash key is outside the shard's range."""
    failures: dict[int, str]
    """``fail_record`` mode: user-record index -> reason, for malformed aggregates kept as one record."""


_first_byte = itemgetter(0)


def any_aggregated(payloads: Sequence[bytes]) -> bool:
    """Whether any payload starts with the KPL magic: the cheap test that lets a run skip :func:`expand`."""
    try:
        # One int per record first: ~2x cheaper than bytes.startswith(MAGIC) per record.
        if MAGIC[0] not in map(_first_byte, payloads):
            return False
    except IndexError:
        pass  # an empty payload somewhere: fall through to the exact scan
    return any(map(bytes.startswith, payloads, repeat(MAGIC)))


def expand(
    payloads: Sequence[bytes],
    sequence_numbers: Sequence[str],
    partition_keys: Sequence[str],
    hash_range: tuple[int, int] | None = None,
    *,
    malformed: Malformed = "raise",
) -> Expanded:
    """Expand every aggregated record of a run into its user records; plain records pass through.

    ``hash_range`` filters user records as :func:`unpack` does. A malformed aggregate raises
    KplDecodeError (``malformed="raise"``) or stays one record listed in ``failures``
    (``malformed="fail_record"``), so one producer fault does not stop the records around it.
    """
    # Local lists, not the tuple's attributes: this loop runs once per Kinesis record.
    out_payloads: list[bytes] = []
    out_sequences: list[str] = []
    out_subs: list[int] = []
    out_keys: list[str] = []
    out_ehks: list[str | None] = []
    counts: list[int] = []
    aggregated: list[bool] = []
    failures: dict[int, str] = {}
    dropped = 0
    for payload, sequence, key in zip(payloads, sequence_numbers, partition_keys, strict=True):
        users = None
        if payload.startswith(MAGIC):
            try:
                users = unpack(payload, sequence, hash_range)
            except KplDecodeError as exc:
                if malformed == "raise":
                    raise
                failures[len(out_payloads)] = str(exc)
        if users is None:
            out_payloads.append(payload)
            out_sequences.append(sequence)
            out_subs.append(0)
            out_keys.append(key)
            out_ehks.append(None)
            counts.append(1)
            aggregated.append(False)
            continue
        kept = len(users.payloads)
        out_payloads.extend(users.payloads)
        out_sequences.extend(repeat(sequence, kept))
        out_subs.extend(users.sub_sequence_numbers)
        out_keys.extend(users.partition_keys)
        out_ehks.extend(users.explicit_hash_keys)
        counts.append(kept)
        aggregated.append(True)
        dropped += users.dropped
    return Expanded(out_payloads, out_sequences, out_subs, out_keys, out_ehks, counts, aggregated, dropped, failures)


def effective_hash_key(partition_key: str, explicit_hash_key: str | None) -> int:
    """The 128-bit hash key Kinesis routes by: the explicit one, else MD5 of the partition key."""
    if explicit_hash_key is not None:
        return int(explicit_hash_key)
    digest = hashlib.md5(partition_key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def is_aggregated(payload: bytes) -> bool:
    """True when ``payload`` has the magic, a non-empty body and a matching MD5 digest."""
    # Same size rule as the KCL: magic plus more than a digest's worth of bytes.
    if len(payload) <= len(MAGIC) + _DIGEST_SIZE or not payload.startswith(MAGIC):
        return False
    # memoryview: hash the protobuf in place instead of copying up to 1 MiB.
    body = memoryview(payload)[len(MAGIC) : -_DIGEST_SIZE]
    return hashlib.md5(body, usedforsecurity=False).digest() == payload[-_DIGEST_SIZE:]


def unpack(payload: bytes, sequence_number: str, hash_range: tuple[int, int] | None = None) -> UserRecords | None:
    """Expand one Kinesis record's payload into its user records.

    Returns None when the payload is not an aggregated record (it is then an ordinary record).
    With ``hash_range`` (the shard's inclusive [start, end]), user records whose effective hash
    key falls outside it are dropped and counted: after a reshard the KPL may re-send them, so
    here they are duplicates.
    """
    if not is_aggregated(payload):
        return None
    try:
        pk_table, ehk_table, pk_idx, ehk_idx, datas = _parse(payload, len(MAGIC), len(payload) - _DIGEST_SIZE)
        return _assemble(pk_table, ehk_table, pk_idx, ehk_idx, datas, hash_range)
    except _Malformed as exc:
        raise KplDecodeError(sequence_number, str(exc)) from None
    except IndexError:
        # Only a varint can run off the end of the payload; other bounds are checked explicitly.
        raise KplDecodeError(sequence_number, "truncated varint at the end of the message") from None


def _assemble(
    pk_raw: list[bytes],
    ehk_raw: list[bytes],
    pk_idx: list[int],
    ehk_idx: list[int],
    datas: list[bytes],
    hash_range: tuple[int, int] | None,
) -> UserRecords:
    if pk_idx and max(pk_idx) >= len(pk_raw):
        raise _Malformed(f"partition_key_index {max(pk_idx)} >= table size {len(pk_raw)}")
    if ehk_idx and max(ehk_idx) >= len(ehk_raw):
        raise _Malformed(f"explicit_hash_key_index {max(ehk_idx)} >= table size {len(ehk_raw)}")
    n = len(datas)
    pk_table = [k.decode("utf-8", "replace") for k in pk_raw]
    ehk_table = [k.decode("utf-8", "replace") for k in ehk_raw]
    pks = [pk_table[i] for i in pk_idx]
    # -1 marks "field absent": as in the KCL, only a present index selects an explicit hash key.
    ehks: list[str | None] = [None if i < 0 else ehk_table[i] for i in ehk_idx]
    if hash_range is None or (hash_range[0] <= 0 and hash_range[1] >= _MAX_HASH_KEY):
        # No range, or a shard that owns the whole key space (a one-shard stream).
        return UserRecords(datas, pks, ehks, list(range(n)), 0)

    start, end = hash_range
    # Hash each table entry once: tables hold the distinct keys, usually far fewer than records.
    pk_hash = [int.from_bytes(hashlib.md5(k, usedforsecurity=False).digest(), "big") for k in pk_raw]
    ehk_hash = [_parse_hash_key(k) for k in ehk_table]
    if all(start <= h <= end for h in pk_hash) and all(start <= h <= end for h in ehk_hash):
        # Usual case (no reshard in between): every key is in range, no per-record work.
        return UserRecords(datas, pks, ehks, list(range(n)), 0)

    keep = [i for i in range(n) if start <= (pk_hash[pk_idx[i]] if ehk_idx[i] < 0 else ehk_hash[ehk_idx[i]]) <= end]
    return UserRecords(
        [datas[i] for i in keep],
        [pks[i] for i in keep],
        [ehks[i] for i in keep],
        keep,
        n - len(keep),
    )


def _parse_hash_key(text: str) -> int:
    # int() alone would also accept "+5", " 5" or "1_0"; a hash key is plain decimal digits.
    if not text.isdigit() or not text.isascii():
        raise _Malformed(f"explicit hash key {text!r} is not a decimal integer")
    return int(text)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; returns (value, next position). IndexError past the buffer."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            # Like protobuf, keep the low 64 bits of an over-long 10-byte varint.
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _skip(buf: bytes, pos: int, end: int, key: int) -> int:
    """Skip the value of an unknown field (or a known field with an unexpected wire type)."""
    if not 0 < key >> 3 <= _MAX_FIELD:
        raise _Malformed(f"invalid field number {key >> 3}")
    stack: list[int] = []  # field numbers of open groups; iterative so nesting cannot recurse deep
    while True:
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 3:
            stack.append(key >> 3)
        elif wire == 4:
            if not stack or stack.pop() != key >> 3:
                raise _Malformed("unmatched end-group")
        else:
            raise _Malformed(f"invalid wire type {wire}")
        if pos > end:
            raise _Malformed("field runs past the end of its message")
        if not stack:
            return pos
        key, pos = _varint(buf, pos)
        if not 0 < key >> 3 <= _MAX_FIELD:
            raise _Malformed(f"invalid field number {key >> 3}")


def _parse(buf: bytes, pos: int, end: int) -> tuple[list[bytes], list[bytes], list[int], list[int], list[bytes]]:
    """Decode AggregatedRecord from ``buf[pos:end]`` into tables and per-record columns.

    Works on offsets into the payload so nothing is copied except each record's data. Record
    indexes are resolved after the loop because protobuf lets fields arrive in any order.
    """
    pk_table: list[bytes] = []
    ehk_table: list[bytes] = []
    pk_idx: list[int] = []
    ehk_idx: list[int] = []
    datas: list[bytes] = []
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = _varint(buf, pos - 1)
        if key == _KEY_RECORDS:
            length, pos = _varint(buf, pos)
            rec_end = pos + length
            if rec_end > end:
                raise _Malformed("record runs past the end of the message")
            # Fast path for the layout the KPL writes: pk index, optional ehk index (both
            # one-byte varints), then data with a 1-2 byte length, ending the record exactly.
            # It saves a function call per user record. Reads may pass rec_end by a few bytes
            # but stay inside the payload (the 16-byte digest follows `end`); the final
            # equality check rejects any such misread and the general parser takes over.
            p = pos
            if buf[p] == _KEY_PK_INDEX and buf[p + 1] < 0x80:
                pki = buf[p + 1]
                p += 2
                ehki = -1
                if buf[p] == _KEY_EHK_INDEX and buf[p + 1] < 0x80:
                    ehki = buf[p + 1]
                    p += 2
                if buf[p] == _KEY_DATA:
                    length = buf[p + 1]
                    p += 2
                    if length >= 0x80:
                        # A second byte ends a 2-byte varint; a longer one takes the general path.
                        length = (length & 0x7F) | buf[p] << 7 if buf[p] < 0x80 else -1
                        p += 1
                    if length >= 0 and p + length == rec_end:
                        pk_idx.append(pki)
                        ehk_idx.append(ehki)
                        datas.append(buf[p:rec_end])
                        pos = rec_end
                        continue
            pki, ehki, data = _parse_record(buf, pos, rec_end)
            pk_idx.append(pki)
            ehk_idx.append(ehki)
            datas.append(data)
            pos = rec_end
        elif key in (_KEY_PK_TABLE, _KEY_EHK_TABLE):
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed("key table entry runs past the end of the message")
            (pk_table if key == _KEY_PK_TABLE else ehk_table).append(buf[pos : pos + length])
            pos += length
        else:
            pos = _skip(buf, pos, end, key)
    if pos != end:
        raise _Malformed("message runs past its end")
    return pk_table, ehk_table, pk_idx, ehk_idx, datas


def _parse_record(buf: bytes, pos: int, end: int) -> tuple[int, int, bytes]:
    pki = -1
    ehki = -1
    data: bytes | None = None
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = _varint(buf, pos - 1)
        if key == _KEY_DATA:
            length = buf[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(buf, pos - 1)
            data = buf[pos : pos + length]
            pos += length
        elif key in (_KEY_PK_INDEX, _KEY_EHK_INDEX):
            value = buf[pos]
            pos += 1
            if value >= 0x80:
                value, pos = _varint(buf, pos - 1)
            if key == _KEY_PK_INDEX:
                pki = value
            else:
                ehki = value
        elif key == _KEY_TAGS:
            # Tags are not surfaced (nor by the KCL) but are checked, so that what we accept
            # is what a protobuf runtime accepts.
            length, pos = _varint(buf, pos)
            _check_tag(buf, pos, min(pos + length, end))
            pos += length
        else:
            pos = _skip(buf, pos, end, key)
        if pos > end:
            raise _Malformed("record field runs past the end of the record")
    if pki < 0:
        raise _Malformed("record without the required partition_key_index")
    if data is None:
        raise _Malformed("record without the required data")
    return pki, ehki, data


def _check_tag(buf: bytes, pos: int, end: int) -> None:
    """Validate a Tag { required string key = 1; optional string value = 2; } without keeping it."""
    has_key = False
    while pos < end:
        key, pos = _varint(buf, pos)
        has_key = has_key or key == _KEY_TAG_KEY
        pos = _skip(buf, pos, end, key)
    if pos != end:
        raise _Malformed("tag runs past the end of its record")
    if not has_key:
        raise _Malformed("tag without the required key")
