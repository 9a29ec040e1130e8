"""Local-folder state: checksummed per-stream snapshots written incrementally, the one
before kept, and a lock on the folder.

A state folder holds::

    lock                          flock()ed by the one process using the folder; its text
                                  names that process (pid, host, start time)
    snapshot-000000000042.snap    the latest snapshot
    snapshot-000000000041.snap    the one before it: the fallback if the latest is damaged
    snapshot-000000000038.snap    ... back to the full snapshot the latest ones build on
    snapshot-000000000043.snap.corrupt   a damaged snapshot set aside at restore (kept
                                  for inspection, never read again)

A snapshot file (format 2) is one header line and a payload::

    streamweights-snapshot 2 bytes=<payload length> crc32=<8 hex> sha256=<64 hex>\\n<payload>

On load the header must be exactly the header of the payload that follows it: a changed
byte anywhere in the file is refused (in the payload CRC-32 catches every change of up to
four consecutive bytes with certainty and SHA-256 everything else; in the header the
regenerated text differs).

The payload is per stream (what the service writes)::

    streamweights-streams\\n<meta JSON>\\n<stream record><stream record>...

``meta`` holds the input position, the output sinks' byte positions, the dead-letter
counts, ``base`` (the number of the full snapshot this one builds on), ``records``
(``[[stream, bytes], ...]``: which stream records follow, in order) and ``segments``
(``[[stream, id, bytes], ...]``: the join segment records that follow those); in a full
snapshot that copied records from older ones, ``written`` (``{stream: position}``: the
input position each copied record was taken at; the others, this snapshot's); in one
that left changed streams unwritten (spread checkpoints, ``service.LocalCheckpoints``;
such a snapshot is format 3), ``replay_from``: the oldest input position among those
streams' records, from which a restore replays the input into them; with a file
source, ``input`` (``{"bytes", "crc32"}``: the prefix of the file read, or the whole
table, which a restore checks first: ``runtime.input_digest``). A stream
record and a segment record are :func:`encode_stream`'s bytes, the same bytes the Kafka
runtime writes to its changelog topic keyed by the stream (and segment). A *full*
snapshot holds a record of every stream and every segment its joins read; an
*incremental* one only the streams changed since the snapshot before it, and of their
joins only the new segments (a waiting prediction is written once, not at every commit
of its stream). Restoring snapshot N reads N, N-1, ... back to its base and takes each
stream's newest record and the segments it lists, so a commit writes only what changed
while a restore reads every stream once. When the
incremental snapshots since the base add up to more than the base itself (or 64 of them),
the next commit writes a full one, which bounds the folder at about three times the
state and the restore at 64 files. The payload of a whole-state JSON document (format 2
as the previous release wrote it) still loads, as does format 1 (``snapshot.json``).

Writing goes to a temporary file in the same folder, is fsync'ed, renamed to the next
number and the folder is fsync'ed; only then are snapshots that neither the latest nor
the one before it need removed. So after a crash at any instant the folder holds the last
complete snapshot and what it builds on, whole, and normally the one before it.

Guarantees: restoring a snapshot and replaying input from its position reproduces what an
uninterrupted run computes, bit for bit. Failure scenarios: a crash between two
checkpoints loses no input (it is replayed) and duplicates no output (file sinks are
truncated back to the snapshot's positions); a damaged latest snapshot is set aside and
the previous one restored (loudly), which is just as exact, only older; a damaged
snapshot that later ones build on takes them with it (they are set aside too).
Limitations: one process per folder (enforced by the lock); the folder must be on a local
file system (atomic rename, and ``flock`` that works: not NFS).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import pathlib
import re
import socket
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from streamweights.adapters.base import configs_packed
from streamweights.adapters.state_codec import (
    dumps_state,
    loads_packed,
    loads_state,
    pack_state_raw,
    unpack_state,
)
from streamweights.join import SEGMENT_BYTES, decode_entry
from streamweights.runtime import faults
from streamweights.runtime.compression import compress, decompress
from streamweights.runtime.exceptions import RuntimeSetupError, SnapshotError

if TYPE_CHECKING:
    from streamweights.pipeline import StreamPipeline

#: Bumped when the snapshot layout changes. 1: ``snapshot.json``, plain JSON with sorted
#: keys and no checksum (read, with a warning, and replaced at the next checkpoint).
#: 2: numbered files with a checksummed header, keys in their order; the payload either
#: one whole-state JSON document (the previous release; read) or, told apart by its first
#: line, per-stream records written incrementally (this release; see the module doc).
#: The header's format stays 2 because the frame did not change: a reader that knows the
#: frame checks the bytes before it looks at the payload's first line.
#: 3: a per-stream payload as 2, but one that leaves some changed streams unwritten
#: (``replay_from`` in its meta: a restore must replay the input into them, see
#: ``service.LocalCheckpoints``). A release that reads 2 would restore such a snapshot
#: with those streams behind, silently; the number moves so that it refuses it instead.
#: Written only when a snapshot needs the replay, so a folder of a run whose checkpoints
#: write every changed stream still restores with the release before.
SNAPSHOT_FORMAT = 2
REPLAY_SNAPSHOT_FORMAT = 3
#: The snapshot formats this build reads in a numbered file's header.
SNAPSHOT_FORMATS = (SNAPSHOT_FORMAT, REPLAY_SNAPSHOT_FORMAT)
LEGACY_SNAPSHOT_FILE = "snapshot.json"
LOCK_FILE = "lock"
MAGIC = b"streamweights-snapshot"
#: The header is a few dozen bytes; looking this far for its end bounds the work spent on
#: a file that is not a snapshot at all.
_HEADER_MAX = 256
_HEADER = re.compile(rb"streamweights-snapshot (?P<format>[0-9]{1,6}) .*")
_NAME = re.compile(r"snapshot-(?P<seq>[0-9]{12})\.snap")
#: First line of a per-stream payload (a whole-state payload is a JSON document: "{").
STREAMS_MAGIC = b"streamweights-streams\n"
#: Layout of one stream record (its JSON document's "format"). 2: the stream's state as
#: ``dumps_state`` writes it (the previous release; read). 3: the state packed
#: (``state_codec.pack_state``: arrays and long float lists in one base64 string) and each
#: of the join's waiting predictions as ``join.encode_entry``'s compact ``[id, ts,
#: skeleton, data]`` (``join.encode_entry``). 5: as 3, but a waiting prediction
#: of a classification stream on the native chain may hold the core's flat record of it
#: (``{"buffer": ...}``, see ``StreamPipeline.on_prediction``) instead of its trace
#: arrays; a release that reads 3 would take it for a broken entry, so the number moves
#: and such a release refuses the record with its own clear line. (4 is the head of a
#: record split into parts, ``changelog_parts``.) 6: as 5, but the join's waiting
#: predictions are not in the record: they are in *segment* records of their own, written
#: once each (see ``join.PendingJoin.encoded_segments``), and the record holds their
#: layout (which segments, which of their entries still wait). 7: as 6, but the packed
#: state's data is not a base64 string inside the JSON text: the text ends at a newline
#: and the data's bytes follow it (``"data"`` is their length; see :func:`record_text`).
STREAM_RECORD_FORMAT = 7
#: The stream record formats this build reads (3 and 5 are decoded alike).
STREAM_RECORD_FORMATS = (2, 3, 5, 6, 7)
#: The format whose packed data follows its text (the one :func:`encode_stream` writes).
_RAW_DATA_FORMAT = 7
#: How such a record's text starts (its head is written format first): only such a text
#: is cut at its first newline (:func:`record_text`). No JSON text written here holds a
#: raw newline (compact separators; a newline in a string is escaped), so the cut is
#: where the text ends.
_RAW_DATA_HEAD = b'{"format":%d,' % _RAW_DATA_FORMAT
#: At most this many snapshots from a full one to the latest: bounds the files a restore
#: reads (64 x a commit's few hundred microseconds of reading = well under a second).
MAX_CHAIN = 64


class StateLockedError(RuntimeSetupError):
    """Another process holds the state folder."""


class SnapshotFormatError(SnapshotError):
    """A snapshot of a format this build does not read (written by another release):
    not damage, so no fallback to an older snapshot either."""


def snapshot_header(payload: bytes, version: int = SNAPSHOT_FORMAT) -> bytes:
    """The header line (with its newline) that belongs to ``payload`` of format
    ``version``."""
    return (f"streamweights-snapshot {version} bytes={len(payload)} "
            f"crc32={zlib.crc32(payload):08x} sha256={hashlib.sha256(payload).hexdigest()}\n"
            ).encode("ascii")


def encode_snapshot(snapshot: dict[str, Any]) -> bytes:
    """A whole-state snapshot file's bytes: header, then the payload."""
    return frame_payload(dumps_state({"format": SNAPSHOT_FORMAT, **snapshot}).encode("utf-8"))


