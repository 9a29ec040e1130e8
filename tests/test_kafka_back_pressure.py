"""The Kafka source's back-pressure (``back_pressure``): before every poll and after every
fetch, exactly the assigned partitions whose task holds ``max_buffered`` or more of
their records are paused, whether or not their task still has a buffer (a rebalance
drops it)."""

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


class _Consumer:
    """What ``KafkaSource._fetch`` asks of a consumer (no broker): which partitions are
    assigned and paused, and which were paused when ``poll`` was called."""

    def __init__(self, assigned: set[TopicPartition], paused: set[TopicPartition]) -> None:
        self.config = {"max_poll_records": 10}
        self._assigned, self._paused = set(assigned), set(paused)
        self.paused_at_poll: set[TopicPartition] | None = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def poll(self, timeout_ms: int = 0) -> dict:
        self.paused_at_poll = set(self._paused)
        return {}


def test_a_partition_whose_buffer_drained_is_resumed_before_the_next_poll():
    """Scenario: task 0's predictions partition was paused at the last fetch (it held
    max_buffered records), and the run handed out since drained that buffer; task 1
    still holds max_buffered labels. We expect: the next fetch resumes task 0's
    predictions partition before it polls (a poll with it still paused parks the records
    the client holds for it: kafka-python 3.0 then returns nothing and sleeps 100 ms),
    while task 1's labels partition stays paused through the poll."""
    from streamweights.runtime.kafka_source import KafkaSource

    source = KafkaSource("localhost:1", TOPICS[0], TOPICS[1], group_id="g", max_buffered=3)
    for offset in range(3):
        source.merges.add(1, LABELS, offset, float(offset), b"l", 1e9)
    drained, full = TopicPartition(TOPICS[0], 0), TopicPartition(TOPICS[1], 1)
    consumer = _Consumer(_both(0) | _both(1), {drained, full})
    source.consumer = consumer
    assert source._fetch() == 0
    assert consumer.paused_at_poll == {full}
    assert consumer.paused() == {full}
