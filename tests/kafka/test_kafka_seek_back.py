"""A consumer group seeked back to older offsets (must-hold #8, second half): the task
snapshots carry their own input offsets, so records delivered again are not applied
again. (A label re-sent with the same id is the dead-letter test's.)"""

from __future__ import annotations

import json

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamweights.config import parse_config
from streamweights.runtime.service import Service
from tests.kafka.helpers import (
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    kafka_document,
    make_topics,
    produce_inputs,
    read_topic,
    write_input,
)

PARTITIONS = 3


def rewind_group(bootstrap: str, group: str, topics: dict[str, str]) -> dict:
    """Commit offset 0 for every input partition of the (empty) group, as an operator's
    ``kafka-consumer-groups --reset-offsets --to-earliest`` would; return what was there."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        inputs = [TopicPartition(topics[kind], number) for kind in ("predictions", "labels")
                  for number in range(PARTITIONS)]
        before = {tp: consumer.committed(tp) for tp in inputs}
        consumer.assign(inputs)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in inputs})
        assert all(consumer.committed(tp) == 0 for tp in inputs)
        return before
    finally:
        consumer.close()


def run(config, max_events: int | None = None) -> dict:
    service = Service(config, max_events=max_events)
    try:
        return json.loads(orjson.dumps(service.run()))
    finally:
        service.close()


def test_rewound_group_offsets_do_not_apply_records_twice(tmp_path, kafka_bootstrap,
                                                          topic_factory):
    """Scenario: the Kafka runtime processes the first third of two drifting streams and
    commits; the group's committed input offsets are then reset to 0 (the records it
    already applied will be delivered again); the runtime resumes and runs to the end;
    the offsets are reset to 0 once more and it runs again. We expect: the resumed run's
    summary and read_committed weights topic equal an uninterrupted embedded run
    (versions 1..n once each), i.e. the re-delivered records changed nothing; the third
    run publishes no new version and reports the same streams."""
    input_path = tmp_path / "input.jsonl"
    lines = write_input(input_path)
    reference, reference_weights = embedded_reference(tmp_path, input_path)

    topics = make_topics(topic_factory, PARTITIONS)
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    config = parse_config(kafka_document(tmp_path / "kafka", kafka_bootstrap, topics,
                                         checkpoint_every_records=400))
    group = config.kafka.group_id

    first = run(config, max_events=len(lines) // 3)
    assert first["records"] == len(lines) // 3
    before = rewind_group(kafka_bootstrap, group, topics)
    assert sum(offset or 0 for offset in before.values()) == len(lines) // 3

    resumed = run(config)
    assert resumed["records"] == len(lines)
    assert resumed["streams"] == reference
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)

    rewind_group(kafka_bootstrap, group, topics)
    again = run(config)
    assert again["streams"] == reference
    assert by_stream(read_topic(kafka_bootstrap, topics["weights"])) == reference_weights
