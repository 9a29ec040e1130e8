"""Kafka commits that spread their stream writes (``runtime.commit_spread``): streams left
unwritten by a commit are brought up to it at a restore by replaying the records the
commit logged, so a kill -9, a failed commit rolled back in process, and a restart all
end with the uninterrupted run's weights, and the logs are deleted once no stream needs
them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import orjson
import pytest
import yaml

from streamweights.config import parse_config
from streamweights.runtime import kafka_runtime
from streamweights.runtime.kafka_runtime import ChangelogReader
from streamweights.runtime.kafka_source import wait_for_assignment
from streamweights.runtime.service import Service
from tests.kafka.helpers import (
    REPO,
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    fail_commit_at,
    kafka_document,
    make_topics,
    produce_inputs,
    read_records,
    read_topic,
    start_held,
    wait_until_held,
    write_input,
)

#: Six streams in two tasks: with ``spread_above: 1`` and ``spread_over: 3`` each commit
#: writes the two of the changed streams whose records are oldest and logs the records
#: for the other four.
SPREAD_STREAMS = tuple((f"segment-{index}", 20 + index) for index in range(6))
PARTITIONS = 2
EVENTS = 700
SPREAD = {"spread_above": 1, "spread_over": 3}


def spread_document(folder, bootstrap, topics, every_records: int) -> dict:
    document = kafka_document(folder, bootstrap, topics, streams=SPREAD_STREAMS,
                              checkpoint_every_records=every_records)
    document["checkpoint"].update(SPREAD)
    return document


def spread_inputs(tmp_path, bootstrap, topic_factory):
    """The six streams' input, the embedded run's summary streams and weights on it, and
    new topics holding it."""
    lines = write_input(tmp_path / "input.jsonl", events=EVENTS, streams=SPREAD_STREAMS)
    reference = embedded_reference(tmp_path, tmp_path / "input.jsonl", SPREAD_STREAMS)
    topics = make_topics(topic_factory, PARTITIONS)
    produce_inputs(bootstrap, lines, topics["predictions"], topics["labels"])
    return lines, reference, topics


def live_logs(bootstrap: str, topic: str) -> dict[int, dict[int, bytes]]:
    """Per task, the record logs a restore would read from the changelog now."""
    reader = ChangelogReader()
    for record in read_records(bootstrap, topic):
        reader.add(record.partition, record.key, record.value)
    return {number: logs for number, logs in reader.logs.items() if logs}


def test_kill_minus_nine_with_spread_commits_restarts_to_the_uninterrupted_weights(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: six streams in two partitions, commits every 150 records writing a third
    of the changed streams each (``spread_above: 1``, ``spread_over: 3``); the service
    (a subprocess) is held at record 3,500 with commits behind it and killed with
    SIGKILL, then started again and run to the end. We expect: at the kill the changelog
    holds record logs (streams were left unwritten); the restart says it replayed logged
    records, exits 0 with the uninterrupted embedded run's per-stream summary, and the
    weights topic holds each stream's versions exactly once, equal to that run's; at the
    end no log is left (the commit at the input's end writes every changed stream: the
    final weights versions change streams without a record, so no log could replay
    them) and a replica started on that changelog restores the uninterrupted run's
    streams."""
    lines, (reference_streams, reference_weights), topics = spread_inputs(
        tmp_path, kafka_bootstrap, topic_factory)
    folder = tmp_path / "kafka"
    folder.mkdir()
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(spread_document(folder, kafka_bootstrap, topics,
                                                          every_records=150)))
    group = parse_config(yaml.safe_load(config_path.read_text())).kafka.group_id

    log_path = tmp_path / "service.log"
    process = start_held(config_path, log_path, tmp_path / "gate", 3_500)
    try:
        done = wait_until_held(process, log_path, kafka_bootstrap, group, topics, PARTITIONS)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 0 < done < 3_500
    assert live_logs(kafka_bootstrap, topics["changelog"])  # streams were left unwritten

    summary_path = tmp_path / "summary.json"
    restarted = subprocess.run(
        [sys.executable, "-m", "streamweights", "run", "--no-http", "--config",
         str(config_path), "--summary", str(summary_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "logged records replayed" in restarted.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["records"] == len(lines)
    assert summary["streams"] == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights, SPREAD_STREAMS)
    assert live_logs(kafka_bootstrap, topics["changelog"]) == {}

    replica = Service(parse_config(yaml.safe_load(config_path.read_text())))
    try:
        replica.restore()
        wait_for_assignment(replica.source)
        assert replica.state.replayed == 0
        assert json.loads(orjson.dumps(replica.pipeline.summary()["streams"])) == \
            reference_streams
    finally:
        replica.close()


@pytest.mark.parametrize("failing, lean_max", [(2, None), (6, None), (6, 0)])
def test_a_failed_spread_commit_is_rolled_back_in_process_by_replaying_the_logs(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch, failing, lean_max):
    """Scenario: the same six streams and spread, commits every 200 records; the 2nd
    (only the first wrote any stream: two of the six, the others have no record yet)
    or the 6th commit_transaction raises a Kafka error after its outputs, stream records
    and logs were sent. We expect: the run carries on by itself, every task rolled back
    to its last committed records (fresh for a stream without one) with the logged
    records replayed into the streams left unwritten (some were; counted in
    ``streamweights_kafka_replayed_records_total``), and its summary and
    weights equal the embedded run's. The changelog records go through the lean path
    (commits of ordinary size) and, with ``lean_max`` 0, through ``KafkaProducer.send``
    (what a commit larger than ``LEAN_CHANGELOG_MAX`` takes): the same results."""
    if lean_max is not None:
        monkeypatch.setattr(kafka_runtime, "LEAN_CHANGELOG_MAX", lean_max)
    lines, (reference_streams, reference_weights), topics = spread_inputs(
        tmp_path, kafka_bootstrap, topic_factory)
    service = Service(parse_config(spread_document(tmp_path / "kafka", kafka_bootstrap,
                                                   topics, every_records=200)))
    sent_through = []
    lean_send_to = service.state._sender.send_to

    def counted_send_to(*args):  # a record put in a lean batch: no future of its own
        future = lean_send_to(*args)
        if future is None:
            sent_through.append("lean")
        return future

    monkeypatch.setattr(service.state._sender, "send_to", counted_send_to)
    plain_send = service.state.producer.send
    monkeypatch.setattr(service.state.producer, "send", lambda *args, **kwargs: (
        sent_through.append("send") if args[0] == service.state.kafka.changelog_topic
        else None, plain_send(*args, **kwargs))[1])
    calls = fail_commit_at(monkeypatch, service, failing)
    try:
        summary = service.run()
        replayed = service.state.replayed
        counted = service.metrics.registry.get_sample_value(
            "streamweights_kafka_replayed_records_total")
    finally:
        service.close()
    assert calls["n"] == failing
    assert ("lean" not in sent_through and "send" in sent_through if lean_max == 0
            else "lean" in sent_through)
    assert replayed > 0 and counted == replayed  # (one roll-back replayed anything)
    assert summary["records"] == len(lines)
    assert json.loads(orjson.dumps(summary["streams"])) == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights, SPREAD_STREAMS)


def test_input_on_other_partitions_than_its_keys_turns_spreading_off_and_stays_exact(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch, caplog):
    """Scenario: the six streams' records are produced keyed by stream but each to the
    partition after the one Kafka's default partitioner gives its key (as a producer
    with another partitioner, librdkafka's CRC32 say, does for most keys); spread
    settings as above; the 4th commit_transaction fails. We expect: the first commit
    finds a record of another task's stream in a task's log, says so in an error line
    and turns spreading off (a restore replays a task's logs only into its own
    streams, so those records would be lost); the roll-back replays nothing; summary and
    weights equal the embedded run's."""
    from kafka import KafkaProducer

    from streamweights.runtime.kafka_runtime import task_of

    lines = write_input(tmp_path / "input.jsonl", events=EVENTS, streams=SPREAD_STREAMS)
    reference_streams, reference_weights = embedded_reference(
        tmp_path, tmp_path / "input.jsonl", SPREAD_STREAMS)
    topics = make_topics(topic_factory, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    for raw in lines:
        record = orjson.loads(raw)
        topic = topics["labels"] if "label" in record else topics["predictions"]
        producer.send(topic, key=record["stream"].encode(), value=raw,
                      partition=(task_of(record["stream"], PARTITIONS) + 1) % PARTITIONS)
    producer.flush()
    producer.close()
    service = Service(parse_config(spread_document(tmp_path / "kafka", kafka_bootstrap,
                                                   topics, every_records=200)))
    calls = fail_commit_at(monkeypatch, service, 4)
    try:
        summary = service.run()
        replayed = service.state.replayed
    finally:
        service.close()
    assert "spread commits are turned off" in caplog.text
    assert calls["n"] == 4 and replayed == 0
    assert json.loads(orjson.dumps(summary["streams"])) == reference_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights, SPREAD_STREAMS)
