"""Spreading stream writes over checkpoints, and the record logs that keep it exact on Kafka.

A replica holding many streams changes nearly all of them between two checkpoints, and
writing each whole (~0.5 ms a young stream) bound it: at 1,000 streams a Kafka replica
spent half its time in commits and ran at ~32% of the consume-only rate (issue 11). Past
``checkpoint.spread_above`` changed streams, a checkpoint writes the
``1 / checkpoint.spread_over`` of them (at least ``spread_above``) whose records are
oldest (:func:`oldest_due`); the others stay changed for the next ones.

A stream left unwritten must be brought up to the checkpoint at a restore. The embedded
backend reads its input again (``service.LocalCheckpoints``). A Kafka replica cannot count
on its input topics for that (retention, and the merge's order across two partitions), so
each commit also writes, per task, the records the merge handed out since the previous
commit, as the core logged them (``TaskMerges.take_logs``), under
``i/<task>/<number of its first record in the task>`` (:func:`encode_log`). A restore
replays them, in order, into each stream from the task's record count its own record was
written at, outputs and counts left out: a stream's state depends only on its own records,
in order, so this is exact. A log record is deleted (a tombstone) once no stream needs it.
Measured in the forty-fifth session: zstd at level 1 compresses a default stream's records
to ~18 B each, ~256 ns a record.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from streamweights.runtime.compression import compress, decompress
from streamweights.runtime.exceptions import SnapshotError

#: Changelog keys of the record logs start with this (``i/<task>/<first record>``).
LOG_KEY_PREFIX = b"i/"
#: A log's head: a tag with the layout's version, its first record's number in the task,
#: and how many records follow (each a 4-byte little-endian length and the value).
_HEAD = struct.Struct("<4sQI")
_TAG = b"swl1"
_LENGTH = struct.Struct("<I")


def oldest_due(changed: Sequence[str], written: Mapping[str, int], floor: int,
               spread: int) -> list[str]:
    """The changed streams a checkpoint writes, in their given order: all of them up to
    ``floor``, or when one has never been written; past it, the ``1 / spread`` of them
    (at least ``floor``) with the oldest ``written`` marks (smaller: older)."""
    if len(changed) <= floor or spread <= 1 or any(name not in written for name in changed):
        return list(changed)
    count = max(floor, -(-len(changed) // spread))
    chosen = set(heapq.nsmallest(count, changed, key=written.__getitem__))
    return [name for name in changed if name in chosen]


class WriteMarks:
    """Per stream, by its place in the pipeline's config order: the commit that last
    wrote it (``-1``: not known to be written) and its task's record count then, where a
    restore starts replaying the task's logs into it. Held as arrays so that a commit
    chooses its streams (:meth:`due`) and the logs still needed (:meth:`needed`) at the
    cost of a few array operations over the changed streams: with 10,000 streams changed,
    doing it per name (:func:`oldest_due`, then grouping the rest by task) was ~5-15 ms of
    every commit, about a quarter of one."""

    def __init__(self, names: Sequence[str], tasks: Sequence[int]) -> None:
        #: The streams' names by place (what the places returned by :meth:`due` name).
        self.names = list(names)
        self._index = {name: index for index, name in enumerate(self.names)}
        self._task = np.asarray(tasks, dtype=np.int64).reshape(-1)
        self._at = np.full(len(names), -1, dtype=np.int64)
        self._count = np.zeros(len(names), dtype=np.int64)

    def clear(self) -> None:
        """Forget every mark (tasks are assigned afresh)."""
        self._at.fill(-1)
        self._count.fill(0)

    def set(self, name: str, commit: int, count: int) -> None:
        """Note ``name`` written at ``commit`` with its task at record ``count``."""
        index = self._index[name]
        self._at[index], self._count[index] = commit, count

    def set_many(self, names: Sequence[str], commit: int, count: int) -> None:
        """:meth:`set` for each of ``names``."""
        indices = [self._index[name] for name in names]
        self._at[indices], self._count[indices] = commit, count

    def counts(self) -> dict[str, int]:
        """The record count each stream known to be written was written at, by name."""
        known = self._at >= 0
        names = self.names
        return {names[index]: int(count) for index, count in
                zip(np.flatnonzero(known).tolist(), self._count[known].tolist(), strict=True)}

    def due(self, changed: np.ndarray, floor: int, spread: int) -> np.ndarray:
        """:func:`oldest_due` over places: of ``changed`` (ascending), all up to
        ``floor`` or when one is not known to be written; past it the ``1 / spread`` of
        them (at least ``floor``) with the oldest marks, ties to the earlier place;
        ascending."""
        marks = self._at[changed]
        if len(changed) <= floor or spread <= 1 or (len(marks) and marks.min() < 0):
            return changed
        count = max(floor, -(-len(changed) // spread))
        chosen = np.argsort(marks, kind="stable")[:count]
        return changed[np.sort(chosen)]

    def needed(self, changed: np.ndarray, due: np.ndarray) -> dict[int, int]:
        """Per task with streams in ``changed`` but not in ``due`` (both ascending, ``due``
        a part of ``changed``): the smallest record count those streams were written at,
        from which a restore would replay them (a task not named has none left)."""
        left = changed[~np.isin(changed, due, assume_unique=True)]
        if not len(left):
            return {}
        tasks = self._task[left]
        counts = self._count[left]
        order = np.lexsort((counts, tasks))  # by task, then count: each task's least first
        tasks, counts = tasks[order], counts[order]
        first = np.flatnonzero(np.r_[True, tasks[1:] != tasks[:-1]])
        return dict(zip(tasks[first].tolist(), counts[first].tolist(), strict=True))


def log_key(task: int, start: int) -> bytes:
    """The changelog key of task ``task``'s log whose first record is number ``start``."""
    return b"%s%d/%d" % (LOG_KEY_PREFIX, task, start)


