"""Shared pieces of the Kafka runtime tests: the input, configs, producing and reading."""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import NodeNotReadyError

from streamweights.config import SourceConfig, parse_config
from streamweights.runtime import transaction_calls
from streamweights.runtime.faults import HOLD_AT_ENV, HOLD_UNTIL_ENV
from streamweights.runtime.kafka_runtime import ChangelogReader
from streamweights.runtime.replay import ReplayStream
from streamweights.runtime.service import Service
from streamweights.runtime.state_store import decode_stream_record

REPO = pathlib.Path(__file__).resolve().parents[2]
STREAMS = (("demo", 7), ("other", 11))
EVENTS_PER_STREAM = 3_000


def write_input(path: pathlib.Path, events: int = EVENTS_PER_STREAM,
                streams: tuple[tuple[str, int], ...] = STREAMS) -> list[bytes]:
    """Replayed drifting streams (``streams``: names and seeds; two by default)
    interleaved in event-time order (as live producers write them), as JSONL; returns the
    lines. Each replay is already in event-time order
    (ties: prediction first), and the merge keeps each stream's own order."""
    replays = []
    for stream, seed in streams:
        replay = ReplayStream(SourceConfig(events=events, seed=seed, stream=stream))
        replays.append([raw for _, raw in replay.records()])
    lines = list(heapq.merge(*replays, key=lambda raw: orjson.loads(raw)["ts"]))
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


def config_document(folder: pathlib.Path, input_path: pathlib.Path,
                    checkpoint_every_records: int = 10_000_000,
                    streams: tuple[tuple[str, int], ...] = STREAMS) -> dict[str, Any]:
    """The embedded (JSONL) config of ``streams`` (the two by default), outputs in
    ``folder``."""
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    stream = document["streams"][0]
    stream["publish"] = {"every_labels": 250, "every_seconds": 60}
    document["streams"] = [{**stream, "name": name} for name, _ in streams]
    document["source"] = {"kind": "jsonl", "path": str(input_path)}
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": checkpoint_every_records, "every_seconds": 3600}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {"adapted": str(folder / "adapted.jsonl"),
                           "weights": str(folder / "weights.jsonl"),
                           "dead_letter": str(folder / "dead-letter.jsonl")}
    document["logging"] = {"format": "json", "progress_every_seconds": 60}
    return document


def make_config(folder: pathlib.Path, input_path: pathlib.Path,
                streams: tuple[tuple[str, int], ...] = STREAMS):
    return parse_config(config_document(folder, input_path, streams=streams))


def kafka_document(folder: pathlib.Path, bootstrap: str, topics: dict[str, str], *,
                   checkpoint_every_records: int = 500,
                   streams: tuple[tuple[str, int], ...] = STREAMS, **kafka: Any
                   ) -> dict[str, Any]:
    """A ``source.kind: kafka`` config on ``topics`` (keys: predictions, labels, weights,
    adapted, dead_letter, changelog), bounded (``stop_at_end``), short group timeouts."""
    document = config_document(folder, folder / "unused.jsonl", checkpoint_every_records,
                               streams)
    document["source"] = {"kind": "kafka"}
    document["outputs"] = {}
    document["kafka"] = {
        "bootstrap_servers": bootstrap, "group_id": f"group-{topics['predictions']}",
        "predictions_topic": topics["predictions"], "labels_topic": topics["labels"],
        "weights_topic": topics["weights"], "adapted_topic": topics.get("adapted"),
        "dead_letter_topic": topics.get("dead_letter"),
        "changelog_topic": topics["changelog"],
        "transactional_id": f"tx-{topics['predictions']}",
        "create_topics": False, "stop_at_end": True,
        # a killed member leaves the group after 6 s (the broker's minimum), not 45 s
        "client": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                   "transaction_timeout_ms": 5000},
        **kafka}
    return document


def write_kafka_config(folder: pathlib.Path, bootstrap: str, topics: dict[str, str],
                       **options: Any) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(kafka_document(folder, bootstrap, topics, **options)))
    return path


