"""Records from Kafka: one consumer on the predictions and labels topics, merged per task.

Predictions and labels are two co-partitioned topics keyed by stream, so partition ``p``
of both holds the same streams; the unit of work is a *task* = one partition number.
Kafka hands back records of the two topics in whatever batches it fetched, and an
adapter that observes predictions and learns from labels ends with different numbers if
that interleaving changes. So, as ``design.md`` asks (and as Kafka Streams does with its
per-task timestamp synchronisation), each task buffers the heads of its two partitions
and releases records in a fixed order: event time ``ts``, then topic (predictions before
labels, as the embedded replay does at equal times), then offset. A record is released
only when the other partition of its task has a buffered record to compare with, or has
been read up to its high watermark (it is idle, nothing is known to be waiting). The same
input therefore yields the same sequence, whatever the poll batches. The merge and the
hand-out of its records run in the core (``native/src/kafka_merge.rs``, ``TaskMerges``);
this module drives it from the consumer.

Assignment and revocation are noticed after each ``poll`` in the caller's thread (never
in a rebalance-listener callback, which runs on the client's IO thread that also
heartbeats; the listener only raises a flag): ``on_rebalance(owned, revoked)`` rolls
the owned tasks back to their snapshots and returns their offsets, which the source seeks
to (records fetched before are dropped).
:meth:`KafkaSource.next_offsets` gives what a transaction must commit: the offset after
the last record *released*, not the consumer's position, which runs ahead by what is
buffered. The transactional cycle itself lives in :mod:`streamweights.runtime.kafka_runtime`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from streamweights import _native
from streamweights.runtime import faults
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.kafka_records import use_native_reader

log = logging.getLogger("streamweights")

#: How far one record's ts may jump past its partition's previous one and still be merged
#: at its own time: the default of the streams' ``join.max_event_time_skew_seconds`` (the
#: Kafka runtime sets the largest configured one).
DEFAULT_MAX_SKEW = 86_400.0

#: Order of the topics at equal event time (the embedded replay emits predictions first).
PREDICTIONS, LABELS = 0, 1

#: How the consumer fetches, sized for throughput rather than kafka-python's defaults
#: (500 records per poll, 1 MiB per partition: with those, kafka-python consuming only
#: read 33-35k records/s on ``bench/kafka.py``'s topics, 116k with these). The
#: arithmetic (README "Kafka mode", "Client settings"), for the default scenario's records
#: (``configs/demo.yaml``: a prediction of three models' two class probabilities is ~235
#: bytes of JSON, a label ~70; a few bytes of key and record header each on the wire):
#:
#: * ``max_poll_records`` 10,000: every poll costs the same fixed work whatever it brings
#:   (kafka-python's poll and fetch bookkeeping, then ours: positions, high watermarks,
#:   pause/resume per partition, the lag gauge), so 20x more records per poll spread it
#:   20x thinner. One poll is then 10,000 records of work: ~0.8 s at today's ~80 us per
#:   record, ~0.1 s at 100k/s, far inside ``max_poll_interval_ms`` (300 s; heartbeats run
#:   on the client's own thread). A partition is paused once ``max_buffered``
#:   (10,000) of its records wait in a task, so a task's buffer per side stays under
#:   ``max_buffered + max_poll_records`` = 20,000 records (~5 MiB).
#: * ``max_partition_fetch_bytes`` 4 MiB: ~16,000 predictions or ~50,000 labels of one
#:   partition per fetch response, more than a poll takes, so a poll is rarely cut short by a
#:   partition whose fetched data ran out before the next response; and it is >= the
#:   broker's default ``message.max.bytes`` (1 MiB), so the largest batch always fits.
#: * ``fetch_max_bytes`` 50 MiB (kafka-python's default, stated so the bound is visible):
#:   one fetch response from one broker over all its partitions; 12 partitions x 4 MiB
#:   fit. It bounds the raw bytes one replica holds per broker (~50 MiB worst case).
#: * ``fetch_min_bytes`` 32 KiB (default 1): the broker answers once ~220 records of
#:   ~150 bytes are there, or after ``fetch_max_wait_ms``, whichever comes first. With 1
#:   it answered every fetch at once with whatever had arrived, so a live input at a
#:   moderate rate was read a few records at a time, each poll paying kafka-python's
#:   fixed work and its network thread's hand-overs: at 5,000 records/s
#:   (``bench/kafka.py --rate 5000``) 150 polls/s of 33 records; with 32 KiB 32 polls/s
#:   of 157, and the replica's CPU 0.51 -> 0.29-0.32 cores (its network thread 17% ->
#:   5% of a core). The price is at most ``fetch_max_wait_ms`` more latency on a slow
#:   input (label -> weights p50 114 -> 122 ms there, p99 within noise); a replay or a
#:   fast input fills 32 KiB at once.
#: * ``fetch_max_wait_ms`` 20 (default 500): kafka-python keeps at most one fetch in
#:   flight per broker, and it asks only for the partitions it holds no fetched data of.
#:   When those are read to their end (in a replay, one topic of a task often finishes
#:   before the other), the broker holds that fetch for up to this long, and the other
#:   partitions, whose data runs out meanwhile, cannot be fetched until it returns.
#:   ``bench/kafka.py``: the replica's thread blocked in ``poll`` 0.9-1.2 s of a ~5 s
#:   round with 500, 0.55-0.7 s with 50, 0.35-0.4 s with 20 (records/s ~50k -> ~61k).
#:   The price is an idle replica's fetches: measured on an empty 6-partition topic,
#:   ~5% of a core instead of ~1.2% (one fetch per broker every 20 ms).
#:
#: ``kafka.client`` overrides any of these (see :func:`consumer_settings`);
#: ``bench/kafka.py`` imports the same function for its consume-only ceiling.
THROUGHPUT_SETTINGS: dict[str, Any] = {
    "max_poll_records": 10_000,
    "max_partition_fetch_bytes": 4 << 20,
    "fetch_max_bytes": 50 << 20,
    "fetch_max_wait_ms": 20,
    "fetch_min_bytes": 32 << 10,
}


def record_fields() -> tuple[type, int, int] | None:
    """kafka-python's ``ConsumerRecord`` (a named tuple) and where ``offset`` and
    ``value`` sit in it, so the core reads them by index; ``None``: by attribute."""
    try:
        from kafka.consumer.fetcher import ConsumerRecord

        fields = ConsumerRecord._fields
        return ConsumerRecord, fields.index("offset"), fields.index("value")
    except (ImportError, AttributeError, ValueError):
        return None


def consumer_settings(client_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the service's input consumer is created with besides the bootstrap
    servers and the group id: read_committed, the co-partitioning assignor,
    :data:`THROUGHPUT_SETTINGS`, then ``client_settings`` (``kafka.client`` and the
    security settings), which win. One function, so the benchmark's ceiling reads with
    exactly the service's settings."""
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    return {"enable_auto_commit": False, "auto_offset_reset": "earliest",
            # range keeps partition p of both topics on one member (co-partitioning)
            "partition_assignment_strategy": [RangePartitionAssignor],
            "isolation_level": "read_committed", "bootstrap_timeout_ms": 10_000,
            # a missing input topic is a configuration error, never created silently
            "allow_auto_create_topics": False, **THROUGHPUT_SETTINGS,
            **(client_settings or {})}


