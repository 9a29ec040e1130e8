"""The changelog keyed per stream (issue 11 item 4): a commit writes only the streams
changed in its cycle; a restart from those records, from a format-1 task snapshot of an
older release, and from the previous release's format-2 stream records, ends with the
uninterrupted run's results."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict

import orjson
import yaml
from kafka import KafkaProducer

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import parse_config
from streamweights.runtime.compression import decompress
from streamweights.runtime.kafka_runtime import FAIL_BEFORE_COMMIT_ENV, TASK_SNAPSHOT_FORMAT
from streamweights.runtime.service import Service
from streamweights.runtime.state_store import STREAM_RECORD_FORMAT, record_text
from tests.kafka.helpers import (
    by_stream,
    kafka_document,
    make_topics,
    produce_inputs,
    read_records,
    read_topic,
    stream_states,
)
from tests.kafka.test_kafka_crash import cli
from tests.service.test_config_digest import reversed_keys
from tests.service.test_incremental_state import (
    STREAMS,
    format_2_stream_record,
    stream_configs,
    write_bursty_input,
    write_config,
)


def _kafka_config(folder, bootstrap, topics, **options):
    document = kafka_document(folder, bootstrap, topics, checkpoint_every_records=50,
                              **options)
    document["streams"] = stream_configs()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _versions_once_each(weights):
    for name, values in weights.items():
        versions = [orjson.loads(value)["version"] for value in values]
        assert versions == list(range(versions[0], versions[0] + len(versions))), name


def _embedded_then_failed_commit(tmp_path, bootstrap, topic_factory, *, predictions: int,
                                 failing_commit: int):
    """The bursty streams' input (``predictions`` of them, no ts ties) run embedded to
    the end (outputs in ``tmp_path / "embedded"``), then produced to new one-partition
    topics and run by the CLI in Kafka mode until its ``failing_commit``-th commit fails
    (test hook) and the process exits: ``(the embedded summary's streams, the topics,
    the Kafka config's path)``."""
    input_path = tmp_path / "input.jsonl"
    lines = write_bursty_input(input_path, predictions=predictions, delay=6.5)
    service = Service(parse_config(yaml.safe_load(
        write_config(tmp_path / "embedded", input_path).read_text())))
    try:
        expected_streams = json.loads(orjson.dumps(service.run()["streams"]))
    finally:
        service.close()
    topics = make_topics(topic_factory, partitions=1)
    produce_inputs(bootstrap, [line.encode() for line in lines], topics["predictions"],
                   topics["labels"])
    config_path = _kafka_config(tmp_path / "kafka", bootstrap, topics)
    failed = cli("--config", str(config_path),
                 env={FAIL_BEFORE_COMMIT_ENV: str(failing_commit)})
    assert failed.returncode != 0
    assert f"failing before commit {failing_commit}" in failed.stderr
    return expected_streams, topics, config_path


def test_restart_from_per_stream_changelog_and_from_a_format_one_snapshot(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: eight streams whose records come in blocks, all in one task (one
    partition), a commit due every 50 records; the 8th commit fails after its records were
    sent (test hook) and the process exits. Then (a) a restart on the same topics, and
    (b) a fresh group on a new changelog topic that holds only a format-1 task snapshot
    (the previous release's one blob per task) made from the committed per-stream
    records, with its own weights topic.
    We expect: the committed changelog holds records keyed ``s/<stream>`` (and the joins'
    segments, ``j/<id>/<stream>``), and a commit
    wrote only the streams that changed in its cycle (fewer than 8 after the first); both
    restarts end with the uninterrupted embedded run's summary and weights versions
    (restart (b) those after the snapshot's), each version once; restart (b) says it
    restored a format-1 snapshot and its next commit rewrote the task per stream.
    And (c): a fresh group on a changelog holding the same commits as the previous
    release's format-2 stream records ends the same as (b) and writes this release's
    stream records."""
    expected_streams, topics, config_path = _embedded_then_failed_commit(
        tmp_path, kafka_bootstrap, topic_factory, predictions=1200, failing_commit=8)
    expected_weights = by_stream((tmp_path / "embedded" / "weights.jsonl").read_bytes()
                                 .splitlines())

    changelog = read_records(kafka_bootstrap, topics["changelog"])
    segments = [r for r in changelog if r.key.startswith(b"j/")]
    assert segments and all(r.key.decode().split("/", 2)[2] in STREAMS for r in segments)
    decoded = {id(record): (name, state, meta) for record, name, state, meta
               in stream_states(changelog)}  # with the join segments written before each
    committed = [r for r in changelog if not r.key.startswith(b"j/")]
    documents = [loads_state(record_text(decompress(r.value))[0]) for r in committed]
    assert {r.key for r in committed} <= {b"s/" + n.encode() for n in STREAMS} | {b"0"}
    per_commit = defaultdict(set)  # a commit's records share the task's offsets
    for record, document in zip(committed, documents, strict=True):
        assert document["format"] == (STREAM_RECORD_FORMAT if record.key != b"0"
                                      else TASK_SNAPSHOT_FORMAT) and document["task"] == 0
        per_commit[json.dumps(document["offsets"], sort_keys=True)].update(document["streams"])
    assert len(per_commit) >= 5  # 7 commits (an idle one may repeat offsets)
    sizes = [len(streams) for streams in per_commit.values()]
    assert sizes[0] == len(STREAMS) and all(0 < size < len(STREAMS) for size in sizes[1:])

    # the release before the previous one's form of the same committed state: one blob
    # for task 0
    streams = {}
    for record in committed:
        if record.key != b"0":
            name, state, _ = decoded[id(record)]
            streams[name] = state
    legacy = {**{k: v for k, v in documents[-1].items() if k != "streams"}, "format": 1,
              "streams": streams}
    legacy_topics = {**topics, "changelog": topic_factory("changelog-v1", partitions=1,
                                                          config={"cleanup.policy": "compact"}),
                     "weights": topic_factory("weights-v1", partitions=1)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(legacy_topics["changelog"], key=b"0", partition=0,
                  value=zlib.compress(dumps_state(legacy).encode(), 1))
    producer.flush()
    producer.close()

    summary_path = tmp_path / "summary.json"
    restarted = cli("--config", str(config_path), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads(summary_path.read_text())["streams"] == expected_streams
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == expected_weights
    _versions_once_each(weights)

    legacy_config = _kafka_config(tmp_path / "legacy", kafka_bootstrap, legacy_topics,
                                  group_id="group-legacy", transactional_id="tx-legacy")
    summary_path = tmp_path / "legacy-summary.json"
    restarted = cli("--config", str(legacy_config), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "restored from a format-1 task snapshot" in restarted.stderr
    assert json.loads(summary_path.read_text())["streams"] == expected_streams
    weights = by_stream(read_topic(kafka_bootstrap, legacy_topics["weights"]))
    _versions_once_each(weights)
    for name, values in weights.items():
        first = streams[name]["weights_version"] + 1
        assert orjson.loads(values[0])["version"] == first, name
        assert values == expected_weights[name][first - 1:], name
    rewritten = read_records(kafka_bootstrap, legacy_topics["changelog"])
    stream_keys = [r.key for r in rewritten[1:] if not r.key.startswith(b"j/")]
    assert rewritten[0].key == b"0" and set(stream_keys[:8]) == \
        {b"s/" + n.encode() for n in STREAMS}

    # (c) the previous release's per-stream records (format 2: waiting predictions as
    # tagged JSON arrays) of the same commits, in the same order, on a new changelog
    v2_topics = {**topics, "changelog": topic_factory("changelog-v2", partitions=1,
                                                      config={"cleanup.policy": "compact"}),
                 "weights": topic_factory("weights-v2", partitions=1)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for record in committed:
        value = record.value
        if record.key != b"0":
            name, state, meta = decoded[id(record)]
            value = format_2_stream_record(
                name, state, {k: v for k, v in meta.items() if k != "format"})
            assert loads_state(decompress(value))["format"] == 2
        producer.send(v2_topics["changelog"], key=record.key, partition=0, value=value)
    producer.flush()
    producer.close()
    v2_config = _kafka_config(tmp_path / "v2", kafka_bootstrap, v2_topics,
                              group_id="group-v2", transactional_id="tx-v2")
    summary_path = tmp_path / "v2-summary.json"
    restarted = cli("--config", str(v2_config), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads(summary_path.read_text())["streams"] == expected_streams
    weights = by_stream(read_topic(kafka_bootstrap, v2_topics["weights"]))
    _versions_once_each(weights)
    for name, values in weights.items():
        first = streams[name]["weights_version"] + 1
        assert values == expected_weights[name][first - 1:], name
    written = read_records(kafka_bootstrap, v2_topics["changelog"])[len(committed):]
    assert written and all(
        loads_state(record_text(decompress(r.value))[0])["format"] == STREAM_RECORD_FORMAT
        for r in written if r.key != b"0" and r.value is not None)


def test_a_restart_with_the_configs_keys_in_another_order_restores_the_tasks(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: the eight bursty streams in one task, a commit every 50 records; the 4th
    commit fails and the process exits. The restart's config has every stream mapping's
    keys in the reverse order (the same settings, as a tool that rewrites YAML may leave
    them). We expect: the restart restores the committed per-stream records (it was
    refused for "other stream settings" before) and ends with the uninterrupted embedded
    run's summary."""
    expected_streams, _, config_path = _embedded_then_failed_commit(
        tmp_path, kafka_bootstrap, topic_factory, predictions=400, failing_commit=4)
    document = yaml.safe_load(config_path.read_text())
    document["streams"] = reversed_keys(document["streams"])
    reordered = tmp_path / "kafka" / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(document, sort_keys=False))
    summary_path = tmp_path / "summary.json"
    restarted = cli("--config", str(reordered), "--summary", str(summary_path))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "restored 1 snapshot(s)" in restarted.stderr
    assert json.loads(summary_path.read_text())["streams"] == expected_streams

