"""The Kafka source's back-pressure (``back_pressure``): after every fetch, exactly the
assigned partitions whose task holds ``max_buffered`` or more of their records are
paused, whether or not their task still has a buffer (a rebalance drops it)."""

from __future__ import annotations

from kafka import TopicPartition

from streamweights import _native
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS, back_pressure

TOPICS = ("preds", "labels")


def _sizes(tasks: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """``TaskMerges.buffer_sizes`` of merges holding, per task, that many predictions
    and labels."""
    merges = _native.TaskMerges()
    for number, (predictions, labels) in tasks.items():
        for offset in range(predictions):
            merges.add(number, PREDICTIONS, offset, float(offset), b"p", 1e9)
        for offset in range(labels):
            merges.add(number, LABELS, offset, float(offset), b"l", 1e9)
    return merges.buffer_sizes()


def _both(number: int) -> set[TopicPartition]:
    return {TopicPartition(topic, number) for topic in TOPICS}


def test_a_partition_paused_before_a_rebalance_is_resumed_when_its_task_was_dropped():
    """Scenario: both partitions of task 0 were paused (each held max_buffered records)
    when the group rebalanced; the member kept task 0, and the roll-back dropped its
    buffers, so the source's merges hold nothing for it. We expect: both are resumed
    (before the fix only tasks with buffers were looked at, so they stayed paused and
    the task never received another record) and nothing is paused."""
    paused = _both(0)
    assert back_pressure({}, _both(0) | _both(1), paused, TOPICS, 3) == (
        [], sorted(paused))


def test_exactly_the_full_partitions_are_paused():
    """Scenario: max_buffered 3; task 0 holds 3 predictions (full) and 2 labels; task 1
    holds 5 labels (full, already paused) and no predictions (paused before, drained
    since); task 2 is not assigned to this member any more but its labels are still
    listed as paused; a partition of another topic is paused too. We expect: task 0's
    predictions paused; task 1's predictions resumed, its labels left paused; nothing
    done to partitions not assigned or of other topics."""
    tasks = _sizes({0: (3, 2), 1: (0, 5), 2: (9, 9)})
    assert tasks == {0: (3, 2), 1: (0, 5), 2: (9, 9)}
    other = TopicPartition("elsewhere", 0)
    assigned = _both(0) | _both(1) | {other}
    paused = {TopicPartition("preds", 1), TopicPartition("labels", 1),
              TopicPartition("labels", 2), other}
    assert back_pressure(tasks, assigned, paused, TOPICS, 3) == (
        [TopicPartition("preds", 0)], [TopicPartition("preds", 1)])
    assert back_pressure(tasks, assigned, paused, TOPICS, 6) == (
        [], [TopicPartition("labels", 1), TopicPartition("preds", 1)])
