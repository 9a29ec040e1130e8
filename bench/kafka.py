"""The Kafka runtime through a real broker: events/s per replica against kafka-python's
consume-only ceiling, and label-to-weights latency at half the measured rate.

What runs (issue 4's benchmark): the real single-node KRaft broker of the test harness
(``tests/kafka/broker.py``, fetched with Maven on first use) unless ``--bootstrap`` names
one. ``--streams`` drifting streams of the default scenario (``configs/demo.yaml``:
three frozen deployed models, labels ~20 s later in event time) are generated once,
before any timing, and produced to co-partitioned predictions and labels topics keyed by
stream.

throughput, alternating rounds, best of ``--rounds`` each:

* ceiling — kafka-python consume-only on the same two topics: a consumer with no group
  (``assign`` + ``seek_to_beginning``) created with exactly the settings the service's
  consumer gets (``kafka_source.consumer_settings`` of this config's ``kafka.client``
  and security settings, imported, not copied: read_committed, 10,000 records per poll,
  4 MiB per partition, 50 MiB and at least 32 KiB per fetch) and the thread switch
  interval the service runs with (``service.THREAD_SWITCH_INTERVAL``), polling with the
  service's timeout, reading every record of both topics and doing nothing with it. Its
  clock starts when the first batch arrives (connect and first fetch excluded, as for
  ours). Beside it, for reference only, the same consumer with kafka-python's fetch
  defaults (500 records per poll, 1 MiB per partition, 1 byte at least), which is what
  the service read with before issue 11; and the same consumer with the native record
  reader the service's consumer uses
  (``runtime/kafka_records.py``), which shows how far the client itself now goes.
* ours — one replica of the Kafka runtime (``Service`` with ``source.kind: kafka``,
  bounded: ``stop_at_end``), in this process, from a fresh consumer group and fresh
  output topics each round: consume (``read_committed``), merge per task, decode,
  adapt, publish weights versions and adapted records, and commit a transaction with
  the task snapshots and the input offsets at configs/kafka.yaml's cadence (``checkpoint:
  every_records`` / ``every_seconds``, whichever comes first; ``--checkpoint-records`` /
  ``--checkpoint-seconds`` override them). Outputs as configs/kafka.yaml: weights
  versions (every 1,000 labels per stream), no adapted topic (``--adapted`` adds one
  record per prediction). Each round then runs ours once more publishing adapted records
  too (one per prediction, the service's main output; unless ``--adapted`` already did):
  kafka-python's producer pays per record in Python, so this rate is far lower and is
  printed beside the headline. Its rate counts from the first record released (group join
  excluded) to the last commit. Beside it: how long its thread was blocked (wall minus
  thread CPU) in kafka-python's ``poll`` (a fetch response not there yet) and in the
  transaction calls (``send_offsets_to_transaction`` + ``commit_transaction``, one
  round each per commit), the waits that no per-record work can shorten.

latency — the same replica as a separate ``streamweights run`` process, live (not
bounded), committing every ``--commit-ms``. A load generator produces fresh records at
half of ours' best rate, paced by the clock: ``bench/LoadGenerator.java``, compiled here
against the broker's own kafka-clients jar (``acks=all``, ``linger.ms=5``), started,
connected and warmed before the clock starts (``--generator-warm-up``: the same sends at
the same rate to topics of its own; why, at ``GENERATOR_WARM_UP_S``), told to go once the
replica owns its tasks; it notes the wall time at which each label is handed to its
producer, and when the producer's callback sees the broker acknowledge it. (Until this
release the
generator was kafka-python's producer in this process: ~40 µs of Python per record, it
took ~0.8 of the 2 cores at 17-18k records/s and could not reach half of ours' rate, so
the replica was measured starved of CPU by its own load. It paces by the millisecond, not
before every record: a park per record's 11-12 µs gap took it ~0.45 of the 2 cores at
80-90k records/s, ~0.26 now.) A ``read_committed`` reader of
the weights topic, in this process (heap frozen, so its garbage collections do not
delay its clock), notes the wall time each new version is readable, with a long poll of
at most 50 ms: the broker answers its fetch as soon as a commit makes versions readable
(a 5 ms wait made it fetch ~200 times a second for ~10 commits, ~0.14 cores). The bound
is not 500 ms (kafka-python's default, and this bench's before): now and then (up to
four times in 20 s) such a fetch ran its whole wait although commits had made versions
readable meanwhile; the reader then saw nothing for ~490 ms while the replica went on
committing ten times a second with its consumer lag flat, and a Java consumer reading the
same topic beside it (kafka-clients 4.4, the same wait) saw new versions every ~100 ms.
kafka-python's network thread had built that fetch before the reader took the previous
response's records, leaving those partitions out, so it named only the weights partition
no stream writes to, and the broker held it the whole wait. In most of the runs
whose p99 was over 250 ms, one to four such gaps were that tail. The longest gap between
the reader's reads is printed with the figures; a version's ``ts``
is that of the label that triggered it. p50/p99 over the versions of labels sent after a
3 s warm-up; the p50 of the first and last thirds shows whether the replica keeps up,
and the p99 after the first third leaves the warm-up out. The same figures are printed from
each label's acknowledgement instead (an upper bound of when it was in the log: the input
path's delays left out; never the headline), which says how much of the latency the input
path is. It also prints the CPU the replica, the generator and the reader used while
producing, and says so when the
generator fell short of the rate asked. The replica runs with its HTTP endpoints, as a
deployed one does, and its ``/metrics`` are read once a second while the load runs (a
Prometheus server would scrape less often): commits per second, the mean checkpoint call
and ``commit_transaction`` step, the changelog bytes a commit wrote, and the largest
count of predictions waiting for labels and of consumer lag seen; and, from the input
topics' end offsets, how many records the generator had paced out but its producer had
not yet written, per topic; and with each sample the cores the replica, the generator and
the whole machine (the broker included) used since the last one, summed up over the
seconds in which the replica's consumer lag rose and over the others: whether the
replica fell behind on its own work or on a machine short of CPU. A gap between the two
topics wider than ``kafka.max_task_idle_ms``'s worth of records lets labels pass the
predictions they answer (the replica's contract for live input), so predictions wait for
labels that have gone by and the snapshots grow: the input is skewed, and the latency then
says more about the harness than the replica.

The machine is small and shared (2 cores, the broker's JVM on the same cores), so
absolute numbers move between runs; the ratio is what the rounds make comparable.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import cProfile
import gc
import heapq
import io
import itertools
import math
import os
import pathlib
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the kafka package: drop the folder, put the repository in its place.
sys.path[:] = [str(REPO)] + [entry for entry in sys.path
                             if pathlib.Path(entry or ".").resolve() != REPO / "bench"]

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from streamweights.config import SourceConfig, parse_config  # noqa: E402
from streamweights.runtime import transaction_calls  # noqa: E402
from streamweights.runtime.heap import startup_heap_frozen  # noqa: E402
from streamweights.runtime.kafka_records import use_native_reader  # noqa: E402
from streamweights.runtime.kafka_runtime import client_settings  # noqa: E402
from streamweights.runtime.kafka_source import (  # noqa: E402
    THROUGHPUT_SETTINGS,
    KafkaSource,
    consumer_settings,
    wait_for_assignment,
)
from streamweights.runtime.replay import ReplayStream  # noqa: E402
from streamweights.runtime.service import THREAD_SWITCH_INTERVAL, Service  # noqa: E402
from tests.kafka.broker import free_port  # noqa: E402

#: Records per generated event, at least: the prediction, and its label unless it is one
#: of the scenario's missing ones (0.5%).
RECORDS_PER_EVENT = 1.9

#: The weights reader's longest fetch wait (its long poll's bound; see the docstring).
READER_MAX_WAIT_MS = 50

#: The poll timeout the service's source uses (its default).
POLL_TIMEOUT_MS = KafkaSource.__init__.__kwdefaults__["poll_timeout_ms"]


def generate(streams: int, events_per_stream: int, distinct: int | None = None
             ) -> list[bytes]:
    """``streams`` replayed drifting streams merged in event-time order (as JSON lines),
    generated on every core (each stream's replay trains its own models: ~0.4 s a stream
    of 60 events, so 1,000 streams took ~7 minutes on one core). With ``distinct``, only
    that many are replayed and stream ``s<i>`` past them is a copy of ``s<i % distinct>``
    under its own name and ids (10,000 streams would take ~35 minutes on two cores): what
    the service does per record does not depend on two streams' records being equal, as
    each stream has its own chain and join.

    Each record is kept as a compact copy: orjson's own output object holds ~4 KiB of heap
    while it lives, so a latency phase of 40 s at 66,000 records/s held ~20 GB and was
    killed for memory (the copies: ~0.2 KiB each)."""
    replays = []
    replayed = streams if distinct is None else max(1, min(distinct, streams))
    workers = min(replayed, os.cpu_count() or 1)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        for number, records in enumerate(pool.map(
                _replayed, range(replayed), itertools.repeat(events_per_stream),
                chunksize=max(1, min(16, replayed // (4 * workers))))):
            replays.append(records)
            if number < 10 or (number + 1) % 100 == 0 or number + 1 == replayed:
                print(f"  generated stream s{number}: {len(records):,} records", flush=True)
    for number in range(replayed, streams):
        replays.append(_renamed(replays[number % replayed], number))
    if replayed < streams:
        print(f"  streams s{replayed}..s{streams - 1}: copies of s0..s{replayed - 1} under "
              "their own names", flush=True)
    return list(heapq.merge(*replays, key=lambda raw: orjson.loads(raw)["ts"]))


def _replayed(number: int, events_per_stream: int) -> list[bytes]:
    """Stream ``s<number>``'s replayed records (seed ``number + 1``), compact copies."""
    replay = ReplayStream(SourceConfig(events=events_per_stream, seed=number + 1,
                                       stream=f"s{number}"))
    return [bytes(memoryview(raw)) for _, raw in replay.records()]


