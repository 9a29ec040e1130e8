"""Local-folder state: checksummed snapshots, the one before kept, and a lock on the folder.

A state folder holds::

    lock                          flock()ed by the one process using the folder; its text
                                  names that process (pid, host, start time)
    snapshot-000000000042.snap    the latest snapshot
    snapshot-000000000041.snap    the one before it: the fallback if the latest is damaged
    snapshot-000000000043.snap.corrupt   a damaged snapshot set aside at restore (kept
                                  for inspection, never read again)

A snapshot file (format 2) is one header line and a payload::

    streamweights-snapshot 2 bytes=<payload length> crc32=<8 hex> sha256=<64 hex>\\n<payload>

The payload is one JSON document (the adapter-state codec keeps numpy arrays bit exact
and dict keys in their order) holding every stream's adapter states, the pending-label
join buffer, the prequential scores, the input position and the output sinks' byte
positions. On load the header must be exactly the header of the payload that follows it:
a changed byte anywhere in the file is refused (in the payload CRC-32 catches every change
of up to four consecutive bytes with certainty and SHA-256 everything else; in the header
the regenerated text differs).

Writing goes to a temporary file in the same folder, is fsync'ed, renamed to the next
number and the folder is fsync'ed; only then are snapshots older than the previous one
removed. So after a crash at any instant the folder holds the last complete snapshot,
whole, and normally the one before it.

Guarantees: restoring a snapshot and replaying input from its position reproduces what an
uninterrupted run computes, bit for bit. Failure scenarios: a crash between two
checkpoints loses no input (it is replayed) and duplicates no output (file sinks are
truncated back to the snapshot's positions); a damaged latest snapshot is set aside and
the previous one restored (loudly), which is just as exact, only older. Limitations: one
process per folder (enforced by the lock); the folder must be on a local file system
(atomic rename, and ``flock`` that works: not NFS).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import pathlib
import re
import socket
import zlib
from dataclasses import dataclass, field
from typing import Any

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.runtime import faults
from streamweights.runtime.exceptions import RuntimeSetupError, SnapshotError

#: Bumped when the snapshot layout changes. 1: ``snapshot.json``, plain JSON with sorted
#: keys and no checksum (read, with a warning, and replaced at the next checkpoint).
#: 2: numbered files with a checksummed header, keys in their order.
SNAPSHOT_FORMAT = 2
LEGACY_SNAPSHOT_FILE = "snapshot.json"
LOCK_FILE = "lock"
MAGIC = b"streamweights-snapshot"
#: The header is a few dozen bytes; looking this far for its end bounds the work spent on
#: a file that is not a snapshot at all.
_HEADER_MAX = 256
_HEADER = re.compile(rb"streamweights-snapshot (?P<format>[0-9]{1,6}) .*")
_NAME = re.compile(r"snapshot-(?P<seq>[0-9]{12})\.snap")


class StateLockedError(RuntimeSetupError):
    """Another process holds the state folder."""


class SnapshotFormatError(SnapshotError):
    """A snapshot of a format this build does not read (written by another release):
    not damage, so no fallback to an older snapshot either."""


def snapshot_header(payload: bytes) -> bytes:
    """The header line (with its newline) that belongs to ``payload``."""
    return (f"streamweights-snapshot {SNAPSHOT_FORMAT} bytes={len(payload)} "
            f"crc32={zlib.crc32(payload):08x} sha256={hashlib.sha256(payload).hexdigest()}\n"
            ).encode("ascii")


def encode_snapshot(snapshot: dict[str, Any]) -> bytes:
    """A snapshot file's bytes: header, then the payload."""
    payload = dumps_state({"format": SNAPSHOT_FORMAT, **snapshot}).encode("utf-8")
    return snapshot_header(payload) + payload


def decode_snapshot(data: bytes, where: str) -> dict[str, Any]:
    """The snapshot in ``data`` (a file's bytes), or SnapshotError saying what is wrong
    with it; ``where`` names the file in the message."""
    end = data.find(b"\n", 0, _HEADER_MAX)
    if not data.startswith(MAGIC) or end < 0:
        raise SnapshotError(f"{where}: damaged snapshot (no streamweights-snapshot header)")
    header, payload = data[:end + 1], data[end + 1:]
    parsed = _HEADER.fullmatch(header[:-1])
    expected = snapshot_header(payload)
    if (parsed is not None and int(parsed["format"]) != SNAPSHOT_FORMAT
            and header != expected.replace(b" 2 ", b" " + parsed["format"] + b" ", 1)):
        # (a format-2 file whose format digit alone was hit is damage, handled below)
        raise SnapshotFormatError(
            f"{where}: snapshot format {int(parsed['format'])}, this build reads formats 1 "
            f"and {SNAPSHOT_FORMAT}; restore with the release that wrote it, or start from an "
            "empty state_dir")
    if header != expected:
        raise SnapshotError(f"{where}: damaged snapshot (its {len(payload)} bytes do not "
                            "match the length and checksums in its header)")
    try:
        snapshot = loads_state(payload)
    except (ValueError, RecursionError) as error:  # checksummed, so written that way
        raise SnapshotError(f"{where}: snapshot passes its checksum but cannot be "
                            f"decoded ({type(error).__name__}: {error})") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{where}: snapshot passes its checksum but is not a format-"
                            f"{SNAPSHOT_FORMAT} state document")
    return snapshot


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
        """Write ``snapshot`` as the next numbered file, atomically; keep the previous
        one; return the size in bytes."""
        data = encode_snapshot(snapshot)
        self._saves += 1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._seq is None:
                existing = self.snapshots()
                self._seq = existing[0][0] if existing else 0
            seq = self._seq + 1
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
                if old_seq < seq - 1:
                    path.unlink(missing_ok=True)
            for name in os.listdir(self.directory):  # left by writes killed half way
                if name.startswith(".snapshot-") and name.endswith(".tmp"):
                    (self.directory / name).unlink(missing_ok=True)
            (self.directory / LEGACY_SNAPSHOT_FILE).unlink(missing_ok=True)
        except OSError as error:
            raise SnapshotError(f"state_dir {self.directory}: cannot write snapshot "
                                f"({error.strerror})") from None
        return len(data)

    def _fsync_folder(self) -> None:
        folder = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def read(self, path: pathlib.Path) -> dict[str, Any]:
        """One snapshot file, verified."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SnapshotError(f"{path}: cannot read snapshot ({error.strerror})") from None
        return decode_snapshot(data, str(path))

    def load_latest(self, set_aside: bool = True) -> Loaded | None:
        """The newest intact snapshot, or ``None`` if the folder has none at all.

        Damaged newer ones are listed in the result and, with ``set_aside``, renamed to
        ``*.corrupt`` so that the next checkpoint does not keep them as its fallback.
        If every snapshot is damaged: SnapshotError listing them. The newest one of
        another format: SnapshotFormatError (another release's state is not damage, and
        going back past it would silently undo that release's work)."""
        damaged: list[tuple[pathlib.Path, str]] = []
        for _, path in self.snapshots():
            try:
                snapshot = self.read(path)
            except SnapshotFormatError:
                raise
            except SnapshotError as error:
                damaged.append((path, str(error)))
                continue
            if set_aside:
                self._set_aside(damaged)
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

    def load(self) -> dict[str, Any] | None:
        """The newest intact snapshot (nothing is renamed), or ``None``."""
        loaded = self.load_latest(set_aside=False)
        return None if loaded is None else loaded.snapshot

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
                                f"1 and {SNAPSHOT_FORMAT}; restore with the release that wrote "
                                "it or start from an empty state_dir")
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
