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
import time
import uuid
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
    from kafka.admin import NewTopic

    test_name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(prefix: str = "t", *, partitions: int = 1,
             config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{test_name}-{uuid.uuid4().hex[:8]}"
        kafka_admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        _wait_for_leaders(kafka_admin, name, partitions)
        return name

    return make


def _wait_for_leaders(admin, topic: str, partitions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_topics([topic])
        if described and described[0].get("error_code", 0) == 0:
            leaders = [p.get("leader_id", -1) for p in described[0].get("partitions", [])]
            if len(leaders) == partitions and all(leader >= 0 for leader in leaders):
                return
        time.sleep(0.05)
    raise TimeoutError(f"topic {topic}: partitions have no leader after {timeout:.0f}s")
