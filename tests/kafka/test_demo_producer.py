"""The dev overlay's demo producer (services/demo_producer.py) against the real broker:
it writes exactly the embedded replay to the input topics, keyed by stream."""

from __future__ import annotations

import importlib.util

import orjson

from streamweights.config import SourceConfig
from streamweights.runtime.replay import ReplayStream
from tests.kafka.helpers import REPO, read_records

EVENTS = 400


def _producer_module():
    spec = importlib.util.spec_from_file_location(
        "demo_producer", REPO / "services" / "demo_producer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_producer_writes_the_replay_keyed_by_stream(kafka_bootstrap, topic_factory):
    """Scenario: the producer runs (no rate limit) on topics that exist. We expect: the
    predictions topic holds the replay's predictions and the labels topic its labels,
    each in replay order within a partition, every record keyed by its stream, and
    nothing else."""
    predictions = topic_factory("predictions", partitions=3)
    labels = topic_factory("labels", partitions=3)
    sent = _producer_module().produce(kafka_bootstrap, events=EVENTS, rate=0,
                                      scenario="agrawal-recurring",
                                      predictions_topic=predictions, labels_topic=labels)
    replay = [raw for _, raw in ReplayStream(SourceConfig(kind="replay", events=EVENTS))
              .records(0)]
    assert sent == len(replay)
    expected = {predictions: [r for r in replay if b'"label"' not in r],
                labels: [r for r in replay if b'"label"' in r]}
    for topic, records in expected.items():
        got = read_records(kafka_bootstrap, topic)
        assert {r.key for r in got} == {b"demo"}
        assert len({r.partition for r in got}) == 1       # one stream: one partition
        assert [r.value for r in sorted(got, key=lambda r: r.offset)] == records
        assert all(orjson.loads(r.value)["stream"] == "demo" for r in got)


def test_demo_producer_gives_up_with_a_clear_message_when_topics_are_missing(
        kafka_bootstrap):
    module = _producer_module()
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=1000,
                             allow_auto_create_topics=False)
    try:
        try:
            module.wait_for_topics(producer, ["no-such-topic-for-the-demo"], timeout=3)
        except SystemExit as stop:
            assert "topic 'no-such-topic-for-the-demo' does not exist" in str(stop)
        else:
            raise AssertionError("wait_for_topics returned for a missing topic")
    finally:
        producer.close()
