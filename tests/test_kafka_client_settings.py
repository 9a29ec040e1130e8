"""The input consumer's fetch settings (issue 11, item 5): sized for throughput by
default, and ``kafka.client`` still overrides any of them. The real consumer getting
them is checked against the broker in ``tests/kafka/test_kafka_runtime.py``."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streamweights.config import parse_config
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.kafka_runtime import (
    check_client_settings,
    client_settings,
    transactional_producer_settings,
    warn_checkpoint_past_timeout,
    warn_idle_commit_past_timeout,
)
from streamweights.runtime.kafka_source import THROUGHPUT_SETTINGS, consumer_settings


def _kafka(**client):
    document = {"source": {"kind": "kafka"}, "streams": [{"name": "s", "models": ["a", "b"]}],
                "kafka": {"bootstrap_servers": "broker:9092", "client": client}}
    return parse_config(document).kafka


def test_the_consumer_fetches_for_throughput_not_with_kafka_pythons_defaults():
    """Scenario: no ``kafka.client``. We expect: 10,000 records per poll (kafka-python's
    default is 500), 4 MiB per partition (default 1 MiB), 50 MiB per fetch, a fetch
    answered from 32 KiB on (default 1 byte), read_committed, and those are valid
    kafka-python consumer settings."""
    settings = consumer_settings(client_settings(_kafka(), KafkaConsumer))
    assert settings["max_poll_records"] == 10_000
    assert settings["max_partition_fetch_bytes"] == 4 << 20
    assert settings["fetch_max_bytes"] == 50 << 20
    assert settings["fetch_min_bytes"] == 32 << 10
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


def test_settings_the_runtime_owns_are_refused_naming_what_to_set():
    """Scenario: ``kafka.client`` sets keys the runtime sets itself (a duplicate keyword
    made the client constructor raise a TypeError, reported as an unreachable broker) or
    that exactly-once depends on. We expect: each refused with its key and what to do;
    ``client_id`` (a user's own, e.g. for broker quotas) and unknown keys as before."""
    for key, value, hint in [("group_id", "g", "kafka.group_id"),
                             ("isolation_level", "read_uncommitted", "read_committed"),
                             ("enable_auto_commit", True, "transactions"),
                             ("transactional_id", "t", "kafka.transactional_id"),
                             ("enable_idempotence", False, "idempotent")]:
        with pytest.raises(RuntimeSetupError, match=rf"kafka\.client\.{key}: set by the "
                                                     rf"runtime.*{hint}"):
            check_client_settings(_kafka(**{key: value}))
    check_client_settings(_kafka(client_id="fraud-team", max_poll_records=500))
    with pytest.raises(RuntimeSetupError, match="not a kafka-python client setting"):
        check_client_settings(_kafka(max_pole_records=500))


def test_the_transactional_producer_retries_a_refused_transaction_step_after_20_ms():
    """Scenario: the replica's producer settings, without and with ``kafka.client``
    producer keys. We expect: ``retry_backoff_ms`` 20, not kafka-python's 100 (the sleep
    before every retried ``AddPartitionsToTxn`` / ``AddOffsetsToTxn``, refused while the
    previous commit's markers are written), the exactly-once settings, a request size
    that holds the largest changelog record, and the user's own keys winning."""
    settings = transactional_producer_settings(
        1_048_588, client_settings(_kafka(max_poll_records=500), KafkaProducer))
    assert settings["retry_backoff_ms"] == 20 < KafkaProducer.DEFAULT_CONFIG["retry_backoff_ms"]
    # batches big enough that a burst of adapted records does not wake the sender per record
    assert settings["batch_size"] == 256 << 10 > KafkaProducer.DEFAULT_CONFIG["batch_size"]
    assert settings["enable_idempotence"] is True and settings["acks"] == "all"
    assert settings["transaction_timeout_ms"] == 10_000
    assert settings["max_request_size"] >= 1_048_588 + 64 * 1024
    assert "max_poll_records" not in settings  # a consumer key stays the consumer's
    assert set(settings) <= set(KafkaProducer.DEFAULT_CONFIG)
    tuned = transactional_producer_settings(
        1_048_588, client_settings(_kafka(retry_backoff_ms=50, linger_ms=0,
                                          batch_size=16384), KafkaProducer))
    assert tuned["retry_backoff_ms"] == 50 and tuned["linger_ms"] == 0
    assert tuned["batch_size"] == 16384


def _check_warnings(caplog, warn, cases) -> None:
    """``warn(value, timeout)`` for each ``(value, timeout, warned, parts)``: it returns
    ``warned``, logs one message exactly when it does, and that message holds ``parts``."""
    for value, transaction_timeout_ms, warned, parts in cases:
        caplog.clear()
        assert warn(value, transaction_timeout_ms) is warned
        messages = [record.getMessage() for record in caplog.records]
        assert bool(messages) is warned
        for part in parts if warned else ():
            assert part in messages[0], messages


def test_an_idle_commit_past_the_transaction_timeout_is_warned_about(caplog):
    """Scenario: ``kafka.idle_commit_ms`` at, above and below the producer's transaction
    timeout (the default 10 s, or a ``kafka.client`` value). We expect: a warning that
    names both values exactly when the idle commit is not below the timeout (the broker
    would roll back what a quiet input left in the open transaction); none otherwise."""
    timeout = transactional_producer_settings(
        1 << 20, client_settings(_kafka(), KafkaProducer))["transaction_timeout_ms"]
    shorter = transactional_producer_settings(
        1 << 20, client_settings(_kafka(transaction_timeout_ms=5_000), KafkaProducer))
    cases = [(100, timeout, False), (timeout, timeout, True), (600_000, timeout, True),
             (600_000, shorter["transaction_timeout_ms"], True), (4_999, 5_000, False)]
    _check_warnings(caplog, warn_idle_commit_past_timeout,
                    [(idle, limit, warned, (f"({idle})", f"({limit} ms)"))
                     for idle, limit, warned in cases])
    assert shorter["transaction_timeout_ms"] == 5_000


def test_a_checkpoint_cadence_past_the_transaction_timeout_is_warned_about(caplog):
    """Scenario: ``checkpoint.every_seconds`` below, at and above a transaction timeout.
    We expect: a warning naming both values (and Kafka mode's default) exactly when the
    cadence is not below the timeout; none otherwise."""
    cases = [(0.1, 10_000, False), (9.999, 10_000, False), (10, 10_000, True),
             (30, 10_000, True), (3600, 5_000, True)]
    _check_warnings(caplog, warn_checkpoint_past_timeout,
                    [(seconds, limit, warned, (f"every_seconds ({seconds:g})",
                                               f"({limit} ms)", "default is 0.1 s"))
                     for seconds, limit, warned in cases])