def _renamed(records: list[bytes], number: int) -> list[bytes]:
    """``records`` of one stream as stream ``s<number>``'s: its name and its ids' prefix."""
    name = f"s{number}"
    out = []
    for raw in records:
        record = orjson.loads(raw)
        record["id"] = f"{name}-{record['id'].partition('-')[2]}"
        record["stream"] = name
        out.append(bytes(memoryview(orjson.dumps(record))))  # (compact: see generate)
    return out


def route(raw: bytes) -> tuple[bool, bytes]:
    record = orjson.loads(raw)
    return "label" in record, record["stream"].encode()


class Topics:
    def __init__(self, bootstrap: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")

    def make(self, prefix: str, compacted: bool = False) -> str:
        name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
        config = {"cleanup.policy": "compact"} if compacted else {}
        self.admin.create_topics([NewTopic(name, self.partitions, 1, topic_configs=config)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = self.admin.describe_topics([name])
            parts = described[0].get("partitions", []) if described else []
            if len(parts) == self.partitions and all(p.get("leader_id", -1) >= 0
                                                     for p in parts):
                return name
            time.sleep(0.05)
        raise TimeoutError(f"topic {name} has no leaders")

    def outputs(self, adapted: bool = False) -> dict[str, str | None]:
        return {"weights": self.make("weights", True), "changelog": self.make("changelog", True),
                "adapted": self.make("adapted") if adapted else None}


def produce_all(bootstrap: str, lines: list[bytes], predictions: str, labels: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             batch_size=1 << 20)
    for raw in lines:
        is_label, key = route(raw)
        producer.send(labels if is_label else predictions, key=key, value=raw)
    producer.flush()
    producer.close()


def consume_only(bootstrap: str, topics: list[str], partitions: int, total: int,
                 settings: dict, native_reader: bool = False) -> float:
    """kafka-python reading both topics with the service's own consumer settings
    (``settings``: :func:`~streamweights.runtime.kafka_source.consumer_settings` of the
    benchmark's config), no group (``assign``), nothing done per record. Records/s from
    the moment the first batch is fetched (connecting and the first fetch excluded, as
    ours' clock starts at its first released record), the first batch counted.
    ``native_reader``: fetched batches read by the core, as the service's consumer reads
    them (``runtime/kafka_records.py``); the ceiling itself is kafka-python's own reader.
    Runs with the thread switch interval the service runs with (``Service.run``), so
    kafka-python's network thread gets the GIL as soon as it does in ours."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **settings)
    if native_reader and not use_native_reader(consumer):
        raise RuntimeError("the native record reader does not fit this kafka-python")
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(THREAD_SWITCH_INTERVAL)  # as the service runs (Service.run)
    try:
        assigned = [TopicPartition(t, n) for t in topics for n in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        count, started = 0, None
        while count < total:
            # the timeout the service polls with (KafkaSource.poll_timeout_ms)
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            fetched = sum(len(records) for records in batches.values())
            if fetched and started is None:
                started = time.perf_counter()
            count += fetched
        return count / (time.perf_counter() - started)
    finally:
        sys.setswitchinterval(previous_interval)
        consumer.close()


def config_document(bootstrap: str, inputs: dict[str, str], outputs: dict[str, str],
                    streams: int, state_dir: str, *, checkpoint_records: int,
                    checkpoint_seconds: float, bounded: bool,
                    publish_every_labels: int, max_share: float | None = None,
                    spread: tuple[int, int] | None = None) -> dict:
    document = yaml.safe_load((REPO / "configs" / "kafka.yaml").read_text())
    stream = document["streams"][0]
    stream["publish"] = {"every_labels": publish_every_labels, "every_seconds": 60}
    document["streams"] = [{**stream, "name": f"s{n}"} for n in range(streams)]
    document["state_dir"] = state_dir
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["logging"] = {"format": "text", "progress_every_seconds": 3600}
    document["checkpoint"] = {"every_records": checkpoint_records,
                              "every_seconds": checkpoint_seconds}
    if max_share is not None:
        document["checkpoint"]["max_share"] = max_share
    if spread is not None:
        document["checkpoint"]["spread_above"], document["checkpoint"]["spread_over"] = spread
    suffix = uuid.uuid4().hex[:8]
    document["kafka"].update({
        "bootstrap_servers": bootstrap, "group_id": f"bench-{suffix}",
        "transactional_id": f"bench-tx-{suffix}",
        "predictions_topic": inputs["predictions"], "labels_topic": inputs["labels"],
        "weights_topic": outputs["weights"], "changelog_topic": outputs["changelog"],
        "adapted_topic": outputs["adapted"], "dead_letter_topic": None,
        "create_topics": False, "stop_at_end": bounded})
    return document


@contextlib.contextmanager
def blocked_time(waits: dict[str, float], active: Callable[[], bool]) -> Iterator[None]:
    """While inside: add up, per kafka-python call that can wait on the broker, how long
    the calling thread was blocked in it (wall time minus the thread's CPU time) once
    ``active()`` (the group join before the first record is left out): the consumer's
    ``poll`` (waiting for a fetch response) and the runtime's wait for a cycle's commit
    (``InFlightCommit.wait``: the commit's offsets and ``commit_transaction`` round
    trips run on a thread of their own; the replica's thread waits only for what is
    left of them when it needs the next transaction)."""
    patched = [(KafkaConsumer, "poll", "poll"),
               (transaction_calls.InFlightCommit, "wait", "transaction")]

    def timed(method: Any, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                if active():
                    waits[name] = waits.get(name, 0.0) + (time.perf_counter() - wall) - (
                        time.thread_time() - cpu)
        return call

    originals = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in patched]
    for (owner, attribute, name), (_, _, method) in zip(patched, originals, strict=True):
        setattr(owner, attribute, timed(method, name))
    try:
        yield
    finally:
        for owner, attribute, method in originals:
            setattr(owner, attribute, method)


def run_ours(bootstrap: str, topics: Topics, inputs: dict[str, str], streams: int,
             total: int, checkpoint: tuple[int, float, float | None, tuple[int, int] | None],
             state_dir: str,
             adapted: bool, waits: dict[str, float] | None = None) -> tuple[float, int]:
    """One bounded replica from a fresh group; records/s from the first record released,
    and the number of transactions committed. ``waits``, if given, receives the seconds
    the replica's thread was blocked in ``poll`` and in transaction calls
    (:func:`blocked_time`)."""
    document = config_document(bootstrap, inputs, topics.outputs(adapted), streams, state_dir,
                               checkpoint_records=checkpoint[0],
                               checkpoint_seconds=checkpoint[1], bounded=True,
                               publish_every_labels=1000, max_share=checkpoint[2],
                               spread=checkpoint[3])
    service = Service(parse_config(document))
    first: list[float] = []
    opened = service.source.open

    def timed_open(start: int = 0):
        # The first record's time, then the service's own iterator: a generator around
        # it put a Python frame on every record's path that the service does not have
        # (the core's lane pulls from the native iterator directly): ~4% of the loop.
        records = iter(opened(start))
        head = next(records, None)
        if head is None:
            return records
        if not first:
            first.append(time.perf_counter())
        return itertools.chain((head,), records)

    service.source.open = timed_open
    try:
        # as `streamweights run` does: start-up's heap frozen while records flow
        with startup_heap_frozen(), \
                blocked_time(waits if waits is not None else {}, lambda: bool(first)):
            summary = service.run()
        ended = time.perf_counter()
        commits = service.state.commits
    finally:
        service.close()
    assert summary["records"] == total, f"ours read {summary['records']} of {total}"
    return total / (ended - first[0]), commits


def restore_after_stop(bootstrap: str, topics: Topics, inputs: dict[str, str], streams: int,
                       stop_at: int, checkpoint: tuple[int, float, float | None,
                                                       tuple[int, int] | None],
                       state_dir: str) -> tuple[float, int, int]:
    """A replica from a fresh group stopped at input position ``stop_at`` (its stop
    commits, as a SIGTERM's does), then a new replica on the same group and changelog:
    the seconds from its ``restore`` to its tasks restored (every stream's newest record
    read and loaded, and with spread commits the logged records replayed into the
    streams left unwritten), the records it replayed, and the stop's transactions."""
    document = config_document(bootstrap, inputs, topics.outputs(False), streams, state_dir,
                               checkpoint_records=checkpoint[0],
                               checkpoint_seconds=checkpoint[1], bounded=True,
                               publish_every_labels=1000, max_share=checkpoint[2],
                               spread=checkpoint[3])
    stopped = Service(parse_config(document), max_records=stop_at)
    try:
        with startup_heap_frozen():
            stopped.run()
        commits = stopped.state.commits
    finally:
        stopped.close()
    replica = Service(parse_config(document))
    try:
        began = time.perf_counter()
        replica.restore()
        wait_for_assignment(replica.source)
        seconds = time.perf_counter() - began
        replayed = replica.state.replayed
    finally:
        replica.close()
    return seconds, replayed, commits


#: Seconds the Java load generator sends, at the rate asked, to warm-up topics of its own
#: before the clock starts. Started cold, its JVM took 0.68-0.98 of the 2 cores in the
#: run's first second and ~0.45 in the next (interpreting and compiling its send path;
#: 0.28-0.34 in the first second once warmed, ~0.26 later), CPU the broker and the
#: replica measured were short of just then.
GENERATOR_WARM_UP_S = 3.0


def java_generator(workdir: pathlib.Path) -> list[str]:
    """The command that runs ``bench/LoadGenerator.java``, compiled into ``workdir``
    against the broker's own kafka-clients jar (``tests/kafka/broker.py`` fetched it)."""
    from tests.kafka.broker import fetch_jars, find_java

    lib = fetch_jars()
    java = find_java()
    javac = pathlib.Path(java).with_name("javac")
    if not javac.exists():
        raise RuntimeError(f"bench/kafka.py's latency load generator needs javac next to "
                           f"{java} (a JDK, not only a JRE)")
    classes = workdir / "java"
    classes.mkdir(parents=True, exist_ok=True)
    clients = sorted(lib.glob("kafka-clients-*.jar"))
    subprocess.run([str(javac), "-nowarn", "-cp", str(clients[-1]), "-d", str(classes),
                    str(REPO / "bench" / "LoadGenerator.java")], check=True)
    return [java, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", f"{classes}:{lib}/*",
            "LoadGenerator"]


#: The series the latency phase reads from the replica's /metrics, once a second (as a
#: Prometheus server scrapes a replica, if more often); ``scrape`` sums each over its
#: label sets.
REPLICA_SERIES = ("streamweights_snapshot_bytes", "streamweights_pending_labels",
                  "streamweights_kafka_consumer_lag",
                  "streamweights_checkpoint_duration_seconds_count",
                  "streamweights_checkpoint_duration_seconds_sum",
                  "streamweights_kafka_commit_seconds_count",
                  "streamweights_kafka_commit_seconds_sum",
                  "streamweights_kafka_transactions_total")


def scrape(port: int) -> dict[str, float] | None:
    """The replica's :data:`REPLICA_SERIES`, each summed over its label sets (a commit
    step's and an outcome's kept apart as ``name{value}``); ``None`` while it does not
    answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in REPLICA_SERIES:
                continue
            key = sample.name
            if "step" in sample.labels or "outcome" in sample.labels:
                key += "{" + sample.labels.get("step", sample.labels.get("outcome", "")) + "}"
            found[key] = found.get(key, 0.0) + sample.value
    return found


def replica_figures(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """What the replica's samples say over the producing window: commits per second,
    the mean checkpoint call (snapshot encoding and sends; it waits for a commit still
    in flight) and ``commit_transaction`` step, the changelog bytes a commit wrote
    (median and largest sampled), the predictions waiting for labels and the consumer
    lag (largest sampled, all streams / partitions summed)."""
    if len(samples) < 2:
        return {}
    (_, first), (_, last) = samples[0], samples[-1]
    seconds = samples[-1][0] - samples[0][0]

    def delta(key: str) -> float:
        return last.get(key, 0.0) - first.get(key, 0.0)

    checkpoints = delta("streamweights_checkpoint_duration_seconds_count")
    commits = delta("streamweights_kafka_commit_seconds_count{commit}")
    sizes = [values.get("streamweights_snapshot_bytes", 0.0) for _, values in samples]
    return {
        "commits_per_s": delta("streamweights_kafka_transactions_total{commit}") / seconds,
        "aborts": delta("streamweights_kafka_transactions_total{abort}"),
        "checkpoint_ms": 1000 * delta("streamweights_checkpoint_duration_seconds_sum")
        / max(checkpoints, 1),
        "commit_step_ms": 1000 * delta("streamweights_kafka_commit_seconds_sum{commit}")
        / max(commits, 1),
        "snapshot_bytes_p50": statistics.median(sizes), "snapshot_bytes_max": max(sizes),
        "pending_max": max(values.get("streamweights_pending_labels", 0.0)
                           for _, values in samples),
        "lag_max": max(values.get("streamweights_kafka_consumer_lag", 0.0)
                       for _, values in samples),
        **{f"backlog_{kind}_max": max(values.get(f"generator_backlog_{kind}", 0.0)
                                      for _, values in samples)
           for kind in ("predictions", "labels")},
        **cores_while_lag(samples)}


def cores_while_lag(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Mean cores the replica used, and the machine was busy, over the seconds in which
    the replica's consumer lag rose (it fell behind its input) and over the others:
    whether falling behind was its own work or a machine short of CPU."""
    groups: dict[str, list[tuple[float, float]]] = {"rising": [], "other": []}
    lag = "streamweights_kafka_consumer_lag"
    for (_, before), (_, after) in itertools.pairwise(samples):
        if "cores_replica" not in after:
            continue
        rising = after.get(lag, 0.0) - before.get(lag, 0.0) > 1000
        groups["rising" if rising else "other"].append(
            (after["cores_replica"], after["cores_machine"]))
    found = {}
    for name, values in groups.items():
        found[f"{name}_seconds"] = float(len(values))
        if values:
            found[f"{name}_replica_cores"] = statistics.fmean(v for v, _ in values)
            found[f"{name}_machine_cores"] = statistics.fmean(m for _, m in values)
    return found


def latency(bootstrap: str, topics: Topics, lines: list[bytes], streams: int, rate: float,
            seconds: float, commit_ms: int, state_dir: str,
            dump: str | None = None,
            generator_warm_up: float = GENERATOR_WARM_UP_S) -> dict[str, float]:
    """Label sent → weights version readable (read_committed), at ``rate`` records/s.

    With ``dump``, also writes each version's send time (seconds from the go) and
    latency, then the service's log, there: where in the run the slow versions were."""
    inputs = {"predictions": topics.make("predictions"), "labels": topics.make("labels")}
    outputs = topics.outputs()
    document = config_document(bootstrap, inputs, outputs, streams, state_dir,
                               checkpoint_records=10_000_000,
                               checkpoint_seconds=commit_ms / 1000, bounded=False,
                               publish_every_labels=100)
    folder = pathlib.Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "latency.yaml"
    config_path.write_text(yaml.safe_dump(document))
    # The records to send, and which (stream, ts) each label is (what a weights version
    # names), worked out before anything is timed.
    count = int(rate * seconds)
    if len(lines) < count:
        raise RuntimeError(f"the latency phase needs {count:,} records, got {len(lines):,}")
    label_of: dict[int, tuple[str, float]] = {}
    labels_before = [0]  # labels among the first i records, for i = 0 .. count
    with open(folder / "records.tsv", "wb") as prepared:
        for index, raw in enumerate(lines[:count]):
            record = orjson.loads(raw)
            is_label = "label" in record
            labels_before.append(labels_before[-1] + is_label)
            if is_label:
                label_of[index] = (record["stream"], record["ts"])
            prepared.write(b"L\t" if is_label else b"P\t")
            prepared.write(record["stream"].encode() + b"\t" + raw + b"\n")
    # Topics only the generator's warm-up writes to (the replica does not read them).
    warm_up = ([topics.make("warm-up-predictions"), topics.make("warm-up-labels"),
                str(generator_warm_up)] if generator_warm_up > 0 else [])
    generator = subprocess.Popen(
        [*java_generator(folder), bootstrap, inputs["predictions"], inputs["labels"],
         str(rate), str(folder / "records.tsv"), str(folder / "sent.txt"), *warm_up],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # With its HTTP endpoints, as a deployed replica runs, sampled once a second below.
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "streamweights", "run",
                                "--http-port", str(port), "--config", str(config_path)],
                               cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    readable: list[tuple[str, float, float]] = []  # (stream, ts, wall time read)
    stop = threading.Event()

    def read_weights() -> None:
        consumer = KafkaConsumer(outputs["weights"], bootstrap_servers=bootstrap,
                                 group_id=None, isolation_level="read_committed",
                                 # a long poll: answered when a commit makes versions
                                 # readable (the log's stable offset moves), or after
                                 # READER_MAX_WAIT_MS when that wake-up is missed (above)
                                 auto_offset_reset="earliest",
                                 fetch_max_wait_ms=READER_MAX_WAIT_MS)
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=20).values():
                    now = time.time()
                    for record in records:
                        weights = orjson.loads(record.value)
                        readable.append((weights["stream"], weights["ts"], now))
        finally:
            consumer.close()

    reader = threading.Thread(target=read_weights, daemon=True)
    reader.start()
    samples: list[tuple[float, dict[str, float]]] = []  # (wall time, the replica's series)
    producing = threading.Event()

    went: list[float] = []  # when the generator was told to go
    went_cpu: list[dict[str, float]] = []  # the CPU counters then

    def sample_replica() -> None:
        """Each second: the replica's series, and how far the records the generator was
        handed (by its pacing) are from those in the input topics' logs, per topic."""
        from kafka import TopicPartition

        watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        partitions = {kind: [TopicPartition(inputs[kind], n) for n in range(topics.partitions)]
                      for kind in ("predictions", "labels")}
        last_cpu: dict[str, float] | None = None
        try:
            while not stop.is_set():
                if producing.is_set() and went:
                    if last_cpu is None:  # the first sample counts from the go
                        last_cpu = went_cpu[0]
                    found = scrape(port)
                    now = time.time()
                    cpu = cpu_now()
                    if found is not None:
                        # cores used since the last sample: the replica, the generator,
                        # and all processes (the broker's JVM included)
                        elapsed = cpu["wall"] - last_cpu["wall"]
                        for key in ("replica", "generator", "machine"):
                            found[f"cores_{key}"] = (cpu[key] - last_cpu[key]) / elapsed
                        handed = min(count, int(rate * (now - went[0])))
                        for kind, owned in partitions.items():
                            written = sum(watcher.end_offsets(owned).values())
                            expected = (labels_before[handed] if kind == "labels"
                                        else handed - labels_before[handed])
                            found[f"generator_backlog_{kind}"] = expected - written
                        samples.append((now, found))
                    last_cpu = cpu
                stop.wait(1.0)
        finally:
            watcher.close()

    def cpu_now() -> dict[str, float]:
        return {"wall": time.time(), "replica": process_cpu_seconds(service.pid),
                "generator": process_cpu_seconds(generator.pid),
                "machine": machine_busy_seconds()}

    threading.Thread(target=sample_replica, daemon=True).start()
    log_lines: list[str] = []
    joined = threading.Event()

    def watch_log() -> None:
        for line in service.stderr:
            text = line.decode(errors="replace")
            log_lines.append(text)
            if "assigned tasks [" in text and "assigned tasks []" not in text:
                joined.set()

    threading.Thread(target=watch_log, daemon=True).start()
    # This process's own full collections (its heap holds the generated records and the
    # rounds before) paused it for up to 160 ms at a time, delaying the reader's clock:
    # freeze that heap; and hand the GIL over as often as the service does.
    gc.collect()
    gc.freeze()
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(THREAD_SWITCH_INTERVAL)
    try:
        assert generator.stdout is not None and generator.stdin is not None
        if generator.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start (bench/LoadGenerator.java)")
        if not joined.wait(60):  # produce once the replica owns its tasks
            raise RuntimeError("the service did not join its group in 60 s:\n"
                               + "".join(log_lines[-20:]))
        cpu_before = {pid: process_cpu_seconds(pid)
                      for pid in (os.getpid(), service.pid, generator.pid)}
        started = time.time()
        producing.set()
        found = scrape(port)  # the replica's series at the go
        if found is not None:
            samples.append((started, found))
        went_cpu.append(cpu_now())
        went.append(time.time())
        generator.stdin.write("go\n")
        generator.stdin.flush()
        done = generator.stdout.readline().split()
        if not done or done[0] != "done":
            raise RuntimeError(f"the load generator failed: {done}")
        produced_for = time.time() - started
        found = scrape(port)  # and at the end of producing
        if found is not None:
            samples.append((time.time(), found))
        producing.clear()
        # How the 2 cores were shared while producing (the broker has the rest)
        cores = {pid: (process_cpu_seconds(pid) - before) / produced_for
                 for pid, before in cpu_before.items()}
        time.sleep(2)  # let the last versions commit
    finally:
        sys.setswitchinterval(previous_interval)
        gc.unfreeze()
        stop.set()
        reader.join(timeout=5)
        for process in (generator, service):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
    warnings = [line for line in log_lines if "warn" in line.lower()]
    if warnings:
        print(f"  the service logged {len(warnings)} warning(s); first: {warnings[0].strip()}")
    sent_at: dict[tuple[str, float], float] = {}
    acked_at: dict[tuple[str, float], float] = {}
    for line in (folder / "sent.txt").read_text().splitlines():
        index, sent_micros, acked_micros = line.split()
        label = label_of[int(index)]
        if label not in sent_at:  # the first send
            sent_at[label] = int(sent_micros) / 1e6
            acked_at[label] = int(acked_micros) / 1e6 if int(acked_micros) else math.nan
    seen = sorted((sent_at[(stream, ts)], now - sent_at[(stream, ts)],
                   now - acked_at[(stream, ts)])
                  for stream, ts, now in readable if (stream, ts) in sent_at)
    after_warm_up = [(lat, acked) for at, lat, acked in seen if at - started > 3.0]
    warm = [lat for lat, _ in after_warm_up]
    # From the broker's acknowledgement instead of the hand-over to the producer: the
    # input path's delays (the generator's batching, the broker's append) left out.
    from_ack = [acked for _, acked in after_warm_up if not math.isnan(acked)]
    if dump is not None:
        with open(dump, "w") as out:
            out.write(f"# go at {started:.3f} (epoch s); sent_s latency_ms "
                      "from_acknowledgement_ms\n")
            out.writelines(f"{at - started:.3f} {1000 * lat:.1f} {1000 * acked:.1f}\n"
                           for at, lat, acked in seen)
            out.write("# the replica's /metrics, sampled: seconds from the go, then series\n")
            out.writelines(f"{at - started:.3f} {orjson.dumps(values).decode()}\n"
                           for at, values in samples)
            out.write("# the service's log\n")
            out.writelines(log_lines)
    if len(warm) < 20:
        error = "".join(log_lines)[-2000:]
        raise RuntimeError(f"only {len(warm)} weights versions were matched; service said:\n"
                           f"{error}")
    third = max(len(warm) // 3, 1)
    return {"versions": len(warm), **tail_figures(warm),
            "first_third_p50_ms": 1000 * statistics.median(warm[:third]),
            "last_third_p50_ms": 1000 * statistics.median(warm[-third:]),
            "max_ms": 1000 * max(warm),
            "longest_read_gap_ms": 1000 * longest_gap(sorted({now for _, _, now in readable})),
            **({} if len(from_ack) < 20 else tail_figures(from_ack, "acked_")),
            "achieved_rate": float(done[1]), "generator_cores": cores[generator.pid],
            "reader_cores": cores[os.getpid()], "replica_cores": cores[service.pid],
            **replica_figures(sorted(samples))}


def longest_gap(instants: list[float]) -> float:
    """The longest time between two consecutive instants (sorted), 0 for fewer than two."""
    return max((later - earlier for earlier, later in itertools.pairwise(instants)),
               default=0.0)


def tail_figures(latencies: list[float], prefix: str = "") -> dict[str, float]:
    """p50, p99 and the p99 after the first third (the warm-up left out), in ms, of
    latencies in send order; ``prefix`` names another clock (``acked_``: from each label's
    acknowledgement by the broker)."""
    quantiles = statistics.quantiles(latencies, n=100)
    third = max(len(latencies) // 3, 1)
    return {f"{prefix}p50_ms": 1000 * quantiles[49], f"{prefix}p99_ms": 1000 * quantiles[98],
            f"{prefix}steady_p99_ms":
                1000 * statistics.quantiles(latencies[third:], n=100)[98]}


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy so far (``/proc/stat``: all but idle and
    iowait), whoever used them."""
    ticks = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0]
             .split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_ours(bootstrap: str, topics: Topics, inputs: dict[str, str],
                 args: argparse.Namespace, total: int, state_dir: str) -> None:
    """One more bounded replica under cProfile: where a replica's time goes, grouped by
    the part of the service (cProfile slows it down; shares, not rates)."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_ours(bootstrap, topics, inputs, args.streams, total,
             (args.checkpoint_records, args.checkpoint_seconds, args.max_share, None),
             state_dir, args.adapted)
    profiler.disable()
    if args.profile_dump:
        profiler.dump_stats(args.profile_dump)
    stats = pstats.Stats(profiler)
    whole = max(entry[3] for entry in stats.stats.values())  # the outermost call's time
    parts = {"pipeline (Pipeline.process)": "pipeline.py:process",
             "decode": "events.py:decode", "checkpoint (task snapshots + transaction)":
             "kafka_runtime.py:checkpoint", "outputs (encode + produce)": "service.py:_route",
             "source (poll, unpack, merge, release)": "kafka_source.py:open"}
    print(f"\nprofile of one replica (cProfile, {whole:.1f} s; cumulative shares, nested "
          "parts overlap):")
    for name, where in parts.items():
        file, function = where.split(":")
        cumulative = sum(entry[3] for (path, _, func), entry in stats.stats.items()
                         if path.endswith(file) and func == function)
        print(f"  {cumulative / whole:6.1%}  {name}")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    print(text.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start one)")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--events", type=int, default=40_000,
                        help="predictions per stream (records are ~2x)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=None, metavar="N",
                        help="replay only N streams' models and make the others copies of "
                             "them under their own names (each replay trains models: "
                             "~0.4 s a stream; default: every stream its own)")
    cadence = yaml.safe_load((REPO / "configs" / "kafka.yaml").read_text())["checkpoint"]
    parser.add_argument("--checkpoint-records", type=int, default=cadence["every_records"],
                        help="records per transaction (default: configs/kafka.yaml's)")
    parser.add_argument("--checkpoint-seconds", type=float, default=cadence["every_seconds"],
                        help="seconds per transaction (default: configs/kafka.yaml's)")
    parser.add_argument("--max-share", type=float, default=None,
                        help="checkpoint.max_share (default: the service's, 0.5)")
    parser.add_argument("--spread-variants", nargs="*", default=[], metavar="ABOVE/OVER",
                        help="also run, each round, a replica per checkpoint.spread_above/"
                             "spread_over pair given (256/1: every changed stream written "
                             "at each commit, as before commits were spread)")
    parser.add_argument("--restore", action="store_true",
                        help="after the rounds, stop a replica at 60%% of the input and time a "
                             "new one's restore (with the service's settings and each "
                             "--spread-variants pair)")
    parser.add_argument("--unpaced-too", action="store_true",
                        help="each round, also time a replica whose checkpoints are never "
                             "held back (checkpoint.max_share 1, as before it was added)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the latency phase (its input takes minutes to generate "
                             "for 1,000 streams, and at that many publishes no weights "
                             "version in its window)")
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--rate", type=float,
                        help="skip the throughput rounds; measure latency at this many "
                             "records/s")
    parser.add_argument("--generator-warm-up", type=float, default=GENERATOR_WARM_UP_S,
                        metavar="SECONDS",
                        help="seconds the load generator sends to topics of its own before "
                             "the clock starts, to warm its JVM (0: start it cold)")
    parser.add_argument("--latency-dump", metavar="PATH",
                        help="write each weights version's send time and latency, then the "
                             "service's log, to PATH")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, profile one more replica under cProfile")
    parser.add_argument("--profile-dump", default=None, metavar="PATH",
                        help="with --profile, also write the raw cProfile stats here")
    parser.add_argument("--adapted", action="store_true",
                        help="also publish every adapted prediction (configs/kafka.yaml: off)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from tests.kafka.broker import KafkaBroker

            print("starting a Kafka broker (tests/kafka/broker.py) ...", flush=True)
            broker = KafkaBroker(pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bench-kafka-"))))
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-state-"))
        print(f"broker {bootstrap}; generating {args.streams} streams x "
              f"{args.events:,} predictions ...", flush=True)
        lines = generate(args.streams, args.events, args.distinct)
        topics = Topics(bootstrap, args.partitions)
        inputs = {"predictions": topics.make("predictions"), "labels": topics.make("labels")}
        produce_all(bootstrap, lines, inputs["predictions"], inputs["labels"])
        total = len(lines)
        print(f"produced {total:,} records to {args.partitions} partitions x 2 topics",
              flush=True)

        # the service's consumer settings for this config (what run_ours' replica uses)
        probe = config_document(bootstrap, inputs, {"weights": "w", "changelog": "c",
                                                    "adapted": None}, args.streams, workdir,
                                checkpoint_records=args.checkpoint_records,
                                checkpoint_seconds=args.checkpoint_seconds, bounded=True,
                                publish_every_labels=1000)
        settings = consumer_settings(client_settings(parse_config(probe).kafka, KafkaConsumer))
        print("consumer settings (service and ceiling): " + ", ".join(
            f"{key}={settings[key]}" for key in ("max_poll_records", "max_partition_fetch_bytes",
                                                 "fetch_max_bytes", "fetch_min_bytes",
                                                 "fetch_max_wait_ms", "isolation_level")),
              flush=True)
        # kafka-python's own fetch defaults (500 records per poll, 1 MiB per partition), to
        # show what the throughput settings are worth; never the ceiling
        defaults = {**settings, **{key: KafkaConsumer.DEFAULT_CONFIG[key]
                                   for key in THROUGHPUT_SETTINGS}}
        ceiling, ours, at_defaults, native, with_adapted, unpaced = [], [], [], [], [], []
        variants = [tuple(int(part) for part in text.split("/")) for text in args.spread_variants]
        spread_rates: dict[tuple[int, ...], list[float]] = {variant: [] for variant in variants}
        for round_number in range(1, args.rounds + 1 if args.rate is None else 1):
            ceiling.append(consume_only(bootstrap, list(inputs.values()), args.partitions,
                                        total, settings))
            at_defaults.append(consume_only(bootstrap, list(inputs.values()),
                                            args.partitions, total, defaults))
            native.append(consume_only(bootstrap, list(inputs.values()), args.partitions,
                                       total, settings, native_reader=True))
            waits: dict[str, float] = {}
            checkpoint = (args.checkpoint_records, args.checkpoint_seconds, args.max_share,
                          None)

            def unpaced_replica(round_number: int) -> None:
                unpaced_rate, unpaced_commits = run_ours(
                    bootstrap, topics, inputs, args.streams, total,
                    (args.checkpoint_records, args.checkpoint_seconds, 1.0, None),
                    str(pathlib.Path(workdir) / f"round{round_number}-unpaced"), args.adapted)
                unpaced.append(unpaced_rate)
                print(f"  round {round_number}: ours with checkpoints never held back "
                      f"(max_share 1) {unpaced_rate:,.0f} records/s ({unpaced_commits} "
                      "transactions)", flush=True)

            def spread_replicas(round_number: int) -> None:
                for above, over in variants:
                    rate, commits = run_ours(
                        bootstrap, topics, inputs, args.streams, total,
                        (args.checkpoint_records, args.checkpoint_seconds, args.max_share,
                         (above, over)),
                        str(pathlib.Path(workdir) / f"round{round_number}-{above}-{over}"),
                        args.adapted)
                    spread_rates[(above, over)].append(rate)
                    print(f"  round {round_number}: ours with spread_above {above}, "
                          f"spread_over {over}: {rate:,.0f} records/s ({commits} "
                          "transactions)", flush=True)

            # (the replicas take turns at running first, so that none has the broker's
            # warmer caches every round)
            if args.unpaced_too and round_number % 2 == 0:
                unpaced_replica(round_number)
            if round_number % 2 == 0:
                spread_replicas(round_number)
            rate, commits = run_ours(bootstrap, topics, inputs, args.streams, total, checkpoint,
                                     str(pathlib.Path(workdir) / f"round{round_number}"),
                                     args.adapted, waits)
            ours.append(rate)
            if args.unpaced_too and round_number % 2 == 1:
                unpaced_replica(round_number)
            if round_number % 2 == 1:
                spread_replicas(round_number)
            print(f"  round {round_number}: consume-only {ceiling[-1]:,.0f} records/s "
                  f"(with kafka-python's fetch defaults {at_defaults[-1]:,.0f}; with "
                  f"the service's native record reader {native[-1]:,.0f}), "
                  f"ours {rate:,.0f} records/s ({commits} transactions; its thread blocked "
                  f"{waits.get('poll', 0.0):.2f} s in poll, "
                  f"{waits.get('transaction', 0.0):.2f} s in transaction calls, of "
                  f"{total / rate:.1f} s)", flush=True)
            if not args.adapted:
                adapted_rate, adapted_commits = run_ours(
                    bootstrap, topics, inputs, args.streams, total, checkpoint,
                    str(pathlib.Path(workdir) / f"round{round_number}-adapted"), True)
                with_adapted.append(adapted_rate)
                print(f"  round {round_number}: ours publishing adapted records too "
                      f"{adapted_rate:,.0f} records/s ({adapted_commits} transactions)",
                      flush=True)
        if args.rate is None:
            best_ceiling, best_ours = max(ceiling), max(ours)
            print(f"\nthroughput (best of {args.rounds}): ours {best_ours:,.0f} records/s per "
                  f"replica, kafka-python consume-only {best_ceiling:,.0f} records/s -> "
                  f"{best_ours / best_ceiling:.1%} of the ceiling (goal >= 50%); "
                  f"consume-only with kafka-python's fetch defaults {max(at_defaults):,.0f} "
                  f"records/s; with the native record reader the service uses "
                  f"{max(native):,.0f} records/s (ours {best_ours / max(native):.1%} of it)")
            if unpaced:
                print(f"ours with checkpoints never held back (best of {args.rounds}): "
                      f"{max(unpaced):,.0f} records/s -> {max(unpaced) / best_ceiling:.1%} "
                      f"of the ceiling (held back as the service does: {best_ours:,.0f})")
            for (above, over), rates in spread_rates.items():
                print(f"ours with spread_above {above}, spread_over {over} (best of "
                      f"{args.rounds}): {max(rates):,.0f} records/s -> "
                      f"{max(rates) / best_ceiling:.1%} of the ceiling (the service's "
                      f"settings: {best_ours:,.0f})")
            if with_adapted:
                print(f"ours publishing an adapted record per prediction too (best of "
                      f"{args.rounds}): {max(with_adapted):,.0f} records/s -> "
                      f"{max(with_adapted) / best_ceiling:.1%} of the ceiling")
        if args.restore:
            stop_at = int(total * 0.6)
            print(f"\nrestores after a stop at record {stop_at:,} of {total:,} (each on a "
                  "fresh group):", flush=True)
            settings_list = [("the service's settings", None)] + [
                (f"spread_above {above}, spread_over {over}", (above, over))
                for above, over in variants]
            for what, spread in settings_list:
                seconds, replayed, commits = restore_after_stop(
                    bootstrap, topics, inputs, args.streams, stop_at,
                    (args.checkpoint_records, args.checkpoint_seconds, args.max_share, spread),
                    str(pathlib.Path(workdir) / f"restore-{what.replace(' ', '-')}"))
                print(f"  {what}: restored in {seconds:.2f} s, {replayed:,} logged records "
                      f"replayed ({commits} transactions before the stop)", flush=True)
        if args.profile:
            profile_ours(bootstrap, topics, inputs, args, total,
                         str(pathlib.Path(workdir) / "profile"))
        if args.no_latency:
            return
        rate = best_ours / 2 if args.rate is None else args.rate
        label = "half of ours' rate" if args.rate is None else "a set rate"
        print(f"\nlatency at {label} "
              f"({rate:,.0f} records/s, commit every "
              f"{args.commit_ms} ms, {args.latency_seconds:.0f} s) ...", flush=True)
        # A prediction and (all but ~0.5% of the time) its label per event: ~2 records.
        more = generate(args.streams,
                        int(rate * args.latency_seconds / (RECORDS_PER_EVENT * args.streams))
                        + 1000, args.distinct)
        found = latency(bootstrap, topics, more, args.streams, rate, args.latency_seconds,
                        args.commit_ms, str(pathlib.Path(workdir) / "latency"),
                        args.latency_dump, args.generator_warm_up)
        print(f"label produced -> weights version readable (read_committed), "
              f"{found['versions']} versions at {found['achieved_rate']:,.0f} records/s: "
              f"p50 {found['p50_ms']:.0f} ms, p99 {found['p99_ms']:.0f} ms, "
              f"max {found['max_ms']:.0f} ms (goal p99 < 250 ms); p50 of the first third "
              f"{found['first_third_p50_ms']:.0f} ms, of the last third "
              f"{found['last_third_p50_ms']:.0f} ms (a rise = the replica falls behind); "
              f"p99 after the first third {found['steady_p99_ms']:.0f} ms; the reader's "
              f"longest time without a new version (the whole run) "
              f"{found['longest_read_gap_ms']:.0f} ms "
              f"(its fetch waits at most {READER_MAX_WAIT_MS} ms)")
        if "acked_p99_ms" in found:
            print(f"the same versions from the broker's acknowledgement of the label (an "
                  f"upper bound of when it was in the log; the input path left out, so "
                  f"this flatters the replica by up to the ack's own delay): p50 "
                  f"{found['acked_p50_ms']:.0f} ms, p99 {found['acked_p99_ms']:.0f} ms, "
                  f"p99 after the first third {found['acked_steady_p99_ms']:.0f} ms")
        if found["achieved_rate"] < 0.9 * rate:
            print(f"note: the load generator reached only {found['achieved_rate']:,.0f} of the "
                  f"{rate:,.0f} records/s asked (the machine could not carry it): the "
                  "latency above is at that lower rate, with the cores saturated")
        if "commits_per_s" in found:
            print(f"the replica while producing (its /metrics, sampled each second): "
                  f"{found['commits_per_s']:.1f} commits/s, {found['aborts']:.0f} aborted; "
                  f"a checkpoint call {found['checkpoint_ms']:.1f} ms on average (encoding "
                  f"and sends, or waiting for a commit in flight), commit_transaction "
                  f"{found['commit_step_ms']:.1f} ms; changelog bytes per commit "
                  f"{found['snapshot_bytes_p50']:,.0f} (median), "
                  f"{found['snapshot_bytes_max']:,.0f} (largest); predictions waiting for "
                  f"labels up to {found['pending_max']:,.0f}, consumer lag up to "
                  f"{found['lag_max']:,.0f} records; records paced out by the load "
                  f"generator but not yet in the log, at most "
                  f"{found['backlog_predictions_max']:,.0f} predictions and "
                  f"{found['backlog_labels_max']:,.0f} labels (a gap between "
                  f"the two wider than kafka.max_task_idle_ms lets labels pass the "
                  f"predictions they answer: the input, not the replica, is then skewed)")
        if found.get("rising_seconds"):
            print(f"the {found['rising_seconds']:.0f} sampled second(s) in which the "
                  f"replica's consumer lag rose (by > 1,000 records): the replica used "
                  f"{found['rising_replica_cores']:.2f} cores on average, the machine was "
                  f"busy {found['rising_machine_cores']:.2f} of {os.cpu_count()}; in the "
                  f"other {found['other_seconds']:.0f}: "
                  f"{found.get('other_replica_cores', math.nan):.2f} and "
                  f"{found.get('other_machine_cores', math.nan):.2f}")
        print(f"CPU while producing: the replica {found['replica_cores']:.2f} cores, the "
              f"load generator (Java) {found['generator_cores']:.2f}, this process (the "
              f"reader) {found['reader_cores']:.2f}, of {os.cpu_count()} shared with the "
              "broker")


if __name__ == "__main__":
    main()
