"""Kafka mode with no ``checkpoint`` block: the default cadence must commit a busy, slow
input before the broker's transaction timeout rolls the open transaction back.

The embedded default (30 s) outlived the producer's transaction timeout (10 s by default,
3 s here): an input that never leaves a poll empty but takes longer than the timeout to
reach the record cadence had each cycle rolled back by the broker before its commit."""

from __future__ import annotations

import signal
import threading
import time

import orjson
import yaml
from kafka import KafkaProducer

from streamweights.config import load_config
from tests.kafka.helpers import committed_offsets, make_topics, write_input, write_kafka_config
from tests.kafka.test_kafka_crash import PARTITIONS, cli

TRANSACTION_TIMEOUT_MS = 3_000
RATE = 400  # records per second: ~1,100 records per timeout, far below the record cadence
SECONDS = 8


def produce_paced(bootstrap: str, lines: list[bytes], topics: dict[str, str],
                  done: threading.Event) -> None:
    """Each record to its topic keyed by its stream, ``RATE`` a second, then ``done``."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        started = time.monotonic()
        for number, raw in enumerate(lines):
            record = orjson.loads(raw)
            topic = topics["labels"] if "label" in record else topics["predictions"]
            producer.send(topic, key=record["stream"].encode(), value=raw)
            wait = started + number / RATE - time.monotonic()
            if wait > 0:
                producer.flush()
                time.sleep(wait)
        producer.flush()
    finally:
        producer.close()
        done.set()


def run_live(tmp_path, bootstrap: str, topic_factory, checkpoint: dict | None
             ) -> tuple[int, int, str, int, int]:
    """A live replica (``checkpoint`` as its config's block, ``None``: none; no idle
    commits, so only the cadence commits; a 3 s transaction timeout) while the input is
    written at ``RATE`` for ``SECONDS``, then SIGTERM. Returns the most offsets seen
    committed while writing, the replica's exit code, its stderr, the offsets committed
    at the end and the number of records written."""
    lines = write_input(tmp_path / "input.jsonl", events=RATE * SECONDS // 4)
    topics = make_topics(topic_factory, PARTITIONS)
    path = write_kafka_config(
        tmp_path / "kafka", bootstrap, topics, stop_at_end=False, idle_commit_ms=600_000,
        client={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS})
    document = yaml.safe_load(path.read_text())
    del document["checkpoint"]
    if checkpoint is not None:
        document["checkpoint"] = checkpoint
    path.write_text(yaml.safe_dump(document))
    group = load_config(path).kafka.group_id

    process = cli("--config", str(path), wait=False)
    done = threading.Event()
    writer = threading.Thread(target=produce_paced, args=(bootstrap, lines, topics, done),
                              daemon=True)
    try:
        time.sleep(3)  # joined and assigned (an empty input meanwhile)
        writer.start()
        while_writing = 0
        while not done.wait(0.5):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            while_writing = max(while_writing, sum(
                committed_offsets(bootstrap, group, topics, PARTITIONS).values()))
        writer.join()
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    final = sum(committed_offsets(bootstrap, group, topics, PARTITIONS).values())
    return while_writing, code, process.stderr.read().decode(), final, len(lines)


def test_a_busy_slow_input_commits_within_the_transaction_timeout_by_default(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: a live replica whose config has no ``checkpoint`` block (and no idle
    commits, so only the cadence commits), a 3 s transaction timeout, and an input
    written at 400 records/s for 8 s, never quiet for a poll. We expect: offsets committed
    while the input is still being written (the 0.1 s default cadence, not 30 s); no
    failed commit in the log; SIGTERM then commits the rest and exits 0, every record's
    offset committed."""
    while_writing, code, stderr, final, written = run_live(tmp_path, kafka_bootstrap,
                                                           topic_factory, None)
    assert code == 0, stderr[-3000:]
    assert "commit failed" not in stderr and "could not commit" not in stderr, stderr[-3000:]
    assert "checkpoint.every_seconds" not in stderr, stderr[-3000:]  # no cadence warning
    assert while_writing > written // 4, (while_writing, stderr[-3000:])
    assert final == written, (final, stderr[-3000:])


def test_a_cadence_past_the_transaction_timeout_is_warned_about_and_its_failure_explained(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: the same input and replica, but ``checkpoint.every_seconds: 30`` (the
    embedded default, above the 3 s transaction timeout) and ``every_records`` out of
    reach. We expect: the start-up warning naming both values; nothing committed while
    the input is written; a failed commit whose log line says the transaction had been
    open past the timeout and what to change."""
    while_writing, _, stderr, _, _ = run_live(
        tmp_path, kafka_bootstrap, topic_factory,
        {"every_records": 1_000_000, "every_seconds": 30})
    assert "checkpoint.every_seconds (30) is not below the producer's transaction timeout " \
        f"({TRANSACTION_TIMEOUT_MS} ms)" in stderr, stderr[-3000:]
    assert while_writing == 0, stderr[-3000:]
    failures = [line for line in stderr.splitlines() if "commit failed" in line]
    assert failures, stderr[-3000:]
    assert "past the producer's transaction timeout (3000 ms)" in failures[0], failures
    assert "checkpoint.every_seconds, kafka.idle_commit_ms" in failures[0], failures
