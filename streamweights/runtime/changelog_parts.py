"""A stream's changelog record too large for one Kafka message, written in parts.

A stream record (``state_store.encode_stream``) once grew with the predictions that
wait for their labels (they are in join segment records of their own now, see below):
a burst of late labels at a high rate made one larger than the changelog's message
limit allows, and the replica stopped (fail-stop); a large state can still do that. Now a record
above the allowed size is cut into parts, each its own message keyed
``p/<k>/<stream>`` (``k`` = 0, 1, ...), followed by a small *head* keyed ``s/<stream>``
that carries the task's offsets and counts like any stream record, plus how many parts
there are, their total length and a CRC-32 of the whole. Parts and head are written in
the same transaction, so a ``read_committed`` reader sees all of them or none; the head
comes last, so the partition's newest record is still one that says where the task
resumes. Compaction keeps the newest value of each key: parts that a later, smaller
record no longer uses are deleted with tombstones by the writer, and ignored by a
reader either way (the head says how many count).

A stream's join writes its waiting predictions in *segment* records of their own (see
``join.PendingJoin.encoded_segments``), keyed ``j/<id>/<stream>``; one too large is
written in parts the same way, keyed ``q/<k>/<id>/<stream>``, its head under the
segment's key. A segment no longer read is deleted with a tombstone, parts and all.

Pure functions; the Kafka runtime calls them.
"""

from __future__ import annotations

import zlib
from typing import Any

from streamweights.adapters.state_codec import dumps_state
from streamweights.runtime.compression import compress
from streamweights.runtime.exceptions import SnapshotError

#: Key prefix of a stream record's parts (``p/<k>/<stream>``).
PART_KEY_PREFIX = b"p/"
#: Key prefix of a join segment's record (``j/<id>/<stream>``).
SEGMENT_KEY_PREFIX = b"j/"
#: Key prefix of a join segment record's parts (``q/<k>/<id>/<stream>``).
SEGMENT_PART_KEY_PREFIX = b"q/"
#: The ``format`` of a head record: a stream record (format 3 or 5) split into parts. A release
#: that does not know it refuses it by its number, with its own clear message.
SPLIT_STREAM_RECORD_FORMAT = 4
#: Fields a head adds to the task's offsets and counts (and its ``format``).
HEAD_FIELDS = ("parts", "bytes", "crc32")


def part_key(name: str, index: int) -> bytes:
    """The key of part ``index`` of stream ``name``'s record."""
    return PART_KEY_PREFIX + f"{index}/{name}".encode()


def parse_part_key(key: bytes) -> tuple[str, int] | None:
    """``(stream, index)`` of a part's key, or ``None`` if ``key`` is not one."""
    if not key.startswith(PART_KEY_PREFIX):
        return None
    index, slash, name = key[len(PART_KEY_PREFIX):].partition(b"/")
    if not slash or not index.isdigit():
        return None
    return name.decode("utf-8", "replace"), int(index)


def segment_key(name: str, segment: int) -> bytes:
    """The key of join segment ``segment`` of stream ``name``."""
    return SEGMENT_KEY_PREFIX + f"{segment}/{name}".encode()


def _number_and_rest(key: bytes, prefix: bytes) -> tuple[int, bytes] | None:
    if not key.startswith(prefix):
        return None
    number, slash, rest = key[len(prefix):].partition(b"/")
    if not slash or not number.isdigit():
        return None
    return int(number), rest


def parse_segment_key(key: bytes) -> tuple[str, int] | None:
    """``(stream, segment)`` of a join segment's key, or ``None`` if ``key`` is not one."""
    found = _number_and_rest(key, SEGMENT_KEY_PREFIX)
    return None if found is None else (found[1].decode("utf-8", "replace"), found[0])


def parse_segment_part_key(key: bytes) -> tuple[str, int, int] | None:
    """``(stream, segment, index)`` of a join segment part's key, or ``None``."""
    found = _number_and_rest(key, SEGMENT_PART_KEY_PREFIX)
    if found is None:
        return None
    segment = _number_and_rest(found[1], b"")
    if segment is None:
        return None
    return segment[1].decode("utf-8", "replace"), segment[0], found[0]


def record_part_key(key: bytes, index: int) -> bytes:
    """The key of part ``index`` of the record keyed ``key`` (``s/<stream>``: a stream
    record, ``j/<id>/<stream>``: a join segment)."""
    if key.startswith(SEGMENT_KEY_PREFIX):
        return SEGMENT_PART_KEY_PREFIX + str(index).encode() + b"/" + key[len(SEGMENT_KEY_PREFIX):]
    return PART_KEY_PREFIX + str(index).encode() + b"/" + key[2:]


def split_record(data: bytes, meta: dict[str, Any], allowed: int
                 ) -> tuple[list[bytes], bytes]:
    """``(parts, head)`` for a stream record ``data`` larger than ``allowed`` bytes: the
    parts are consecutive slices of at most ``allowed`` bytes, the head the compressed
    (``compression.compress``) JSON ``{"format": 4, **meta, "parts": n, "bytes":
    len(data), "crc32": ...}``."""
    if allowed < 1:
        raise ValueError(f"allowed must be positive, got {allowed}")
    parts = [data[start:start + allowed] for start in range(0, len(data), allowed)]
    head = {"format": SPLIT_STREAM_RECORD_FORMAT, **meta, "parts": len(parts),
            "bytes": len(data), "crc32": zlib.crc32(data)}
    return parts, compress(dumps_state(head).encode("utf-8"))


def is_split_head(document: dict[str, Any]) -> bool:
    """Whether a decoded changelog record is the head of a record written in parts."""
    return document.get("format") == SPLIT_STREAM_RECORD_FORMAT


def join_parts(head: dict[str, Any], parts: dict[int, bytes], where: str) -> bytes:
    """The whole stream record a head describes, from the newest value of each part, or
    SnapshotError naming ``where`` when a part is missing or the bytes do not check."""
    try:
        count, length, checksum = int(head["parts"]), int(head["bytes"]), int(head["crc32"])
    except (KeyError, TypeError, ValueError):
        raise SnapshotError(f"{where}: a split stream record's head lacks parts, bytes "
                            "or crc32") from None
    missing = [index for index in range(count) if index not in parts]
    if missing:
        raise SnapshotError(f"{where}: a stream record written in {count} parts lacks "
                            f"part(s) {missing}; the changelog topic lost records "
                            "(retention, or records deleted by hand)")
    data = b"".join(parts[index] for index in range(count))
    if len(data) != length or zlib.crc32(data) != checksum:
        raise SnapshotError(f"{where}: a stream record written in {count} parts does not "
                            f"check ({len(data):,} bytes, expected {length:,}, or a CRC "
                            "mismatch); its parts come from different commits")
    return data


def strip_head(document: dict[str, Any]) -> dict[str, Any]:
    """A head's task fields alone (offsets, counts, ...), as any stream record has them,
    with ``format`` kept: the split-specific fields removed."""
    return {key: value for key, value in document.items() if key not in HEAD_FIELDS}
