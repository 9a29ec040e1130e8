"""Where records come from: the built-in replay, or a JSONL file / standard input.

A source yields ``(position, raw bytes)``; the position is what a checkpoint stores and
what ``open(start)`` resumes from. A source read from a file also says what of the file
a checkpoint was taken over (``input_digest``) and refuses a restore over a file changed
since (``check_input``; :mod:`streamweights.runtime.input_digest`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from streamweights.config import SourceConfig
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.input_digest import (
    InputDigest,
    ReadTally,
    check_prefix,
    check_whole,
    prefix_digest,
)
from streamweights.runtime.replay import ReplayStream


class Source(Protocol):
    name: str

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        """Records from position ``start`` on."""
        ...


def input_digest(source: object, position: int) -> dict[str, int] | None:
    """What a checkpoint at input ``position`` records of ``source``'s input file (None:
    no file to check)."""
    digest = getattr(source, "input_digest", None)
    return None if digest is None else digest(position)


def check_input(source: object, recorded: Mapping[str, Any] | None, state_dir: object) -> None:
    """Refuse (RuntimeSetupError) restoring a snapshot over an input file changed since it
    was taken; a snapshot without the record (an earlier release's) is not checked."""
    check = getattr(source, "check_input", None)
    if check is not None and recorded is not None:
        check(InputDigest.from_json(recorded), state_dir)


class ReplaySource:
    """The embedded default: a drifting scenario replayed through frozen models."""

    def __init__(self, config: SourceConfig) -> None:
        try:
            self.replay = ReplayStream(config)
        except ValueError as error:
            raise RuntimeSetupError(str(error)) from None
        self.name = f"replay:{self.replay.scenario.name}"
        self.stream = config.stream
        self.models = self.replay.models
        #: A table's file: its rows are ordered when read, so a checkpoint stands for
        #: the whole file (a built-in scenario has none).
        self.path = config.path if self.replay.table is not None else None
        self._digest: InputDigest | None = None

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        return self.replay.records(start)

    def _whole_file(self) -> InputDigest | None:
        """The table file's digest, read once when first asked (a restore's check or the
        first checkpoint), not when the source is built (``validate`` builds it too)."""
        if self._digest is None and self.path is not None:
            self._digest = prefix_digest(self.path)
        return self._digest

    def input_digest(self, position: int) -> dict[str, int] | None:
        digest = self._whole_file()
        return None if digest is None else digest.to_json()

    def check_input(self, recorded: InputDigest, state_dir: object) -> None:
        digest = self._whole_file()
        if digest is not None:
            check_whole(str(self.path), recorded, digest, state_dir)


#: Bytes a JSONL source reads at a time.
READ_BLOCK_BYTES = 1 << 20


class JsonlSource:
    """One JSON record per line from a file, or ``-`` for standard input."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"jsonl:{path}"
        #: Standard input cannot be read again from an earlier position (a restore
        #: that replays input needs to: ``service.LocalCheckpoints``).
        self.rereadable = path != "-"
        #: The prefix of the file the latest ``open`` has handed out records from, and
        #: the one a restore checked (``input_digest``: the longer of the two).
        self.read, self.checked = ReadTally(), InputDigest()
        if path != "-":
            try:
                open(path, "rb").close()
            except OSError as error:
                raise RuntimeSetupError(f"source.path: cannot read {path} "
                                        f"({error.strerror})") from None

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        self.read = ReadTally()  # (now, not when the first record is asked for)
        return self._lines(start, self.read)

    def _lines(self, start: int, read: ReadTally) -> Iterator[tuple[int, bytes]]:
        """The file's lines (split at newlines, as iterating a binary file does), read a
        block at a time (``read1``: from a pipe, what has been written so far), so that
        the digest of what was handed out costs a CRC-32 pass over each block rather
        than a call per line."""
        handle = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        first, partial = 0, b""  # the next line's number; its start, read so far
        try:
            while True:
                block = handle.read1(READ_BLOCK_BYTES)
                if not block:
                    break
                lines = (partial + block if partial else block).split(b"\n")
                carried = len(partial)
                partial = lines.pop()  # (the last line's start; b"" after a newline)
                read.next_block(block, lines, first, carried)
                skip = start - first
                for position, line in enumerate(lines[skip:] if skip > 0 else lines,
                                                max(first, start)):
                    line = line.rstrip(b"\r\n")
                    if line.strip():
                        yield position, line
                first += len(lines)
            line = partial.rstrip(b"\r\n")  # a last line without a newline
            if first >= start and line.strip():
                read.end_of_file()
                yield first, line
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()

    def input_digest(self, position: int) -> dict[str, int] | None:
        """The file's prefix up to the record before ``position`` (the next record's:
        the records before it are applied when a checkpoint is taken), or the one a
        restore checked when nothing was read since; None for standard input, which
        cannot be read again."""
        if not self.rereadable:
            return None
        read = self.read.digest(position)
        return (read if read.size >= self.checked.size else self.checked).to_json()

    def check_input(self, recorded: InputDigest, state_dir: object) -> None:
        if self.rereadable:
            check_prefix(self.path, recorded, state_dir)
            self.checked = recorded


class RecordsSource:
    """Raw records held in memory, the first at position ``first``: the service's own
    loop over records a benchmark or an embedding program already has."""

    def __init__(self, records: Sequence[bytes], first: int = 0, name: str = "memory") -> None:
        self.records, self.first, self.name = records, first, name

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        skip = max(0, start - self.first)
        return enumerate(itertools.islice(self.records, skip, None), self.first + skip)


def make_source(config: SourceConfig) -> ReplaySource | JsonlSource:
    if config.kind == "jsonl":
        assert config.path is not None
        return JsonlSource(config.path)
    return ReplaySource(config)
