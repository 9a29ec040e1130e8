"""The Kafka source's back-pressure never stalls the merge (issue 11 follow-up).

A partition is paused once ``max_buffered`` of its records wait in its task, and resumed
once they drain. Seen in the replica-takeover test at four times its input: kafka-python
keeps a partition's paused flag across a group rebalance when the partition stays with
the same member, while the runtime's roll-back drops that task's buffers; the source only
resumed partitions of tasks that had buffers, so a task whose two partitions were both
paused when the group rebalanced never received another record (a livelock: "nothing
released ... paused True" for ever)."""

from __future__ import annotations

import json
import threading
import time

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor

from streamweights.config import parse_config
from streamweights.runtime.kafka_runtime import task_of
from streamweights.runtime.kafka_sink import KafkaSink
from streamweights.runtime.kafka_source import KafkaSource
from streamweights.runtime.service import LocalCheckpoints, Runtime, Service
from tests.kafka.helpers import (
    STREAMS,
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    kafka_document,
    make_config,
    make_topics,
    produce_inputs,
    read_topic,
    write_input,
)

#: Far longer than a healthy run takes (~5-10 s here); a stalled one never ends.
DEADLINE_SECONDS = 30.0
MAX_BUFFERED = 100
MAX_POLL_RECORDS = 300


def predictions_first(lines: list[bytes]) -> list[bytes]:
    """The input with every prediction before the first label (each topic keeps its own
    order), so a task's predictions partition runs ~15x ``MAX_BUFFERED`` ahead."""
    is_label = ["label" in orjson.loads(raw) for raw in lines]
    return ([raw for raw, label in zip(lines, is_label, strict=True) if not label]
            + [raw for raw, label in zip(lines, is_label, strict=True) if label])


class BufferWatch:
    """Largest number of records one side of one task held after any fetch."""

    def __init__(self, source: KafkaSource) -> None:
        self.source, self.largest = source, 0
        #: ``source.describe()`` (the SIGUSR1 report) at the first fetch that left a
        #: partition paused, with the paused partitions and their positions then.
        self.paused_report: tuple[list[str], dict[tuple[str, int], int]] | None = None

    def __call__(self) -> None:
        for sizes in self.source.merges.buffer_sizes().values():
            self.largest = max(self.largest, *sizes)
        consumer = self.source.consumer
        if self.paused_report is None and consumer.paused():
            positions = {tuple(tp): consumer.position(tp) for tp in consumer.paused()}
            self.paused_report = (self.source.describe(), positions)


def run_with_deadline(service: Service) -> dict:
    """``service.run()``, asked to stop after DEADLINE_SECONDS if it has not ended."""
    timer = threading.Timer(DEADLINE_SECONDS, service.request_stop)
    timer.start()
    try:
        return service.run()
    finally:
        timer.cancel()


