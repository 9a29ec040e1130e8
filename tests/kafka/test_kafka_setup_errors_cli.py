"""Start-up errors of the Kafka runtime through the command line (must-hold #6): a
one-line message saying what to fix and a non-zero exit, fast; and topic creation."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

import pytest
from kafka import KafkaAdminClient

from streamweights.config import load_config
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.kafka_runtime import KafkaRuntime
from streamweights.runtime.settings_digest import settings_digests
from tests.kafka.broker import free_port
from tests.kafka.helpers import REPO, write_kafka_config


def run_cli(config_path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "streamweights", "run", "--no-http",
                           "--config", str(config_path)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=120)


def topics_named(prefix: str) -> dict[str, str]:
    return {kind: f"{prefix}-{kind}" for kind in ("predictions", "labels", "weights",
                                                   "dead_letter", "changelog")}


def test_unreachable_broker_exits_non_zero_with_one_line(tmp_path):
    """Scenario: the config points at a loopback port where nothing listens. We expect:
    exit code 1 within seconds, and stderr is exactly one line naming the address."""
    address = f"127.0.0.1:{free_port()}"
    path = write_kafka_config(tmp_path, address, topics_named("x"),
                              client={"bootstrap_timeout_ms": 1500})
    started = time.monotonic()
    result = run_cli(path)
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: kafka.bootstrap_servers: cannot reach a Kafka broker "
                               f"at {address}")


def test_missing_topic_exits_non_zero_naming_the_setting(tmp_path, kafka_bootstrap,
                                                         topic_factory):
    """Scenario: create_topics is false and the labels topic does not exist. We expect:
    exit code 1 and one stderr line naming kafka.labels_topic, the topic and the fix."""
    topics = topics_named(f"missing-{free_port()}")
    topics["predictions"] = topic_factory("predictions")
    path = write_kafka_config(tmp_path, kafka_bootstrap, topics, create_topics=False)
    result = run_cli(path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: kafka.labels_topic: topic {topics['labels']!r} does "
                               "not exist")
    assert "kafka.create_topics: true" in lines[0]


def test_create_topics_makes_co_partitioned_and_compacted_topics(tmp_path, kafka_bootstrap,
                                                                 kafka_admin):
    """Scenario: none of the topics exist and create_topics is true (4 partitions). We
    expect: the run (bounded, empty input) exits 0; all five topics exist with 4
    partitions; weights and changelog are compacted."""
    topics = topics_named(f"created-{free_port()}")
    path = write_kafka_config(tmp_path, kafka_bootstrap, topics, create_topics=True,
                              partitions=4)
    result = run_cli(path)
    assert result.returncode == 0, result.stderr[-2000:]
    described = {t.get("topic", t.get("name")): t
                 for t in kafka_admin.describe_topics(list(topics.values()))}
    assert {name: len(described[name]["partitions"]) for name in topics.values()} == \
        {name: 4 for name in topics.values()}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        from kafka.admin import ConfigResource, ConfigResourceType

        from streamweights.runtime.kafka_runtime import _find_config_value

        for kind, policy in (("weights", "compact"), ("changelog", "compact"),
                             ("predictions", "delete")):
            found = admin.describe_configs([ConfigResource(
                ConfigResourceType.TOPIC, topics[kind], configs=["cleanup.policy"])],
                config_filter="all")
            assert _find_config_value(found, "cleanup.policy") == policy, kind
    finally:
        admin.close()


def test_client_settings_reach_the_clients_and_unknown_ones_are_refused(kafka_bootstrap):
    """Scenario: the kafka.client block asks for SASL_PLAINTEXT against the test broker,
    which only speaks PLAINTEXT; another config has a misspelt client setting. We expect:
    the first fails at start-up (so the security settings were applied, not dropped) with
    a RuntimeSetupError naming the address; the second is refused naming the setting."""
    example = load_config(REPO / "configs" / "kafka.yaml")  # the shipped example is valid
    assert example.kafka is not None and example.kafka.create_topics
    sasl = dataclasses.replace(example.kafka, bootstrap_servers=kafka_bootstrap, client={
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "user", "sasl_plain_password": "secret",
        "bootstrap_timeout_ms": 2000, "request_timeout_ms": 2000})
    started = time.monotonic()
    with pytest.raises(RuntimeSetupError, match=re.escape(
            f"cannot reach a Kafka broker at {kafka_bootstrap}")):
        KafkaRuntime(sasl, settings_digests(example.streams))
    assert time.monotonic() - started < 20
    misspelt = dataclasses.replace(example.kafka, client={"securty_protocol": "SSL"})
    with pytest.raises(RuntimeSetupError, match=re.escape(
            "kafka.client.securty_protocol: not a kafka-python client setting")):
        KafkaRuntime(misspelt, settings_digests(example.streams))
