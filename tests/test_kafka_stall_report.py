"""The Kafka source's stall warning ("nothing released for Ns although records are
buffered") measures how long buffered records have waited, not how long ago the replica
last released anything: a replica idle without tasks for 9 s warned at the first fetch
after it was assigned some."""

from __future__ import annotations

from typing import NamedTuple

from kafka import TopicPartition

from streamweights.runtime.kafka_source import KafkaSource


class Fetched(NamedTuple):
    """What the source reads of a kafka-python ``ConsumerRecord``."""

    offset: int
    value: bytes


def _batch(topic: str, *offsets: int) -> dict[TopicPartition, list[Fetched]]:
    return {TopicPartition(topic, 0): [Fetched(offset, b'{"ts": %d}' % offset)
                                       for offset in offsets]}


def test_the_stall_clock_starts_when_records_begin_to_wait():
    """Scenario: a source released its last record at t, then had nothing buffered (no
    tasks) for 9 s; at t+9 its first fetch after an assignment buffers predictions whose
    labels have not come yet. We expect: no stall is due at t+10 (the records waited 1 s;
    before the fix the report fired, counting 10 s from the last release); it is due
    once they have waited ``stall_report_seconds`` (5 s) with nothing released; more
    records joining those already waiting do not restart the clock, and records arriving
    after everything was released again do."""
    source = KafkaSource("localhost:1", "predictions", "labels", group_id="g")
    start = source._last_release  # the clock starts at construction
    assert not source._stall_due(start + 9)  # nothing buffered: never a stall
    assert source._buffer(_batch("predictions", 0, 1), start + 9) == 2
    assert not source._stall_due(start + 10)
    assert source._stall_due(start + 9 + source.stall_report_seconds)
    source._buffer(_batch("predictions", 2), start + 12)  # joins records already waiting
    assert source._stall_due(start + 14)
    source.merges.reset()  # all released (or rolled back), then new records
    source._buffer(_batch("labels", 0), start + 20)
    assert not source._stall_due(start + 24)
    assert source._stall_due(start + 25)
