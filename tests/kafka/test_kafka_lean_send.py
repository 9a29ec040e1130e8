"""The runtime's lean send path (``runtime/lean_send.py``) against a real broker: records
gathered into core-built batches land in the partitions ``KafkaProducer.send`` puts them
in, in the order sent, with the same keys and values; batches fill and are handed over
mid-cycle; a record the lean path does not cover goes through ``send`` without
overtaking or being overtaken; an aborted cycle's records (handed over or still open)
never become visible; producers it was not written for use ``send``."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from kafka import KafkaProducer
from kafka.partitioner import StickyPartitioner
from kafka.serializer import Serializer

from streamweights.runtime.kafka_runtime import transactional_producer_settings
from streamweights.runtime.lean_send import LEAN_MAX_BYTES, lean_sender
from streamweights.runtime.transaction_calls import TransactionStuckError, check_delivered
from tests.kafka.helpers import read_records


def _producer(bootstrap: str, **extra) -> KafkaProducer:
    settings = {**transactional_producer_settings(1 << 20, {}), **extra}
    producer = KafkaProducer(bootstrap_servers=bootstrap,
                             transactional_id=f"lean-{uuid.uuid4().hex[:8]}", **settings)
    producer.init_transactions()
    return producer


class _CountingSend:
    """The producer's own ``send``, counted: how many records took it."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.calls = 0
        self._send = producer.send

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._send(*args, **kwargs)


class _Identity(Serializer):
    def serialize(self, topic, headers, data):
        return data


