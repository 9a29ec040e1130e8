"""The runtime's bounded transactional calls against a broker that stops answering
(``runtime/transaction_calls.py``): kafka-python's own ``commit_transaction`` waits
without a limit; the runtime's gives up within its bound, so the replica can replace
its producer instead of hanging."""

from __future__ import annotations

import contextlib
import time

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamweights.runtime.transaction_calls import TransactionStuckError, commit

BOUND_SECONDS = 3.0


def test_a_commit_the_broker_never_answers_gives_up_within_its_bound(kafka_broker,
                                                                      topic_factory):
    """Scenario: a transactional producer has sent a record in an open transaction; the
    broker is stopped, then the runtime's commit is called with a 3 s bound. We expect:
    it raises (stuck, or the client's own error) within the bound plus a second, and the
    restarted broker serves the other tests."""
    topic = topic_factory("bounded-commit")
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap,
                             transactional_id=f"tx-{topic}", enable_idempotence=True,
                             acks="all", transaction_timeout_ms=5000)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, value=b"in an open transaction").get(30)
        kafka_broker.stop()
        started = time.monotonic()
        with pytest.raises((TransactionStuckError, KafkaError)):
            commit(producer, BOUND_SECONDS)
        assert time.monotonic() - started < BOUND_SECONDS + 1.0
    finally:
        kafka_broker.start()
        with contextlib.suppress(Exception):
            producer.close(timeout=2)