def event_time(raw: bytes) -> float:
    """The record's ``ts`` for ordering; a record without a readable one sorts first
    (it is bound for the dead-letter topic and changes no state)."""
    try:
        ts = orjson.loads(raw).get("ts")
    except Exception:  # anything unreadable sorts first; the decoder names what is wrong
        return -math.inf
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts)
    return -math.inf


def back_pressure(sizes: dict[int, tuple[int, int]], assigned: set[Any], paused: set[Any],
                  topics: tuple[str, str], max_buffered: int) -> tuple[list[Any], list[Any]]:
    """``(pause, resume)``: the assigned partitions to pause and to resume so that, after
    a fetch, exactly those whose task holds ``max_buffered`` or more of their records are
    paused (bounded memory: a partition far ahead of its partner waits for it).
    ``sizes[task]`` is ``(predictions, labels)`` buffered (``TaskMerges.buffer_sizes``).

    Every *assigned* partition is checked, not only those of tasks holding records:
    kafka-python keeps a partition's paused flag across a group rebalance that leaves the
    partition with the same member, while the runtime's roll-back drops its task's
    buffers. Looking only at buffered tasks, a task whose two partitions were both paused
    when the group rebalanced was never resumed and never received a record again (the
    replica-takeover livelock, ``tests/kafka/test_kafka_flow_control.py``). Partitions
    are kafka-python ``TopicPartition``s; the lists come sorted."""
    pause, resume = [], []
    sides = {topics[PREDICTIONS]: PREDICTIONS, topics[LABELS]: LABELS}
    for tp in assigned:
        side = sides.get(tp.topic)
        if side is None:
            continue
        full = sizes.get(tp.partition, (0, 0))[side] >= max_buffered
        if full and tp not in paused:
            pause.append(tp)
        elif not full and tp in paused:
            resume.append(tp)
    return sorted(pause), sorted(resume)


