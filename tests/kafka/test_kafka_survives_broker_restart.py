"""The broker restarts mid-stream (must-hold #4): the service rides it out without
operator action and ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from kafka import KafkaConsumer, TopicPartition

from streamweights.config import load_config
from tests.kafka.helpers import (
    REPO,
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    make_topics,
    produce_inputs,
    read_topic,
    write_input,
    write_kafka_config,
)


def test_service_rides_out_a_broker_restart(tmp_path, kafka_broker, topic_factory):
    """Scenario: the service (a `streamweights run` subprocess, bounded, a transaction
    every 300 records) is part-way through ~12,000 records when the broker is stopped
    and started again (same data directory and port). We expect: the service exits 0 by
    itself, its summary equals an uninterrupted embedded run, and the read_committed
    weights topic holds each stream's versions 1..n once, equal to that run's."""
    bootstrap = kafka_broker.bootstrap
    lines = write_input(tmp_path / "input.jsonl")
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, 3)
    produce_inputs(bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(tmp_path / "kafka", bootstrap, topics,
                                     checkpoint_every_records=300)
    group = load_config(config_path).kafka.group_id
    summary_path = tmp_path / "summary.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamweights", "run",
                                    "--no-http", "--config", str(config_path),
                                    "--summary", str(summary_path)],
                                   stdout=subprocess.DEVNULL, stderr=log, env=environment,
                                   cwd=REPO)
    try:
        watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
        inputs = [TopicPartition(topics[kind], n) for kind in ("predictions", "labels")
                  for n in range(3)]
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and process.poll() is None:
            done = sum(watcher.committed(tp) or 0 for tp in inputs)
            if done >= len(lines) // 4:
                break
            time.sleep(0.05)
        watcher.close()
        assert process.poll() is None and len(lines) // 4 <= done < len(lines), \
            "the run ended before the broker restart"
        kafka_broker.restart()
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == 0, log_path.read_text()[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["streams"] == reference
    weights = by_stream(read_topic(bootstrap, topics["weights"]))
    assert weights == reference_weights, "\n".join(
        line for line in log_path.read_text().splitlines() if '"progress"' not in line)[-4000:]
    assert_versions_once_each(weights)
