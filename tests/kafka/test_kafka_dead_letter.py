"""Poison records in the Kafka inputs (must-hold #5): each lands once in the dead-letter
topic with its reason and origin in headers, and the streams end as if they were absent."""

from __future__ import annotations

import json
import random

import orjson
from kafka import KafkaProducer

from streamweights.config import parse_config
from streamweights.runtime.service import Service
from tests.kafka.helpers import (
    kafka_document,
    make_config,
    make_topics,
    read_records,
    read_topic,
    write_input,
)
from tests.service.test_bad_records import _bad_records


def _embedded_summary(tmp_path, events: int) -> tuple[list[bytes], dict]:
    """The clean input and the embedded service's summary of it (the reference)."""
    clean = write_input(tmp_path / "input.jsonl", events=events)
    service = Service(make_config(tmp_path / "embedded", tmp_path / "input.jsonl"))
    try:
        return clean, service.run()
    finally:
        service.close()


def _run_kafka_against(tmp_path, bootstrap: str, topics: dict[str, str], clean_summary: dict,
                       reasons: list[str]) -> list:
    """Run the Kafka runtime over ``topics`` (a transaction every 400 records); its streams
    must equal the clean embedded run's and its invalid counts ``reasons``. Returns the
    dead-letter topic's records (read committed), one per reason."""
    config = parse_config(kafka_document(tmp_path / "kafka", bootstrap, topics,
                                         checkpoint_every_records=400))
    service = Service(config)
    try:
        summary = service.run()
    finally:
        service.close()
    assert json.loads(orjson.dumps(summary["streams"])) == \
        json.loads(orjson.dumps(clean_summary["streams"]))
    expected: dict[str, int] = {}
    for reason in reasons:
        expected[reason] = expected.get(reason, 0) + 1
    assert summary["invalid"] == expected
    letters = read_records(bootstrap, topics["dead_letter"])
    assert len(letters) == len(reasons)
    return letters


def test_poison_records_go_to_the_dead_letter_topic_and_change_nothing(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: two clean streams go through the embedded service; the same records, with
    twelve kinds of poison (broken JSON, NaN, wrong shape, unknown model/stream, label
    without prediction ...) inserted at random places of the Kafka input topics, go
    through the Kafka runtime (a transaction every 400 records); three labels are also
    delivered twice. We expect: the summaries' streams are equal (no label is learned
    twice); each poison record is in the dead-letter topic once (read
    committed), with headers reason (the expected one), error, and origin
    topic-partition@offset pointing at exactly where the poison sits in its input topic;
    the invalid counts by reason match the poison (duplicates: unmatched_label)."""
    clean, clean_summary = _embedded_summary(tmp_path, 2_000)

    poison = [(reason, line.encode()) for reason, line in _bad_records()
              if reason != "oversized"]  # above Kafka's 1 MB request limit: refused at send
    rng = random.Random(11)
    positions = sorted(rng.sample(range(len(clean)), len(poison)))
    topics = make_topics(topic_factory, partitions=2, dead_letter=True)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    where = {}
    poison_at = dict(zip(positions, poison, strict=True))
    # duplicate delivery (must-hold #8): three labels are sent twice, back to back
    label_indexes = [i for i, raw in enumerate(clean) if b'"label"' in raw]
    resent = set(rng.sample(label_indexes, 3))
    for index, raw in enumerate(clean):
        if index in poison_at:
            reason, bad = poison_at[index]
            topic = topics["labels"] if reason == "unmatched_label" else topics["predictions"]
            metadata = producer.send(topic, key=b"demo", value=bad).get(30)
            where[bad] = (reason, f"{topic}-{metadata.partition}@{metadata.offset}")
        record = orjson.loads(raw)
        topic = topics["labels"] if "label" in record else topics["predictions"]
        producer.send(topic, key=record["stream"].encode(), value=raw)
        if index in resent:
            metadata = producer.send(topic, key=record["stream"].encode(), value=raw).get(30)
            where[raw] = ("unmatched_label", f"{topic}-{metadata.partition}@{metadata.offset}")
            poison.append(("unmatched_label", raw))
    producer.flush()
    producer.close()

    letters = _run_kafka_against(tmp_path, kafka_bootstrap, topics, clean_summary,
                                 [reason for reason, _ in poison])
    seen = {}
    for letter in letters:
        headers = {key: value.decode() for key, value in letter.headers}
        body = orjson.loads(letter.value)
        original = body["record"].encode()
        assert original in where, original[:80]
        reason, origin = where[original]
        assert headers["reason"] == body["reason"] == reason
        assert headers["origin"] == body["origin"] == origin
        assert headers["error"]
        seen[original] = True
    assert len(seen) == len(poison)
    assert read_topic(kafka_bootstrap, topics["weights"])


def test_hostile_records_cannot_crash_the_kafka_runtime(tmp_path, kafka_bootstrap,
                                                        topic_factory):
    """Scenario (issue 12): the records that put a stream into a crash loop (NaN sending
    the text to a second parser that raised OverflowError / RecursionError or let a lone
    surrogate through, non-UTF-8 and duplicate keys accepted, a far-future ts) are
    produced into the Kafka prediction topic among two clean streams.
    We expect: the run ends normally (before: it raised on the first one, and on restart
    died on the same record, the partition blocked); each is in the dead-letter topic
    (read committed) with its reason and origin headers; the streams' summaries equal the
    embedded run without them."""
    from tests.service.test_hostile_records import _hostile_classification

    clean, clean_summary = _embedded_summary(tmp_path, 1_000)

    hostile = _hostile_classification()
    rng = random.Random(12)
    positions = sorted(rng.sample(range(200, len(clean)), len(hostile)))
    hostile_at = dict(zip(positions, hostile, strict=True))
    topics = make_topics(topic_factory, partitions=2, dead_letter=True)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    where = {}
    for index, raw in enumerate(clean):
        if index in hostile_at:
            reason, bad = hostile_at[index]
            # At its neighbour's event time: a ts ahead of it is merged later (as it
            # should be), which would move the labels behind it.
            bad = bad.replace(b"1750000100.0", repr(orjson.loads(raw)["ts"]).encode())
            metadata = producer.send(topics["predictions"], key=b"demo", value=bad).get(30)
            where[f"{topics['predictions']}-{metadata.partition}@{metadata.offset}"] = reason
        record = orjson.loads(raw)
        topic = topics["labels"] if "label" in record else topics["predictions"]
        producer.send(topic, key=record["stream"].encode(), value=raw)
    producer.flush()
    producer.close()

    letters = _run_kafka_against(tmp_path, kafka_bootstrap, topics, clean_summary,
                                 [reason for reason, _ in hostile])
    for letter in letters:
        headers = {key: value.decode() for key, value in letter.headers}
        assert headers["origin"] in where
        assert headers["reason"] == where.pop(headers["origin"])
        assert orjson.loads(letter.value)["record"]
    assert not where
