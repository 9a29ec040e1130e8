"""A stream's changelog record too large for one Kafka message, written in parts.

A stream record (``state_store.encode_stream_record``) grows with the predictions that
wait for their labels: a burst of late labels at a high rate once made one larger than
the changelog's message limit allows, and the replica stopped (fail-stop). Now a record
above the allowed size is cut into parts, each its own message keyed
``p/<k>/<stream>`` (``k`` = 0, 1, ...), followed by a small *head* keyed ``s/<stream>``
that carries the task's offsets and counts like any stream record, plus how many parts
there are, their total length and a CRC-32 of the whole. Parts and head are written in
the same transaction, so a ``read_committed`` reader sees all of them or none; the head
comes last, so the partition's newest record is still one that says where the task
resumes. Compaction keeps the newest value of each key: parts that a later, smaller
record no longer uses are deleted with tombstones by the writer, and ignored by a
reader either way (the head says how many count).

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
