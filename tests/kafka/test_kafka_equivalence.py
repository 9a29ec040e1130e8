"""Must-hold #1 of the Kafka runtime: the same input through Kafka and through the
embedded JSONL source gives the same weights, bit for bit (the Kafka side reading its
fetched batches with the core's record reader, ``runtime/kafka_records.py``)."""

from __future__ import annotations

import json
import random

import orjson
from kafka import KafkaProducer

from streamweights import _native
from streamweights.runtime.kafka_sink import KafkaSink
from streamweights.runtime.kafka_source import (
    DEFAULT_MAX_SKEW,
    LABELS,
    PREDICTIONS,
    KafkaSource,
)
from streamweights.runtime.service import LocalCheckpoints, Runtime, Service
from tests.kafka.helpers import STREAMS, by_stream, make_config, read_topic, write_input


def test_task_merge_order_does_not_depend_on_fetch_batches():
    """Scenario: one task's predictions and labels arrive in batches of random sizes,
    interleaved differently each time. We expect: the merge releases the same sequence
    every time, and it is the (ts, topic, offset) order of all records."""
    generator = random.Random(3)
    sides = {PREDICTIONS: [], LABELS: []}
    for side in sides:
        ts = 0.0
        for offset in range(400):
            ts += generator.choice((0.0, 0.5, 1.0))  # many ties, inside and across topics
            sides[side].append((offset, ts, f"{side}:{offset}".encode()))
    expected = sorted((ts, side, offset, raw) for side, rows in sides.items()
                      for offset, ts, raw in rows)

    for trial in range(20):
        chooser = random.Random(trial)
        merges, out = _native.TaskMerges(), []
        cursors = {PREDICTIONS: 0, LABELS: 0}
        while len(out) < len(expected):
            side = chooser.choice((PREDICTIONS, LABELS))
            take = chooser.randint(0, 50)
            for offset, ts, raw in sides[side][cursors[side]:cursors[side] + take]:
                merges.add(0, side, offset, ts, raw, DEFAULT_MAX_SKEW)
            cursors[side] = min(cursors[side] + take, len(sides[side]))
            caught_up = tuple(cursors[s] == len(sides[s]) for s in (PREDICTIONS, LABELS))
            run = merges.release(lambda number, flags=caught_up: flags)
            out.extend(merges.next_record() for _ in range(run))
        assert out == [raw for *_, raw in expected]


def test_same_stream_through_kafka_and_jsonl_gives_identical_weights(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: two drifting streams are replayed once from a JSONL file by the embedded
    service, and once from co-partitioned Kafka topics (3 partitions) with outputs to
    Kafka topics. We expect: identical summaries (scores, final weights: the JSON of the
    floats is equal, so the bits are) and identical weights and adapted records per
    stream, version by version."""
    input_path = tmp_path / "input.jsonl"
    lines = write_input(input_path)

    embedded = Service(make_config(tmp_path / "embedded", input_path))
    try:
        embedded_summary = embedded.run()
    finally:
        embedded.close()

    predictions = topic_factory("predictions", partitions=3)
    labels = topic_factory("labels", partitions=3)
    weights_topic = topic_factory("weights", partitions=3)
    adapted_topic = topic_factory("adapted", partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    for raw in lines:
        record = orjson.loads(raw)
        topic = labels if "label" in record else predictions
        producer.send(topic, key=record["stream"].encode(), value=raw)
    producer.flush()
    producer.close()

    source = KafkaSource(kafka_bootstrap, predictions, labels, group_id=f"g-{predictions}",
                         stop_at_end=True)
    sinks = {"weights": KafkaSink(kafka_bootstrap, weights_topic),
             "adapted": KafkaSink(kafka_bootstrap, adapted_topic)}
    service = Service(make_config(tmp_path / "kafka", input_path),
                      runtime=Runtime(source, sinks, LocalCheckpoints(str(tmp_path / "state"))))
    try:
        kafka_summary = service.run()
        # every record below went through the core's batch reader, not kafka-python's
        assert source.native_reader
    finally:
        service.close()
        source.close()

    assert kafka_summary["complete"] and embedded_summary["complete"]
    assert kafka_summary["records"] == embedded_summary["records"] == len(lines)
    embedded_streams = json.loads(orjson.dumps(embedded_summary["streams"]))
    kafka_streams = json.loads(orjson.dumps(kafka_summary["streams"]))
    for name, _ in STREAMS:
        assert embedded_streams[name]["labels"] > 1000
        assert kafka_streams[name]["weights"] == embedded_streams[name]["weights"]
        assert kafka_streams[name] == embedded_streams[name]
    assert kafka_summary["invalid"] == embedded_summary["invalid"]

    folder = tmp_path / "embedded"
    embedded_weights = by_stream((folder / "weights.jsonl").read_bytes().splitlines())
    embedded_adapted = by_stream((folder / "adapted.jsonl").read_bytes().splitlines())
    assert by_stream(read_topic(kafka_bootstrap, weights_topic)) == embedded_weights
    assert by_stream(read_topic(kafka_bootstrap, adapted_topic)) == embedded_adapted
    assert all(len(versions) > 5 for versions in embedded_weights.values())