def frame_payload(payload: bytes, version: int = SNAPSHOT_FORMAT) -> bytes:
    """A snapshot file's bytes: the header that belongs to ``payload``, then it."""
    return snapshot_header(payload, version) + payload


def decode_snapshot(data: bytes, where: str) -> dict[str, Any]:
    """The snapshot in ``data`` (a file's bytes), or SnapshotError saying what is wrong
    with it; ``where`` names the file in the message."""
    end = data.find(b"\n", 0, _HEADER_MAX)
    if not data.startswith(MAGIC) or end < 0:
        raise SnapshotError(f"{where}: damaged snapshot (no streamweights-snapshot header)")
    header, payload = data[:end + 1], data[end + 1:]
    parsed = _HEADER.fullmatch(header[:-1])
    version = int(parsed["format"]) if parsed is not None else SNAPSHOT_FORMAT
    expected = snapshot_header(payload, version)
    if version not in SNAPSHOT_FORMATS and header != expected:
        # (a file of ours whose format digit alone was hit is damage, handled below)
        raise SnapshotFormatError(
            f"{where}: snapshot format {version}, this build reads formats 1, "
            f"{listed_formats(SNAPSHOT_FORMATS)}; restore with the release that wrote it, or "
            "start from an empty state_dir")
    if header != expected or version not in SNAPSHOT_FORMATS:
        raise SnapshotError(f"{where}: damaged snapshot (its {len(payload)} bytes do not "
                            "match the length and checksums in its header)")
    try:
        if payload.startswith(STREAMS_MAGIC):
            snapshot = _decode_streams_payload(payload)
        else:
            snapshot = loads_state(payload)
    except (ValueError, RecursionError, KeyError, TypeError) as error:  # checksummed, so
        # written that way
        raise SnapshotError(f"{where}: snapshot passes its checksum but cannot be "
                            f"decoded ({type(error).__name__}: {error})") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") not in SNAPSHOT_FORMATS:
        raise SnapshotError(f"{where}: snapshot passes its checksum but is not a format-"
                            f"{SNAPSHOT_FORMAT} state document")
    if snapshot["format"] != version:  # the checksums do not cover the header's digit
        raise SnapshotError(f"{where}: damaged snapshot (its header says format {version}, "
                            f"its payload {snapshot['format']})")
    return snapshot


