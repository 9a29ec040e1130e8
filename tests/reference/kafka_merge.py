"""Reference oracle of the Kafka source's merge, which runs in the core
(``native/src/kafka_merge.rs``): ``TaskMerge``, one task's Python merge as the source
used it until the core took it over, and ``release_one``, the record-at-a-time release
over tasks from before one call released a whole run. Kept for the differential tests
(``tests/test_kafka_release_run.py``, ``tests/test_native_event_time.py``)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

from streamweights.runtime.kafka_source import DEFAULT_MAX_SKEW, LABELS, PREDICTIONS


class TaskMerge:
    """The fixed-order merge of one task's two partitions (pure: no Kafka calls).

    ``add(side, offset, ts, raw)`` buffers a fetched record; ``pop(caught_up)`` releases
    the next record in ``(ts, side, offset)`` order, or ``None`` when the order is not yet
    known. ``caught_up[side]`` says the partition has nothing more to fetch right now.

    >>> merge = TaskMerge()
    >>> merge.add(LABELS, 0, 5.0, b"label")
    >>> merge.pop((False, False)) is None  # predictions may still hold something earlier
    True
    >>> merge.add(PREDICTIONS, 0, 5.0, b"prediction")
    >>> [merge.pop((True, True))[2] for _ in range(2)]
    [b'prediction', b'label']
    """

    __slots__ = ("buffers", "keys", "last", "max_skew")

    def __init__(self, max_skew: float = DEFAULT_MAX_SKEW) -> None:
        self.buffers: tuple[deque, deque] = (deque(), deque())
        self.max_skew = max_skew
        self.last: list[float | None] = [None, None]  # each side's latest readable ts
        self.keys: list[float] = [-math.inf, -math.inf]  # ... and the key it was merged at

    def add(self, side: int, offset: int, ts: float, raw: bytes) -> None:
        """Buffer a record. One whose ts jumps more than ``max_skew`` past its partition's
        previous record is merged at that record's place instead: the pipeline refuses it
        (``event_time_skew``), and merged at 1e308 it would hold back every record behind
        it on its partition until the other partition ran dry."""
        key = ts
        previous = self.last[side]
        if previous is not None and ts - previous > self.max_skew:
            key = self.keys[side]
        if ts != -math.inf:
            self.last[side] = ts
            self.keys[side] = key
        self.buffers[side].append((key, side, offset, raw))

    def __len__(self) -> int:
        return len(self.buffers[0]) + len(self.buffers[1])

    def pop(self, caught_up: tuple[bool, bool]) -> tuple[int, int, bytes] | None:
        """``(side, offset, raw)`` of the next record, or ``None`` to wait for more."""
        predictions, labels = self.buffers
        if predictions and labels:
            chosen = predictions if predictions[0][:3] <= labels[0][:3] else labels
        elif predictions and caught_up[LABELS]:
            chosen = predictions
        elif labels and caught_up[PREDICTIONS]:
            chosen = labels
        else:
            return None
        _, side, offset, raw = chosen.popleft()
        return side, offset, raw


def release_one(tasks: dict[int, TaskMerge], passable: Callable[[int], tuple[bool, bool]]
                ) -> tuple[int, int, int, bytes] | None:
    """``(task number, side, offset, raw)`` of the next record, or ``None``: of the task
    whose head comes first by ``((key, side, offset), number)`` among those whose
    ``TaskMerge.pop`` gives one (the previous ``KafkaSource._release``)."""
    candidates = []
    for number, task in tasks.items():
        if not task:
            continue
        heads = [buffer[0][:3] for buffer in task.buffers if buffer]
        candidates.append((min(heads), number))
    heapq.heapify(candidates)
    while candidates:
        _, number = heapq.heappop(candidates)
        popped = tasks[number].pop(passable(number))
        if popped is not None:
            side, offset, raw = popped
            return number, side, offset, raw
    return None
