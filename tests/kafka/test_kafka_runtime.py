"""The Kafka runtime end to end, in process: configured with ``source.kind: kafka``, it
commits outputs, task snapshots and offsets in one transaction per cycle, and gives the
embedded service's numbers bit for bit."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from streamweights.adapters.state_codec import loads_state
from streamweights.config import parse_config
from streamweights.runtime import transaction_calls
from streamweights.runtime.changelog_parts import (
    join_parts,
    parse_part_key,
    parse_segment_part_key,
)
from streamweights.runtime.compression import decompress
from streamweights.runtime.kafka_runtime import (
    FAIL_BEFORE_COMMIT_ENV,
    ChangelogReader,
    InjectedCommitError,
)
from streamweights.runtime.service import DEFERRED_CHECKPOINT_RECORDS, Service
from streamweights.runtime.state_store import record_text
from tests.kafka.helpers import (
    EVENTS_PER_STREAM,
    STREAMS,
    assert_versions_once_each,
    by_stream,
    committed_offsets,
    fail_commit_at,
    kafka_document,
    make_config,
    make_topics,
    produce_inputs,
    read_records,
    read_topic,
    weights_difference,
    write_input,
)


def run_to_end(config) -> dict:
    """Run a service on ``config`` to its end and close it; its summary."""
    service = Service(config)
    try:
        return service.run()
    finally:
        service.close()


def run_embedded(folder, input_path) -> dict:
    return run_to_end(make_config(folder, input_path))


def run_counting_aborts(service: Service) -> tuple[dict, float | None, object]:
    """Run ``service`` to its end and close it: its summary, the transactions it counted
    as aborted, and the producer it ended with (a recovery replaces the first)."""
    try:
        summary = service.run()
        aborts = service.metrics.registry.get_sample_value(
            "streamweights_kafka_transactions_total", {"outcome": "abort"})
        return summary, aborts, service.state.producer
    finally:
        service.close()


def embedded_weights(tmp_path) -> dict[str, list[bytes]]:
    """The embedded run's weights records per stream (written by ``replayed_inputs``)."""
    return by_stream((tmp_path / "embedded" / "weights.jsonl").read_bytes().splitlines())


def replayed_inputs(tmp_path, bootstrap, topic_factory, events=EVENTS_PER_STREAM,
                    **topic_options) -> tuple[list[bytes], dict, dict[str, str]]:
    """The two streams' input written as JSONL, the embedded run's summary on it (outputs
    in ``tmp_path / "embedded"``), and new topics holding that input: ``(lines, summary,
    topics)``."""
    input_path = tmp_path / "input.jsonl"
    lines = write_input(input_path, events=events)
    summary = run_embedded(tmp_path / "embedded", input_path)
    topics = make_topics(topic_factory, **topic_options)
    produce_inputs(bootstrap, lines, topics["predictions"], topics["labels"])
    return lines, summary, topics


