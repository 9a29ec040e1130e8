"""The runtime's lean send path (``runtime/lean_send.py``) against a real broker: records
land in the partitions ``KafkaProducer.send`` puts them in, with the same keys, values
and headers; an aborted transaction hides them from ``read_committed`` readers as it
hides ``send``'s; what the lean path does not cover goes through ``send``."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer
from kafka.partitioner import StickyPartitioner
from kafka.serializer import Serializer

from streamweights.runtime.kafka_runtime import transactional_producer_settings
from streamweights.runtime.lean_send import LEAN_MAX_BYTES, lean_sender
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


def _send_all(sender, producer, topic, records) -> list:
    producer.begin_transaction()
    futures = [sender(topic, value, key, headers) for key, value, headers in records]
    producer.commit_transaction()
    return [future.get(timeout=30) for future in futures]


def test_lean_sends_land_as_send_puts_them(kafka_bootstrap, topic_factory):
    lean_topic = topic_factory("lean", partitions=5)
    plain_topic = topic_factory("plain", partitions=5)
    keyed = [(f"stream-{i % 17}".encode(), b'{"n":%d}' % i, None) for i in range(400)]
    odd = [(None, b'{"no":"key"}', None),  # no key: the client's sticky choice
           (b"stream-1", b'{"with":"headers"}', [("reason", b"bad"), ("origin", b"x")]),
           (b"stream-2", b"x" * (LEAN_MAX_BYTES + 1), None)]  # too big for the lean path
    records = keyed + odd
    producer = _producer(kafka_bootstrap)
    try:
        producer.partitions_for(lean_topic)  # (its metadata: the first send would wait)
        counting = producer.send = _CountingSend(producer)
        sender = lean_sender(producer)
        lean_meta = _send_all(sender, producer, lean_topic, records)
        assert counting.calls == len(odd)  # every small keyed record took the lean path
        plain_meta = _send_all(lambda t, v, k, h: producer.send(t, value=v, key=k, headers=h),
                               producer, plain_topic, records)
    finally:
        producer.close()
    # the same partition for every keyed record as send() chose, in the same order
    assert [m.partition for m in lean_meta[:len(keyed)]] == \
        [m.partition for m in plain_meta[:len(keyed)]]
    assert len({m.partition for m in lean_meta}) > 1
    read = read_records(kafka_bootstrap, lean_topic)
    assert sorted((r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in read) == \
        sorted((m.partition, m.offset, key, value, tuple(headers or ()))
               for m, (key, value, headers) in zip(lean_meta, records, strict=True))


def test_an_aborted_transaction_hides_lean_sends(kafka_bootstrap, topic_factory):
    topic = topic_factory("aborted", partitions=3)
    producer = _producer(kafka_bootstrap)
    try:
        sender = lean_sender(producer)
        producer.begin_transaction()
        for i in range(50):
            sender(topic, b"aborted-%d" % i, b"s%d" % (i % 3), None)
        producer.flush()
        producer.abort_transaction()
        _send_all(sender, producer, topic, [(b"s1", b"kept", None)])
    finally:
        producer.close()
    assert [r.value for r in read_records(kafka_bootstrap, topic)] == [b"kept"]
    uncommitted = read_records(kafka_bootstrap, topic, isolation="read_uncommitted")
    assert len(uncommitted) == 51  # they were written, and the markers hide them


@pytest.mark.parametrize("extra", [
    pytest.param({"partitioner": StickyPartitioner()}, id="another partitioner"),
    pytest.param({"value_serializer": _Identity()}, id="a serializer")])
def test_producers_it_was_not_written_for_use_send(kafka_bootstrap, topic_factory, extra):
    topic = topic_factory("other", partitions=2)
    producer = _producer(kafka_bootstrap, **extra)
    try:
        producer.partitions_for(topic)
        counting = producer.send = _CountingSend(producer)
        meta = _send_all(lean_sender(producer), producer, topic,
                         [(b"k", b"v1", None), (b"k", b"v2", None)])
    finally:
        producer.close()
    assert counting.calls == 2 and len(meta) == 2
    assert sorted(r.value for r in read_records(kafka_bootstrap, topic)) == [b"v1", b"v2"]
