"""What a snapshot knows of the input file it was taken over, so that a restart over a
file changed since is refused instead of resumed wrong.

A restore resumes the input at the snapshot's position (a line or row number) and, for
spread checkpoints, replays it from an earlier one: both trust that the file still holds
what the run read. A JSONL file rewritten, rotated or truncated in between would
otherwise apply the rest of another input to state built from the first, with nothing
to show for it. A snapshot therefore records the length and CRC-32 of the file's
prefix the run had read (JSONL: growing with the run, so a file that was only appended
to resumes), or of the whole file (a CSV or Parquet table, whose rows are ordered by
time when read, so any change is a new input); the restore compares them first.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamweights.runtime.exceptions import RuntimeSetupError

#: Bytes read per call when checking a prefix (CRC-32 runs at about 1 GB/s here).
BLOCK_BYTES = 1 << 20


@dataclass
class InputDigest:
    """The first ``size`` bytes of a file and their CRC-32 (``zlib.crc32``, which folds
    line by line to the same value as over the bytes at once)."""

    size: int = 0
    crc32: int = 0

    def to_json(self) -> dict[str, int]:
        return {"bytes": self.size, "crc32": self.crc32}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> InputDigest:
        return cls(int(value["bytes"]), int(value["crc32"]))


def prefix_digest(path: str, limit: int | None = None) -> InputDigest:
    """The digest of the first ``limit`` bytes of ``path`` (all of it when None); fewer
    when the file is shorter."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while limit is None or size < limit:
            block = handle.read(BLOCK_BYTES if limit is None
                                else min(BLOCK_BYTES, limit - size))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            size += len(block)
    return InputDigest(size, crc)


def check_prefix(path: str, recorded: InputDigest, state_dir: object) -> None:
    """Refuse (RuntimeSetupError, one line saying what to do) a file whose first
    ``recorded.size`` bytes are no longer the ones a snapshot in ``state_dir`` read."""
    try:
        now = prefix_digest(path, recorded.size)
    except OSError as error:
        raise RuntimeSetupError(f"source.path: cannot read {path} ({error.strerror})") from None
    if now == recorded:
        return
    how = (f"is now only {now.size:,} bytes long" if now.size < recorded.size
           else "differs within them")
    raise RuntimeSetupError(
        f"state_dir {state_dir}: its snapshot was taken after reading the first "
        f"{recorded.size:,} bytes of {path} (CRC-32 {recorded.crc32:08x}), but the file "
        f"{how}: it was rewritten, truncated or replaced since, and resuming would apply "
        "the rest of another input to state built from the first. Put the original file "
        "back (appending lines to it is fine), or start over with a fresh state_dir")


def check_whole(path: str, recorded: InputDigest, now: InputDigest, state_dir: object) -> None:
    """Refuse a table file (digest ``now``, read by this run) that is not byte for byte
    the one a snapshot in ``state_dir`` was taken over."""
    if now != recorded:
        raise RuntimeSetupError(
            f"state_dir {state_dir}: its snapshot was taken over {path} as it was then "
            f"({recorded.size:,} bytes, CRC-32 {recorded.crc32:08x}); the file is now "
            f"{now.size:,} bytes, CRC-32 {now.crc32:08x}. A table's rows are read whole "
            "(ordered by time), so a changed file is a new input: put the original back, "
            "or start over with a fresh state_dir")


class ReadTally:
    """What a JSONL source (``sources.JsonlSource``) has read, kept so that the CRC-32
    of the file's bytes up to any record of the current block's lines can be given when
    asked (``digest``), with nothing counted per line: the lines completed in the
    current block (``lines``, the first at ``first``, starting at byte ``start``), the
    block and the CRC of the bytes before it; for a record before them, the digest of
    the bytes up to the previous block's last newline (``left``: a longer prefix, blank
    lines only, read all the same)."""

    __slots__ = ("base_crc", "block", "block_start", "first", "left", "lines", "start")

    def __init__(self) -> None:
        self.base_crc = self.block_start = self.first = self.start = 0
        self.block = b""
        self.lines: list[bytes] = []
        self.left = InputDigest()

    def next_block(self, block: bytes, lines: list[bytes], first: int, partial: int) -> None:
        """``block`` read; ``lines`` the lines it completes (``partial``: the bytes of
        the first of them that came in blocks before), the first at position ``first``."""
        previous, previous_start = self.block, self.block_start
        if previous:
            kept = len(previous) - partial  # up to its last newline (none: left as is)
            if kept >= 0:  # (one CRC pass over the block: the prefix's, then the rest)
                view = memoryview(previous)
                self.left = InputDigest(previous_start + kept,
                                        zlib.crc32(view[:kept], self.base_crc))
                self.base_crc = zlib.crc32(view[kept:], self.left.crc32)
            else:
                self.base_crc = zlib.crc32(previous, self.base_crc)
        self.block, self.block_start = block, previous_start + len(previous)
        self.lines, self.first, self.start = lines, first, self.block_start - partial

    def digest(self, position: int) -> InputDigest:
        """The bytes up to the end of line ``position - 1`` (or a little further)."""
        count = position - self.first
        if count <= 0 or count > len(self.lines):
            return self.left
        end = self.start + sum(map(len, self.lines[:count])) + count  # (newlines)
        return InputDigest(end, zlib.crc32(self.block[:end - self.block_start], self.base_crc))

    def end_of_file(self) -> None:
        """The whole file is read and its last line, which has no newline, handed out:
        past the lines there is only the whole file (``left``, as an empty block after
        it leaves it)."""
        self.next_block(b"", [], self.first + len(self.lines), 0)
