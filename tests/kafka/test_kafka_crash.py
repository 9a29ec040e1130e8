"""Crashes of the Kafka runtime (must-hold #2 and #7): kill -9 mid-stream, and a
transaction commit that fails after the outputs were produced. Both end, after a
restart, with the weights of an uninterrupted run and no duplicate or missing version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from kafka import TopicPartition

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import load_config
from streamweights.runtime.compression import decompress
from streamweights.runtime.kafka_runtime import FAIL_BEFORE_COMMIT_ENV
from streamweights.runtime.kafka_source import wait_for_assignment
from streamweights.runtime.service import Service
from streamweights.runtime.state_store import record_text
from tests.kafka.helpers import (
    REPO,
    STREAMS,
    assert_versions_once_each,
    by_stream,
    committed_offsets,
    embedded_reference,
    make_topics,
    produce_inputs,
    read_records,
    read_topic,
    start_held,
    stream_states,
    wait_until_held,
    write_input,
    write_kafka_config,
)

PARTITIONS = 3
#: Where the killed run's input is held (test hook): past a third of the ~12,000 records,
#: with commits behind it and a transaction open.
HOLD_AT = 4_150


def cli(*args: str, env: dict | None = None, wait: bool = True):
    command = [sys.executable, "-m", "streamweights", "run", "--no-http", *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=environment, cwd=REPO)
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO,
                          timeout=120)



def test_kill_minus_nine_mid_stream_then_restart_gives_uninterrupted_weights(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: the service runs as a subprocess (`streamweights run`) on ~12,000 records
    in 3 partitions, committing every 300 records; its input is held back (test hook) at
    record 4,150, with transactions committed and one open, and it is killed there with
    SIGKILL, then started again with the same config and runs to the end. We expect: the
    kill landed mid-stream (offsets committed, but not all); the restart finishes with
    exit 0 and the same per-stream summary as an uninterrupted embedded run; a
    read_committed reader of the weights topic sees, per stream, exactly the
    uninterrupted run's versions 1..n, none twice or lost."""
    lines = write_input(tmp_path / "input.jsonl")
    reference_streams, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, PARTITIONS)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(tmp_path / "kafka", kafka_bootstrap, topics,
                                     checkpoint_every_records=300)
    group = load_config(config_path).kafka.group_id

    log_path = tmp_path / "service.log"
    process = start_held(config_path, log_path, tmp_path / "gate", HOLD_AT)
    try:
        done = wait_until_held(process, log_path, kafka_bootstrap, group, topics, PARTITIONS)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 0 < done < HOLD_AT

    summary_path = tmp_path / "summary.json"
    restarted = cli("--config", str(config_path), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["records"] == len(lines)
    assert summary["streams"] == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
    assert sum(committed_offsets(kafka_bootstrap, group, topics, PARTITIONS).values()) == len(lines)


def test_commit_failing_after_outputs_were_sent_rolls_back_to_the_last_snapshot(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: a test-only hook makes the 5th transaction fail after its outputs and
    snapshots were sent and its offsets added, just before commit_transaction; the process
    exits non-zero. We expect: the failed cycle is invisible to read_committed readers
    (it is in the log, uncommitted); a replica started afterwards restores exactly the last
    committed snapshot (its pipeline state serialises to the same bytes) at the committed
    offsets; a restart then finishes with the uninterrupted run's weights, each version
    once."""
    lines = write_input(tmp_path / "input.jsonl")
    reference_streams, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, PARTITIONS)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(tmp_path / "kafka", kafka_bootstrap, topics,
                                     checkpoint_every_records=300)
    config = load_config(config_path)

    failed = cli("--config", str(config_path), env={FAIL_BEFORE_COMMIT_ENV: "5"})
    assert failed.returncode != 0
    assert "failing before commit 5" in failed.stderr

    committed = read_records(kafka_bootstrap, topics["changelog"])
    everything = read_records(kafka_bootstrap, topics["changelog"], "read_uncommitted")
    assert len(everything) > len(committed) > 0  # the 5th cycle's snapshots: aborted
    latest = {r.partition: loads_state(record_text(decompress(r.value))[0]) for r in committed
              if not r.key.startswith(b"j/")}  # (a join segment holds no offsets)
    states = {}  # each stream's newest committed state (the changelog is keyed per stream)
    for _, name, state, _ in stream_states(committed):
        states[name] = state
    offsets = committed_offsets(kafka_bootstrap, config.kafka.group_id, topics, PARTITIONS)
    for number, snapshot in latest.items():
        for kind in ("predictions", "labels"):
            topic = topics[kind]
            assert snapshot["offsets"].get(topic, 0) == offsets[TopicPartition(topic, number)]
    assert 0 < sum(offsets.values()) < len(lines)

    replica = Service(config)
    try:
        replica.restore()
        wait_for_assignment(replica.source)
        for name, state in states.items():
            assert dumps_state(replica.pipeline.streams[name].state_dict()) == \
                dumps_state(state)
        restored_streams = set(states)
        assert restored_streams == {name for name, _ in STREAMS}
    finally:
        replica.close()

    summary_path = tmp_path / "summary.json"
    restarted = cli("--config", str(config_path), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["streams"] == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