def test_transactional_runtime_matches_embedded_and_commits_every_cycle(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: two drifting streams (~12,000 records) through the full Kafka runtime
    (3 partitions, a transaction due every 500 records) and through the embedded service.
    We expect: equal summaries and per-stream weights/adapted records; a commit at least
    every DEFERRED_CHECKPOINT_RECORDS x 500 records (one due while the previous is in
    flight waits for it, up to that many); the weights
    versions read with read_committed are 1..n per stream; the group's committed offsets
    are the ends of the inputs; the changelog holds one snapshot per task whose offsets
    are those same ends."""
    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, adapted=True)
    config = parse_config(kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                                         checkpoint_every_records=500))
    service = Service(config)
    try:
        summary = service.run()
        commits = service.state.commits
        limit = service.state.limit
        consumer_config = dict(service.source.consumer.config)
        producer_config = dict(service.state.producer.config)
    finally:
        service.close()

    # the throughput settings (kafka_source.THROUGHPUT_SETTINGS) reach the real consumer
    assert consumer_config["max_poll_records"] == 10_000
    assert consumer_config["max_partition_fetch_bytes"] == 4 << 20
    assert consumer_config["fetch_max_bytes"] == 50 << 20
    assert consumer_config["fetch_max_wait_ms"] == 20
    assert consumer_config["fetch_min_bytes"] == 32 << 10
    assert consumer_config["session_timeout_ms"] == 6000  # and kafka.client's own
    # ... and the transactional producer's (kafka_runtime.transactional_producer_settings)
    assert producer_config["retry_backoff_ms"] == 20
    assert producer_config["batch_size"] == 256 << 10
    assert producer_config["transactional_id"] and producer_config["enable_idempotence"]
    assert summary["complete"] and summary["records"] == len(lines)
    assert commits >= len(lines) // (DEFERRED_CHECKPOINT_RECORDS * 500)
    assert limit == 1_048_588  # the changelog's max.message.bytes, asked of the broker
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    folder = tmp_path / "embedded"
    embedded_weights = by_stream((folder / "weights.jsonl").read_bytes().splitlines())
    kafka_weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert kafka_weights == embedded_weights
    assert_versions_once_each(kafka_weights)
    assert by_stream(read_topic(kafka_bootstrap, topics["adapted"])) == \
        by_stream((folder / "adapted.jsonl").read_bytes().splitlines())

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap,
                             group_id=config.kafka.group_id, enable_auto_commit=False)
    try:
        inputs = [TopicPartition(t, p) for t in (topics["predictions"], topics["labels"])
                  for p in range(3)]
        ends = consumer.end_offsets(inputs)
        committed = {tp: consumer.committed(tp) for tp in inputs}
    finally:
        consumer.close()
    # a partition no stream hashes to has no records and so nothing to commit
    assert {tp: offset or 0 for tp, offset in committed.items()} == ends
    assert sum(ends.values()) == len(lines)
    latest = {}
    for record in read_records(kafka_bootstrap, topics["changelog"]):
        if not record.key.startswith(b"j/"):  # (a join segment holds no offsets)
            latest[record.partition] = loads_state(record_text(decompress(record.value))[0])
    assert sorted(latest) == [0, 1, 2]
    for number, snapshot in latest.items():
        assert snapshot["task"] == number
        for topic in (topics["predictions"], topics["labels"]):
            assert snapshot["offsets"].get(topic, 0) == ends[TopicPartition(topic, number)]


def test_stream_records_above_the_message_limit_fraction_go_in_parts_and_restore(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch):
    """Scenario: the changelog's message limit is configured as 2 KiB and the fraction
    0.5, far below what a stream record of a chain with a 64-state drift memory needs
    (before, the first commit stopped the replica with a SnapshotError); the 4th commit
    fails after its records were sent (test hook), and a second process restarts from the
    changelog. We expect: the committed changelog holds each stream's record as parts of
    at most 1 KiB (keys ``p/<k>/<stream>``) and a head of format 4 keyed ``s/<stream>``
    whose parts join to a record that decodes; and the restarted run's summary and
    weights equal the uninterrupted embedded run's, each weights version once."""
    input_path = tmp_path / "input.jsonl"
    lines = write_input(input_path, events=300)
    expected = json.loads(orjson.dumps(run_embedded(tmp_path / "embedded", input_path)
                                       ["streams"]))
    expected_weights = embedded_weights(tmp_path)
    topics = make_topics(topic_factory, partitions=1)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    document = kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                              checkpoint_every_records=100, max_message_bytes=2048,
                              snapshot_limit_fraction=0.5)
    monkeypatch.setenv(FAIL_BEFORE_COMMIT_ENV, "4")
    service = Service(parse_config(document))
    try:
        with pytest.raises(InjectedCommitError):
            service.run()
    finally:
        service.close()
    monkeypatch.delenv(FAIL_BEFORE_COMMIT_ENV)

    committed = read_records(kafka_bootstrap, topics["changelog"])
    heads = {record.key: record for record in committed if record.key.startswith(b"s/")}
    assert set(heads) == {b"s/" + name.encode() for name, _ in STREAMS}
    parts = {}
    for record in committed:
        found = parse_part_key(record.key) or parse_segment_part_key(record.key)
        if found is not None and record.value is not None:
            assert len(record.value) <= 1024
            parts.setdefault(found[0], {})[found[-1]] = record.value
    for key, record in heads.items():
        head = loads_state(decompress(record.value))
        assert head["format"] == 4 and head["parts"] >= 2, head
        name = key[2:].decode()
        join_parts(head, parts[name], "test")
    # the joins' segments, a record each (closed at the allowed size, so they fit once
    # compressed; one that does not goes in parts keyed q/<k>/<id>/<stream>: see
    # test_changelog_parts), are read back with the stream records
    segments = [r for r in committed if r.key.startswith(b"j/") and r.value is not None]
    assert segments and all(len(r.value) <= 1024 for r in segments)
    reader = ChangelogReader()
    for record in committed:
        reader.add(record.partition, record.key, record.value)
    (task,) = reader.tasks().values()
    assert set(task.streams) == {name for name, _ in STREAMS}
    assert any(state["join"]["entries"] for state in task.streams.values())

    summary = run_to_end(parse_config(document))
    assert json.loads(orjson.dumps(summary["streams"])) == expected
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == expected_weights
    for name, values in weights.items():
        versions = [orjson.loads(value)["version"] for value in values]
        assert versions == list(range(1, len(versions) + 1)), name


