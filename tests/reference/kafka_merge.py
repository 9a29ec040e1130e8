"""Reference oracle: the Kafka source's record-at-a-time release, as it was before one
call released a whole run (``kafka_source.release_run``), kept for the differential test
``tests/test_kafka_release_run.py``."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from streamweights.runtime.kafka_source import TaskMerge


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