@dataclass
class StreamRecords:
    """One stream's share of a commit (:func:`encode_stream`)."""

    #: The stream's record: its state and the layout of its join's segments.
    record: bytes
    #: ``(segment id, bytes)`` of each new segment of its join: a record of its own.
    segments: list[tuple[int, bytes]]
    #: The join's segments no longer read (a changelog deletes their keys).
    dropped: list[int]
    #: The ids of the segments ``record`` lists (old ones and new ones), in its order.
    listed: list[int] = field(default_factory=list)


def stream_record_head(meta: dict[str, Any] | None = None) -> str:
    """The JSON text a stream record of :func:`encode_stream` starts with, its format and
    ``meta``: the same for every stream of a commit (a Kafka task's offsets and counts),
    so a commit renders it once (~7 µs a stream otherwise)."""
    return dumps_state({"format": STREAM_RECORD_FORMAT, **(meta or {})})


def encode_stream(name: str, stream: StreamPipeline, meta: dict[str, Any] | None = None,
                  rebase: bool = False, segment_bytes: int = SEGMENT_BYTES,
                  head: str | None = None, settings: str | None = None) -> StreamRecords:
    """One stream's state as records, each one zstd frame (``compression.compress``).
    The stream's record is the JSON text
    ``{"format": 7, **meta, "streams": {name: {"state": skeleton, "data": length,
    "join": layout}}}``, a newline and ``length`` bytes of data: the stream's state
    without the join's waiting predictions packed by ``state_codec.pack_state_raw`` (its
    arrays' and long float lists' bytes, one after the other), and which of the join's
    segments hold the waiting predictions. Each new segment is a record
    ``{"format": 7, "stream": name, "segment": id, "entries": [entry, ...]}`` (JSON) of
    ``join.encode_entry`` texts (see ``join.PendingJoin.encoded_segments``): the join is
    written incrementally, each waiting prediction once, unless ``rebase`` asks for every
    one afresh (a snapshot that must stand alone). The same bytes go to a local snapshot
    (no ``meta``) and, with the task's offsets and counts as ``meta``, to the Kafka
    changelog, keyed by the stream (and segment); ``head``, when given, is
    :func:`stream_record_head` of that ``meta``. ``settings``, the stream's own settings
    digest (``settings_digest.SettingsDigests.streams``), goes in as
    ``"stream_settings"``, so that a restore checks each stream against its own
    settings. Deterministic: a stream restored from its records writes the same
    records."""
    with configs_packed():  # (the same bytes: each adapter's config packed once, kept)
        tree = stream.state_dict(join_entries=False)
    skeleton, data = pack_state_raw(tree)
    delta = stream.join.encoded_segments(segment_bytes, rebase)
    if head is None:
        head = stream_record_head(meta)
    quoted = json.dumps(name)
    if settings is not None:  # (a hex digest: nothing to escape)
        head = f'{head[:-1]},"stream_settings":"{settings}"}}'
    # (the join's layout is ints and lists: orjson writes json.dumps' tight text, 20x faster)
    text = (f'{head[:-1]},"streams":{{{quoted}:{{"state":{skeleton},"data":{len(data)},'
            f'"join":{orjson.dumps(delta.layout).decode()}}}}}}}\n')
    segments = [(segment, compress(
        f'{{"format":{STREAM_RECORD_FORMAT},"stream":{quoted},"segment":{segment},'
        f'"entries":{entries}}}'.encode())) for segment, entries in delta.segments]
    return StreamRecords(compress(text.encode("utf-8") + data), segments, list(delta.dropped),
                         [int(segment) for segment, _, _ in delta.layout["segments"]])