def test_a_failed_commit_is_recovered_in_process_with_identical_results(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch):
    """Scenario: the 3rd commit_transaction of the runtime's producer raises a Kafka
    error (as when a broker restart timed the transaction out and fenced the producer),
    after that cycle's outputs and snapshots were sent. We expect: the run carries on by
    itself (a new producer, every task rolled back to its last committed snapshot), one
    abort is counted, and the summary and the read_committed weights (versions 1..n per
    stream, none twice) equal the embedded run's."""
    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=1_500)
    config = parse_config(kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                                         checkpoint_every_records=400))
    service = Service(config)
    first_producer = service.state.producer
    # the runtime's (bounded) commit call, made by its in-flight commit's thread
    calls = fail_commit_at(monkeypatch, service, 3,
                           "injected: transaction timed out during a broker restart")
    summary, aborts, producer = run_counting_aborts(service)
    assert calls["n"] == 3 and producer is not first_producer and aborts == 1
    assert summary["records"] == len(lines)
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == embedded_weights(tmp_path)
    assert_versions_once_each(weights)


def test_a_commit_that_fails_after_the_input_ended_is_redone_before_the_run_exits(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch):
    """Scenario: a bounded replay whose last cycle's commit (the final weights versions,
    the snapshots, the offsets to the input's end) fails with a Kafka error after its
    records were sent, as when a broker restart fenced the producer and the failure is
    only seen once the input has ended (the broker-restart test caught the service
    exiting 0 then, with that cycle's outputs never committed). We expect: the runtime
    recovers (one abort, a new producer, every task rolled back to its last committed
    snapshot), reads on from the committed offsets to the end again and commits before
    the run returns; the summary and the read_committed weights (each version once)
    equal the embedded run's; the group's committed offsets are the input's end
    offsets; and a second run on the same group finds every task finished, publishes
    nothing more and returns the same summary."""
    from kafka.errors import KafkaError

    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=1_500)
    document = kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                              checkpoint_every_records=400)
    service = Service(parse_config(document))
    first_producer = service.state.producer
    real_commit = transaction_calls.commit
    failed = []

    def failing_once_at_the_end(producer, timeout):
        if service._exhausted and not failed:  # the input has ended: the last cycle
            failed.append(producer is first_producer)
            producer.flush()  # its records really are in the log, uncommitted
            raise KafkaError("injected: the producer was fenced while the input ended")
        return real_commit(producer, timeout)

    monkeypatch.setattr(transaction_calls, "commit", failing_once_at_the_end)
    summary, aborts, producer = run_counting_aborts(service)
    assert failed == [True] and producer is not first_producer and aborts == 1
    assert summary["records"] == len(lines)
    expected_streams = json.loads(orjson.dumps(embedded_summary["streams"]))
    assert json.loads(orjson.dumps(summary["streams"])) == expected_streams
    expected_weights = embedded_weights(tmp_path)
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == expected_weights, weights_difference(weights, expected_weights)
    assert_versions_once_each(weights)
    offsets = committed_offsets(kafka_bootstrap, document["kafka"]["group_id"], topics, 3)
    with contextlib.closing(KafkaConsumer(bootstrap_servers=kafka_bootstrap)) as reader:
        assert offsets == reader.end_offsets(list(offsets))

    monkeypatch.setattr(transaction_calls, "commit", real_commit)
    rerun = run_to_end(parse_config(document))
    assert json.loads(orjson.dumps(rerun["streams"])) == expected_streams
    assert by_stream(read_topic(kafka_bootstrap, topics["weights"])) == expected_weights