def test_a_topic_far_ahead_of_its_partner_is_merged_in_order(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: every prediction is written before the first label, so each of two
    tasks' predictions partitions holds ~15x ``max_buffered`` records before its labels
    partition holds any; a bounded run reads them with ``max_buffered`` 100 and polls of
    up to 300 records. We expect: the run ends by itself; its summary and weights equal
    the uninterrupted embedded run's, bit for bit; and no side of a task ever held more
    than ``max_buffered + max_poll_records - 1`` records (the documented bound)."""
    lines = write_input(tmp_path / "input.jsonl", events=1_500)
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    predictions = topic_factory("predictions", partitions=2)
    labels = topic_factory("labels", partitions=2)
    weights = topic_factory("weights", partitions=2)
    produce_inputs(kafka_bootstrap, predictions_first(lines), predictions, labels)

    source = KafkaSource(kafka_bootstrap, predictions, labels, group_id=f"g-{predictions}",
                         stop_at_end=True, max_buffered=MAX_BUFFERED,
                         client_settings={"max_poll_records": MAX_POLL_RECORDS})
    watch = source.on_fetched = BufferWatch(source)
    service = Service(make_config(tmp_path / "kafka", tmp_path / "input.jsonl"),
                      runtime=Runtime(source, {"weights": KafkaSink(kafka_bootstrap, weights)},
                                      LocalCheckpoints(str(tmp_path / "state"))))
    source.stop_event = service._stop
    try:
        summary = run_with_deadline(service)
        described = source.describe_tasks()
    finally:
        service.close()
        source.close()
    assert summary["complete"], f"the merge stalled: {described}"
    assert summary["records"] == len(lines)
    assert json.loads(orjson.dumps(summary["streams"])) == reference
    assert by_stream(read_topic(kafka_bootstrap, weights)) == reference_weights
    assert all(len(versions) > 3 for versions in reference_weights.values())
    assert MAX_BUFFERED <= watch.largest < MAX_BUFFERED + MAX_POLL_RECORDS
    # The state report read the client's own state, without calling into it: the
    # paused partitions as paused, each task's partitions at the client's positions.
    assert watch.paused_report is not None
    report, positions = watch.paused_report
    assert f"paused {sorted(positions)}" in " ".join(report), report
    for (topic, number), position in positions.items():
        side = "predictions" if topic == predictions else "labels"
        (task_line,) = [line for line in report if line.startswith(f"task {number}:")]
        assert f"{side} buffered" in task_line and f"position {position} " in task_line, \
            report


def test_a_task_paused_when_the_group_rebalances_is_resumed(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: a replica (the Kafka runtime, bounded) reads two tasks whose predictions
    were all written before their labels, with ``max_buffered`` 100. Right after a fetch
    that left both partitions of task 0 paused, a second member joins the group (it sorts
    after the replica, so the replica keeps task 0 and hands task 1 over), takes its
    assignment and leaves again; the replica rolls both rebalances back to its committed
    snapshots. We expect: the run ends by itself well inside its deadline (before the fix
    task 0 stayed paused with nothing buffered, for ever), and its summary and the
    read_committed weights topic (versions 1..n, none twice) equal the embedded run's."""
    lines = write_input(tmp_path / "input.jsonl", events=1_500)
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    assert {task_of(name, 2) for name, _ in STREAMS} == {0, 1}
    topics = make_topics(topic_factory, 2)
    produce_inputs(kafka_bootstrap, predictions_first(lines), topics["predictions"],
                   topics["labels"])
    client = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 200,
              "transaction_timeout_ms": 5000, "max_poll_records": MAX_POLL_RECORDS}
    service = Service(parse_config(kafka_document(tmp_path / "replica", kafka_bootstrap,
                                                  topics, checkpoint_every_records=200,
                                                  client=client)))
    source = service.source
    source.max_buffered = MAX_BUFFERED
    group = f"group-{topics['predictions']}"
    task0 = {TopicPartition(topics[kind], 0) for kind in ("predictions", "labels")}
    joined: list[str] = []  # what the second member saw, or why it failed
    member = threading.Thread(target=join_and_leave, args=(
        kafka_bootstrap, group, [topics["predictions"], topics["labels"]], joined))
    fetched = source.on_fetched

    def on_fetched() -> None:
        """After the fetch that paused both partitions of task 0 (while the replica owns
        both tasks): let the second member join, and wait (not polling, so the pause
        stands) until the replica's client knows the group is rebalancing."""
        fetched()
        if member.ident is None and source._owned == {0, 1} and task0 <= source.consumer.paused():
            member.start()
            deadline = time.monotonic() + 20
            while not source.consumer._coordinator.need_rejoin():
                assert time.monotonic() < deadline, "the replica never saw the rebalance"
                time.sleep(0.02)

    source.on_fetched = on_fetched
    try:
        summary = run_with_deadline(service)
        described = source.describe_tasks() if source.consumer is not None else []
    finally:
        service.close()
        member.join(timeout=30)
    assert member.ident is not None, "both partitions of task 0 were never paused together"
    assert joined == ["assigned [1]"], joined  # the replica kept task 0
    assert summary["complete"], f"the merge stalled: {described}"
    assert json.loads(orjson.dumps(summary["streams"])) == reference
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert_versions_once_each(weights)
    assert weights == reference_weights


def join_and_leave(bootstrap: str, group: str, topics: list[str], joined: list[str]) -> None:
    """A second member of ``group``: polls until the group has given it partitions, then
    leaves (``close``), which rebalances the group once more."""
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                             # member ids start with the client id and the range
                             # assignor sorts by them: after the replica's "kafka-python-"
                             client_id="z-member", enable_auto_commit=False,
                             partition_assignment_strategy=[RangePartitionAssignor],
                             session_timeout_ms=6000, heartbeat_interval_ms=200,
                             max_poll_records=10)
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() or consumer._coordinator.rejoining:
            if time.monotonic() > deadline:
                joined.append("never assigned")
                return
            consumer.poll(timeout_ms=100)
        joined.append(f"assigned {sorted({tp.partition for tp in consumer.assignment()})}")
    except Exception as error:  # reported by the test through ``joined``
        joined.append(f"failed: {error!r}")
    finally:
        consumer.close(autocommit=False)
