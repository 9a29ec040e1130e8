"""kafka-python 3.0's orphaned-rejoin race, reproduced against the real broker, and the
source's work-around (``complete_orphaned_rejoin``) getting the consumer out of it.

This race is what left a replica without its killed peer's task (and once without any
records at all) in earlier runs of the replica and runtime tests."""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.admin import NewPartitions

from streamweights.runtime.kafka_source import complete_orphaned_rejoin


def settled(consumer: KafkaConsumer, partitions: int) -> bool:
    """The consumer owns ``partitions`` partitions and no rebalance is half-done."""
    states = consumer._subscription.assignment
    return (len(states) == partitions and not consumer._coordinator.rejoining
            and not any(state._pending_revocation for state in states.values()))


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