def make_topics(topic_factory, partitions: int = 3, *, adapted: bool = False,
                dead_letter: bool = False) -> dict[str, str]:
    topics = {"predictions": topic_factory("predictions", partitions=partitions),
              "labels": topic_factory("labels", partitions=partitions),
              "weights": topic_factory("weights", partitions=partitions,
                                       config={"cleanup.policy": "compact"}),
              "changelog": topic_factory("changelog", partitions=partitions,
                                         config={"cleanup.policy": "compact"})}
    if adapted:
        topics["adapted"] = topic_factory("adapted", partitions=partitions)
    if dead_letter:
        topics["dead_letter"] = topic_factory("dead-letter", partitions=partitions)
    return topics


def produce_inputs(bootstrap: str, lines: list[bytes], predictions: str, labels: str) -> None:
    """Each record to the predictions or labels topic, keyed by its stream."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for raw in lines:
        try:
            record = orjson.loads(raw)
            stream = record["stream"].encode()
            topic = labels if "label" in record else predictions
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            stream, topic = b"demo", predictions
        producer.send(topic, key=stream, value=raw)
    producer.flush()
    producer.close()


def by_stream(values: list[bytes]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for value in values:
        grouped[orjson.loads(value)["stream"]].append(value)
    return dict(grouped)


def read_records(bootstrap: str, topic: str, isolation: str = "read_committed") -> list:
    """Every record of ``topic`` visible at this isolation, in offset order per partition.

    ``read_committed`` first waits until no transaction holds records of the topic open
    (last stable offset = high watermark on every partition): a commit's markers reach
    the partitions after the producer's commit returns, and a read that stops at a last
    stable offset still short of them returns a committed history cut short, which looks
    like missing records. A transaction the broker never ends fails here, by partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level=isolation, enable_auto_commit=False)
    try:
        numbers = sorted(consumer.partitions_for_topic(topic))
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 60
        if isolation == "read_committed":
            _wait_until_settled(bootstrap, topic, len(partitions), deadline)
        end = consumer.end_offsets(partitions)
        records: dict[TopicPartition, list] = defaultdict(list)
        while not all(consumer.position(tp) >= end[tp] for tp in partitions):
            # a partial read would pass for missing records: say it timed out instead
            assert time.monotonic() < deadline, (
                f"read_records({topic!r}, {isolation}): positions "
                f"{[consumer.position(tp) for tp in partitions]} short of the end "
                f"{[end[tp] for tp in partitions]} after 60 s")
            for tp, batch in consumer.poll(timeout_ms=100).items():
                records[tp].extend(batch)
        return [record for tp in partitions for record in records[tp]]
    finally:
        consumer.close()


def stream_states(records: list) -> list[tuple[Any, str, dict, dict]]:
    """``(record, stream, state, meta)`` for each stream record (``s/<stream>``) of changelog
    ``records`` read in offset order, decoded with the join segments written up to it
    (``j/<id>/<stream>``: a commit writes them before the stream's record), as a restore
    from that point would read them. The state's join layout (``segments``) is left out,
    so the state compares with ``state_dict()``."""
    reader = ChangelogReader()
    found = []
    for record in records:
        reader.add(record.partition, record.key, record.value)
        if record.key.startswith(b"s/") and record.value is not None:
            name = record.key[2:].decode()
            held = reader.whole_segments({}, record.partition, name, "test")
            name, state, meta = decode_stream_record(record.value, "test", held)
            state["join"].pop("segments", None)
            found.append((record, name, state, meta))
    return found


def _wait_until_settled(bootstrap: str, topic: str, partitions: int, deadline: float) -> None:
    """Until no open transaction holds records of ``topic`` (see ``read_records``)."""
    with contextlib.closing(OpenRecords(bootstrap, topic, partitions)) as open_records:
        while any((counts := open_records.counts()).values()):
            assert time.monotonic() < deadline, (
                f"read_records({topic!r}): records no transaction has ended, per partition "
                f"(high watermark less last stable offset), still {counts} after 60 s")
            time.sleep(0.1)


