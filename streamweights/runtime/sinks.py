"""Where records go: JSONL files (or stdout), one record per line.

A file sink knows how many bytes it has written; the checkpoint stores that position
and a restart truncates the file back to it before replaying, so a crash between two
checkpoints neither loses nor duplicates a line (exactly-once for files).
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import BinaryIO

from streamweights.runtime.exceptions import RuntimeSetupError


class JsonlSink:
    """Appends one JSON record per line to a file (``-`` = standard output)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stdout = path == "-"
        if self._stdout:
            self._handle: BinaryIO = sys.stdout.buffer
            self._position = 0
        else:
            target = pathlib.Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(target, "ab")  # noqa: SIM115 - lives as long as the sink
            self._position = self._handle.tell()

    @property
    def position(self) -> int:
        """Bytes written so far (the checkpoint stores this)."""
        return self._position

    def write(self, raw: bytes, headers: list[tuple[str, bytes]] | None = None,
              key: bytes | None = None) -> None:
        """Append one line; ``headers`` (Kafka's dead-letter metadata) are already in the
        record for files and are ignored, as is ``key`` (a Kafka message key)."""
        self._handle.write(raw)
        self._handle.write(b"\n")
        self._position += len(raw) + 1

    def flush(self) -> None:
        self._handle.flush()
        if not self._stdout:
            os.fsync(self._handle.fileno())

    def truncate(self, position: int) -> None:
        """Drop everything after ``position`` (lines written after the last checkpoint).

        A file shorter than ``position`` was cut or replaced by someone else: extending it
        would fill it with zero bytes, so that is refused (RuntimeSetupError)."""
        if self._stdout:
            return
        if position > self._position:
            raise RuntimeSetupError(
                f"{self.path}: holds {self._position} bytes, but the snapshot says "
                f"{position} were written to it; the file was cut or replaced outside "
                "streamweights. Put the original back, or move the state folder away to "
                "rewrite every output from the input")
        self._handle.flush()
        self._handle.truncate(position)
        self._handle.seek(position)
        self._position = position

    def close(self) -> None:
        if not self._stdout:
            self._handle.close()