def parse_log_key(key: bytes) -> tuple[int, int] | None:
    """``(task, start)`` of a log's key, or ``None`` for any other key."""
    if not key.startswith(LOG_KEY_PREFIX):
        return None
    task, _, start = key[len(LOG_KEY_PREFIX):].partition(b"/")
    if not (task.isdigit() and start.isdigit()):
        return None
    return int(task), int(start)


def encode_log(start: int, count: int, framed: bytes, limit: int
               ) -> list[tuple[int, int, bytes]]:
    """The changelog values of ``count`` logged records numbered from ``start``
    (``framed``: as ``TaskMerges.take_logs`` gives them), as ``(start, end, value)``:
    one, or, when the framed records exceed ``limit`` bytes, several of at most about
    ``limit`` each, split between records (one record larger than ``limit`` goes alone)."""
    if _HEAD.size + len(framed) <= limit:
        return [(start, start + count, compress(_HEAD.pack(_TAG, start, count) + framed))]
    out = []
    view = memoryview(framed)
    begin = offset = 0
    first = number = start
    while offset < len(framed):
        (length,) = _LENGTH.unpack_from(framed, offset)
        step = _LENGTH.size + length
        if offset > begin and _HEAD.size + offset + step - begin > limit:
            out.append((first, number, compress(_HEAD.pack(_TAG, first, number - first)
                                                + view[begin:offset])))
            begin, first = offset, number
        offset += step
        number += 1
    if number != start + count:
        raise ValueError(f"the log holds {number - start} records, not {count}")
    out.append((first, number, compress(_HEAD.pack(_TAG, first, number - first)
                                        + view[begin:offset])))
    return out


def decode_log(value: bytes, where: str) -> tuple[int, list[bytes]]:
    """``(start, records)`` of a log value of :func:`encode_log`, or SnapshotError naming
    ``where``."""
    try:
        data = decompress(value)
        tag, start, count = _HEAD.unpack_from(data)
        if tag != _TAG:
            raise ValueError(f"tag {tag!r}, not {_TAG!r}")
        records = list(_framed(data, _HEAD.size))
        if len(records) != count:
            raise ValueError(f"{len(records)} records, its head says {count}")
    except (ValueError, struct.error) as error:
        raise SnapshotError(f"{where}: record log cannot be decoded "
                            f"({type(error).__name__}: {error})") from None
    return start, records


def first_record(framed: bytes) -> bytes | None:
    """The first of framed records, or ``None`` if there is none: the one a commit reads
    back of each log it takes, a check it can afford every time."""
    if len(framed) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(framed)
    return framed[_LENGTH.size:_LENGTH.size + length]


def _framed(data: bytes, offset: int) -> Iterator[bytes]:
    """The values of length-framed ``data`` from ``offset`` on."""
    end = len(data)
    while offset < end:
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise ValueError("a record runs past the log's end")
        yield data[offset:offset + length]
        offset += length