def test_a_stop_whose_last_commit_fails_leaves_that_cycle_to_the_next_run(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch, caplog):
    """Scenario: a stop is requested part-way through a bounded replay (as SIGTERM does)
    and the commit the stop makes fails with a Kafka error after its records were sent.
    We expect: the run returns without reading on (it was asked to stop) and logs that
    the next run redoes the uncommitted cycle; the group's committed offsets stop short
    of the input's end; and a second run on the same group reads the rest, after which
    the read_committed weights equal the embedded run's, each version once, and the
    summary is the embedded run's."""
    from kafka.errors import KafkaError

    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=1_500)
    document = kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                              checkpoint_every_records=400)
    service = Service(parse_config(document))
    real_commit = transaction_calls.commit
    calls = []

    def stop_at_the_second_then_fail(producer, timeout):
        calls.append(service._stop.is_set())
        if len(calls) == 2:
            service.request_stop()  # the loop stops at its next record
        elif calls[-1] and calls.count(True) == 1:  # the commit the stop makes
            producer.flush()
            raise KafkaError("injected: the producer was fenced as the run stopped")
        return real_commit(producer, timeout)

    monkeypatch.setattr(transaction_calls, "commit", stop_at_the_second_then_fail)
    try:
        with caplog.at_level("WARNING", logger="streamweights"):
            service.run()
    finally:
        service.close()
    assert calls.count(True) == 1, calls  # no commit after the failed one: no read-on
    assert "the next run resumes from the last committed offsets" in caplog.text
    group = document["kafka"]["group_id"]
    assert 0 < sum(committed_offsets(kafka_bootstrap, group, topics, 3).values()) < len(lines)

    monkeypatch.setattr(transaction_calls, "commit", real_commit)
    summary = run_to_end(parse_config(document))
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    expected_weights = embedded_weights(tmp_path)
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == expected_weights, weights_difference(weights, expected_weights)
    assert_versions_once_each(weights)
    assert sum(committed_offsets(kafka_bootstrap, group, topics, 3).values()) == len(lines)


def test_records_processed_while_a_commit_is_in_flight_go_out_in_the_next_cycle(
        tmp_path, kafka_bootstrap, topic_factory, monkeypatch):
    """Scenario: every commit_transaction of the runtime takes 150 ms longer (a slow
    broker), with adapted predictions published and a transaction every 300 records. The
    commit waits on its own thread (``transaction_calls.InFlightCommit``) while the loop
    goes on, and a checkpoint falling due meanwhile waits for it (up to
    DEFERRED_CHECKPOINT_RECORDS intervals) rather than stopping the loop. We expect:
    records were processed during in-flight commits and their outputs held for the next
    cycle (counted here), more of them than one interval's records could write (the
    loop went on past a due checkpoint), each commit's steps timed in
    ``streamweights_kafka_commit_seconds`` (the commit step >= 150 ms), and still the
    read_committed weights and adapted records equal the embedded run's, each version
    once, with no abort."""
    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=1_500,
                                                      adapted=True)
    config = parse_config(kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                                         checkpoint_every_records=300))
    service = Service(config)
    real_commit = transaction_calls.commit
    commit_threads = set()

    def slow_commit(producer, timeout):
        commit_threads.add(threading.current_thread().name)
        time.sleep(0.15)
        return real_commit(producer, timeout)

    monkeypatch.setattr(transaction_calls, "commit", slow_commit)
    runtime = service.state
    real_send, held_at_send = runtime.send, []

    def counting_send(topic, value, key, headers=None):
        real_send(topic, value, key, headers)
        if runtime._committing is not None:
            held_at_send.append(len(runtime._held))

    runtime.send = counting_send
    try:
        summary = service.run()
        aborts = service.metrics.registry.get_sample_value(
            "streamweights_kafka_transactions_total", {"outcome": "abort"})
        commits = service.metrics.registry.get_sample_value(
            "streamweights_kafka_transactions_total", {"outcome": "commit"})
        commit_step = {suffix: service.metrics.registry.get_sample_value(
            f"streamweights_kafka_commit_seconds_{suffix}", {"step": "commit"})
            for suffix in ("count", "sum")}
        offsets_steps = service.metrics.registry.get_sample_value(
            "streamweights_kafka_commit_seconds_count", {"step": "offsets"})
    finally:
        service.close()
    assert commit_threads == {"streamweights-commit"}  # never the loop's own thread
    # each commit's two steps are timed: commit_transaction took the added 150 ms
    assert commit_step["count"] == commits and commit_step["sum"] >= 0.15 * commits
    assert 0 < offsets_steps <= commits
    assert held_at_send and max(held_at_send) > 300, "the loop stopped at a due checkpoint"
    assert not aborts and commits >= len(lines) // (DEFERRED_CHECKPOINT_RECORDS * 300)
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    folder = tmp_path / "embedded"
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == by_stream((folder / "weights.jsonl").read_bytes().splitlines())
    assert_versions_once_each(weights)
    assert by_stream(read_topic(kafka_bootstrap, topics["adapted"])) == \
        by_stream((folder / "adapted.jsonl").read_bytes().splitlines())


