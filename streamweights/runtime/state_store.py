"""Local-folder snapshot store: atomic write + rename, so a crash never leaves half a file.

A snapshot is one JSON document (the adapter-state codec keeps numpy arrays bit exact)
holding every stream's adapter states, the pending-label join buffer, the prequential
scores, the input position and the output sinks' byte positions. Writing goes to a
temporary file in the same folder, is fsync'ed, renamed over ``snapshot.json`` and the
folder is fsync'ed, so after a crash at any instant the folder holds either the old or
the new snapshot, whole.

Guarantees: restoring the snapshot and replaying input from its position reproduces
what an uninterrupted run computes, bit for bit. Failure scenarios: a crash between two
checkpoints loses no input (it is replayed) and duplicates no output (file sinks are
truncated back to the snapshot's positions). Limitations: one writer per folder; the
folder must be on a file system with atomic rename (any local one).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.runtime.exceptions import SnapshotError

SNAPSHOT_FILE = "snapshot.json"
#: Bumped when the snapshot layout changes; older snapshots are refused with a hint.
SNAPSHOT_FORMAT = 1


class LocalStateStore:
    """Snapshots in a local folder."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self.path = self.directory / SNAPSHOT_FILE

    def save(self, snapshot: dict[str, Any]) -> int:
        """Write ``snapshot`` atomically; return its size in bytes."""
        text = dumps_state({"format": SNAPSHOT_FORMAT, **snapshot}).encode("utf-8")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.directory / f".{SNAPSHOT_FILE}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            folder = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as error:
            raise SnapshotError(f"state_dir {self.directory}: cannot write snapshot "
                                f"({error.strerror})") from None
        return len(text)

    def load(self) -> dict[str, Any] | None:
        """The last snapshot, or ``None`` if the folder has none."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise SnapshotError(f"{self.path}: cannot read snapshot ({error.strerror})") from None
        try:
            snapshot = loads_state(text)
        except ValueError as error:
            raise SnapshotError(f"{self.path}: corrupt snapshot ({error}); move it away to "
                                "start from scratch") from None
        version = snapshot.get("format")
        if version != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{self.path}: snapshot format {version}, this build reads "
                                f"{SNAPSHOT_FORMAT}; restore with the release that wrote it "
                                "or start from an empty state_dir")
        return snapshot
