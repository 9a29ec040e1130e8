"""Demo input for a Kafka deployment: the built-in drifting replay, produced to Kafka.

``python services/demo_producer.py`` (the dev overlay's ``streamweights-demo-producer``
Job) writes the replay that ``configs/demo.yaml`` runs embedded — predictions of three
frozen models, labels ~20 s later in event time — to the predictions and labels topics,
keyed by stream as the Kafka runtime requires, at a steady rate so a dashboard shows the
adaptation unfold over minutes. It waits for the topics (the service creates them) and
never creates one itself: an auto-created topic would get the broker's partition count.

Environment: ``KAFKA_BOOTSTRAP_SERVERS`` (required), ``STREAMWEIGHTS_DEMO_EVENTS``
(predictions, default 60000), ``STREAMWEIGHTS_DEMO_RATE`` (records per second, default
200; 0 = as fast as possible), ``STREAMWEIGHTS_DEMO_SCENARIO`` (default
``agrawal-recurring``), ``STREAMWEIGHTS_PREDICTIONS_TOPIC`` / ``STREAMWEIGHTS_LABELS_TOPIC``.
"""

from __future__ import annotations

import os
import sys
import time

import orjson

from streamweights.config import SourceConfig
from streamweights.runtime.replay import ReplayStream

#: How long to wait for the service to create the topics: the service's pod may still be
#: pulling its image when this Job starts (5 minutes covers a slow pull).
TOPIC_WAIT_SECONDS = 300.0


def wait_for_topics(producer, topics: list[str], timeout: float = TOPIC_WAIT_SECONDS) -> None:
    """Block until every topic has partitions on the broker."""
    from kafka.errors import KafkaTimeoutError

    deadline = time.monotonic() + timeout
    for topic in topics:
        while True:
            try:
                if producer.partitions_for(topic):
                    break
            except KafkaTimeoutError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"demo producer: topic {topic!r} does not exist after "
                                 f"{timeout:.0f} s; is the streamweights service running?")
            time.sleep(2.0)


def produce(bootstrap: str, *, events: int, rate: float, scenario: str,
            predictions_topic: str, labels_topic: str) -> int:
    """Produce the replay; return how many records were sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             max_block_ms=10_000, allow_auto_create_topics=False)
    try:
        wait_for_topics(producer, [predictions_topic, labels_topic])
        replay = ReplayStream(SourceConfig(kind="replay", scenario=scenario, events=events))
        started = time.monotonic()
        sent = 0
        for _, raw in replay.records(0):
            record = orjson.loads(raw)
            topic = labels_topic if "label" in record else predictions_topic
            producer.send(topic, key=record["stream"].encode(), value=raw)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
        return sent
    finally:
        producer.close()


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("demo producer: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    sent = produce(bootstrap,
                   events=int(os.environ.get("STREAMWEIGHTS_DEMO_EVENTS", "60000")),
                   rate=float(os.environ.get("STREAMWEIGHTS_DEMO_RATE", "200")),
                   scenario=os.environ.get("STREAMWEIGHTS_DEMO_SCENARIO", "agrawal-recurring"),
                   predictions_topic=os.environ.get("STREAMWEIGHTS_PREDICTIONS_TOPIC",
                                                    "streamweights.predictions"),
                   labels_topic=os.environ.get("STREAMWEIGHTS_LABELS_TOPIC",
                                               "streamweights.labels"))
    print(f"demo producer: sent {sent} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