class _PlainSender:
    """Every record through ``KafkaProducer.send`` (what the lean path must match)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer

    def send(self, topic, value, key, headers):
        return self._producer.send(topic, value=value, key=key, headers=headers)

    def hand_over(self) -> list:
        return []


def _send_cycle(sender, producer, topic, records) -> list:
    """One committed transaction of ``records``; the futures the runtime would check."""
    producer.begin_transaction()
    futures = [sender.send(topic, value, key, headers) for key, value, headers in records]
    futures = [future for future in futures if future is not None] + sender.hand_over()
    producer.commit_transaction()
    check_delivered(futures)  # raises unless every batch and plain send was delivered
    return futures


def _by_partition(records) -> dict[int, list[tuple]]:
    found = defaultdict(list)
    for record in records:
        found[record.partition].append((record.key, record.value, tuple(record.headers)))
    return dict(found)


def test_lean_sends_land_as_send_puts_them(kafka_bootstrap, topic_factory):
    lean_topic = topic_factory("lean", partitions=5)
    plain_topic = topic_factory("plain", partitions=5)
    keyed = [(f"stream-{i % 17}".encode(), b'{"n":%d}' % i, None) for i in range(400)]
    odd = [(b"stream-3", b'{"with":"headers"}', [("reason", b"bad"), ("origin", b"x")]),
           (b"stream-2", b"x" * (LEAN_MAX_BYTES + 1), None)]  # too big for the lean path
    records = keyed[:200] + odd + keyed[200:]
    producer = _producer(kafka_bootstrap)
    try:
        producer.partitions_for(lean_topic)  # (its metadata: the first send would wait)
        counting = producer.send = _CountingSend(producer)
        sender = lean_sender(producer)
        futures = _send_cycle(sender, producer, lean_topic, records)
        assert counting.calls == len(odd)  # every small keyed record took the lean path
        assert len(futures) < len(records) // 10  # a future per batch, not per record
        _send_cycle(_PlainSender(producer), producer, plain_topic, records)
    finally:
        producer.close()
    lean = _by_partition(read_records(kafka_bootstrap, lean_topic))
    # the same partition for every record as send() chose, in the order sent, with the
    # headers and the big record where send() put them among the lean ones
    assert lean == _by_partition(read_records(kafka_bootstrap, plain_topic))
    assert len(lean) > 1
    assert sum(len(found) for found in lean.values()) == len(records)


def test_records_sent_to_a_named_partition_land_there_in_order(kafka_bootstrap,
                                                               topic_factory):
    """``send_to`` (the changelog's records, each to its task's partition). Scenario: a
    producer that has never seen the topic (no metadata: the first record of a partition
    must take ``send``, which asks for it), 600 keyed records to partitions named by
    the caller, not by their keys' hash, with tombstones and a record too big for the
    lean path among them, in one committed cycle.
    We expect: every record on the partition named, in the order sent per partition,
    tombstones as tombstones (in the batches, where they were sent); only the big record
    and the first record (of each partition at most) took ``send``."""
    topic = topic_factory("named", partitions=3)
    records = []
    for i in range(600):
        value = None if i % 97 == 5 else b"v%d" % i
        if i == 300:
            value = b"z" * (LEAN_MAX_BYTES + 1)
        records.append((i % 3, b"s/stream-%d" % (i % 11), value))
    producer = _producer(kafka_bootstrap)
    try:
        counting = producer.send = _CountingSend(producer)
        sender = lean_sender(producer)
        producer.begin_transaction()
        futures = [sender.send_to(topic, number, key, value) for number, key, value in records]
        futures = [future for future in futures if future is not None] + sender.hand_over()
        producer.commit_transaction()
        check_delivered(futures)
    finally:
        producer.close()
    odd = sum(1 for _, _, value in records
              if value is not None and len(value) > LEAN_MAX_BYTES)
    # the first record asks for the topic's metadata; later partitions may find it known
    assert odd + 1 <= counting.calls <= odd + 3
    found = defaultdict(list)
    for record in read_records(kafka_bootstrap, topic):
        found[record.partition].append((record.key, record.value))
    assert dict(found) == {number: [(key, value) for n, key, value in records if n == number]
                           for number in range(3)}


def test_full_batches_are_handed_over_mid_cycle(kafka_bootstrap, topic_factory):
    topic = topic_factory("small", partitions=2)
    producer = _producer(kafka_bootstrap, batch_size=1024)
    records = [(b"s%d" % (i % 2), b'{"n":%06d}' % i + b"y" * (i % 50), None)
               for i in range(3000)]
    try:
        producer.partitions_for(topic)
        sender = lean_sender(producer)
        futures = _send_cycle(sender, producer, topic, records)
    finally:
        producer.close()
    assert len(futures) > 50  # ~1 KiB each: many batches per partition in one cycle
    read = read_records(kafka_bootstrap, topic)
    per_key = defaultdict(list)
    for record in read:
        per_key[record.key].append(record.value)
    assert dict(per_key) == {key: [v for k, v, _ in records if k == key]
                             for key in (b"s0", b"s1")}


def test_an_aborted_cycle_hides_its_records_handed_over_or_open(kafka_bootstrap,
                                                                topic_factory):
    topic = topic_factory("aborted", partitions=3)
    producer = _producer(kafka_bootstrap)
    try:
        producer.partitions_for(topic)
        sender = lean_sender(producer)
        producer.begin_transaction()
        for i in range(50):
            sender.send(topic, b"aborted-%d" % i, b"s%d" % (i % 3), None)
        handed = sender.hand_over()
        producer.flush()
        for i in range(20):  # still open when the cycle is dropped
            sender.send(topic, b"open-%d" % i, b"s%d" % (i % 3), None)
        producer.abort_transaction()
        sender.discard()
        _send_cycle(sender, producer, topic, [(b"s1", b"kept", None)])
    finally:
        producer.close()
    assert 1 <= len(handed) <= 3  # one batch per partition the three keys hash to
    assert [r.value for r in read_records(kafka_bootstrap, topic)] == [b"kept"]
    uncommitted = read_records(kafka_bootstrap, topic, isolation="read_uncommitted")
    # the handed-over ones were written and the markers hide them; the open ones never left
    assert sorted(r.value for r in uncommitted) == \
        sorted([b"aborted-%d" % i for i in range(50)] + [b"kept"])


@pytest.mark.parametrize("extra", [
    pytest.param({"partitioner": StickyPartitioner()}, id="another partitioner"),
    pytest.param({"value_serializer": _Identity()}, id="a serializer"),
    pytest.param({"compression_type": "gzip"}, id="compression")])
def test_producers_it_was_not_written_for_use_send(kafka_bootstrap, topic_factory, extra):
    topic = topic_factory("other", partitions=2)
    producer = _producer(kafka_bootstrap, **extra)
    try:
        producer.partitions_for(topic)
        counting = producer.send = _CountingSend(producer)
        futures = _send_cycle(lean_sender(producer), producer, topic,
                              [(b"k", b"v1", None), (b"k", b"v2", None)])
    finally:
        producer.close()
    assert counting.calls == 2 and len(futures) == 2
    assert [r.value for r in read_records(kafka_bootstrap, topic)] == [b"v1", b"v2"]


def test_batches_stay_within_the_topics_message_limit(kafka_bootstrap, topic_factory):
    """A topic whose ``max.message.bytes`` (20,000 here) is below the producer's batch
    size: told the limit, the sender keeps every batch within it and every record is
    delivered; not told, the broker refuses the big batches, the client splits them
    into batches of its own, and the batch future the runtime checks never completes
    (what the runtime now avoids by passing each output topic's limit)."""
    records = [(b"s%d" % (i % 3), b'{"n":%06d,"pad":"%s"}' % (i, b"z" * 150), None)
               for i in range(3000)]
    outcomes = {}
    for told in (True, False):
        topic = topic_factory(f"limit-{told}", partitions=3,
                              config={"max.message.bytes": "20000"})
        producer = _producer(kafka_bootstrap)
        try:
            producer.partitions_for(topic)
            sender = lean_sender(producer, {topic: 20_000} if told else None)
            try:
                outcomes[told] = len(_send_cycle(sender, producer, topic, records))
            except TransactionStuckError as error:
                outcomes[told] = error
        finally:
            producer.close()
        if told:
            assert len(read_records(kafka_bootstrap, topic)) == len(records)
    assert outcomes[True] > 3 * 2  # 20,000-byte batches: several per partition
    assert isinstance(outcomes[False], TransactionStuckError)