def uncommitted_records(bootstrap: str, topic: str, partitions: int | None = None) -> int:
    """Records of ``topic`` at the broker that no transaction has ended yet, summed over
    its partitions (see :class:`OpenRecords`)."""
    with contextlib.closing(OpenRecords(bootstrap, topic, partitions)) as open_records:
        return sum(open_records.counts().values())


class OpenRecords:
    """Per partition of ``topic``, the records at the broker that no transaction has ended
    yet: the high watermark less the last stable offset (> 0 while an open transaction
    holds records there). Two consumers kept open, so one look costs two metadata round
    trips, not four client start-ups: a test can look every 100 ms. ``partitions``: the
    topic's partition count when known (metadata read from the broker otherwise, which
    right after a broker restart may not list the topic yet)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int | None = None) -> None:
        self.consumers = {level: KafkaConsumer(bootstrap_servers=bootstrap,
                                               isolation_level=level)
                          for level in ("read_uncommitted", "read_committed")}
        numbers = range(partitions) if partitions is not None else sorted(
            self.consumers["read_committed"].partitions_for_topic(topic) or ())
        self.partitions = [TopicPartition(topic, number) for number in numbers]

    def counts(self) -> dict[int, int]:
        ends = {level: consumer.end_offsets(self.partitions)
                for level, consumer in self.consumers.items()}
        return {tp.partition: ends["read_uncommitted"][tp] - ends["read_committed"][tp]
                for tp in self.partitions}

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed record value of ``topic``, in offset order per partition."""
    return [record.value for record in read_records(bootstrap, topic)]


def embedded_reference(tmp_path: pathlib.Path, lines_path: pathlib.Path,
                       streams: tuple[tuple[str, int], ...] = STREAMS
                       ) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """The uninterrupted embedded run every Kafka result is compared with: its summary's
    streams (as JSON values) and its weights records per stream."""
    service = Service(make_config(tmp_path / "embedded", lines_path, streams))
    try:
        summary = service.run()
    finally:
        service.close()
    weights = by_stream((tmp_path / "embedded" / "weights.jsonl").read_bytes().splitlines())
    return json.loads(orjson.dumps(summary["streams"])), weights


def weights_difference(got: dict[str, list[bytes]], expected: dict[str, list[bytes]]) -> str:
    """Where two per-stream weights histories part, a line per stream: the versions each
    holds and the first record whose bytes differ (for a failing equality's message)."""
    def versions(values: list[bytes]) -> list[int]:
        return [orjson.loads(value)["version"] for value in values]

    lines = []
    for name in sorted(set(got) | set(expected)):
        mine, theirs = got.get(name, []), expected.get(name, [])
        line = f"{name}: read versions {versions(mine)}, expected {versions(theirs)}"
        differ = [i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b]
        if differ:
            line += (f"; first difference at index {differ[0]}: {mine[differ[0]][:300]!r} "
                     f"vs {theirs[differ[0]][:300]!r}")
        lines.append(line)
    return "\n".join(lines)


def assert_versions_once_each(weights: dict[str, list[bytes]],
                              streams: tuple[tuple[str, int], ...] = STREAMS) -> None:
    """Each stream's weights versions are 1, 2, ... n: none missing, none twice."""
    for name, _ in streams:
        versions = [orjson.loads(value)["version"] for value in weights[name]]
        assert versions == list(range(1, len(versions) + 1)), name


