"""The real broker and kafka-python's transactional API, before anything is built on them.

These prove, against the broker the Kafka runtime will be tested with, the client
behaviour the runtime relies on: keyed records keep their partition, a transaction's
records and the consumer offsets sent with it become visible together on commit, an
aborted transaction is invisible to ``read_committed`` readers (while its records really
are in the log), and a second producer with the same transactional id fences the first.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import ProducerFencedError
from kafka.structs import OffsetAndMetadata

#: Bound on every wait for records; a healthy local broker answers in well under a second.
WAIT_SECONDS = 30.0


def read_all(bootstrap: str, topic: str, expected: int, *, isolation: str = "read_committed",
             settle_seconds: float = 0.0) -> list:
    """Every record of ``topic`` from the beginning (no group), waiting until ``expected``
    have arrived, then ``settle_seconds`` more to catch any extra records."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=200)
    try:
        numbers = sorted(consumer.partitions_for_topic(topic))
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + WAIT_SECONDS
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        settle_until = time.monotonic() + settle_seconds
        while time.monotonic() < settle_until:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def transactional_producer(bootstrap: str, transactional_id: str) -> KafkaProducer:
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                             enable_idempotence=True, acks="all")
    producer.init_transactions()
    return producer


def test_keyed_records_round_trip_and_keep_their_partition(kafka_bootstrap, topic_factory):
    topic = topic_factory("plain", partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = {}
    for index in range(60):
        key = f"stream-{index % 5}".encode()
        metadata = producer.send(topic, key=key, value=f"v{index}".encode()).get(WAIT_SECONDS)
        sent[f"v{index}".encode()] = (key, metadata.partition, metadata.offset)
    producer.close()

    records = read_all(kafka_bootstrap, topic, expected=len(sent), isolation="read_uncommitted")

    assert sorted(r.value for r in records) == sorted(sent)
    for record in records:
        assert (record.key, record.partition, record.offset) == sent[record.value]
    partitions_per_key: dict[bytes, set[int]] = {}
    for key, partition, _ in sent.values():
        partitions_per_key.setdefault(key, set()).add(partition)
    assert all(len(partitions) == 1 for partitions in partitions_per_key.values())


def test_consume_transform_produce_commits_outputs_and_offsets_together(
        kafka_bootstrap, topic_factory):
    source, sink = topic_factory("source"), topic_factory("sink")
    group = f"group-{source}"
    feeder = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for index in range(10):
        feeder.send(source, key=b"k", value=str(index).encode())
    feeder.flush()
    feeder.close()

    consumer = KafkaConsumer(source, bootstrap_servers=kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             isolation_level="read_committed")
    producer = transactional_producer(kafka_bootstrap, f"tx-{source}")
    try:
        consumed = []
        deadline = time.monotonic() + WAIT_SECONDS
        while len(consumed) < 10 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                consumed.extend(batch)
        assert len(consumed) == 10
        producer.begin_transaction()
        for record in consumed:
            producer.send(sink, key=record.key, value=b"out-" + record.value)
        partition = TopicPartition(source, 0)
        next_offset = consumed[-1].offset + 1  # the offset committed is the next one to read
        producer.send_offsets_to_transaction(
            {partition: OffsetAndMetadata(next_offset, "", -1)}, consumer.group_metadata())
        producer.commit_transaction()

        committed = consumer.committed(partition)
    finally:
        producer.close()
        consumer.close()

    assert committed == next_offset == 10
    outputs = read_all(kafka_bootstrap, sink, expected=10, settle_seconds=0.5)
    assert [r.value for r in outputs] == [b"out-" + str(i).encode() for i in range(10)]


def test_aborted_transaction_is_invisible_to_read_committed(kafka_bootstrap, topic_factory):
    topic, source = topic_factory("tx"), topic_factory("tx-offsets")
    group = f"group-{source}"
    partition = TopicPartition(source, 0)
    producer = transactional_producer(kafka_bootstrap, f"tx-{topic}")
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        producer.begin_transaction()
        producer.send(topic, key=b"k", value=b"first")
        producer.send_offsets_to_transaction({partition: OffsetAndMetadata(1, "", -1)}, group)
        producer.commit_transaction()

        producer.begin_transaction()
        producer.send(topic, key=b"k", value=b"aborted")
        producer.send_offsets_to_transaction({partition: OffsetAndMetadata(2, "", -1)}, group)
        producer.flush()  # the aborted record really reaches the log
        producer.abort_transaction()

        producer.begin_transaction()
        producer.send(topic, key=b"k", value=b"second")
        producer.commit_transaction()

        committed_offset = consumer.committed(partition)
    finally:
        producer.close()
        consumer.close()

    committed = read_all(kafka_bootstrap, topic, expected=2, settle_seconds=0.5)
    uncommitted = read_all(kafka_bootstrap, topic, expected=3, isolation="read_uncommitted",
                           settle_seconds=0.5)
    assert [r.value for r in committed] == [b"first", b"second"]
    assert [r.value for r in uncommitted] == [b"first", b"aborted", b"second"]
    assert committed_offset == 1  # the offsets sent in the aborted transaction did not stick


def test_second_producer_with_same_transactional_id_fences_the_first(
        kafka_bootstrap, topic_factory):
    topic = topic_factory("fence")
    transactional_id = f"tx-{topic}"
    zombie = transactional_producer(kafka_bootstrap, transactional_id)
    zombie.begin_transaction()
    zombie.send(topic, value=b"zombie").get(WAIT_SECONDS)

    successor = transactional_producer(kafka_bootstrap, transactional_id)  # aborts the zombie's
    try:
        successor.begin_transaction()
        successor.send(topic, value=b"successor")
        successor.commit_transaction()
        with pytest.raises(ProducerFencedError):
            zombie.commit_transaction()
    finally:
        successor.close()
        zombie.close(timeout=5)

    records = read_all(kafka_bootstrap, topic, expected=1, settle_seconds=0.5)
    assert [r.value for r in records] == [b"successor"]
