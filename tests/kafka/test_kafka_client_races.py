"""Two kafka-python 3.0 client bugs, reproduced against the real broker, and the source's
work-arounds getting the consumer out of them:

* an orphaned rejoin (``complete_orphaned_rejoin``): what left a replica without its
  killed peer's task, and once without any records at all, in earlier test runs;
* records parked at ``pause`` and never handed back after ``resume``
  (``restore_parked_records``): what stalled the merge once a partition had run
  ``max_buffered`` records ahead of its partner (seen in bench/kafka.py);
* a resumed partition's parked records skipped by a poll that finds a paused
  partition's records in line (``restore_parked_records`` again): an empty poll that
  sleeps the retry back-off, ~70 times in a 10,000-stream replay of bench/kafka.py.

If a "without help" half starts failing, kafka-python fixed that bug: drop the
work-around."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions

from streamweights.runtime.kafka_source import complete_orphaned_rejoin, restore_parked_records


def settled(consumer: KafkaConsumer, partitions: int) -> bool:
    """The consumer owns ``partitions`` partitions and no rebalance is half-done."""
    states = consumer._subscription.assignment
    return (len(states) == partitions and not consumer._coordinator.rejoining
            and not any(state._pending_revocation for state in states.values()))


def filled_partitions(bootstrap: str, topic_factory, name: str
                      ) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A two-partition topic with 1,000 records of 100 bytes in each, and a group-less
    consumer (10 records per poll) assigned to both from their beginnings."""
    topic = topic_factory(name, partitions=2)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for index in range(2_000):
        producer.send(topic, value=b"x" * 100, partition=index % 2)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             max_poll_records=10, enable_auto_commit=False)
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer, partitions


def poll_counting(consumer: KafkaConsumer, counts: dict[TopicPartition, int], until,
                  helped: bool = False) -> None:
    """Poll (100 ms each, ``restore_parked_records`` first when ``helped``), adding the
    records returned per partition to ``counts``, until ``until()`` or 10 s."""
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        if helped:
            restore_parked_records(consumer)
        for partition, records in consumer.poll(timeout_ms=100).items():
            counts[partition] += len(records)


def test_a_rejoin_orphaned_by_a_short_poll_is_completed(kafka_bootstrap, kafka_admin,
                                                          topic_factory):
    """Scenario: a group's only member (so the leader) owns a one-partition topic; two
    partitions are added, which makes it rejoin; it polls with a 1 ms timeout, so the
    poll gives up while the join is in flight. We expect: without help the rejoin is
    orphaned (after 5 s the member still owns one partition, marked pending revocation,
    and kafka-python no longer drives the join); once ``complete_orphaned_rejoin`` runs
    after each poll, it reports stepping in and the member settles on three partitions.
    If the first half starts failing, kafka-python fixed the race: drop the work-around."""
    topic = topic_factory("rejoin", partitions=1)
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                             group_id=f"group-{topic}", metadata_max_age_ms=200,
                             enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never joined its group"
            consumer.poll(timeout_ms=100)
        kafka_admin.create_partitions({topic: NewPartitions(3)})

        orphaned_for = time.monotonic() + 5
        while time.monotonic() < orphaned_for:
            consumer.poll(timeout_ms=1)
        assert not settled(consumer, 3), "kafka-python completed the rejoin by itself"
        assert consumer._coordinator.rejoining and not consumer._coordinator.need_rejoin()

        stepped_in = 0
        deadline = time.monotonic() + 20
        while not settled(consumer, 3):
            assert time.monotonic() < deadline, "the rejoin was never completed"
            consumer.poll(timeout_ms=1)
            stepped_in += complete_orphaned_rejoin(consumer)
        assert stepped_in >= 1
        assert len(consumer.assignment()) == 3
    finally:
        consumer.close(autocommit=False)


def test_records_parked_by_pause_come_back_after_resume(kafka_bootstrap, topic_factory):
    """Scenario: a two-partition topic, 1,000 records in each; a group-less consumer
    (10 records per poll) polls until one partition returns records, pauses that one
    while the client still holds more of it, reads the other partition to its end, then
    resumes the first. We expect: without help the resumed partition returns nothing
    more for 3 s (its records stay parked); once ``restore_parked_records`` runs before
    each poll, all 1,000 of its records arrive."""
    consumer, partitions = filled_partitions(kafka_bootstrap, topic_factory, "parked")
    counts = dict.fromkeys(partitions, 0)

    def poll(until, helped: bool) -> None:
        poll_counting(consumer, counts, until, helped)

    try:
        poll(lambda: any(counts.values()), helped=False)
        first = next(p for p in partitions if counts[p])
        other = next(p for p in partitions if p != first)
        assert counts[first] < 1_000
        consumer.pause(first)
        poll(lambda: counts[other] == 1_000, helped=False)
        assert counts[other] == 1_000
        consumer.resume(first)
        stuck_at = counts[first]
        waited = time.monotonic() + 3
        poll(lambda: time.monotonic() > waited, helped=False)
        assert counts[first] == stuck_at, "kafka-python handed the parked records back"
        poll(lambda: counts[first] == 1_000, helped=True)
        assert counts[first] == 1_000
    finally:
        consumer.close()


def test_a_poll_finding_a_paused_partition_in_line_hands_back_a_resumed_ones_records(
        kafka_bootstrap, topic_factory):
    """Scenario: a two-partition topic, 1,000 records in each; a group-less consumer (10
    records per poll) reads a few records of each partition, so that one partition's
    records are in line in the client and the other's are parked (paused after a poll);
    then the in-line one is paused and the parked one resumed. We expect: without help
    the next poll (no wait: ``timeout_ms=0``) returns nothing, though the resumed
    partition's records are in the client (the poll after it returns them); set up the
    same way the other way round, with ``restore_parked_records`` before the poll, that
    poll returns the resumed partition's records."""
    consumer, partitions = filled_partitions(kafka_bootstrap, topic_factory, "in-line")
    counts = dict.fromkeys(partitions, 0)

    def one_poll(helped: bool) -> dict[TopicPartition, int]:
        if helped:
            restore_parked_records(consumer)
        return {partition: len(records)
                for partition, records in consumer.poll(timeout_ms=0).items()}

    def in_line_and_parked(in_line: TopicPartition, parked: TopicPartition) -> bool:
        fetcher = consumer._fetcher
        current = fetcher._next_partition_records
        return (current is not None and current.topic_partition == in_line
                and parked in fetcher._paused_partition_records)

    try:
        poll_counting(consumer, counts, lambda: any(counts.values()))
        first = next(p for p in partitions if counts[p])
        other = next(p for p in partitions if p != first)
        consumer.pause(first)
        poll_counting(consumer, counts, lambda: counts[other] > 0)
        consumer.pause(other)
        consumer.resume(first)
        assert in_line_and_parked(other, first)
        assert one_poll(helped=False) == {}, "kafka-python handed the parked records back"
        assert one_poll(helped=False) == {first: 10}
        consumer.pause(first)
        consumer.resume(other)
        assert in_line_and_parked(first, other)
        assert one_poll(helped=True) == {other: 10}
        assert counts[other] < 1_000 and counts[first] < 1_000
    finally:
        consumer.close()
