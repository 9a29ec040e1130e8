"""Must-hold #1 of the Kafka runtime: the same input through Kafka and through the
embedded JSONL source gives the same weights, bit for bit."""

from __future__ import annotations

import heapq
import json
import pathlib
import random
from collections import defaultdict

import orjson
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamweights.config import SourceConfig, parse_config
from streamweights.runtime.kafka_sink import KafkaSink
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS, KafkaSource, TaskMerge
from streamweights.runtime.replay import ReplayStream
from streamweights.runtime.service import Service

REPO = pathlib.Path(__file__).resolve().parents[2]
STREAMS = (("demo", 7), ("other", 11))
EVENTS_PER_STREAM = 3_000


def write_input(path: pathlib.Path) -> list[bytes]:
    """Two replayed drifting streams interleaved in event-time order (as live producers
    write them), as JSONL; returns the lines. Each replay is already in event-time order
    (ties: prediction first), and the merge keeps each stream's own order."""
    replays = []
    for stream, seed in STREAMS:
        replay = ReplayStream(SourceConfig(events=EVENTS_PER_STREAM, seed=seed, stream=stream))
        replays.append([raw for _, raw in replay.records()])
    lines = list(heapq.merge(*replays, key=lambda raw: orjson.loads(raw)["ts"]))
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


def make_config(folder: pathlib.Path, input_path: pathlib.Path):
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    stream = document["streams"][0]
    stream["publish"] = {"every_labels": 250, "every_seconds": 60}
    document["streams"] = [{**stream, "name": name} for name, _ in STREAMS]
    document["source"] = {"kind": "jsonl", "path": str(input_path)}
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": 10_000_000, "every_seconds": 3600}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {"adapted": str(folder / "adapted.jsonl"),
                           "weights": str(folder / "weights.jsonl"),
                           "dead_letter": str(folder / "dead-letter.jsonl")}
    return parse_config(document)


def by_stream(values: list[bytes]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for value in values:
        grouped[orjson.loads(value)["stream"]].append(value)
    return dict(grouped)


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed record of ``topic``, in offset order per partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False)
    try:
        numbers = sorted(consumer.partitions_for_topic(topic))
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: dict[TopicPartition, list] = defaultdict(list)
        for _ in range(600):
            if all(consumer.position(tp) >= end[tp] for tp in partitions):
                break
            for tp, batch in consumer.poll(timeout_ms=100).items():
                records[tp].extend(r.value for r in batch)
        return [value for tp in partitions for value in records[tp]]
    finally:
        consumer.close()


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
        merge, out = TaskMerge(), []
        cursors = {PREDICTIONS: 0, LABELS: 0}
        while len(out) < len(expected):
            side = chooser.choice((PREDICTIONS, LABELS))
            take = chooser.randint(0, 50)
            for offset, ts, raw in sides[side][cursors[side]:cursors[side] + take]:
                merge.add(side, offset, ts, raw)
            cursors[side] = min(cursors[side] + take, len(sides[side]))
            caught_up = tuple(cursors[s] == len(sides[s]) for s in (PREDICTIONS, LABELS))
            while (popped := merge.pop(caught_up)) is not None:
                out.append(popped[2])
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

    service = Service(make_config(tmp_path / "kafka", input_path))
    source = KafkaSource(kafka_bootstrap, predictions, labels, group_id=f"g-{predictions}",
                         stop_at_end=True)
    service.source = source
    service.sinks["weights"].close()
    service.sinks["adapted"].close()
    service.sinks["weights"] = KafkaSink(kafka_bootstrap, weights_topic)
    service.sinks["adapted"] = KafkaSink(kafka_bootstrap, adapted_topic)
    try:
        kafka_summary = service.run()
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
