"""The broker restarts mid-stream (must-hold #4): the service rides it out without
operator action and ends with the uninterrupted run's weights."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import orjson
from kafka import KafkaConsumer, TopicPartition

from streamweights.config import load_config
from streamweights.runtime.faults import HOLD_AT_ENV, HOLD_UNTIL_ENV
from tests.kafka.helpers import (
    REPO,
    assert_versions_once_each,
    by_stream,
    committed_offsets,
    embedded_reference,
    make_topics,
    produce_inputs,
    read_records,
    read_topic,
    uncommitted_records,
    weights_difference,
    write_input,
    write_kafka_config,
)

#: Input position at which the service holds its input back while the broker restarts;
#: the last commit before it is at 6,000 (every 2,000 records), so ~1,300 records' outputs
#: (weights versions among them) sit in the open transaction.
HOLD_AT = 7_300


def _wait(condition, seconds: float, what: str, log_path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; " \
            f"{log_path.read_text(errors='replace')[-3000:]}"
        time.sleep(0.1)


def test_service_rides_out_a_broker_restart(tmp_path, kafka_broker, topic_factory):
    """Scenario: the service (a `streamweights run` subprocess, bounded, a transaction
    every 2,000 records, no idle commits, a 5 s transaction timeout) holds its input back
    (test hook) at record 7,300 of ~12,000, three commits in, with a transaction open
    that holds weights records; the broker is stopped and started again (same data
    directory and port) and, before the input flows again, aborts that transaction as
    timed out. We expect: the service was still running while the broker was down; its
    next commit fails and it recovers by itself (a new producer, tasks rolled back to
    the changelog; kafka-python's own commit used to wait for ever here), exits 0; its
    summary equals an uninterrupted embedded run, the read_committed weights topic
    holds each stream's versions 1..n once, equal to that run's, and the group's
    committed offsets cover every input record. (A fenced commit whose failure was seen
    only after the input ended used to leave the last cycle uncommitted, exit 0.)"""
    bootstrap = kafka_broker.bootstrap
    lines = write_input(tmp_path / "input.jsonl")
    assert 6_000 < HOLD_AT < len(lines)
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, 3)
    produce_inputs(bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(tmp_path / "kafka", bootstrap, topics,
                                     checkpoint_every_records=2_000,
                                     idle_commit_ms=3_600_000)
    group = load_config(config_path).kafka.group_id
    summary_path = tmp_path / "summary.json"
    gate = tmp_path / "gate"
    environment = {**os.environ, "PYTHONPATH": str(REPO), HOLD_UNTIL_ENV: str(gate),
                   HOLD_AT_ENV: str(HOLD_AT)}
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamweights", "run",
                                    "--no-http", "--config", str(config_path),
                                    "--summary", str(summary_path)],
                                   stdout=subprocess.DEVNULL, stderr=log, env=environment,
                                   cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while "input held at position" not in log_path.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, \
                log_path.read_text()[-3000:]
            time.sleep(0.05)
        inputs = [TopicPartition(topics[kind], n) for kind in ("predictions", "labels")
                  for n in range(3)]
        with contextlib.closing(KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                              enable_auto_commit=False)) as watcher:
            def committed() -> int:
                return sum(watcher.committed(tp) or 0 for tp in inputs)

            # The first commit may still be on its way when the input is held (a due
            # checkpoint waits for the commit in flight while records go on): wait for it.
            _wait(lambda: committed() > 0, 30, "the first commit", log_path)
            done = committed()
        assert 0 < done < HOLD_AT, f"committed {done}: not part-way with a cycle open"
        _wait(lambda: uncommitted_records(bootstrap, topics["weights"], 3) > 0, 30,
              "the open transaction's weights records to reach the broker", log_path)
        kafka_broker.stop()
        assert process.poll() is None, "the service ended while the broker was down"
        kafka_broker.start()
        _wait(lambda: uncommitted_records(bootstrap, topics["weights"], 3) == 0, 60,
              "the restarted broker to abort the timed-out transaction", log_path)
        gate.touch()
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == 0, log_path.read_text()[-4000:]
    assert "kafka: commit failed" in log_path.read_text(), "the recovery path did not run"
    summary = json.loads(summary_path.read_text())
    assert summary["streams"] == reference
    weights = by_stream(read_topic(bootstrap, topics["weights"]))
    if weights != reference_weights:
        # What tells a read that stopped short from records the log does not hold:
        # a second read, and every record written, aborted ones included, by offset.
        again = by_stream(read_topic(bootstrap, topics["weights"]))
        written = [(r.partition, r.offset, orjson.loads(r.value)["stream"],
                    orjson.loads(r.value)["version"])
                   for r in read_records(bootstrap, topics["weights"], "read_uncommitted")]
        log = "\n".join(line for line in log_path.read_text().splitlines()
                        if '"progress"' not in line)[-4000:]
        raise AssertionError(f"the weights topic differs from the uninterrupted run's:\n"
                             f"{weights_difference(weights, reference_weights)}\n"
                             f"a second read: {weights_difference(again, reference_weights)}\n"
                             f"written (partition, offset, stream, version), aborted "
                             f"included: {written}\n{log}")
    assert_versions_once_each(weights)
    # and nothing is left to redo: the group committed every input record
    assert sum(committed_offsets(bootstrap, group, topics, 3).values()) == len(lines)
