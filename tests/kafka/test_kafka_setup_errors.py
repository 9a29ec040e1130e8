"""Start-up errors of the Kafka source name what to fix (must-hold #6, first part)."""

from __future__ import annotations

import time

import pytest

from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.kafka_source import KafkaSource
from tests.kafka.broker import free_port


def test_unreachable_broker_fails_fast_with_the_address():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    source = KafkaSource(address, "predictions", "labels", group_id="g",
                         client_settings={"bootstrap_timeout_ms": 1500})
    started = time.monotonic()
    with pytest.raises(RuntimeSetupError, match="cannot reach a Kafka broker at " + address):
        source.connect()
    assert time.monotonic() - started < 15


def test_missing_topic_is_named(kafka_bootstrap, topic_factory):
    predictions = topic_factory("predictions")
    source = KafkaSource(kafka_bootstrap, predictions, "no-such-labels-topic", group_id="g")
    with pytest.raises(RuntimeSetupError, match="'no-such-labels-topic' does not exist"):
        source.connect()


def test_topics_with_different_partition_counts_are_refused(kafka_bootstrap, topic_factory):
    predictions = topic_factory("predictions", partitions=3)
    labels = topic_factory("labels", partitions=2)
    source = KafkaSource(kafka_bootstrap, predictions, labels, group_id="g")
    expected = r"3 partitions\).*2 partitions\).*not co-partitioned"
    with pytest.raises(RuntimeSetupError, match=expected):
        source.connect()