def test_a_bounded_replay_does_not_wait_out_max_task_idle_at_a_partition_end(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: a bounded replay (``stop_at_end``) with ``kafka.max_task_idle_ms`` at 10
    minutes, small fetches and a back-pressure bound of 40 records. Labels come after
    their predictions, so in each task the predictions partition is fetched to its end
    while the labels partition, paused, still holds records behind it. The idle
    wait is for live input (a producer's writes to the two topics lag each other); a
    partition fetched to its end of a bounded replay has nothing more to come. We expect:
    the run ends (in a thread, well before 10 minutes) with the embedded run's summary
    and weights."""
    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=800)
    document = kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                              max_task_idle_ms=600_000)
    document["kafka"]["client"].update({"max_poll_records": 50,
                                        "max_partition_fetch_bytes": 4096})
    service = Service(parse_config(document))
    # Back-pressure pauses a partition 40 records ahead of its partner (10,000 by
    # default), so the labels partition cannot be read to its end before its
    # predictions partner is passed: as in a long replay, whose labels run far ahead.
    service.source.max_buffered = 40
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=service.run()),
                              daemon=True)
    try:
        runner.start()
        runner.join(timeout=120)
        finished = not runner.is_alive()
        if not finished:
            service.request_stop()
            runner.join(timeout=60)
    finally:
        service.close()
    assert finished, "the replay waited for max_task_idle_ms at a partition's end"
    summary = result["summary"]
    assert summary["records"] == len(lines)
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    assert by_stream(read_topic(kafka_bootstrap, topics["weights"])) == \
        embedded_weights(tmp_path)


def test_kafka_client_overrides_the_fetch_settings_and_results_stay_identical(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: ``kafka.client`` sets tiny fetches (7 records per poll, 2 KiB per
    partition) in place of the throughput defaults, and its own ``client_id`` (which
    used to make start-up fail: the setup's admin client got it twice). We expect: the
    consumer runs with the user's values, and the many short polls give the embedded
    run's summary and weights bit for bit (the merge does not depend on how records
    arrive)."""
    lines, embedded_summary, topics = replayed_inputs(tmp_path, kafka_bootstrap,
                                                      topic_factory, events=1_000)
    document = kafka_document(tmp_path / "kafka", kafka_bootstrap, topics)
    document["kafka"]["client"].update({"max_poll_records": 7,
                                        "max_partition_fetch_bytes": 2048,
                                        "client_id": "fraud-team"})
    service = Service(parse_config(document))
    try:
        summary = service.run()
        consumer_config = dict(service.source.consumer.config)
    finally:
        service.close()
    assert consumer_config["max_poll_records"] == 7
    assert consumer_config["client_id"] == "fraud-team"
    assert consumer_config["max_partition_fetch_bytes"] == 2048
    assert consumer_config["fetch_max_bytes"] == 50 << 20  # the default that was not set
    assert summary["complete"] and summary["records"] == len(lines)
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(embedded_summary["streams"]))
    assert by_stream(read_topic(kafka_bootstrap, topics["weights"])) == \
        embedded_weights(tmp_path)


def test_an_idle_poll_commits_nothing_while_a_roll_back_is_due(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: a failed commit was noticed at a poll that brought nothing (its
    recovery raised the source's roll-back flag) while an idle commit is due (work
    pending, the last commit long ago). We expect: the idle hook neither commits nor
    counts an abort: the source rolls the tasks back first. (It used to try the commit,
    find the flag and count a second abort for the one failure: a CI run of
    ``test_a_failed_commit_is_recovered_in_process_with_identical_results`` saw 2.)"""
    topics = make_topics(topic_factory)
    service = Service(parse_config(kafka_document(tmp_path / "kafka", kafka_bootstrap,
                                                  topics)))
    runtime = service.state
    try:
        runtime.restore(service)
        runtime.dirty, runtime._last_commit = True, 0.0
        runtime.source._rebalanced = True
        runtime._on_idle()
        aborts = service.metrics.registry.get_sample_value(
            "streamweights_kafka_transactions_total", {"outcome": "abort"})
        assert not aborts and runtime.commits == 0 and runtime._in_transaction
        runtime.source._rebalanced = False  # rolled back: the idle commit goes ahead
        runtime._on_idle()
        assert runtime.commits == 1
    finally:
        service.close()