def record_text(data: bytes) -> tuple[bytes, bytes | None]:
    """A decompressed record's JSON text and, for a format-7 stream record, the packed
    data's bytes that follow it (``None`` for any other record: all of it is text)."""
    if data.startswith(_RAW_DATA_HEAD):
        end = data.find(b"\n")
        if end >= 0:
            return data[:end], data[end + 1:]
    return data, None


def _join_entries(name: str, layout: dict[str, Any], segments: Mapping[int, bytes],
                  where: str) -> list[list[Any]]:
    """The waiting predictions a format-6 or 7 record's join ``layout`` lists, read from its
    segments' records (``segments``: id -> bytes), in arrival order."""
    entries = []
    for segment, size, gone in layout["segments"]:
        data = segments.get(int(segment))
        if data is None:
            raise SnapshotError(f"{where}: stream {name!r} lacks segment {segment} of its "
                                "join's waiting predictions (records lost or deleted by hand)")
        document = loads_state(decompress(data))
        found = document.get("entries") if isinstance(document, dict) else None
        if (not isinstance(found, list) or document.get("stream") != name
                or document.get("segment") != segment or len(found) != size):
            raise SnapshotError(f"{where}: stream {name!r}'s join segment {segment} is not "
                                f"the one its record lists ({size} entries)")
        left = set(gone)
        entries.extend(decode_entry(entry) for index, entry in enumerate(found)
                       if index not in left)
    return entries


