"""The input consumer's fetch settings (issue 11, item 5): sized for throughput by
default, and ``kafka.client`` still overrides any of them. The real consumer getting
them is checked against the broker in ``tests/kafka/test_kafka_runtime.py``."""

from __future__ import annotations

from kafka import KafkaConsumer

from streamweights.config import parse_config
from streamweights.runtime.kafka_runtime import client_settings
from streamweights.runtime.kafka_source import THROUGHPUT_SETTINGS, consumer_settings


def _kafka(**client):
    document = {"source": {"kind": "kafka"}, "streams": [{"name": "s", "models": ["a", "b"]}],
                "kafka": {"bootstrap_servers": "broker:9092", "client": client}}
    return parse_config(document).kafka


def test_the_consumer_fetches_for_throughput_not_with_kafka_pythons_defaults():
    """Scenario: no ``kafka.client``. We expect: 10,000 records per poll (kafka-python's
    default is 500), 4 MiB per partition (default 1 MiB), 50 MiB per fetch, read_committed,
    and those are valid kafka-python consumer settings."""
    settings = consumer_settings(client_settings(_kafka(), KafkaConsumer))
    assert settings["max_poll_records"] == 10_000
    assert settings["max_partition_fetch_bytes"] == 4 << 20
    assert settings["fetch_max_bytes"] == 50 << 20
    assert settings["isolation_level"] == "read_committed"
    assert set(THROUGHPUT_SETTINGS) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert KafkaConsumer.DEFAULT_CONFIG["max_poll_records"] < settings["max_poll_records"]


def test_kafka_client_overrides_each_fetch_setting_and_keeps_the_rest():
    """Scenario: ``kafka.client`` sets ``max_poll_records`` 500 and a producer-only key.
    We expect: the consumer gets 500, keeps the other throughput defaults, and never sees
    the producer's key."""
    settings = consumer_settings(client_settings(_kafka(max_poll_records=500, linger_ms=20),
                                                 KafkaConsumer))
    assert settings["max_poll_records"] == 500
    assert settings["max_partition_fetch_bytes"] == 4 << 20
    assert "linger_ms" not in settings
