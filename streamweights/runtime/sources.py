"""Where records come from: the built-in replay, or a JSONL file / standard input.

A source yields ``(position, raw bytes)``; the position is what a checkpoint stores and
what ``open(start)`` resumes from.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence
from typing import Protocol

from streamweights.config import SourceConfig
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.replay import ReplayStream


class Source(Protocol):
    name: str

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        """Records from position ``start`` on."""
        ...


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

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        return self.replay.records(start)


class JsonlSource:
    """One JSON record per line from a file, or ``-`` for standard input."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"jsonl:{path}"
        #: Standard input cannot be read again from an earlier position (a restore
        #: that replays input needs to: ``service.LocalCheckpoints``).
        self.rereadable = path != "-"
        if path != "-":
            try:
                open(path, "rb").close()
            except OSError as error:
                raise RuntimeSetupError(f"source.path: cannot read {path} "
                                        f"({error.strerror})") from None

    def open(self, start: int) -> Iterator[tuple[int, bytes]]:
        handle = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        try:
            for position, line in enumerate(handle):
                if position < start:
                    continue
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield position, line
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()


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