class _ByStreamName(Mapping[str, Any]):
    """A mapping over a fixed collection of stream names (``_names``), its values
    computed by the subclass's ``__getitem__``."""

    _names: Collection[str]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class StreamStates(_ByStreamName):
    """The stream states of a per-stream snapshot (or a Kafka task's changelog), by
    stream name, each decoded from its record when asked for, again at each ask: none is
    held here. A restore takes them one at a time, so one stream's parse tree is freed
    before the next one is built; decoded all at once, the trees' small objects (a few of
    which the streams keep) were spread over Python's memory arenas, which then could not
    be given back: a fresh process that restored 200 mature demo streams held 228 KB a
    stream, 152 KB decoding one at a time (``bench/streams.py``'s mature step). Each
    stream decoded leaves a few fields of its record (:meth:`field`): its settings digest,
    the task's record count it was written at, the join segments it lists.

    ``decode(name)`` gives stream ``name``'s state and its record's other fields
    (``decode_stream_record``'s last two), or raises SnapshotError."""

    def __init__(self, names: Collection[str],
                 decode: Callable[[str], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self._names = names
        self._decode = decode
        self._fields: dict[str, dict[str, Any]] = {}

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name not in self._names:
            raise KeyError(name)
        state, fields = self._decode(name)
        layout = state["join"].get("segments")
        self._fields[name] = {
            "stream_settings": fields.get("stream_settings"),
            "records": int(fields.get("records", 0)),
            "listed": [] if layout is None else [int(segment) for segment, _, _
                                                 in layout["segments"]]}
        return state

    def field(self, name: str, key: str) -> Any:
        """Field ``key`` of stream ``name``'s record (``stream_settings``: its settings
        digest, ``None`` if it has none; ``records``: the task's record count it was
        written at; ``listed``: the join segments it lists), decoded for it if the stream
        has not been yet."""
        found = self._fields.get(name)
        if found is None:
            self[name]  # (decoded for its fields; the tree is dropped)
            found = self._fields[name]
        return found[key]

    # (Views made when asked for, not held: held, they would make a reference cycle,
    # which the restore's frozen heap would keep, records and all.)
    def view(self, key: str) -> Mapping[str, Any]:
        """Field ``key`` of every stream's record (:meth:`field`), by stream name."""
        return _StreamField(self, key)

    @property
    def settings(self) -> Mapping[str, str | None]:
        """Each stream's settings digest (``None``: its record has none)."""
        return self.view("stream_settings")

    @property
    def listed(self) -> Mapping[str, list[int]]:
        """The join segments each stream's record lists."""
        return self.view("listed")


def _snapshot_stream(records: dict[str, bytes], segments: dict[str, dict[int, bytes]],
                     where: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stream ``name``'s state and fields from its record in a per-stream snapshot."""
    where = f"{where} (stream {name!r})"
    decoded, state, fields = decode_stream_record(records[name], where,
                                                  segments.get(name, {}))
    if decoded != name:
        raise SnapshotError(f"{where}: the record holds stream {decoded!r}")
    return state, fields


def _decoded_whole(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with its :class:`StreamStates` and their fields as plain dicts (each
    stream decoded once)."""
    states = snapshot.get("pipeline", {}).get("streams")
    if not isinstance(states, StreamStates):
        return snapshot
    streams = {name: states[name] for name in states}
    return {**snapshot, "pipeline": {**snapshot["pipeline"], "streams": streams},
            "listed": dict(states.listed), "stream_settings": dict(states.settings)}


class _StreamField(_ByStreamName):
    """One of :class:`StreamStates`' per-stream fields, by stream name."""

    def __init__(self, states: StreamStates, key: str) -> None:
        self._names = states._names
        self._states = states
        self._key = key

    def __getitem__(self, name: str) -> Any:
        return self._states.field(name, self._key)


def saved_stream_settings(snapshot: dict[str, Any]) -> dict[str, str | None]:
    """Each stream's settings digest in a snapshot :meth:`LocalStateStore.load_latest`
    gave (``None`` for a stream whose record has none: a snapshot of a release before
    per-stream digests, or one whole snapshot)."""
    saved = snapshot.get("stream_settings")
    return saved if saved is not None else dict.fromkeys(snapshot["pipeline"]["streams"])


def listed_formats(numbers: tuple[int, ...]) -> str:
    """Format numbers as a refusal message names them: ``2, 3 and 5``."""
    words = [str(number) for number in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def decode_stream_record(data: bytes, where: str, segments: Mapping[int, bytes] | None = None
                         ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The stream name, its state (as ``StreamPipeline.state_dict()`` gives it, plus the
    join's segment layout) and the record's other fields (``meta``) in a stream record of
    :func:`encode_stream` (format 7; ``segments`` holds the stream's join segment
    records by id) or of earlier releases (format 6, the data as base64 in the text;
    formats 5, 3 and 2, the join inline), or SnapshotError naming ``where``."""
    try:
        text, raw = record_text(decompress(data))
        # Formats 6 and 7 have one packed tree (the stream's state): the parser builds it
        # whole (state_codec.loads_packed). Earlier ones are parsed again, plainly.
        document, packed_slots = loads_packed(text, None if raw is None else len(raw))
        version = document.get("format") if isinstance(document, dict) else None
        if version not in STREAM_RECORD_FORMATS:
            raise SnapshotFormatError(
                f"{where}: stream record format {version}, this build reads "
                f"{listed_formats(STREAM_RECORD_FORMATS)}; restore with the release "
                "that wrote it, or start from an empty state")
        if (version == _RAW_DATA_FORMAT) != (raw is not None):
            raise ValueError(f"a format-{version} record "
                             + ("without its data's bytes" if raw is None else
                                "with bytes after its text"))
        if version < 6:
            document = loads_state(text)
        ((name, state),) = document.pop("streams").items()
        if version >= 6:
            packed = state
            if raw is None:
                packed_slots.fill(packed["data"])
            elif type(packed["data"]) is not int or packed["data"] != len(raw):
                raise ValueError(f"its data is {len(raw)} bytes, its text says "
                                 f"{packed['data']}")
            else:
                packed_slots.fill_raw(raw)
            state = packed["state"]
            layout = packed["join"]
            state["join"]["entries"] = _join_entries(str(name), layout, segments or {},
                                                     where)
            state["join"]["segments"] = layout
        elif version in (3, 5):
            packed = state
            state = unpack_state(packed["state"], packed["data"])
            state["join"]["entries"] = [decode_entry(e) for e in packed["entries"]]
        return str(name), state, document
    except SnapshotError:
        raise
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
        raise SnapshotError(f"{where}: stream record cannot be decoded "
                            f"({type(error).__name__}: {error})") from None


def encode_streams_payload(meta: dict[str, Any], records: list[tuple[str, bytes]],
                           segments: list[tuple[str, int, bytes]] = ()) -> bytes:
    """A per-stream snapshot payload (see the module docstring): ``records`` are the
    stream records, ``segments`` the join segment records, ``(stream, id, bytes)``."""
    head = {"format": _streams_payload_format(meta), **meta,
            "records": [[name, len(data)] for name, data in records]}
    if segments:
        head["segments"] = [[name, segment, len(data)] for name, segment, data in segments]
    return (STREAMS_MAGIC + dumps_state(head).encode("utf-8") + b"\n"
            + b"".join(data for _, data in records)
            + b"".join(data for _, _, data in segments))


def _decode_streams_payload(payload: bytes) -> dict[str, Any]:
    """The meta of a per-stream payload, its stream records (undecoded) under
    ``stream_records`` as ``[(name, bytes), ...]`` and its join segment records under
    ``segment_records`` as ``[(name, id, bytes), ...]``."""
    start = len(STREAMS_MAGIC)
    end = payload.index(b"\n", start)
    meta = loads_state(payload[start:end])
    records = []
    offset = end + 1
    for name, size in meta.pop("records"):
        records.append((str(name), payload[offset:offset + int(size)]))
        offset += int(size)
    segments = []
    for name, segment, size in meta.pop("segments", ()):
        segments.append((str(name), int(segment), payload[offset:offset + int(size)]))
        offset += int(size)
    if offset != len(payload):
        raise ValueError(f"its stream records end at byte {offset}, the payload at "
                         f"{len(payload)}")
    meta["stream_records"] = records
    meta["segment_records"] = segments
    return meta


def _take_newest(found: dict[str, Any], records: dict[str, tuple[bytes, int]],
                 segments: dict[str, dict[int, bytes]]) -> None:
    """Add one per-stream snapshot's records, read newest snapshot first, to ``records``
    (``{stream: (bytes, input position it was taken at)}``) and ``segments`` (``{stream:
    {id: bytes}}``): a stream or segment already there came from a newer snapshot and
    stays. A record a full snapshot copied from an older one keeps that one's position
    (its meta's ``written``); the others have this snapshot's."""
    position, positions = int(found["position"]), found.get("written", {})
    for name, data in found["stream_records"]:
        if name not in records:
            records[name] = (data, int(positions.get(name, position)))
    for name, segment, data in found["segment_records"]:
        segments.setdefault(name, {}).setdefault(segment, data)


def _streams_payload_format(meta: dict[str, Any]) -> int:
    """The format of a per-stream snapshot with ``meta``: 3 when it left changed streams
    for a restore to replay (``replay_from``), else 2."""
    return REPLAY_SNAPSHOT_FORMAT if "replay_from" in meta else SNAPSHOT_FORMAT


@dataclass
class Chain:
    """The snapshots the latest one builds on: from ``base`` (a full one) to the latest."""

    base: int
    length: int
    base_bytes: int
    delta_bytes: int


@dataclass
class Loaded:
    """What :meth:`LocalStateStore.load_latest` found."""

    snapshot: dict[str, Any]
    path: pathlib.Path
    #: Newer snapshots that were damaged, with the reason, newest first (set aside).
    damaged: list[tuple[pathlib.Path, str]] = field(default_factory=list)
    #: The snapshot is format 1 (no checksum).
    legacy: bool = False


class LocalStateStore:
    """Snapshots in a local folder."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self._seq: int | None = None
        self._saves = 0
        #: What the latest per-stream snapshot builds on (None: no such snapshot yet).
        self._chain: Chain | None = None
        #: The last per-stream write failed: the next one is full.
        self._failed = False

    def snapshots(self) -> list[tuple[int, pathlib.Path]]:
        """The folder's snapshot files (damaged ones included), newest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as error:
            raise SnapshotError(f"state_dir {self.directory}: cannot list it "
                                f"({error.strerror})") from None
        found = [(int(m["seq"]), self.directory / name) for name in names
                 if (m := _NAME.fullmatch(name)) is not None]
        return sorted(found, reverse=True)

    def save(self, snapshot: dict[str, Any]) -> int:
        """Write ``snapshot`` as a whole-state JSON document (the previous release's
        payload) as the next numbered file, atomically; return its size in bytes."""
        data = encode_snapshot(snapshot)
        seq = self._next_seq()
        self._write(seq, data, keep_from=seq - 1 if self._chain is None
                    else min(seq - 1, self._chain.base))
        self._chain = None
        return len(data)

    def needs_full(self) -> bool:
        """The next :meth:`save_streams` has to be full: there is no per-stream snapshot
        to build on, a write failed since the last one (the joins took the segments it
        held for written), or the ones since the last full snapshot are many
        (``MAX_CHAIN``) or add up to more bytes than it."""
        chain = self._chain
        return (chain is None or self._failed or chain.length >= MAX_CHAIN
                or chain.delta_bytes > chain.base_bytes)

    def save_streams(self, meta: dict[str, Any], records: list[tuple[str, bytes]],
                     full: bool, segments: list[tuple[str, int, bytes]] = ()) -> int:
        """Write a per-stream snapshot as the next numbered file, atomically: ``meta``
        (position, sinks, counts), ``records`` (``[(stream, encode_stream(...).record)]``)
        and the join segments written with them (``[(stream, id, bytes)]``): every
        stream's record and every live segment if ``full``, else only the changed
        streams' records and their new segments (the rest are read from the snapshots
        before it). Remove the files that neither this snapshot nor the one before it
        needs; return the size in bytes."""
        if not full and self._chain is None:
            raise ValueError("save_streams: an incremental snapshot needs a per-stream "
                             "snapshot to build on (check needs_full() first)")
        seq = self._next_seq()
        previous = self._chain
        base = seq if full else previous.base
        data = frame_payload(encode_streams_payload({**meta, "base": base}, records, segments),
                             _streams_payload_format(meta))
        try:
            self._write(seq, data, keep_from=min(base, seq - 1 if previous is None
                                                 else previous.base))
        except BaseException:
            self._failed = True
            raise
        self._failed = False
        if full:
            self._chain = Chain(base=seq, length=1, base_bytes=len(data), delta_bytes=0)
        else:
            self._chain = Chain(base, previous.length + 1, previous.base_bytes,
                                previous.delta_bytes + len(data))
        return len(data)

    def newest_records(self) -> tuple[dict[str, tuple[bytes, int]], dict[str, dict[int, bytes]]]:
        """Each stream's newest record in the chain the latest snapshot builds on, with
        the input position it was taken at (``{stream: (bytes, position)}``), and the
        join segment records in the chain (``{stream: {id: bytes}}``, the newest of each
        id): what a full snapshot copies for the streams it does not encode anew. The
        files are read and verified again (SnapshotError if one no longer is)."""
        chain = self._chain
        if chain is None or self._seq is None:
            raise ValueError("newest_records: no per-stream snapshot written or restored")
        records: dict[str, tuple[bytes, int]] = {}
        segments: dict[str, dict[int, bytes]] = {}
        for seq in range(self._seq, chain.base - 1, -1):
            _take_newest(self.read(self.directory / f"snapshot-{seq:012d}.snap"), records,
                         segments)
        return records, segments

    def can_copy(self) -> bool:
        """The next full snapshot may copy records from the chain: there is one, and no
        write failed since (a failed write's joins took its segments for written)."""
        if self._chain is None or self._failed:
            return False
        self._next_seq()  # (after a restore: which file is the latest)
        return True

    def _next_seq(self) -> int:
        if self._seq is None:
            existing = self.snapshots()
            self._seq = existing[0][0] if existing else 0
        return self._seq + 1

    def _write(self, seq: int, data: bytes, keep_from: int) -> None:
        """Write ``data`` as snapshot ``seq`` (temporary file, fsync, rename, fsync the
        folder), then remove snapshots numbered below ``keep_from``."""
        self._saves += 1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.directory / f".snapshot-{seq:012d}.tmp"
            final = self.directory / f"snapshot-{seq:012d}.snap"
            with open(temporary, "wb") as handle:
                if faults.armed("snapshot", self._saves, "partial"):
                    handle.write(data[:len(data) // 2])
                    handle.flush()
                    faults.kill()
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            faults.at("snapshot", self._saves, "written")
            os.replace(temporary, final)
            self._fsync_folder()
            self._seq = seq
            faults.at("snapshot", self._saves, "renamed")
            for old_seq, path in self.snapshots():
                if old_seq < keep_from:
                    path.unlink(missing_ok=True)
            for name in os.listdir(self.directory):  # left by writes killed half way
                if name.startswith(".snapshot-") and name.endswith(".tmp"):
                    (self.directory / name).unlink(missing_ok=True)
            (self.directory / LEGACY_SNAPSHOT_FILE).unlink(missing_ok=True)
        except OSError as error:
            raise SnapshotError(f"state_dir {self.directory}: cannot write snapshot "
                                f"({error.strerror})") from None

    def _fsync_folder(self) -> None:
        folder = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def read(self, path: pathlib.Path) -> dict[str, Any]:
        """One snapshot file, verified (a per-stream one with its records undecoded)."""
        return self._read_sized(path)[0]

    def _read_sized(self, path: pathlib.Path) -> tuple[dict[str, Any], int]:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SnapshotError(f"{path}: cannot read snapshot ({error.strerror})") from None
        return decode_snapshot(data, str(path)), len(data)

    def load_latest(self, set_aside: bool = True) -> Loaded | None:
        """The newest intact snapshot, or ``None`` if the folder has none at all.

        A per-stream snapshot comes back whole: its meta plus ``pipeline`` (every
        stream's newest record, read back to its full snapshot, as a
        :class:`StreamStates` that decodes a stream when asked for: a record that cannot
        be decoded in an intact file is found then, not here). Damaged newer
        ones, and newer ones that build on a damaged one, are listed in the result and,
        with ``set_aside``, renamed to ``*.corrupt`` so that the next checkpoint does not
        keep them as its fallback. If every snapshot is damaged: SnapshotError listing
        them. The newest one of another format: SnapshotFormatError (another release's
        state is not damage, and going back past it would silently undo that release's
        work)."""
        damaged: list[tuple[pathlib.Path, str]] = []
        read: dict[int, tuple[dict[str, Any], int] | SnapshotError] = {}

        def verified(seq: int) -> tuple[dict[str, Any], int]:
            if seq not in read:
                try:
                    read[seq] = self._read_sized(self.directory / f"snapshot-{seq:012d}.snap")
                except SnapshotFormatError:
                    raise
                except SnapshotError as error:
                    read[seq] = error
            found = read[seq]
            if isinstance(found, SnapshotError):
                raise found
            return found

        for seq, path in self.snapshots():
            try:
                snapshot, size = verified(seq)
                chain = None
                if "stream_records" in snapshot:
                    snapshot, chain = self._resolve(seq, snapshot, size, verified)
            except SnapshotFormatError:
                raise
            except SnapshotError as error:
                damaged.append((path, str(error)))
                continue
            if set_aside:
                self._set_aside(damaged)
                self._chain = chain
                self._seq = None
            return Loaded(snapshot, path, damaged)
        legacy = self.directory / LEGACY_SNAPSHOT_FILE
        if legacy.exists() and not damaged:
            return Loaded(self._read_legacy(legacy), legacy, legacy=True)
        if damaged:
            reasons = "; ".join(reason for _, reason in damaged)
            raise SnapshotError(
                f"state_dir {self.directory}: no intact snapshot to restore ({reasons}). "
                "Move the folder away to start from the beginning (the outputs are then "
                "rewritten from the input), or put back a copy of a good snapshot")
        return None

    def _resolve(self, seq: int, head: dict[str, Any], size: int,
                 verified: Any) -> tuple[dict[str, Any], Chain]:
        """Snapshot ``seq`` whole: its meta, and each stream's newest record from it and
        the snapshots it builds on (back to its base), under ``pipeline`` (decoded when
        asked for: :class:`StreamStates`)."""
        base = int(head["base"])
        records: dict[str, tuple[bytes, int]] = {}
        segments: dict[str, dict[int, bytes]] = {}
        _take_newest(head, records, segments)
        base_bytes, delta_bytes = (size, 0) if base == seq else (0, size)
        if not 0 < base <= seq or seq - base >= MAX_CHAIN:
            raise SnapshotError(f"snapshot-{seq:012d}.snap: builds on snapshot {base}, "
                                "which cannot be")
        for older in range(seq - 1, base - 1, -1):
            try:
                found, older_size = verified(older)
            except SnapshotError as error:
                raise SnapshotError(f"snapshot-{seq:012d}.snap builds on snapshot-"
                                    f"{older:012d}.snap, which is missing or damaged ({error})"
                                    ) from None
            if found.get("base") != base or "stream_records" not in found:
                raise SnapshotError(f"snapshot-{seq:012d}.snap builds on snapshot-"
                                    f"{older:012d}.snap, which belongs to another chain")
            _take_newest(found, records, segments)
            if older == base:
                base_bytes = older_size
            else:
                delta_bytes += older_size
        data = {name: found for name, (found, _) in records.items()}
        streams = StreamStates(data.keys(), functools.partial(
            _snapshot_stream, data, segments, f"snapshot-{seq:012d}.snap"))
        snapshot = {k: v for k, v in head.items()
                    if k not in ("stream_records", "segment_records")}
        snapshot["pipeline"] = {"streams": streams, "invalid": head["invalid"]}
        # The input position each stream's newest record was taken at: a stream the
        # commits since left unwritten is replayed from there (service.py).
        snapshot["written"] = {name: position for name, (_, position) in records.items()}
        snapshot["listed"] = streams.listed
        # Each stream's own settings digest (None: written before records carried one).
        snapshot["stream_settings"] = streams.settings
        return snapshot, Chain(base, seq - base + 1, base_bytes, delta_bytes)

    def load(self) -> dict[str, Any] | None:
        """The newest intact snapshot (nothing is renamed), every stream decoded into
        plain dicts (a restore takes :meth:`load_latest`'s one at a time), or ``None``."""
        loaded = self.load_latest(set_aside=False)
        return None if loaded is None else _decoded_whole(loaded.snapshot)

    def _set_aside(self, damaged: list[tuple[pathlib.Path, str]]) -> None:
        for path, _ in damaged:
            with contextlib.suppress(OSError):  # still skipped next time, just slower
                os.replace(path, path.with_name(path.name + ".corrupt"))

    def _read_legacy(self, path: pathlib.Path) -> dict[str, Any]:
        try:
            snapshot = loads_state(path.read_bytes())
        except OSError as error:
            raise SnapshotError(f"{path}: cannot read snapshot ({error.strerror})") from None
        except (ValueError, RecursionError) as error:
            raise SnapshotError(f"{path}: corrupt format-1 snapshot ({error}); move it away "
                                "to start from the beginning") from None
        version = snapshot.get("format") if isinstance(snapshot, dict) else None
        if version != 1:
            raise SnapshotError(f"{path}: snapshot format {version}, this build reads formats "
                                f"1, {listed_formats(SNAPSHOT_FORMATS)}; restore with the "
                                "release that wrote it or start from an empty state_dir")
        return snapshot


class StateDirLock:
    """An exclusive ``flock`` on ``<state_dir>/lock``, held while the process runs.

    Two processes on one folder would interleave their snapshots and both append to (and
    truncate) the same output files; the second one is refused at start, before it has
    touched anything, with a message naming the holder. The kernel drops the lock when
    the holder exits, however it exits (kill -9 included), so a stale lock file is
    harmless and never needs deleting."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StateLockedError naming who holds it."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RuntimeSetupError(f"state_dir {self.directory}: cannot open its lock file "
                                    f"({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StateLockedError(
                f"state_dir {self.directory} is in use by another streamweights process "
                f"({holder}); stop that one first, or give this run its own state_dir "
                "and outputs") from None
        except OSError as error:
            os.close(fd)
            raise RuntimeSetupError(f"state_dir {self.directory}: cannot lock {self.path} "
                                    f"({error.strerror}; a local file system is needed)"
                                    ) from None
        since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"pid {os.getpid()}, host {socket.gethostname()}, since {since}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8", "replace"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
