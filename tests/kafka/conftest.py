"""Fixtures for tests against a real Apache Kafka broker (KRaft, single node, loopback).

``kafka_broker`` (session) fetches the broker jars with Maven on first use, starts the
broker once for the whole session and stops it at the end; tests get the
``KafkaBroker`` object (``.bootstrap``, and ``.restart()`` / ``.kill()`` for fault tests,
which must leave it running again). ``kafka_bootstrap`` is just its address, and
``topic_factory`` creates uniquely named topics so tests never see each other's records.
A missing ``java`` or ``mvn`` fails the fixture with a message saying what to install.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterator

import pytest

from tests.kafka.broker import KafkaBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-broker"))
    atexit.register(broker.kill)  # a crashed or interrupted session never leaves a JVM behind
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_broker: KafkaBroker):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap,
                             client_id="streamweights-test-admin")
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def topic_factory(kafka_admin, request) -> Callable[..., str]:
    """``make(prefix="t", partitions=1, config=None) -> name``: a new topic, ready to use
    (its partitions have leaders) when the call returns."""
    from tests.kafka.helpers import topic_maker

    test_name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return topic_maker(kafka_admin, test_name)