class KafkaSource:
    """Merged prediction and label records of the partitions this consumer owns.

    Parameters
    ----------
    bootstrap_servers
        Kafka address(es), ``host:port[,host:port]``.
    predictions_topic, labels_topic
        The two co-partitioned input topics (same partition count, keyed by stream).
    group_id
        Consumer group; replicas with the same group share the tasks.
    stop_at_end
        A bounded replay (tests, benchmarks, back-fills): stop once the input that was
        in the topics at start-up is done, i.e. every owned partition is released up to
        its end at connect time *and* every other partition's committed offset (its
        owner's) has reached its end too, so a replica never leaves while tasks that
        may still come back to it (a member that dies or leaves) are unfinished.
        Default ``False``: run until closed.
    max_buffered
        Per-partition bound on records held for the merge; a partition that runs this far
        ahead of its partner is paused until the partner catches up (bounded memory).
        Pausing is decided after each poll, over every assigned partition (see
        :func:`back_pressure`), and one poll may bring up to ``max_poll_records`` records
        of one partition, so the worst case per side of a task is
        ``max_buffered + max_poll_records - 1`` records (19,999 with the defaults, ~5 MiB
        of predictions), plus what kafka-python keeps parked for a paused partition (at
        most one fetch response's share, ``max_partition_fetch_bytes``). A group
        rebalance drops the buffers of the tasks it rolls back, and the partitions of
        those tasks are resumed at the same fetch.
    max_task_idle_ms
        Live mode: a partition read to its high watermark counts as idle (so its partner's
        records may pass it) only after it brought nothing new for this long. A producer
        of the two topics is rarely exactly in step; without a wait, a label whose
        prediction is still in flight could be released first. Default 0 (the foundation's
        behaviour); the Kafka runtime sets ``kafka.max_task_idle_ms``. A bounded replay
        (``stop_at_end``) does not wait: a partition fetched to the end it had at start-up
        has nothing more to come within the bound.
    poll_timeout_ms
        Longest single wait for records; keeps each loop iteration short, far inside
        ``max_poll_interval_ms``.
    client_settings
        Passed to ``kafka.KafkaConsumer`` as they are: security (``security_protocol``,
        ``sasl_mechanism``, ``ssl_cafile`` ...), timeouts, client id.
    """

    def __init__(self, bootstrap_servers: str, predictions_topic: str, labels_topic: str, *,
                 group_id: str, stop_at_end: bool = False, max_buffered: int = 10_000,
                 poll_timeout_ms: int = 100, max_task_idle_ms: int = 0,
                 client_settings: dict[str, Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.max_task_idle = max_task_idle_ms / 1000.0
        self.max_event_time_skew = DEFAULT_MAX_SKEW
        self._last_data: dict[Any, float] = {}
        self.topics = (predictions_topic, labels_topic)
        self.group_id = group_id
        self.stop_at_end = stop_at_end
        self.max_buffered = max_buffered
        self.poll_timeout_ms = poll_timeout_ms
        self.client_settings = dict(client_settings or {})
        self.name = f"kafka:{predictions_topic}+{labels_topic}"
        self.consumer: Any = None
        #: The owned tasks' merge buffers and the run being handed out (in the core).
        self.merges = _native.TaskMerges()
        #: ``(topic, partition) -> next offset`` and task -> records released, as of the
        #: last :meth:`_settle` (the core keeps what was handed out since).
        self._released: dict[Any, int] = {}
        self._released_counts: dict[int, int] = {}
        #: Bounded mode: every input partition's end offset at connect time.
        self._end: dict[Any, int] = {}
        self._last_group_check = 0.0
        #: Polls in a row that raised a retriable client error (see :meth:`_poll`).
        self._poll_failures = 0
        #: The group has completed a join that gave this member its tasks (maybe none).
        self._joined = False
        #: ``on_rebalance(owned, revoked) -> {(topic, partition): offset}``: called in the
        #: caller's thread after every group rebalance; rolls the owned tasks back to their
        #: last committed snapshots and says where to resume (missing: the group's
        #: committed offset, else the start). ``None``: keep the consumer's positions.
        self.on_rebalance: Callable[[list[int], list[int]], dict[tuple[str, int], int]] \
            | None = None
        #: ``on_idle()``: a fetch brought nothing new (the runtime commits pending work,
        #: so a quiet input does not leave results uncommitted).
        self.on_idle: Callable[[], None] | None = None
        #: ``on_revoked()``: the group is about to take this member's tasks away (called
        #: inside ``poll``, on the client's IO thread, while the caller's thread waits in
        #: ``poll``: the state is quiet). The runtime commits the cycle here, so the tasks
        #: move with nothing to redo. Must not raise; must be quick.
        self.on_revoked: Callable[[], None] | None = None
        #: ``on_fetched()``: after every fetch (the runtime refreshes the lag metric).
        self.on_fetched: Callable[[], None] | None = None
        #: Set (by the service) to make :meth:`open` return at the next fetch.
        self.stop_event: Any = None
        self._rebalanced = False
        self._client_drained = False
        self._hold_logged = False
        #: Per task, whether each partition may be passed (see ``_release``), worked out
        #: once per fetch: positions and watermarks only move when the consumer polls.
        self._passable: dict[int, tuple[bool, bool]] = {}
        self._owned: set[int] = set()
        #: When a record was last released (or records began waiting while none did:
        #: see ``_buffer``), and when a stall was last reported.
        self._last_release = time.monotonic()
        self._last_stall_report = 0.0
        #: How long buffered records may wait, unreleased, before a warning says why.
        self.stall_report_seconds = 5.0
        #: Whether the consumer's fetched batches are read by the core
        #: (``runtime/kafka_records.py``); set by :meth:`connect`.
        self.native_reader = False
        #: kafka-python's record type and where ``offset`` and ``value`` sit in it
        #: (:func:`record_fields`); set by :meth:`connect` (``None``: by attribute).
        self.record_fields: tuple[type, int, int] | None = None

    # -- setup --------------------------------------------------------------------------
    def connect(self) -> None:
        """Create the consumer, subscribe, check both topics exist and are co-partitioned.

        Subscribing comes first, then a fresh metadata fetch (``topics()``): kafka-python
        remembers the partitions it assigned from only through a metadata answer that
        arrives after ``subscribe``. Without one before the first join (the group
        coordinator of a warm broker answers at once), the group leader assigns with an
        empty snapshot, and the answer arriving a moment later starts a second rebalance
        of the very same partitions: every replica start paid ~1 s of stalled input
        (issue 11; ``tests/kafka/test_kafka_single_join.py``). The group is joined only
        by the first ``poll``, so subscribing before the checks joins nothing early."""
        from kafka import KafkaConsumer
        from kafka.errors import KafkaTimeoutError

        settings = consumer_settings(self.client_settings)
        try:
            self.consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                          group_id=self.group_id, **settings)
        except KafkaTimeoutError:  # kafka-python: 'Unable to bootstrap from ...'
            raise RuntimeSetupError(f"kafka.bootstrap_servers: cannot reach a Kafka broker at "
                                    f"{self.bootstrap_servers}") from None
        # fetched batches' records read by the core (runtime/kafka_records.py)
        self.native_reader = use_native_reader(self.consumer)
        self.record_fields = record_fields()
        self.consumer.subscribe(list(self.topics), listener=_rebalance_flag(self))
        self.consumer.topics()  # metadata answered after subscribe: see the docstring
        counts = []
        for topic in self.topics:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                self.close()
                raise RuntimeSetupError(f"kafka topic {topic!r} does not exist on "
                                        f"{self.bootstrap_servers}; create it (same partition "
                                        "count for predictions and labels)")
            counts.append(len(partitions))
        if counts[0] != counts[1]:
            self.close()
            raise RuntimeSetupError(
                f"kafka topics {self.topics[0]!r} ({counts[0]} partitions) and "
                f"{self.topics[1]!r} ({counts[1]} partitions) are not co-partitioned; give "
                "them the same partition count")
        if self.stop_at_end:
            from kafka import TopicPartition

            self._end = self.consumer.end_offsets(
                [TopicPartition(topic, number) for topic in self.topics
                 for number in range(counts[0])])

    # -- reading ------------------------------------------------------------------------
    def open(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Merged records as ``(sequence number, raw value)``; the sequence counts from
        ``start`` (the embedded service's position). Offsets live in :meth:`next_offsets`.

        The core's iterator (``MergedRecords``) hands out the current run record by
        record, keeping per record the offsets and counts a commit reads; a commit
        between two records (the caller's checkpoint) may fail and ask for a roll-back,
        which is honoured before the next record (the rest of the run is dropped with the
        buffers). Everything else is :meth:`_refill`'s. A new ``open`` resumes where the
        last one stopped in the run."""
        if self.consumer is None:
            self.connect()
        return _native.MergedRecords(self.merges, self, self._refill, start)

    def _refill(self, sequence: int) -> bool:
        """What :meth:`open` does between runs, called by the core's iterator when the
        run is handed out or held, or a roll-back is due: roll back, fetch, release the
        next run. True once records may be handed out again (``sequence`` is the next
        one's number); False when the input ended (a bounded replay is done, or a stop
        was requested)."""
        merges = self.merges
        if merges.handed_out():  # a run was handed out
            self._last_release = time.monotonic()
        while True:
            if self._rebalanced and self.on_rebalance is not None:
                self._fetch()  # roll back before releasing anything more
                continue
            left = merges.run_left()
            if left:
                held = faults.held_from()  # a test holds input back from ``held`` on
                allowed = left if held is None else min(left, max(0, held - sequence))
                if allowed:
                    merges.allow(allowed)
                    return True
                if not self._hold_logged:
                    self._hold_logged = True
                    log.info("kafka source: input held at position %d until %s exists "
                             "(test hook)", sequence, faults.hold_file())
                if self.stop_event is not None and self.stop_event.is_set():
                    return False
                self._fetch()
                continue
            if self._release_run():
                continue
            if self.stop_at_end and self._at_end():
                return False
            if self.stop_event is not None and self.stop_event.is_set():
                return False
            if not self._fetch() and self.on_idle is not None:
                self.on_idle()
            self._report_stall()

    def _fetch(self) -> int:
        """Poll once; return how many records were buffered (0 when the poll failed on a
        retriable client error: :meth:`_poll`). Back-pressure is applied before the poll
        too: the run handed out since the last one drained buffers, and a partition
        still paused for them would have its records in the client parked by the poll
        (kafka-python 3.0 then returns nothing and sleeps its retry back-off, 100 ms:
        twice a round of ``bench/kafka.py``'s default scenario)."""
        self._apply_back_pressure(self.consumer.assignment())
        restore_parked_records(self.consumer)
        batches = self._poll()
        if batches is None:
            return 0
        if complete_orphaned_rejoin(self.consumer):
            log.warning("kafka: the consumer left a group rejoin half-done (a kafka-python "
                        "3.0 race); asked it to finish the rejoin")
        # kafka-python parses a fetched partition (and only then updates its high
        # watermark) when poll drains it; a poll that filled max_poll_records may leave
        # records in the client, so no partition may be taken as read to its end.
        returned = sum(len(records) for records in batches.values())
        self._client_drained = returned < self.consumer.config["max_poll_records"]
        self._passable.clear()
        assigned = self.consumer.assignment()
        owned = {tp.partition for tp in assigned}
        if self.on_rebalance is not None and (self._rebalanced or owned != self._owned):
            # Positions after a rebalance are the group's committed offsets again (eager
            # protocol), so every owned task restarts from its last committed snapshot.
            self._rebalanced = False
            revoked = sorted(self._owned - owned)
            self._owned = owned
            self.merges.reset()
            self._released.clear()
            self._start_tasks(sorted(owned), self.on_rebalance(sorted(owned), revoked))
            batches = {}
        elif self.on_rebalance is None:
            self._rebalanced = False
            self._forget_revoked(assigned)
        fetched = self._buffer(batches, time.monotonic())
        self._apply_back_pressure(assigned)
        if self.on_fetched is not None:
            self.on_fetched()
        return fetched

    def _apply_back_pressure(self, assigned: set[Any]) -> None:
        """Pause and resume the ``assigned`` partitions as their tasks' buffers now
        stand (:func:`back_pressure`)."""
        pause, resume = back_pressure(self.merges.buffer_sizes(), assigned, self.consumer.paused(),
                                      self.topics, self.max_buffered)
        if pause:
            self.consumer.pause(*pause)
        if resume:
            self.consumer.resume(*resume)

    def _buffer(self, batches: dict[Any, list[Any]], now: float) -> int:
        """Add a poll's records (``{TopicPartition: [ConsumerRecord]}``) to their tasks;
        return how many. Records arriving while none waited restart the stall clock
        (``_last_release``): the stall warning is about records waiting, and a replica
        that had nothing buffered (no tasks yet, tasks just assigned or rolled back, all
        released) waited for nothing. Records joining others that already wait do not:
        a partition still bringing records while its partner never does is a stall."""
        waiting = self.merges.buffered() > 0
        fetched = 0
        add, skew = self.merges.add_records, self.max_event_time_skew
        for tp, records in batches.items():
            side = PREDICTIONS if tp.topic == self.topics[0] else LABELS
            add(tp.partition, side, records, event_time, skew, self.record_fields)
            fetched += len(records)
            if records:
                self._last_data[tp] = now
        if fetched and not waiting:
            self._last_release = now
        return fetched

    def _poll(self) -> dict[Any, list[Any]] | None:
        """``consumer.poll``, or ``None`` when it raised a retriable kafka-python error.

        While the broker is down, kafka-python 3.0 usually returns empty polls, but a poll
        that has to refresh metadata (validating fetch positions, finding the group
        coordinator) can raise ``KafkaConnectionError: 111 ECONNREFUSED`` instead; that
        ended a replica during a broker restart (``tests/kafka/
        test_kafka_survives_broker_restart.py``, one CI run). Such a poll is treated as an
        empty one after waiting the poll timeout (no busy loop), with one warning per
        outage and an info line when polls succeed again. A non-retriable error still
        ends the process."""
        from kafka.errors import KafkaError

        try:
            batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        except KafkaError as error:
            if not getattr(error, "retriable", False):
                raise
            if not self._poll_failures:
                log.warning("kafka: poll failed (%s: %s); retrying every %d ms until the "
                            "broker answers", type(error).__name__, error,
                            self.poll_timeout_ms)
            self._poll_failures += 1
            time.sleep(self.poll_timeout_ms / 1000)
            return None
        if self._poll_failures:
            log.info("kafka: polls succeed again after %d failed", self._poll_failures)
            self._poll_failures = 0
        return batches

    def _start_tasks(self, numbers: list[int], offsets: dict[tuple[str, int], int]) -> None:
        """Seek newly owned tasks to where their state left off; forget what was fetched."""
        from kafka import TopicPartition

        for number in numbers:
            for topic in self.topics:
                tp = TopicPartition(topic, number)
                offset = offsets.get((topic, number))
                if offset is None:
                    offset = self.consumer.committed(tp)
                if offset is None:
                    self.consumer.seek_to_beginning(tp)
                    self._released.pop((topic, number), None)
                else:
                    self.consumer.seek(tp, offset)
                    self._released[(topic, number)] = offset
                self._last_data[tp] = time.monotonic()

    def _report_stall(self) -> None:
        """Warn (every ``stall_report_seconds``) when records sit buffered but none was
        released for that long: the merge is waiting for a partition that neither brings
        records nor counts as caught up. Says, per task, what it waits for."""
        now = time.monotonic()
        if not self._stall_due(now):
            return
        self._last_stall_report = now
        log.warning("kafka source: nothing released for %.0fs although records are buffered: %s",
                    now - self._last_release, "; ".join(self.describe_tasks()))

    def _stall_due(self, now: float) -> bool:
        """Records are buffered, none was released for ``stall_report_seconds`` since
        they began waiting, and the last report is that old too."""
        return (now - self._last_release >= self.stall_report_seconds
                and now - self._last_stall_report >= self.stall_report_seconds
                and self.merges.buffered() > 0)

    def describe(self) -> list[str]:
        """Per owned task its buffers and partitions, then the client's assignment, its
        paused partitions and, where kafka-python 3.0's fetcher shows them, the fetched
        responses queued, the in-line records and those parked for a paused partition (a
        partition with any of these is not fetched again until they are consumed)."""
        if self.consumer is None:
            return ["not connected"]
        # Reads only: this runs from a signal handler, possibly inside a poll, so nothing
        # here may call into the client (``position`` could send a request).
        from kafka import TopicPartition

        assignment = getattr(getattr(self.consumer, "_subscription", None), "assignment", {})
        now = time.monotonic()
        lines = []
        sizes = self.merges.buffer_sizes()
        for number in sorted(set(sizes) | self._owned):
            buffered = sizes.get(number, (0, 0))
            parts = []
            for side, topic in enumerate(self.topics):
                tp = TopicPartition(topic, number)
                state = assignment.get(tp)
                position = getattr(getattr(state, "position", None), "offset", None)
                seen = self._last_data.get(tp)
                parts.append(f"{('predictions', 'labels')[side]} buffered "
                             f"{buffered[side]} position {position} "
                             f"highwater {getattr(state, 'highwater', None)} last data "
                             f"{'never' if seen is None else f'{now - seen:.1f}s ago'}")
            lines.append(f"task {number}: " + ", ".join(parts))
        lines.append(f"assigned {sorted(map(tuple, self.consumer.assignment()))}, paused "
                     f"{sorted(map(tuple, self.consumer.paused()))}")
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is not None:
            def queued(name: str) -> list[tuple[str, int]]:
                found = getattr(fetcher, name, None) or ()
                return sorted(tuple(getattr(entry, "topic_partition", entry))
                              for entry in list(found))

            current = getattr(fetcher, "_next_partition_records", None)
            lines.append(
                f"client fetcher: completed {queued('_completed_fetches')}, in line "
                f"{None if current is None else (tuple(current.topic_partition), bool(current))}"
                f", parked {queued('_paused_partition_records')}, parked completed "
                f"{queued('_paused_completed_fetches')}")
        return lines

    def describe_tasks(self) -> list[str]:
        """Per owned task: buffered records, position and high watermark of each input
        partition, and whether it counts as caught up (for stall diagnostics)."""
        from kafka import TopicPartition

        lines = []
        sizes = self.merges.buffer_sizes()
        for number in sorted(set(sizes) | self._owned):
            buffered = sizes.get(number, (0, 0))
            caught_up = self._caught_up(number)
            parts = []
            for side, topic in enumerate(self.topics):
                tp = TopicPartition(topic, number)
                try:
                    position = self.consumer.position(tp, timeout_ms=0)
                except Exception as error:  # not assigned, or no position
                    position = type(error).__name__
                parts.append(f"{('predictions', 'labels')[side]} buffered "
                             f"{buffered[side]} position {position} "
                             f"highwater {self.consumer.highwater(tp)} "
                             f"caught_up {caught_up[side]} paused "
                             f"{tp in self.consumer.paused()}")
            lines.append(f"task {number}: " + ", ".join(parts))
        lines.append(f"client drained {self._client_drained}")
        return lines

    def _forget_revoked(self, assigned: set) -> None:
        """Drop buffers of partitions no longer owned (their new owner re-reads them)."""
        self.merges.forget_except(sorted({tp.partition for tp in assigned}))

    def _caught_up(self, number: int) -> tuple[bool, bool]:
        from kafka import TopicPartition

        if not self._client_drained:
            return False, False
        flags = []
        for topic in self.topics:
            tp = TopicPartition(topic, number)
            try:
                highwater = self.consumer.highwater(tp)
                position = self.consumer.position(tp, timeout_ms=0)
            except Exception:  # not assigned (yet), or no position known
                flags.append(False)
                continue
            idle = (highwater is not None and position is not None and position >= highwater)
            end = self._end.get(tp)
            if idle and end is not None and position < end:
                # Bounded: a partition is never read to its end before the end it had at
                # start. Right after a broker restart a fetch can report a high watermark
                # recovered from the broker's checkpoint file, below records that are there:
                # taking it as the end let the partner's records pass and changed the
                # merged order of a committed cycle (seen in the broker-restart test).
                idle = False
            if idle and self.max_task_idle and end is None:
                # Live mode only: a partition fetched to its end of a bounded replay has
                # nothing more to wait for (what is written after start-up is past the
                # bound), so its partner's records pass it at once, not 100 ms later.
                idle = time.monotonic() - self._last_data.get(tp, 0.0) >= self.max_task_idle
            flags.append(idle)
        return flags[0], flags[1]

    def _release_run(self) -> int:
        """Take every record releasable before the next fetch out of the task buffers, in
        merged order, as the run to hand out (``TaskMerges.release``); return how many.
        One call per fetch: only a fetch adds records or moves what ``_passable_of``
        reads, so a task blocked on its partner stays blocked until then."""
        return self.merges.release(self._passable_of)

    def _passable_of(self, number: int) -> tuple[bool, bool]:
        """Whether each partition of task ``number`` may be passed (read to its end, or
        fetched to the end of a bounded replay), worked out once per fetch."""
        caught_up = self._passable.get(number)
        if caught_up is None:
            ended = self._ended(number)
            if not all(ended):
                flags = self._caught_up(number)
                ended = (ended[0] or flags[0], ended[1] or flags[1])
            caught_up = self._passable[number] = ended
        return caught_up

    @property
    def last_origin(self) -> tuple[str, int, int] | None:
        """``(topic, partition, offset)`` of the record last yielded (dead-letter origin)."""
        last = self.merges.last_origin()
        if last is None:
            return None
        number, side, offset = last
        return self.topics[side], number, offset

    def _drained(self, number: int) -> bool:
        """Bounded mode: both partitions of the task are fetched up to their end."""
        return all(self._ended(number))

    def _ended(self, number: int) -> tuple[bool, bool]:
        """Bounded mode: whether each partition of the task is fetched up to the end it
        had at start-up (every record of the replay handed to the merge), which makes it
        passable at once: its partner's records need not wait for a poll that returns
        fewer than ``max_poll_records`` (``_caught_up``'s rule). With the predictions read
        to their end and the labels paused at ``max_buffered``, that rule cost a poll
        waiting its whole timeout (100 ms) for every 10,000 labels per task in a
        10,000-stream replay (``bench/kafka.py``). The merged order is the same: the
        partition brings nothing more before the bound."""
        if not self.stop_at_end:
            return False, False
        from kafka import TopicPartition

        flags = []
        for topic in self.topics:
            tp = TopicPartition(topic, number)
            end = self._end.get(tp)
            try:
                flags.append(end is not None
                             and self.consumer.position(tp, timeout_ms=0) >= end)
            except Exception:
                flags.append(False)
        return flags[0], flags[1]

    def _at_end(self) -> bool:
        """Bounded mode: the owned tasks are released to their ends and every other
        partition is committed (by its owner) to its end; checked at most 5 times a
        second, since the second half asks the group coordinator."""
        if not self._joined or self._rebalanced or self.merges.buffered():
            return False
        assigned = self.consumer.assignment()
        if not all(self._drained(tp.partition) for tp in assigned):
            return False
        now = time.monotonic()
        if now - self._last_group_check < 0.2:
            return False
        self._last_group_check = now
        for tp, end in self._end.items():
            if tp in assigned or end == 0:
                continue
            try:
                committed = self.consumer.committed(tp) or 0
            except Exception:  # coordinator moving: ask again at the next check
                return False
            if committed < end:
                return False
        return True

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per ``(topic, partition)``: the offset after the last record released, i.e.
        what to commit (the consumer's own position is ahead by the buffered records)."""
        self._settle()
        return dict(self._released)

    @property
    def released_counts(self) -> dict[int, int]:
        """Records released per task (restored from its snapshot on assignment); the
        runtime reads and sets it."""
        self._settle()
        return self._released_counts

    def _settle(self) -> None:
        """Bring the offsets and counts up to the records handed out so far (the core
        keeps them per record and moves them here when they are read)."""
        self.merges.settle(self._released, self._released_counts, self.topics)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None


def complete_orphaned_rejoin(consumer: Any) -> bool:
    """Work around a kafka-python 3.0.x race that leaves a consumer stuck mid-rebalance;
    call after every ``poll``. Returns whether it had to step in.

    A rejoin that the group *leader* starts because topic metadata changed (partitions
    added, or metadata that arrives after the first join) is only driven while
    ``need_rejoin()`` is true; performing the assignment makes it false. If ``poll``'s
    timeout expires between the JoinGroup and SyncGroup answers, later polls no longer
    drive the join: every partition stays marked pending revocation (its records are
    fetched and dropped) and no assignment ever completes. Reproduced against the real
    broker in ``tests/kafka/test_kafka_client_races.py``. Asking for a rejoin makes the
    next poll await the join already in flight (no duplicate JoinGroup), which then
    completes normally. Uses the client's internals; a client without them is left alone.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    try:
        orphaned = bool(coordinator.rejoining) and not coordinator.need_rejoin()
    except AttributeError:
        return False
    if orphaned:
        coordinator.request_rejoin()
    return orphaned


def restore_parked_records(consumer: Any) -> None:
    """Work around two kafka-python 3.0.x bugs that hold back a resumed partition's
    parked records; call before every ``poll``.

    Records already fetched for a partition that gets paused are parked, and handed back
    after ``resume`` only if, when a poll starts, the fetcher's in-line slot is ``None``:

    * that slot keeps the last partition's drained (empty) records object instead, so
      the parked records never come back, and a partition with parked records is never
      fetched again: the merge waits for it forever. An empty in-line slot means the
      same as ``None`` everywhere else in the fetcher, so it is cleared;
    * when the slot holds records of a partition paused since, the poll parks them
      itself but does not look at the parked records again: it returns nothing, sends
      no fetch (every partition has records parked) and sleeps ``retry_backoff_ms``
      (100 ms). A 10,000-stream replica (``bench/kafka.py``) lost ~7 s of a ~75 s replay
      so, in ~70 empty polls. Such records are parked here, as the poll would, so the
      poll starts with the slot free and hands the resumed partition's records back.

    Both reproduced against the real broker in ``tests/kafka/test_kafka_client_races.py``.
    A client without these internals is left alone.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if current is None or not parked:
        return
    if not current:
        fetcher._next_partition_records = None
        return
    partition = getattr(current, "topic_partition", None)
    paused = consumer.paused()
    if (partition in paused and partition not in parked
            and any(waiting not in paused for waiting in parked)):
        parked[partition] = current
        fetcher._next_partition_records = None


def _rebalance_flag(source: KafkaSource) -> Any:
    """The rebalance listener: raises a flag for the main loop, which does the real work
    (restoring tasks) after ``poll`` returns; on revocation it first lets the runtime
    commit the cycle (``on_revoked``), bounded and never raising, since it runs inside
    the client, on the IO thread that also heartbeats."""
    from kafka import ConsumerRebalanceListener

    class RebalanceFlag(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            # The member still belongs to the current generation: commit what was done
            # (unless an earlier rebalance is still unprocessed: then the abort path).
            if revoked and not source._rebalanced and source.on_revoked is not None:
                source.on_revoked()
            source._rebalanced = True

        def on_partitions_lost(self, lost: Any) -> None:
            # Evicted (session expired, fenced): a commit would be refused; abort instead.
            source._rebalanced = True

        def on_partitions_assigned(self, assigned: Any) -> None:
            source._rebalanced = True
            source._joined = True

    return RebalanceFlag()


def wait_for_assignment(source: KafkaSource, timeout: float = 30.0) -> None:
    """Poll until the group has given this consumer partitions (test and bench helper);
    records fetched meanwhile are buffered, not lost."""
    if source.consumer is None:
        source.connect()
    deadline = time.monotonic() + timeout
    while not source.consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no partitions assigned to group {source.group_id} "
                               f"after {timeout:.0f}s")
        source._fetch()
