"""Rebalances that hand tasks away and back while the service works: the results equal
an uninterrupted run (each rebalance rolls the tasks back to their committed snapshots
and replays from the offsets committed with them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from kafka import KafkaConsumer

from streamweights.config import load_config
from streamweights.runtime.faults import HOLD_AT_ENV, HOLD_UNTIL_ENV
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


@pytest.mark.parametrize("spread", [None, (1, 2)], ids=["every-stream", "spread"])
def test_tasks_taken_away_and_given_back_end_with_identical_weights(
        tmp_path, kafka_bootstrap, topic_factory, spread):
    """Scenario: a bounded `streamweights run` (3 tasks, a transaction every 300 records)
    works through ~12,000 records while a second member joins its group (taking tasks
    away from it) and leaves again (giving them back), three times: twice while the
    service is held a third of the way in (the test hook: whatever the machine's speed,
    it is mid-stream with an open cycle; unheld, a fast replica finished all 12,000
    records before the first newcomer had joined), once after it is let go. We expect:
    the service logged more than one assignment (the rebalances happened mid-stream),
    committed its open cycle before each move instead of aborting it (nothing redone),
    exits 0, and its summary and read_committed weights topic (versions 1..n once each)
    equal an uninterrupted embedded run. The same with commits that write one of the
    two changed streams each (``spread_above: 1``, ``spread_over: 2``): a task given back
    replays its logged records into the stream its commits left unwritten."""
    lines = write_input(tmp_path / "input.jsonl")
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, 3)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(tmp_path / "kafka", kafka_bootstrap, topics,
                                     checkpoint_every_records=300)
    if spread is not None:
        document = yaml.safe_load(config_path.read_text())
        document["checkpoint"]["spread_above"], document["checkpoint"]["spread_over"] = spread
        config_path.write_text(yaml.safe_dump(document))
    group = load_config(config_path).kafka.group_id
    summary_path = tmp_path / "summary.json"
    log_path = tmp_path / "service.log"
    gate = tmp_path / "gate"
    environment = {**os.environ, "PYTHONPATH": str(REPO), HOLD_UNTIL_ENV: str(gate),
                   HOLD_AT_ENV: str(len(lines) // 3)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamweights", "run", "--no-http",
                                    "--config", str(config_path), "--summary",
                                    str(summary_path)], stdout=subprocess.DEVNULL,
                                   stderr=log, env=environment, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while "input held at position" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline and process.poll() is None, \
                log_path.read_text()[-3000:]
            time.sleep(0.05)
        for round_number in range(3):
            if round_number == 2:
                gate.touch()  # the third newcomer comes while it works on
            if process.poll() is not None:
                break
            intruder = KafkaConsumer(topics["predictions"], topics["labels"],
                                     bootstrap_servers=kafka_bootstrap, group_id=group,
                                     enable_auto_commit=False, session_timeout_ms=6000,
                                     heartbeat_interval_ms=1000)
            joined = time.monotonic() + 15
            while not intruder.assignment() and time.monotonic() < joined:
                intruder.poll(timeout_ms=100)
            intruder.close(autocommit=False)
            time.sleep(0.3)
        gate.touch()
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text(errors="replace")
    assert returncode == 0, log_text[-4000:]
    assert len(re.findall(r"assigned tasks", log_text)) >= 2, log_text[-3000:]
    # every rebalance while it worked committed the cycle first instead of aborting it
    assert "before the tasks move" in log_text, log_text[-3000:]
    assert "aborted the open transaction" not in log_text, log_text[-3000:]
    if spread is not None:
        assert "logged records replayed" in log_text, log_text[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["streams"] == reference
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