def topic_maker(admin: KafkaAdminClient, tag: str) -> Callable[..., str]:
    """``make(prefix="t", partitions=1, config=None) -> name``: a new uniquely named
    topic through ``admin``, ready to use (its partitions have leaders) on return."""
    def make(prefix: str = "t", *, partitions: int = 1,
             config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{tag}-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.create_topics([NewTopic(name, partitions, 1,
                                              topic_configs=config or {})])
                break
            except NodeNotReadyError:
                # the session's admin client after a test restarted the broker: its
                # connection is in reconnect back-off for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_for_leaders(admin, name, partitions)
        return name

    return make


def wait_for_leaders(admin: KafkaAdminClient, topic: str, partitions: int,
                     timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_topics([topic])
        if described and described[0].get("error_code", 0) == 0:
            leaders = [p.get("leader_id", -1) for p in described[0].get("partitions", [])]
            if len(leaders) == partitions and all(leader >= 0 for leader in leaders):
                return
        time.sleep(0.05)
    raise TimeoutError(f"topic {topic}: partitions have no leader after {timeout:.0f}s")


def make_topics_at(bootstrap: str, tag: str, partitions: int, *,
                   adapted: bool = False) -> dict[str, str]:
    """:func:`make_topics` through an admin client of its own at ``bootstrap``: for a
    broker the session's ``topic_factory`` does not reach (another namespace, another
    listener)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{tag}-admin")
    try:
        return make_topics(topic_maker(admin, tag), partitions, adapted=adapted)
    finally:
        admin.close()


def start_held(config_path: pathlib.Path, log_path: pathlib.Path, gate: pathlib.Path,
               at: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``streamweights run`` on ``config_path`` as a subprocess (log lines to
    ``log_path``) whose input is held back from position ``at`` on until the file ``gate``
    exists (test hook, ``runtime.faults``): a test that acts mid-stream (a signal, a kill)
    then cannot lose the race to the end of the input, however fast the service or
    loaded the machine. While held, the service commits nothing more on its own."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {}),
                   HOLD_UNTIL_ENV: str(gate), HOLD_AT_ENV: str(at)}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streamweights", "run", "--no-http",
                                 "--config", str(config_path)],
                                stdout=subprocess.DEVNULL, stderr=log, env=environment,
                                cwd=REPO)


def wait_until_held(process: subprocess.Popen, log_path: pathlib.Path, bootstrap: str,
                    group: str, topics: dict[str, str], partitions: int,
                    seconds: float = 90) -> int:
    """Until ``process`` (see :func:`start_held`) has reached its hold and the group has
    committed some of its input; returns the input records committed (summed offsets).
    (A checkpoint due while an earlier commit is in flight waits for it while records
    go on, so the newest commit may still be on its way when the hold is reached.)"""
    inputs = [TopicPartition(topics[kind], number) for kind in ("predictions", "labels")
              for number in range(partitions)]
    deadline = time.monotonic() + seconds

    def check(what: str) -> None:
        log_text = log_path.read_text(errors="replace")
        assert process.poll() is None, f"the service ended before {what}: {log_text[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log_text[-3000:]}"
        time.sleep(0.05)

    while "input held at position" not in log_path.read_text(errors="replace"):
        check("its input was held")
    with contextlib.closing(KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                          enable_auto_commit=False)) as watcher:
        while not (done := sum(watcher.committed(tp) or 0 for tp in inputs)):
            check("a first commit")
    return done


def committed_offsets(bootstrap: str, group: str, topics: dict[str, str],
                      partitions: int) -> dict:
    """The group's committed offset (0 if none) of every input partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return {tp: consumer.committed(tp) or 0
                for tp in (TopicPartition(topics[kind], number)
                           for kind in ("predictions", "labels")
                           for number in range(partitions))}
    finally:
        consumer.close()


def fail_commit_at(monkeypatch: Any, service: Service, at: int,
                   message: str = "injected: the commit failed") -> dict[str, int]:
    """Make the ``at``-th commit_transaction of ``service``'s first producer raise a
    Kafka error (``message``) after flushing what it sent (outputs, stream records,
    logs), as a commit the broker timed out or fenced; returns the count of that
    producer's commit calls, kept up to date."""
    from kafka.errors import KafkaError

    first_producer = service.state.producer
    real_commit = transaction_calls.commit
    calls = {"n": 0}

    def flaky_commit(producer, timeout):
        if producer is first_producer:
            calls["n"] += 1
            if calls["n"] == at:
                producer.flush()
                raise KafkaError(message)
        return real_commit(producer, timeout)

    monkeypatch.setattr(transaction_calls, "commit", flaky_commit)
    return calls
