"""SIGTERM in Kafka mode, configured as the Kubernetes manifests configure a pod: the
static-membership id and the transactional id both come from ``${POD_NAME}``.

The pod's terminationGracePeriodSeconds (k8s/base/statefulset.yaml) is the budget: the
service must commit its open transaction and exit 0 inside it, and the same pod name
restarting must resume from what was committed, losing and repeating nothing."""

from __future__ import annotations

import json
import signal
import time

import yaml

from streamweights.config import load_config
from tests.kafka.helpers import (
    assert_versions_once_each,
    by_stream,
    committed_offsets,
    embedded_reference,
    make_topics,
    produce_inputs,
    read_topic,
    start_held,
    wait_until_held,
    write_input,
    write_kafka_config,
)
from tests.kafka.test_kafka_crash import PARTITIONS, cli

#: Where the first run's input is held. Checkpoints land after a multiple of 16 records
#: (the clock's cadence, a deferred checkpoint) or 300 after the previous one, so always
#: on a multiple of 4: never here, and the open transaction holds records at the stop.
HOLD_AT = 3_150

GRACE_SECONDS = yaml.safe_load((__import__("pathlib").Path(__file__).resolve().parents[2]
                                / "k8s" / "base" / "statefulset.yaml").read_text())[
    "spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_sigterm_commits_and_exits_zero_within_grace_then_the_same_pod_resumes(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: `streamweights run` with POD_NAME=streamweights-0, the group instance id
    and transactional id taken from it (as in k8s/base/streamweights.yaml), on ~12,000
    records in 3 partitions, committing every 300 records; its input is held back (test
    hook) at record 3,150, where a transaction is open, and it gets SIGTERM there; then
    the same pod name starts again and runs to the end.
    We expect: exit 0 within terminationGracePeriodSeconds, with every record it took
    committed at the stop, more than before it (the open transaction was committed, not
    aborted); the restart finishes with exit 0 and exactly the weights and summary of an
    uninterrupted embedded run, each weights version once."""
    lines = write_input(tmp_path / "input.jsonl")
    reference_streams, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_topics(topic_factory, PARTITIONS)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    config_path = write_kafka_config(
        tmp_path / "kafka", kafka_bootstrap, topics, checkpoint_every_records=300,
        transactional_id="streamweights-${POD_NAME}",
        # (a transaction timeout well above the few seconds the hold may last on a
        # loaded machine: the broker must not abort the open transaction before the stop)
        client={"group_instance_id": "${POD_NAME}", "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000, "transaction_timeout_ms": 60_000})
    pod = {"POD_NAME": "streamweights-0"}
    config = load_config(config_path, environ=pod)
    assert config.kafka.client["group_instance_id"] == "streamweights-0"
    group = config.kafka.group_id

    log_path = tmp_path / "service.log"
    process = start_held(config_path, log_path, tmp_path / "gate", HOLD_AT, env=pod)
    try:
        before = wait_until_held(process, log_path, kafka_bootstrap, group, topics,
                                 PARTITIONS)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=GRACE_SECONDS)
        seconds = time.monotonic() - began
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text(errors="replace")
    assert code == 0, log_text[-3000:]
    assert seconds < GRACE_SECONDS
    print(f"Kafka mode, SIGTERM to exit: {seconds:.2f} s (grace {GRACE_SECONDS} s)")
    after = sum(committed_offsets(kafka_bootstrap, group, topics, PARTITIONS).values())
    assert 0 < before < after == HOLD_AT

    summary_path = tmp_path / "summary.json"
    restarted = cli("--config", str(config_path), "--summary", str(summary_path), env=pod)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["streams"] == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
    assert sum(committed_offsets(kafka_bootstrap, group, topics, PARTITIONS).values()) == len(lines)
