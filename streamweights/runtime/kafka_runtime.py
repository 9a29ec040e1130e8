"""The Kafka runtime: exactly-once adaptation from Kafka topics to Kafka topics.

``source.kind: kafka`` builds this in place of the embedded source, sinks and snapshot
folder; the service loop is the same. One process = one consumer (a member of
``kafka.group_id``) and ONE transactional producer. Every ``checkpoint.every_records``
records (or ``every_seconds``) the open transaction receives, after the outputs already
sent in it (weights versions, adapted predictions, dead letters), the state of every
stream changed in the cycle to the compacted changelog topic (one record per stream,
keyed ``s/<stream>``, in its task's partition, each carrying the task's input offsets and
counts, after its join's new segments of waiting predictions, keyed ``j/<id>/<stream>``,
and tombstones for the segments no longer read; a task none of whose streams changed
gets one record keyed by its number with the offsets and counts alone), plus the input
offsets (``send_offsets_to_transaction``
with the consumer's group metadata), and is committed. The commit's round trips (the
offsets, ``commit_transaction``, the delivery check) wait on a thread of their own
(``transaction_calls.InFlightCommit``) while the loop goes on with the next records; what
those records write is held, in order, and sent once the commit is done and the next
cycle has begun, and a failed commit drops it with the rest of what the roll-back
recomputes. At most one commit is in flight: the next checkpoint, a rebalance and a stop
wait for it. So a commit costs in proportion to the streams that changed, not to the
streams held, and the loop does not stop for the broker's answer. On
assignment of a task (in the main loop, never in a client callback, so no blocking work
runs on the client's IO thread) its changelog partition is read (``read_committed``, up
to the end), each stream restored from its newest record, and both input partitions are
sought to the offsets of the partition's newest record. Each stream's record carries its
own settings digest (``settings_digest``): a stream new to the config starts fresh, one
no longer in it stays in the changelog unrestored (the task's records name it ``kept``;
``--drop-removed-streams`` deletes it instead: tombstones for its records in the task's
next commit), and one whose settings changed is refused unless
``--fresh-changed-streams`` is given.

Guarantees
    * Exactly-once effect: outputs, snapshots and input offsets of one cycle become
      visible together or not at all, so a ``read_committed`` reader of the weights topic
      sees every version of a stream once, numbered 1, 2, 3 ... without gap, and after any
      crash the state resumes from the last committed snapshot and the input from the
      offsets committed with it.
    * Bit-identical results to the embedded service for the same records, *provided each
      input partition is in event-time order* (records are merged per task by
      ``(ts, topic, offset)``; see :mod:`streamweights.runtime.kafka_source`) *and*, in
      live mode, neither topic of a task reaches the broker more than
      ``kafka.max_task_idle_ms`` after the other (a partition read to its end is taken
      as idle after that long, and its partner's records pass it). Replaying input that
      is already written (``stop_at_end``, or a restart behind the end) is always exact.
      Otherwise the state is still exactly-once, but the numbers depend on arrival.
    * Bad records go to the dead-letter topic (inside the same transaction) with headers
      ``reason``, ``error`` and ``origin`` (``topic-partition@offset``).

Failure scenarios
    * kill -9 / crash / a failed ``commit_transaction``: the open transaction is aborted
      (by the broker on timeout, or at once when the restarted process, with the same
      ``transactional_id``, calls ``init_transactions``); the restart recomputes the lost
      cycle from the committed offsets and produces the same outputs again, once.
    * A commit that fails (a broker restart that outlasts the transaction timeout fences
      the producer, for one) is followed by a new producer with the same transactional
      id and a roll-back of every owned task to its last committed snapshot; the lost
      cycle is recomputed. Three failures in a row end the process (non-zero exit):
      fail-stop, the supervisor (Kubernetes) restarts it, and the previous point applies.
      A failure seen only once a bounded input has ended (the last cycle's commit, or
      one still in flight at the end) is recomputed the same way before the run returns
      (``Service.run`` reads on from the committed offsets to the end again); one seen
      as the run stops on request leaves that cycle to the next run, which resumes from
      the committed offsets (logged).
    * kafka-python's transactional calls wait without a limit, and after a broker
      restart that outlived the transaction timeout its producer can stay stuck in a
      commit or report as committed a cycle whose records failed. Commit, offsets and
      abort wait at most ``transaction_timeout_ms`` + 10 s, every send of a committed
      cycle is checked, and a send the producer refuses ends the cycle at once; any of
      these is handled as a failed commit (``transaction_calls``).
    * A record larger than ``snapshot_limit_fraction`` of the changelog's message limit
      (a stream's whole state, or a join segment of predictions larger than that limit)
      is written in parts of at most that size, in the same transaction, plus a small
      head (``changelog_parts``); a restore joins them and checks their length and CRC.
      Once per stream and process a warning names the size of a stream record in parts;
      ``streamweights_snapshot_bytes`` shows the trend.
    * A join segment that the stream's newest committed record lists but the changelog
      lacks (deleted by hand, or by a retention set on a compacted topic) stops the
      restore with a SnapshotError naming the stream and segment, not a state without
      those predictions.

Limitations (this is what the guarantee does NOT cover)
    * Kafka transactions themselves: the guarantee is the broker's read-committed
      isolation (KIP-98 / KIP-447). Known gaps in brokers before the KIP-890 fixes
      (hanging or late-arriving transactional writes, as in Jepsen's Bufstream analysis)
      are not worked around here; readers that use ``read_uncommitted`` see aborted data.
    * The transactional id must be stable per replica and unique in the group (default
      ``<group_id>-<hostname>``); two replicas with the same id fence each other.
    * A rebalance (the eager protocol, range assignor: partition p of both inputs goes to
      one member) first commits the open cycle from the rebalance listener, while this
      member is still in the generation, so tasks move with their latest state and
      nothing is redone; every owned task is then restored from that snapshot. If that
      commit fails, or the member was evicted (``on_partitions_lost``: session expired,
      fenced), the open transaction is aborted instead and up to one checkpoint interval
      is redone by whoever owns the task next (up to four while a slow commit is in
      flight: a due checkpoint waits for it that long, see
      ``service.DEFERRED_CHECKPOINT_RECORDS``). Revoked tasks' streams keep their reset
      state in this process (its summary covers only what it owns). That commit runs on
      the consumer's IO thread inside ``poll`` (kafka-python's listener contract): while
      it waits for the broker (usually 5-30 ms; as long as the broker is unreachable if
      it went away, exactly as a commit in the main loop would), this member's rejoin
      waits too.
    * Streams are mapped to tasks with Kafka's default partitioner (murmur2 of the stream
      name); producers must key records by stream with that partitioner, and the
      predictions and labels topics must have the same partition count.
    * Consumer lag per partition (high watermark minus the next offset to commit) is
      refreshed at each commit and about once a second between them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from streamweights import events
from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import (
    KAFKA_CHECKPOINT_SECONDS,
    KAFKA_SPREAD_ABOVE,
    KAFKA_SPREAD_OVER,
    KafkaConfig,
)
from streamweights.join import SEGMENT_BYTES
from streamweights.runtime.changelog_parts import (
    SPLIT_STREAM_RECORD_FORMAT,
    is_split_head,
    join_parts,
    parse_part_key,
    parse_segment_key,
    parse_segment_part_key,
    record_part_key,
    segment_key,
    split_record,
    strip_head,
)
from streamweights.runtime.commit_spread import (
    WriteMarks,
    decode_log,
    encode_log,
    first_record,
    log_key,
    parse_log_key,
)
from streamweights.runtime.compression import compress, compressing, decompress
from streamweights.runtime.exceptions import RuntimeSetupError, SnapshotError
from streamweights.runtime.fresh_states import fresh_states
from streamweights.runtime.heap import collections_paused, return_freed_pages
from streamweights.runtime.kafka_security import check_credentials
from streamweights.runtime.kafka_sink import stream_key
from streamweights.runtime.kafka_source import KafkaSource
from streamweights.runtime.lean_send import Sender, lean_sender
from streamweights.runtime.settings_digest import SettingsDigests, compare_streams, named
from streamweights.runtime.state_store import (
    STREAM_RECORD_FORMATS,
    SnapshotFormatError,
    StreamStates,
    decode_stream_record,
    encode_stream,
    listed_formats,
    record_text,
    stream_record_head,
)
from streamweights.runtime.transaction_calls import (
    InFlightCommit,
    TransactionStuckError,
    abort,
    send_offsets,
)

if TYPE_CHECKING:
    from streamweights.runtime.service import Service


#: A commit whose changelog records add up to at most this many bytes sends them through
#: the lean path (``LeanSender.send_to``: batches built in the core, ~1 µs a record
#: against ~20 µs through ``KafkaProducer.send``, which was ~5% of a 10,000-stream
#: replica's loop). Larger ones (a bounded run's last commit or a rebalance writing every
#: stream: tens of MB) keep ``send``, where the client starts sending while the loop is
#: still adding records: one run with every commit lean handed a 60 MB commit over at
#: once and its producer's flush at close timed out, another spent 6 s in that commit.
LEAN_CHANGELOG_MAX = 4 << 20

log = logging.getLogger("streamweights")

#: Layout of the changelog; bumped when it changes. 1: one record per task (key: the task
#: number) holding every stream's state, rewritten whole at each commit (still read, and
#: rewritten per stream at the next commit). 2: one record per stream changed in a commit
#: (key ``s/<stream>``, the state and the task's offsets and counts), or one keyed by the
#: task number with the offsets and counts alone when none changed. A stream record too
#: large for one message is written in parts (``changelog_parts``: keys ``p/<k>/<stream>``
#: and a head, format 4, keyed ``s/<stream>``); a stream record of format 6 or 7 reads
#: its join's waiting predictions from segment records keyed ``j/<id>/<stream>`` (parts:
#: ``q/<k>/<id>/<stream>``), which a release before it skips as not its own keys and
#: then refuses the format-6 record by its number; the layout number stays 2. (A release
#: that reads 6 cannot parse a format-7 record, whose data follows its text, and refuses
#: it as one that "cannot be decoded": roll replicas forward, not back.)
TASK_SNAPSHOT_FORMAT = 2
LEGACY_TASK_SNAPSHOT_FORMAT = 1
#: The "format" a partition's newest record may carry: a task-keyed record's, or a stream
#: record's (``state_store.STREAM_RECORD_FORMATS``: its own layout, 2, 3, 5, 6 or 7; either
#: way the changelog's layout is 2).
_NEWEST_RECORD_FORMATS = (TASK_SNAPSHOT_FORMAT, *STREAM_RECORD_FORMATS,
                          SPLIT_STREAM_RECORD_FORMAT)
STREAM_KEY_PREFIX = b"s/"
#: Test-only fault injection: raise before the N-th ``commit_transaction`` of a process.
FAIL_BEFORE_COMMIT_ENV = "STREAMWEIGHTS_TEST_FAIL_BEFORE_COMMIT"
#: Broker default ``message.max.bytes`` (used when the broker cannot be asked).
BROKER_DEFAULT_MESSAGE_BYTES = 1_048_588


@dataclass
class TaskRecords:
    """A task's state as read back from the changelog (see ``_read_changelog``)."""

    meta: dict[str, Any]
    #: per stream: its state, decoded from its newest record when asked for (a restore
    #: takes them one at a time)
    streams: StreamStates
    #: per stream: the keys of its newest record and of the join segments it reads
    #: (what tombstones delete when the stream is dropped)
    keys: dict[str, list[bytes]]
    #: per record key (a stream's, a join segment's) whose newest record was written in
    #: parts: how many (a stream's own record's, once it is decoded)
    parts: dict[bytes, int]
    #: the task's record logs (``runtime.commit_spread``) by their first record's number
    logs: dict[int, bytes]
    legacy_streams: dict[str, Any] = field(default_factory=dict)

    @property
    def written(self) -> Mapping[str, int]:
        """Per stream: the task's record count its newest record was written at."""
        return self.streams.view("records")

    @property
    def settings(self) -> Mapping[str, str | None]:
        """Per stream: its settings digest as its newest record gives it (``None``:
        none there)."""
        return self.streams.view("stream_settings")

    def count_parts(self, name: str) -> None:
        """Count the parts stream ``name``'s record was written in (``parts``), as its
        decoding does, for one that is not loaded (dropped: its parts get tombstones)."""
        if name in self.streams:
            self.streams.field(name, "records")


def _decode_task_record(data: bytes, where: str) -> dict[str, Any]:
    """Any changelog record's document (compressed JSON: ``compression.decompress``; of a
    stream record, its text without the data that follows it: ``state_store.record_text``),
    or SnapshotError naming ``where``."""
    try:
        document = loads_state(record_text(decompress(data))[0].decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise SnapshotError(f"{where}: changelog record cannot be decoded "
                            f"({type(error).__name__}: {error})") from None
    if not isinstance(document, dict):
        raise SnapshotError(f"{where}: changelog record is not a snapshot document")
    return document


class ChangelogReader:
    """Each task's state from its changelog partition's records, fed in offset order
    (:meth:`add`): per stream its newest record, with the parts of one written in parts
    and the join segments it reads; per task the newest record's offsets and counts, and
    the newest format-1 task snapshot, if any. Pure: the runtime feeds it what a
    ``read_committed`` consumer reads, a test what it read itself."""

    def __init__(self) -> None:
        self.newest: dict[int, bytes] = {}
        self.legacy: dict[int, bytes] = {}
        self.latest: dict[int, dict[bytes, bytes]] = {}
        self.parts: dict[int, dict[str, dict[int, bytes]]] = {}
        #: per task, per stream: its join segments' records by id
        self.segments: dict[int, dict[str, dict[int, bytes]]] = {}
        #: per task, per (stream, segment): the parts of a segment written in parts
        self.segment_parts: dict[int, dict[tuple[str, int], dict[int, bytes]]] = {}
        #: per task: its record logs by their first record's number
        self.logs: dict[int, dict[int, bytes]] = {}
        #: the partitions (tasks) read (:func:`read_changelog`)
        self.partitions: list[int] = []

    def add(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """One changelog record (a ``None`` value: a tombstone)."""
        if key is None:
            return  # not ours
        segment = parse_segment_key(key)
        if segment is not None:  # a join segment (never the newest)
            held = self.segments.setdefault(partition, {}).setdefault(segment[0], {})
            if value is None:  # deleted: no longer read
                held.pop(segment[1], None)
            else:
                held[segment[1]] = value
            return
        logged = parse_log_key(key)
        if logged is not None:  # a record log (never the newest)
            held = self.logs.setdefault(partition, {})
            if value is None:  # deleted: no stream needs it
                held.pop(logged[1], None)
            else:
                held[logged[1]] = value
            return
        if value is None:  # a tombstone: of a dropped stream's record, or of a part
            if key.startswith(STREAM_KEY_PREFIX):
                self.latest.get(partition, {}).pop(key, None)
            return
        if key.startswith(STREAM_KEY_PREFIX):
            self.latest.setdefault(partition, {})[key] = value
        elif key == str(partition).encode():
            self.legacy[partition] = value
        else:
            part = parse_part_key(key)
            if part is not None:  # never the newest: its head follows it
                self.parts.setdefault(partition, {}).setdefault(part[0], {})[part[1]] = value
            piece = parse_segment_part_key(key)
            if piece is not None:
                self.segment_parts.setdefault(partition, {}).setdefault(
                    piece[:2], {})[piece[2]] = value
            return
        self.newest[partition] = value

    def tasks(self) -> dict[int, TaskRecords]:
        """The tasks read: each one's offsets and counts decoded (SnapshotError naming
        the task if they cannot be), its streams' states decoded when asked for
        (``TaskRecords.streams``, a :class:`StreamStates`)."""
        found = {}
        for number, data in self.newest.items():
            where = f"kafka.changelog_topic: task {number}"
            meta = _decode_task_record(data, where)
            if is_split_head(meta):
                meta = strip_head(meta)
            meta.pop("stream_settings", None)  # (the newest record's stream's: not the task's)
            legacy = meta.pop("streams", None) or {}
            if meta.get("format") != LEGACY_TASK_SNAPSHOT_FORMAT:
                legacy = {}
                if number in self.legacy:  # superseded by per-stream records, maybe not all
                    old = _decode_task_record(self.legacy[number], where)
                    if old.get("format") == LEGACY_TASK_SNAPSHOT_FORMAT:
                        legacy = old.get("streams") or {}
            held = self.segments.get(number, {})
            keys = {}
            for key in self.latest.get(number, {}):
                name = key[len(STREAM_KEY_PREFIX):].decode("utf-8")
                keys[name] = [*(segment_key(name, segment) for segment in held.get(name, ())),
                              key]
            parts: dict[bytes, int] = {}
            streams = StreamStates(keys.keys(), functools.partial(self.stream_state, parts,
                                                                  number, where))
            found[number] = TaskRecords(meta=meta, streams=streams, keys=keys, parts=parts,
                                        logs=self.logs.get(number, {}),
                                        legacy_streams=legacy)
        return found

    def stream_settings(self) -> dict[int, tuple[dict[str, Any], dict[str, str | None]]]:
        """Per task read: its newest record's fields (the task's settings digests among
        them) and each stream's settings digest as its newest record gives it (``None``:
        none there), read from the records' text alone, states left undecoded (what
        ``inspect --config`` compares with a config)."""
        found = {}
        for number, data in self.newest.items():
            where = f"kafka.changelog_topic: task {number}"
            meta = _decode_task_record(data, where)
            saved: dict[str, str | None] = dict.fromkeys(meta.get("streams") or ())
            if number in self.legacy:
                old = _decode_task_record(self.legacy[number], where)
                saved.update(dict.fromkeys(old.get("streams") or ()))
            for key, value in self.latest.get(number, {}).items():
                name = key[len(STREAM_KEY_PREFIX):].decode("utf-8")
                document = _decode_task_record(value, where)
                if is_split_head(document):
                    document = _decode_task_record(join_parts(
                        document, self.parts.get(number, {}).get(name, {}),
                        f"{where}, stream {name}"), where)
                saved[name] = document.get("stream_settings")
            found[number] = (meta, saved)
        return found

    def stream_state(self, parts: dict[bytes, int], number: int, where: str, name: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stream ``name``'s state in task ``number`` and its newest record's other
        fields, its record joined from its parts if it was written in parts; the parts
        of it and of its join segments counted in ``parts`` (``TaskRecords.parts``)."""
        key = STREAM_KEY_PREFIX + name.encode("utf-8")
        data = self.latest[number][key]
        held = self.whole_segments(parts, number, name, where)
        try:
            decoded, state, fields = decode_stream_record(data, where, held)
        except SnapshotFormatError:  # a head of parts has its own format
            head = _decode_task_record(data, where)
            if not is_split_head(head):
                raise
            whole = join_parts(head, self.parts.get(number, {}).get(name, {}),
                               f"{where}, stream {name}")
            parts[key] = int(head["parts"])
            decoded, state, fields = decode_stream_record(whole, where, held)
        if decoded != name:
            raise SnapshotError(f"{where}: the record keyed {key!r} holds stream {decoded!r}")
        return state, fields

    def whole_segments(self, parts: dict[bytes, int], number: int, name: str, where: str
                        ) -> dict[int, bytes]:
        """Stream ``name``'s join segment records by id, each one written in parts
        (a head under its key) joined whole; the parts counted in ``parts``."""
        pieces = self.segment_parts.get(number, {})
        whole = {}
        for segment, data in self.segments.get(number, {}).get(name, {}).items():
            found = pieces.get((name, segment))
            if found:  # a segment is written once: with parts, its value is their head
                head = _decode_task_record(data, where)
                if is_split_head(head):
                    data = join_parts(head, found, f"{where}, stream {name}, join segment "
                                                   f"{segment}")
                    parts[segment_key(name, segment)] = int(head["parts"])
            whole[segment] = data
        return whole


class InjectedCommitError(RuntimeError):
    """Raised by the test-only hook before a commit (see ``FAIL_BEFORE_COMMIT_ENV``)."""


def task_of(stream: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``stream``."""
    from kafka.partitioner.default import murmur2

    return (murmur2(stream.encode()) & 0x7FFFFFFF) % partitions


def client_settings(kafka: KafkaConfig, client: type) -> dict[str, Any]:
    """The security settings (``kafka.security_protocol``, ``sasl_*``, ``ssl_*``) and the
    ``kafka.client`` settings that this kafka-python client class accepts."""
    return {**kafka.security.client_settings(),
            **{k: v for k, v in kafka.client.items() if k in client.DEFAULT_CONFIG}}


def transactional_producer_settings(limit: int, client: dict[str, Any]) -> dict[str, Any]:
    """The settings of the replica's transactional producer (``kafka.client``'s producer
    keys, ``client``, win), for changelog records of up to ``limit`` bytes.

    * ``transaction_timeout_ms`` 10 s (Kafka Streams' value under exactly-once): a killed
      replica's open transaction, which holds back ``read_committed`` readers and its
      tasks' offsets, is aborted by the broker that soon after.
    * ``retry_backoff_ms`` 20 (kafka-python's default is 100). A cycle's transaction
      begins as soon as the previous commit is answered, while the broker is still
      writing that commit's markers, so the first ``AddPartitionsToTxn`` or
      ``AddOffsetsToTxn`` of a cycle is often refused with ``CONCURRENT_TRANSACTIONS``
      and retried. The Java client retries that case after 20 ms; kafka-python's
      sender sleeps its ``retry_backoff_ms`` before every retried transactional
      request, stalling the cycle's records and its commit 100 ms at a time. Measured
      with ``bench/kafka.py --rate 5000``: ~1 retry in 3 commits; ``send_offsets``
      p90 135 ms → 54 ms, label → weights p50 223 → 125 ms, p99 803 → 319 ms. It is
      also the pause between retries of a failed produce request (bounded by
      ``delivery_timeout_ms`` as before); reconnects have their own back-off.
    * ``batch_size`` 256 KiB (kafka-python's default is 16 KiB). A partition whose
      accumulator holds more than one batch makes every ``send`` wake the sender thread
      (a socket write and a thread hand-over per record); at 16 KiB a burst of adapted
      records (~170 bytes each) fills a batch every ~95 records and piles them up while
      the cycle's ``AddPartitionsToTxn`` is answered. Measured: 30,000 sends in one
      transaction, 16 KiB → 256 KiB: ~29,900 → ~40 wake-ups, 34-52 → 21-28 µs per
      ``send``, the commit's flush 78-655 → 8-13 ms; ``bench/kafka.py --adapted``:
      ours 23,625 → 24,261 records/s, its thread blocked in transaction calls 0.33-0.69
      → 0.09-0.18 s per round. kafka-python grows a batch's buffer as records come (no
      allocation of the whole size up front); ``linger_ms`` still sends every 5 ms.
    """
    return {"acks": "all", "enable_idempotence": True, "linger_ms": 5,
            "batch_size": 256 << 10,
            "transaction_timeout_ms": 10_000, "retry_backoff_ms": 20,
            "bootstrap_timeout_ms": 10_000,
            "max_request_size": max(limit + 64 * 1024, 1_048_576), **client}


#: ``kafka.client`` keys the runtime sets itself, and why: a client created with one of
#: these twice fails with a TypeError, and one overridden would break exactly-once.
RESERVED_CLIENT_SETTINGS = {
    "bootstrap_servers": "set kafka.bootstrap_servers",
    "group_id": "set kafka.group_id",
    "transactional_id": "set kafka.transactional_id",
    "isolation_level": "the runtime reads read_committed (exactly-once)",
    "enable_auto_commit": "offsets are committed in the runtime's transactions",
    "enable_idempotence": "transactions need the idempotent producer",
}


def check_client_settings(kafka: KafkaConfig) -> None:
    """Refuse ``kafka.client`` keys that kafka-python does not know, or that the runtime
    sets itself (:data:`RESERVED_CLIENT_SETTINGS`), naming the key and what to do."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    known = (set(KafkaConsumer.DEFAULT_CONFIG) | set(KafkaProducer.DEFAULT_CONFIG)
             | set(KafkaAdminClient.DEFAULT_CONFIG))
    for key in kafka.client:
        if key in RESERVED_CLIENT_SETTINGS:
            raise RuntimeSetupError(f"kafka.client.{key}: set by the runtime, not here "
                                    f"({RESERVED_CLIENT_SETTINGS[key]})")
        if key not in known:
            raise RuntimeSetupError(f"kafka.client.{key}: not a kafka-python client setting")


def _warn_past_timeout(interval_ms: float, transaction_timeout_ms: int, message: str,
                       *args: Any) -> bool:
    """Log ``message % args`` as a warning when a commit interval (``interval_ms``) is
    not below the producer's transaction timeout, the age at which the broker rolls an
    open transaction back; whether it warned."""
    if interval_ms < transaction_timeout_ms:
        return False
    log.warning(message, *args)
    return True


def warn_idle_commit_past_timeout(idle_commit_ms: int, transaction_timeout_ms: int) -> bool:
    """Warn (and say so) when a quiet input's open transaction outlives the broker's
    patience: the broker rolls back a transaction ``transaction_timeout_ms`` after its
    first write, so with ``kafka.idle_commit_ms`` that long or longer every quiet spell
    after a write ends in a failed commit, a new producer and the interval redone."""
    return _warn_past_timeout(
        idle_commit_ms, transaction_timeout_ms,
        "kafka.idle_commit_ms (%d) is not below the producer's transaction timeout (%d ms): "
        "the broker rolls back what a quiet input leaves in the open transaction before it "
        "is committed, and the interval is redone", idle_commit_ms, transaction_timeout_ms)


def warn_checkpoint_past_timeout(every_seconds: float, transaction_timeout_ms: int) -> bool:
    """Warn (and say so) when ``checkpoint.every_seconds`` is not below the producer's
    transaction timeout: an input that never goes quiet but takes longer than the timeout
    to reach ``checkpoint.every_records`` then has each cycle rolled back by the broker
    before its commit, and three failed commits in a row end the process."""
    return _warn_past_timeout(
        every_seconds * 1000, transaction_timeout_ms,
        "checkpoint.every_seconds (%g) is not below the producer's transaction timeout "
        "(%d ms): at an input rate that reaches neither a quiet poll nor "
        "checkpoint.every_records within the timeout, the broker rolls each cycle back "
        "before its commit (Kafka mode's default is %g s)",
        every_seconds, transaction_timeout_ms, KAFKA_CHECKPOINT_SECONDS)


class TransactionalSink:
    """An output topic written through the runtime's transactional producer: what is
    written becomes visible only when the cycle's transaction commits."""

    def __init__(self, runtime: KafkaRuntime, topic: str) -> None:
        self.runtime = runtime
        self.topic = topic
        self.path = f"kafka:{topic}"
        self._sent = 0

    @property
    def position(self) -> int:
        return self._sent

    def write(self, raw: bytes, headers: list[tuple[str, bytes]] | None = None,
              key: bytes | None = None) -> None:
        """Send one record keyed by its stream: ``key`` when the caller knows it (the
        record's ``stream`` field, encoded), else read from the record."""
        self.runtime.send(self.topic, raw, key if key is not None else stream_key(raw),
                          headers)
        self._sent += 1

    def flush(self) -> None:
        """Nothing to do: the transaction's commit flushes."""

    def truncate(self, position: int) -> None:
        self._sent = position

    def close(self) -> None:
        """The producer is the runtime's; it closes it."""


class KafkaRuntime:
    """Source, sinks and state of one Kafka-mode replica (see the module docstring).

    Built by the service from the config; setup (broker reachable, topics present or
    created, co-partitioned, message limit known) happens here, so a bad setup fails
    before anything is read.
    """

    def __init__(self, kafka: KafkaConfig, digests: SettingsDigests) -> None:
        check_client_settings(kafka)
        from kafka import KafkaAdminClient

        check_credentials(kafka, client_settings(kafka, KafkaAdminClient))
        self.kafka = kafka
        self.digests = digests
        #: Streams whose settings changed since their records start fresh (the run's
        #: ``--fresh-changed-streams``), rather than the restore being refused.
        self.fresh_changed_streams = False
        #: Streams the config no longer has are deleted from the changelog at restore
        #: (the run's ``--drop-removed-streams``), rather than kept as saved.
        self.drop_removed_streams = False
        self.transactional_id = kafka.transactional_id or f"{kafka.group_id}-{socket.gethostname()}"
        self.partitions = self._setup_topics()
        from kafka import KafkaConsumer, KafkaProducer

        self.source = KafkaSource(kafka.bootstrap_servers, kafka.predictions_topic,
                                  kafka.labels_topic, group_id=kafka.group_id,
                                  stop_at_end=kafka.stop_at_end,
                                  max_task_idle_ms=kafka.max_task_idle_ms,
                                  client_settings=client_settings(kafka, KafkaConsumer))
        self.source.on_rebalance = self._on_rebalance
        self.source.on_idle = self._on_idle
        self.source.on_revoked = self._on_revoked
        self.source.on_fetched = self._on_fetched
        self._last_commit = time.monotonic()
        #: When the open cycle's transaction began (``_begin``).
        self._began = self._last_commit
        self._last_lag_update = 0.0
        self._committed_offsets: dict[tuple[str, int], int] = {}
        self._producer_settings = producer_settings = transactional_producer_settings(
            self.limit, client_settings(kafka, KafkaProducer))
        #: Longest wait for a transactional request (commit, offsets): past the
        #: transaction timeout the broker aborts the cycle anyway; 10 s more covers a
        #: slow answer (see ``transaction_calls``: kafka-python waits for ever).
        #: The broker rolls back an open transaction this long after its first write.
        self.transaction_timeout_ms: int = producer_settings["transaction_timeout_ms"]
        self._request_timeout = self.transaction_timeout_ms / 1000 + 10.0
        warn_idle_commit_past_timeout(kafka.idle_commit_ms, self.transaction_timeout_ms)
        #: The futures of what the open transaction sent (checked after its commit).
        self.sent: list[Any] = []
        self._recoveries = 0
        try:
            self._use_new_producer()
        except Exception as error:
            raise RuntimeSetupError(f"kafka.bootstrap_servers: cannot reach a Kafka broker at "
                                    f"{kafka.bootstrap_servers} ({type(error).__name__})"
                                    ) from None
        self.sinks: dict[str, TransactionalSink] = {
            name: TransactionalSink(self, topic) for name, topic in (
                ("adapted", kafka.adapted_topic), ("weights", kafka.weights_topic),
                ("dead_letter", kafka.dead_letter_topic)) if topic}
        self.service: Service | None = None
        self.owned: set[int] = set()
        self.task_invalid: dict[int, dict[str, int]] = {}
        self.task_exhausted: dict[int, bool] = {}
        #: Per task: the streams its changelog holds that the config does not (kept as
        #: saved), named in its records' meta so that a restore that finds one put back
        #: does not replay into it the logged records it missed (dead letters then).
        self.task_kept: dict[int, list[str]] = {}
        #: Per task: the changelog keys of the streams it drops (``drop_removed_streams``),
        #: which its next commit writes tombstones for.
        self.task_dropped: dict[int, list[bytes]] = {}
        self.commits = 0
        self._in_transaction = False
        #: The previous cycle's commit while it waits on the broker (see ``_settle``),
        #: and what the records processed meanwhile wrote, in order, for the next cycle.
        self._committing: InFlightCommit | None = None
        self._held: list[tuple[str, bytes, bytes | None, Any]] = []
        #: Something was sent in the open transaction (a rebalance must abort it).
        self.dirty = False
        #: stream -> the state it was built with, encoded (``runtime.fresh_states``).
        self._initial: dict[str, str] = {}
        #: Streams still as built: of tasks this replica has not owned since ``restore``
        #: or reset since it last did; a roll-back need not load their built state.
        self._untouched: set[str] = set()
        #: task number -> the configured streams Kafka's partitioner puts there.
        self._task_streams: dict[int, list[str]] = {}
        #: stream -> its task number (the inverse of ``_task_streams``).
        self._stream_task: dict[str, int] = {}
        #: task number -> its offsets and counts (JSON) as its newest record holds them.
        self._written_meta: dict[int, str] = {}
        #: per record key (a stream's, a join segment's) written in parts: how many, so
        #: a commit deletes (tombstones) the parts a smaller record, or none, leaves
        self._parts_written: dict[bytes, int] = {}
        self._split_reported: set[str] = set()
        #: Past ``spread_above`` changed streams a commit writes the ``1 / spread_over``
        #: of them with the oldest records and logs the records for the others
        #: (``runtime.commit_spread``); the service sets them from ``checkpoint.*``.
        self.spread_above, self.spread_over = KAFKA_SPREAD_ABOVE, KAFKA_SPREAD_OVER
        #: Whether commits may leave streams unwritten (more streams than
        #: ``spread_above``, ``spread_over`` above 1): the merge then logs its records.
        self._spreading = False
        #: Per stream: the commit (``commits``) that wrote its newest record (0:
        #: restored, or fresh in a fresh task; not known for a stream of a format-1
        #: snapshot, or of a fresh task while commits do not spread: the next commit
        #: writes it), and its task's record count then: a restore replays the task's
        #: logged records from there into it. Set up at ``restore``.
        self._marks = WriteMarks((), ())
        #: task -> ``(start, end)`` of each record log of it in the changelog, oldest
        #: first, and its record count at the last commit (where its next log starts).
        self._logs: dict[int, list[tuple[int, int]]] = {}
        self._log_start: dict[int, int] = {}
        #: Records replayed into streams by the last roll-back (for benchmarks and tests).
        self.replayed = 0
        fault = os.environ.get(FAIL_BEFORE_COMMIT_ENV)
        self._fail_before_commit = int(fault) if fault else None

    def _use_new_producer(self) -> None:
        """A new transactional producer, and how output records are sent through it
        (``lean_send.lean_sender``, bound to that producer)."""
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=self.kafka.bootstrap_servers,
                                      transactional_id=self.transactional_id,
                                      **self._producer_settings)
        self._sender = lean_sender(self.producer, self._output_limits)
        self._send_record: Sender = self._sender.send

    # -- setup --------------------------------------------------------------------------
    def _setup_topics(self) -> int:
        """Check (or create) every topic; return the input partition count."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        kafka = self.kafka
        try:
            # kafka.client's client_id, if any, wins (one key: a TypeError otherwise)
            admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers,
                                     **{"client_id": f"{kafka.group_id}-setup",
                                        "bootstrap_timeout_ms": 10_000,
                                        **client_settings(kafka, KafkaAdminClient)})
        except Exception as error:
            raise RuntimeSetupError(f"kafka.bootstrap_servers: cannot reach a Kafka broker at "
                                    f"{kafka.bootstrap_servers} ({type(error).__name__})"
                                    ) from None
        try:
            existing = set(admin.list_topics())
            compacted = {"cleanup.policy": "compact"}
            wanted = {kafka.predictions_topic: ("predictions_topic", {}),
                      kafka.labels_topic: ("labels_topic", {}),
                      kafka.changelog_topic: ("changelog_topic", compacted)}
            for key, topic, settings in (("weights_topic", kafka.weights_topic, compacted),
                                         ("adapted_topic", kafka.adapted_topic, {}),
                                         ("dead_letter_topic", kafka.dead_letter_topic, {})):
                if topic:
                    wanted[topic] = (key, settings)
            missing = [topic for topic in wanted if topic not in existing]
            if missing and not kafka.create_topics:
                key = wanted[missing[0]][0]
                raise RuntimeSetupError(f"kafka.{key}: topic {missing[0]!r} does not exist on "
                                        f"{kafka.bootstrap_servers}; create it or set "
                                        "kafka.create_topics: true")
            if missing:
                inputs = [t for t in (kafka.predictions_topic, kafka.labels_topic)
                          if t in existing]
                count = (self._partition_count(admin, inputs[0]) if inputs
                         else kafka.partitions)
                admin.create_topics([NewTopic(topic, count, kafka.replication_factor,
                                              topic_configs=wanted[topic][1])
                                     for topic in missing])
                log.info("created kafka topics %s (%d partitions, replication %d)",
                         ", ".join(missing), count, kafka.replication_factor)
            counts = {topic: self._partition_count(admin, topic)
                      for topic in (kafka.predictions_topic, kafka.labels_topic,
                                    kafka.changelog_topic)}
            if counts[kafka.predictions_topic] != counts[kafka.labels_topic]:
                raise RuntimeSetupError(
                    f"kafka topics {kafka.predictions_topic!r} ({counts[kafka.predictions_topic]}"
                    f" partitions) and {kafka.labels_topic!r} ({counts[kafka.labels_topic]} "
                    "partitions) are not co-partitioned; give them the same partition count")
            partitions = counts[kafka.predictions_topic]
            if counts[kafka.changelog_topic] < partitions:
                raise RuntimeSetupError(
                    f"kafka.changelog_topic: {kafka.changelog_topic!r} has "
                    f"{counts[kafka.changelog_topic]} partitions, the inputs {partitions}; it "
                    "needs at least as many (one per task)")
            self.limit = kafka.max_message_bytes or self._message_limit(admin,
                                                                         kafka.changelog_topic)
            # The lean sender's batches stay within what each output topic accepts: a
            # batch the broker refuses as too large would be split by the client without
            # completing the future the runtime checks.
            self._output_limits = {topic: self._message_limit(admin, topic)
                                   for topic in (kafka.weights_topic, kafka.adapted_topic)
                                   if topic}
            self._output_limits[kafka.changelog_topic] = self.limit
            return partitions
        except RuntimeSetupError:
            raise
        except Exception as error:
            raise RuntimeSetupError(f"kafka: topic setup on {kafka.bootstrap_servers} failed: "
                                    f"{type(error).__name__}: {error}") from None
        finally:
            admin.close()

    @staticmethod
    def _partition_count(admin: Any, topic: str, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics([topic])
            partitions = described[0].get("partitions", []) if described else []
            if partitions and all(p.get("leader_id", -1) >= 0 for p in partitions):
                return len(partitions)
            if time.monotonic() > deadline:
                raise RuntimeSetupError(f"kafka topic {topic!r}: no partition leaders after "
                                        f"{timeout:.0f}s")
            time.sleep(0.05)

    @staticmethod
    def _message_limit(admin: Any, topic: str) -> int:
        """``topic``'s ``max.message.bytes`` (broker default if not readable)."""
        from kafka.admin import ConfigResource, ConfigResourceType

        try:
            found = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic,
                                configs=["max.message.bytes"])], config_filter="all")
            value = _find_config_value(found, "max.message.bytes")
            return int(value) if value is not None else BROKER_DEFAULT_MESSAGE_BYTES
        except Exception as error:  # an old broker or ACLs: fall back, say so
            log.warning("kafka: cannot read max.message.bytes of %s (%s); assuming %d",
                        topic, error, BROKER_DEFAULT_MESSAGE_BYTES)
            return BROKER_DEFAULT_MESSAGE_BYTES

    # -- state backend (called by the service) ------------------------------------------
    def restore(self, service: Service) -> None:
        """Start transactions (fencing a killed predecessor) and join the group; tasks are
        restored as they are assigned."""
        self.service = service
        self._initial = fresh_states(service.pipeline.streams.items())
        self._untouched = set(service.pipeline.streams)
        self._task_streams = {}
        self._stream_task = {name: task_of(name, self.partitions)
                             for name in service.pipeline.streams}
        for name, number in self._stream_task.items():
            self._task_streams.setdefault(number, []).append(name)
        self._marks = WriteMarks(list(self._stream_task), list(self._stream_task.values()))
        self._spreading = (self.spread_over > 1
                           and len(service.pipeline.streams) > self.spread_above)
        self.source.merges.keep_log(self._spreading)
        self.source.stop_event = service._stop
        try:
            self.producer.init_transactions()
        except Exception as error:
            raise RuntimeSetupError(f"kafka: cannot start transactions as "
                                    f"{self.transactional_id!r}: {type(error).__name__}: "
                                    f"{error}") from None
        self._begin()
        self.source.connect()

    def _begin(self) -> None:
        self._sender.discard()  # batches still open here belong to a cycle that did not commit
        self.producer.begin_transaction()
        self._in_transaction = True
        self._began = time.monotonic()
        self.dirty = False
        self.sent = []

    def send(self, topic: str, value: bytes, key: bytes | None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Write one output record into the open cycle; while the previous cycle's commit
        is still in flight, hold it (in order) for the next cycle, which begins when that
        commit is done."""
        if self._committing is not None:
            self._settle(block=False)
            if self._committing is not None:
                self._held.append((topic, value, key, headers))
                return
        self.dirty = True
        try:
            future = self._send_record(topic, value, key, headers)
            if future is not None:  # else it waits in a batch: hand_over gives its future
                self.sent.append(future)
        except Exception as error:  # the producer cannot take it: the cycle is lost
            self.on_send_failed(error)

    def wait_committed(self) -> bool:
        """Block until the cycle whose commit is in flight (if any) is committed and the
        next one has begun. ``False`` if that commit, or an earlier one whose failure
        is still to be acted on, failed, or a rebalance is pending: the tasks roll back
        to their last committed snapshots at the next fetch, so what was processed since
        is not committed and must be read again (``Service.run`` does, to the end of a
        bounded input)."""
        return self._settle() and not self.source._rebalanced

    def describe(self) -> list[str]:
        """Where the replica stands, a line per fact (the SIGUSR1 report): the cycle
        (open, committing, records held for the next one, commits so far), what it
        holds unsent, then the source's tasks and client (``KafkaSource.describe``)."""
        committing = self._committing
        cycle = ("commit in flight (answered)" if committing is not None and committing.answered
                 else "commit in flight" if committing is not None
                 else "transaction open" if self._in_transaction else "no transaction")
        return [f"cycle: {cycle}, {len(self._held)} record(s) held for the next cycle, "
                f"{len(self.sent)} send(s) in this cycle, dirty {self.dirty}, "
                f"{self.commits} commit(s), owned tasks {sorted(self.owned)}",
                *self.source.describe()]

    def commit_in_flight(self) -> bool:
        """The previous cycle's commit has no answer yet: a checkpoint now would wait on
        it (the service's loop defers a due one meanwhile and goes on with records)."""
        return self._committing is not None and not self._committing.answered

    def _settle(self, block: bool = True) -> bool:
        """Take the in-flight commit's answer (waiting for it unless ``block`` is false and
        it has none yet). On success: bookkeeping, the next transaction begins and the
        records held meanwhile are sent into it. On failure: as a failed commit in the
        main loop (``_recover``); the held records are dropped, since the roll-back
        recomputes the records that wrote them. Returns whether the previous cycle is
        committed (``True`` when nothing was in flight)."""
        cycle = self._committing
        if cycle is None or (not block and not cycle.done):
            return cycle is None
        error = cycle.wait()
        self._committing = None
        held, self._held = self._held, []
        service = self.service
        assert service is not None, "restore() starts the runtime"
        if error is not None:
            service.metrics.transactions.labels("abort").inc()
            self._in_transaction = True  # the failed cycle's transaction is still open
            self._recover(error)
            return False
        self._recoveries = 0
        self._committed_offsets = cycle.released
        self._last_commit = self._last_lag_update = time.monotonic()
        service.metrics.transactions.labels("commit").inc()
        self._update_lag(service, cycle.released)
        self._begin()
        for topic, value, key, headers in held:
            self.send(topic, value, key, headers)
        return True

    def checkpoint(self, service: Service) -> int:
        """Commit the cycle: snapshots + offsets + the outputs already sent, atomically.

        The commit's waits on the broker run on a thread of their own
        (:class:`InFlightCommit`) while the loop goes on with the next records; this
        waits first for the previous cycle's commit (``_settle``), so at most one is in
        flight and cycles commit in order."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not self._settle():
            return 0  # that cycle failed: the tasks roll back at the next fetch
        if self.source.consumer is None or not self._in_transaction:
            return 0
        released = self.source.next_offsets()
        logs = self.source.merges.take_logs()  # (empty unless spreading)
        if logs and self._misrouted(logs):
            self._spreading = False  # from this commit on every changed stream is written
            self.source.merges.keep_log(False)
        changed_indices = service.pipeline.changed_indices()
        due_indices = changed_indices
        # The commit at the end of a bounded replay writes every changed stream: the
        # final weights versions (``Service._finish``) change streams without a record,
        # which no log could replay.
        if self._spreading and not service._exhausted:
            due_indices = self._marks.due(changed_indices, self.spread_above,
                                          self.spread_over)
        # task -> the least record count its changed streams left for later were
        # written at (a task not named has none left)
        needed = (self._marks.needed(changed_indices, due_indices)
                  if len(due_indices) < len(changed_indices) else {})
        names = self._marks.names  # (the pipeline's config order, as its places)
        changed: dict[int, list[str]] = {}  # task -> its streams due, config order
        for index in due_indices.tolist():
            name = names[index]
            changed.setdefault(self._stream_task[name], []).append(name)
        with compressing():  # (one zstd context for the commit's records)
            changelog = [(number, key, data) for number in sorted(self.owned)
                         for key, data in (self._log_task(number, logs.get(number),
                                                          needed.get(number))
                                           + self._encode_task(service, number, released,
                                                               changed.get(number, [])))]
        total = sum(len(data) for _, _, data in changelog if data is not None)
        service.metrics.snapshot_bytes.set(total)
        offsets = {TopicPartition(topic, number): OffsetAndMetadata(offset, "", -1)
                   for (topic, number), offset in released.items() if number in self.owned}
        # Metadata first, then the flag: a rebalance that starts after this point makes
        # the broker refuse the offsets (stale generation), one before it is seen here.
        group = self.source.consumer.group_metadata()
        if self.source._rebalanced:
            log.warning("kafka: group rebalancing at commit time: aborting this cycle")
            service.metrics.transactions.labels("abort").inc()
            self._abort_and_begin()
            return 0
        try:
            self.sent.extend(self._sender.hand_over())  # the cycle's open batches
            topic, send_to = self.kafka.changelog_topic, self._sender.send_to
            lean = total <= LEAN_CHANGELOG_MAX  # (~1 µs a record against ~20 µs for send)
            for number, key, data in changelog:
                self.dirty = True
                future = send_to(topic, number, key, data, lean)
                if future is not None:
                    self.sent.append(future)
            self.sent.extend(self._sender.hand_over())  # the changelog's batches
            self.commits += 1
            if self._fail_before_commit is not None and self.commits == self._fail_before_commit:
                if offsets:
                    send_offsets(self.producer, offsets, group, self._request_timeout)
                self.producer.flush()  # the cycle's records really are in the log
                raise InjectedCommitError(f"{FAIL_BEFORE_COMMIT_ENV}: failing before commit "
                                            f"{self.commits}")
        except InjectedCommitError:
            service.metrics.transactions.labels("abort").inc()
            self._abort()
            raise
        except Exception as error:
            service.metrics.transactions.labels("abort").inc()
            self._recover(error)
            return 0
        self._in_transaction = False
        steps = service.metrics.commit_seconds
        self._committing = InFlightCommit(
            self.producer, offsets, group, self.sent, self._request_timeout, released,
            lambda step, seconds: steps.labels(step).observe(seconds))
        self.sent = []
        return total

    def _timeout_hint(self) -> str:
        """For a failed commit's log line: when the cycle's transaction had been open
        longer than the producer's transaction timeout, the likely cause (the broker
        rolled it back) and what to change; else nothing. (Measured from the cycle's
        begin, not its first write, where the broker's clock starts: hence "likely".)"""
        open_for = time.monotonic() - self._began
        if open_for * 1000 < self.transaction_timeout_ms:
            return ""
        return (f"; the transaction had been open {open_for:.1f}s, past the producer's "
                f"transaction timeout ({self.transaction_timeout_ms} ms), so the broker likely "
                f"rolled it back: commit more often (checkpoint.every_seconds, "
                f"kafka.idle_commit_ms)")

    def _recover(self, error: Exception) -> None:
        """A commit failed (e.g. the broker restarted and timed the transaction out, which
        fences this producer): start a new producer with the same transactional id and
        roll every owned task back to its last committed snapshot, as after a rebalance.
        Three failures in a row without a commit end the process (fail-stop)."""
        self._recoveries += 1
        if self._recoveries > 3:
            raise error
        log.warning("kafka: commit failed (%s: %s); restarting the producer and resuming "
                    "from the last committed snapshots%s", type(error).__name__, error,
                    self._timeout_hint())
        if isinstance(error, TransactionStuckError):
            # an abort would wait on the same stuck producer; the new producer's
            # init_transactions makes the broker abort what this one left open
            self._in_transaction = False
        else:
            self._abort()
        self._replace_producer()
        self._begin()
        self.source._rebalanced = True  # the source rolls back at its next fetch

    def _replace_producer(self) -> None:
        """A new producer with the same transactional id (its ``init_transactions`` fences
        whatever the old one still had open)."""
        with contextlib.suppress(Exception):  # a fenced producer may not close cleanly
            self.producer.close(timeout=5)
        self._use_new_producer()
        self.producer.init_transactions()

    def _abort_and_begin(self) -> None:
        """Abort the open cycle and begin the next one. A producer that cannot begin (it
        was fenced: cut off from the broker past the transaction timeout, its transaction
        was aborted and its epoch bumped) is replaced, and the cycle begins on the new one;
        the caller rolls the tasks back to their last committed snapshots either way."""
        if not self._abort():  # a producer that cannot abort cannot be trusted further
            log.warning("kafka: starting a new producer with the same transactional id")
            self._replace_producer()
        try:
            self._begin()
        except Exception as error:
            log.warning("kafka: the producer cannot begin a transaction (%s: %s); starting a "
                        "new one with the same transactional id", type(error).__name__, error)
            self._replace_producer()
            self._begin()

    def _on_idle(self) -> None:
        """Nothing new to read: commit what is pending now rather than at the next
        checkpoint (which a quiet input may never reach), but at most every
        ``kafka.idle_commit_ms``: a live input that keeps catching up would otherwise
        commit after every small batch. Nothing while the tasks are due to roll back
        (a failed commit noticed at this very poll, a rebalance): the source does that
        first, and a commit now would only be aborted and counted as a second abort."""
        if self._committing is not None and not self._settle(block=False):
            return  # still in flight (the next idle poll looks again), or failed
        if self.source._rebalanced:
            return
        if (self.service is not None and self._in_transaction
                and time.monotonic() - self._last_commit >= self.kafka.idle_commit_ms / 1000
                and (self.dirty or self.source.next_offsets() != self._committed_offsets)):
            self.service.checkpoint()

    def _on_revoked(self) -> None:
        """Tasks are about to move (a rebalance, this member still in the generation):
        commit the cycle now, so they move with their latest state and nothing is redone
        (the eager protocol revokes every task, so kept ones lose nothing either). On
        any failure the main loop's abort-and-roll-back path applies, as before."""
        service = self.service
        if (service is None or self.source.consumer is None
                or not (self._in_transaction or self._committing is not None)):
            return
        try:
            started = time.perf_counter()
            service.checkpoint()  # (first waits for a commit in flight, then commits)
            self._settle()  # committed before the tasks move, not merely in flight
            log.info("kafka: rebalance: committed the cycle in %.3fs before the tasks move",
                     time.perf_counter() - started)
        except Exception as error:  # never raise inside the client's listener
            log.warning("kafka: rebalance: could not commit before the tasks move (%s: %s);"
                        " they resume from their last committed snapshots",
                        type(error).__name__, error)

    def _on_fetched(self) -> None:
        """After every poll: the records written since the last one go to the producer
        (the lean sender's open batches, so they reach the broker during the cycle, as
        ``send`` would have them, not all at its commit); the consumer-lag metric about
        once a second (between commits too)."""
        if self._committing is not None:  # done by now? the next cycle begins
            self._settle(block=False)
        if self._committing is None and self._in_transaction:
            try:
                self.sent.extend(self._sender.hand_over())
            except Exception as error:  # the producer cannot take them: the cycle is lost
                self.on_send_failed(error)
        service = self.service
        if service is None or time.monotonic() - self._last_lag_update < 1.0:
            return
        self._last_lag_update = time.monotonic()
        self._update_lag(service, self.source.next_offsets())

    def _abort(self) -> bool:
        """Abort the open transaction (bounded wait); whether the producer did."""
        self._in_transaction = False
        try:
            abort(self.producer, self._request_timeout)
        except Exception as error:  # fenced / broken producer: the broker aborts it
            log.warning("kafka: abort_transaction failed (%s); the broker aborts the "
                        "transaction when it times out or the restart fences it", error)
            return False
        return True

    def on_send_failed(self, error: Exception) -> None:
        """A record could not even be handed to the producer (e.g. it is in an error
        state after the broker aborted its transaction): the open cycle cannot commit.
        Recover at once, as after a failed commit; what the current record still writes
        goes to the new transaction, which the roll-back at the next fetch aborts."""
        if self.source._rebalanced:  # already rolling back: the cycle is dropped anyway
            return
        self._recover(TransactionStuckError(f"kafka: a send failed ({type(error).__name__}: "
                                            f"{error})"))

    def _encode_task(self, service: Service, number: int,
                     released: dict[tuple[str, int], int], changed: list[str]
                     ) -> list[tuple[bytes, bytes | None]]:
        """Task ``number``'s changelog records for this commit, as ``(key, value)``: one
        per stream changed since the last commit (``changed``: the task's part of
        ``Pipeline.changed_streams``, read once per commit for every task), keyed
        ``s/<stream>`` (its state and the task's offsets and counts; a large one as parts
        and a head, with tombstones, value ``None``, for parts no longer used:
        :meth:`_split_large`), after its join's new segments (``j/<id>/<stream>``) and
        tombstones for the segments it no longer reads (``state_store.encode_stream``),
        or, when none changed but the offsets or counts did (dead letters alone, a fresh
        task), one keyed by the task number with those alone; nothing if nothing
        changed. Every record carries the task's offsets and counts as of this commit,
        so the newest record of the partition says where the task resumes."""
        offsets = {topic: released[(topic, number)] for topic in self.source.topics
                   if (topic, number) in released}
        meta = {"task": number, **self.digests.meta(),
                "invalid": self.task_invalid.get(number, {}),
                "records": self.source.released_counts.get(number, 0),
                "offsets": offsets, "exhausted": service._exhausted}
        kept = self.task_kept.get(number)
        if kept:
            meta["kept"] = kept
        streams = service.pipeline.streams
        written_meta = dumps_state(meta)
        dropped = self.task_dropped.pop(number, None)
        if changed:
            # a segment no bigger than a message allows (one entry may still be: parts)
            segment_bytes = max(1, min(SEGMENT_BYTES, self._allowed()))
            records: list[tuple[bytes, bytes | None]] = []
            head = stream_record_head(meta)
            own = self.digests.streams
            for name in changed:
                written = encode_stream(name, streams[name], meta, segment_bytes=segment_bytes,
                                        head=head, settings=own[name])
                records.extend((segment_key(name, segment), data)
                               for segment, data in written.segments)
                records.extend((segment_key(name, segment), None) for segment in written.dropped)
                records.append((STREAM_KEY_PREFIX + name.encode("utf-8"), written.record))
        elif dropped or self._written_meta.get(number) != written_meta:
            document = {"format": TASK_SNAPSHOT_FORMAT, **meta, "streams": {}}
            records = [(str(number).encode(),
                        compress(dumps_state(document).encode("utf-8")))]
        else:  # nothing new: the task's newest record says all there is
            return []
        self._written_meta[number] = written_meta
        if dropped:  # before the record that says where the task resumes
            records[:0] = [(key, None) for key in dropped]
        if changed or dropped:
            records = self._split_large(records, meta)
        for name in changed:  # a failed commit rolls the task back from the changelog
            streams[name].changed = False
        self._marks.set_many(changed, self.commits + 1, meta["records"])
        return records

    def _misrouted(self, logs: dict[int, bytes]) -> bool:
        """Whether a record in ``logs`` (per task, as ``take_logs`` gives them) belongs to
        a stream of another task, checked on each log's first record (a sample: a
        producer that keys by stream with another partitioner than Kafka's default,
        librdkafka's CRC32 say, puts most streams on other partitions than the ones
        their state is written to, so the first commits see it). A restore replays a
        task's logs only into its own streams, so spreading would lose such records: it
        is turned off (logged once), and this commit writes every changed stream."""
        tasks = self._stream_task
        for number, framed in logs.items():
            raw = first_record(framed)
            try:
                name = orjson.loads(raw)["stream"] if raw else None
            except Exception:  # not a record: a dead letter, nobody's
                continue
            owner = tasks.get(name) if isinstance(name, str) else None
            if owner is not None and owner != number:
                log.error("kafka: stream %r's records arrive on partition %d, but Kafka's "
                          "default partitioner (murmur2) puts its key on %d: spread commits "
                          "are turned off for this run (every changed stream is written at "
                          "each commit). Produce the input keyed by stream with the default "
                          "partitioner, or set checkpoint.spread_over: 1", name, number,
                          owner)
                return True
        return False

    def _log_task(self, number: int, framed: bytes | None, needed: int | None
                  ) -> list[tuple[bytes, bytes | None]]:
        """Task ``number``'s record logs for this commit (``runtime.commit_spread``),
        before its stream records: the records handed out since the last commit
        (``framed``) when streams of the task stay unwritten (``needed``: the least
        record count they were written at; ``None``: none stays), and tombstones for
        the logs that no stream left unwritten needs any more (all of them when none
        is). Notes where the task's next log starts (``_encode_task`` notes the count
        the streams it writes are written at)."""
        count = self.source.released_counts.get(number, 0)
        start = self._log_start.get(number, count)
        self._log_start[number] = count
        held = self._logs.setdefault(number, [])
        records: list[tuple[bytes, bytes | None]] = []
        if needed is not None and framed:
            for first, end, value in encode_log(start, count - start, framed,
                                                self._allowed()):
                records.append((log_key(number, first), value))
                held.append((first, end))
        if needed is None:
            needed = count
        while held and held[0][1] <= needed:
            records.append((log_key(number, held.pop(0)[0]), None))
        return records

    def _allowed(self) -> int:
        """The most bytes one changelog record may have (``snapshot_limit_fraction`` of
        the message limit); a larger one is written in parts."""
        return int(self.limit * self.kafka.snapshot_limit_fraction)

    def _split_large(self, records: list[tuple[bytes, bytes | None]], meta: dict[str, Any]
                     ) -> list[tuple[bytes, bytes | None]]:
        """Records as they go to the changelog: one larger than
        ``snapshot_limit_fraction`` of the message limit as its parts and a head (see
        ``changelog_parts``), each part of a previous, larger record under the same key
        that is no longer used as a tombstone (``None``); a tombstone (a join segment no
        longer read) takes its parts with it."""
        allowed = self._allowed()
        out: list[tuple[bytes, bytes | None]] = []
        for key, data in records:
            count = 0
            if data is not None and len(data) > allowed:
                parts, head = split_record(data, meta, allowed)
                count = len(parts)
                out.extend((record_part_key(key, index), part)
                           for index, part in enumerate(parts))
                name = key.decode("utf-8", "replace")
                if key.startswith(STREAM_KEY_PREFIX) and name not in self._split_reported:
                    self._split_reported.add(name)
                    log.warning("kafka: stream %s's changelog record is %s bytes, above "
                                "kafka.snapshot_limit_fraction (%s) of the changelog's "
                                "message limit (%s bytes): written in %d parts (its state "
                                "alone is that large)", name[len(STREAM_KEY_PREFIX):],
                                f"{len(data):,}", self.kafka.snapshot_limit_fraction,
                                f"{self.limit:,}", count)
                data = head
            out.extend((record_part_key(key, index), None)
                       for index in range(count, self._parts_written.get(key, 0)))
            if count:
                self._parts_written[key] = count
            else:
                self._parts_written.pop(key, None)
            out.append((key, data))
        return out

    def _update_lag(self, service: Service, released: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition

        consumer = self.source.consumer
        assigned = consumer.assignment()
        for (topic, number), offset in released.items():
            partition = TopicPartition(topic, number)
            if partition not in assigned:  # moved away since (a commit settled late)
                continue
            highwater = consumer.highwater(partition)
            if highwater is not None:
                service.metrics.consumer_lag.labels(topic, str(number)).set(highwater - offset)

    def on_dead_letter(self, reason: str) -> None:
        origin = self.source.last_origin
        if origin is None:
            return
        counts = self.task_invalid.setdefault(origin[1], {})
        counts[reason] = counts.get(reason, 0) + 1

    def dead_letter_origin(self) -> str | None:
        origin = self.source.last_origin
        return None if origin is None else f"{origin[0]}-{origin[1]}@{origin[2]}"

    # -- assignment (called from the source's fetch, in the main loop) -------------------
    def _on_rebalance(self, owned: list[int], revoked: list[int]) -> dict[tuple[str, int], int]:
        """After any rebalance: abort what the open transaction holds and roll every owned
        task back to its last committed snapshot (fresh state if it has none), since the
        consumer resumes from the committed offsets. Returns the offsets to seek to."""
        with collections_paused():  # many streams' states read back (see the heap module)
            offsets = self._roll_back_tasks(owned, revoked)
        return_freed_pages()  # (and the memory that reading freed)
        return offsets

    def _roll_back_tasks(self, owned: list[int],
                         revoked: list[int]) -> dict[tuple[str, int], int]:
        service = self.service
        assert service is not None, "restore() starts the runtime"
        started = time.perf_counter()
        self._settle()  # the last cycle's commit decides what the tasks restore from
        if self.dirty:
            service.metrics.transactions.labels("abort").inc()
            self._abort_and_begin()
            log.warning("kafka: rebalance: aborted the open transaction; tasks %s resume "
                        "from their last committed snapshots", owned)
        if revoked:
            log.info("kafka: tasks %s revoked; their new owner resumes them", revoked)
            for number in revoked:
                for topic in self.source.topics:
                    with contextlib.suppress(KeyError):  # never measured
                        service.metrics.consumer_lag.remove(topic, str(number))
        snapshots = self._read_changelog(owned) if owned else {}
        self.owned = set(owned)
        self._written_meta = {}
        self._marks.clear()
        self._logs, self._log_start = {}, {}
        self.replayed = 0
        self.task_invalid = {}
        self.task_exhausted = {}
        self.task_kept = {}
        self.task_dropped = {}
        self.source.released_counts.clear()
        offsets: dict[tuple[str, int], int] = {}
        untouched = self._untouched
        for name, stream in service.pipeline.streams.items():
            number = self._stream_task[name]
            if number in self.owned or number in revoked:
                if name not in untouched:
                    stream.load_state_dict(loads_state(self._initial[name]), owned=True)
                service.view.weights.pop(name, None)
                if number in self.owned:
                    untouched.discard(name)  # records, a snapshot or a replay come next
                else:
                    untouched.add(name)  # revoked: reset to its built state just now
        for number in owned:
            self.task_invalid[number] = {}
            snapshot = snapshots.get(number)
            if snapshot is not None:
                offsets.update(self._restore_task(service, number, snapshot))
            elif self._spreading:  # a fresh task: its streams stand as written, fresh,
                # at record 0 (a restore replays the logs from there into one without a
                # record), so that their first writes spread as later ones do
                self._marks.set_many(self._task_streams.get(number, ()), 0, 0)
                self._log_start[number] = 0
            else:  # a fresh task: its first commit writes every stream, so that from
                # then on the changelog holds a record of each
                for name in self._task_streams.get(number, ()):
                    service.pipeline.streams[name].changed = True
        # (after the restores: a stream's own parts are counted as it is decoded)
        self._parts_written = {key: count for snapshot in snapshots.values()
                               for key, count in snapshot.parts.items()}
        service.records_seen = sum(self.source.released_counts.values())
        service.pipeline.invalid = {}
        for counts in self.task_invalid.values():
            for reason, count in counts.items():
                service.pipeline.invalid[reason] = service.pipeline.invalid.get(reason, 0) + count
        elapsed = time.perf_counter() - started
        service.metrics.rebalances.inc()
        service.metrics.restore_seconds.observe(elapsed)
        if self.replayed:
            service.metrics.replayed_records.inc(self.replayed)
        log.info("kafka: assigned tasks %s, restored %d snapshot(s) in %.3fs%s", owned,
                 len(snapshots), elapsed,
                 f" ({self.replayed:,} logged records replayed into the streams their "
                 "commits left unwritten)" if self.replayed else "")
        return offsets

    def _restore_task(self, service: Service, number: int,
                      snapshot: TaskRecords) -> dict[tuple[str, int], int]:
        """Restore task ``number`` from its changelog records: the newest one gives the
        offsets and counts, each stream's newest record its state; a format-1 task
        snapshot (the previous release's one blob per task) gives the streams it holds,
        which are then marked changed, so the next commit rewrites them per stream."""
        where = f"kafka.changelog_topic: task {number}"
        meta = snapshot.meta
        if meta.get("format") not in (LEGACY_TASK_SNAPSHOT_FORMAT, *_NEWEST_RECORD_FORMATS):
            raise SnapshotError(f"{where}: snapshot format {meta.get('format')}, this build "
                                f"reads {LEGACY_TASK_SNAPSHOT_FORMAT} and "
                                f"{TASK_SNAPSHOT_FORMAT} (stream records "
                                f"{listed_formats(STREAM_RECORD_FORMATS)}); restore "
                                "with the release that wrote it, or use a new changelog "
                                "topic and group")
        # the streams with a saved state (a per-stream record's, else the format-1
        # snapshot's), each decoded as it is loaded
        saved = {**dict.fromkeys(snapshot.legacy_streams), **dict.fromkeys(snapshot.streams)}
        fresh = self._check_settings(number, snapshot, saved)
        removed = sorted(name for name in saved if name not in service.pipeline.streams)
        if removed and self.drop_removed_streams:
            log.warning("%s: drops the state of %s, no longer in the config "
                        "(--drop-removed-streams): the task's next commit writes tombstones "
                        "for their records", where, named(removed))
            for name in removed:
                snapshot.count_parts(name)
            self.task_dropped[number] = [key for name in removed
                                         for key in snapshot.keys.get(name, ())]
        elif removed:
            log.warning("%s: holds the state of %s, no longer in the config: kept in the "
                        "changelog as saved, not restored (put the streams back, with their "
                        "settings, to resume them, or run with --drop-removed-streams to "
                        "delete them)", where, named(removed))
            self.task_kept[number] = removed
        put_back = set(meta.get("kept", ()))
        for name in saved:
            stream = service.pipeline.streams.get(name)
            if stream is None:  # removed from the config: kept in the changelog
                continue
            if name in fresh:  # changed settings: left as built, unmarked (so neither
                stream.changed = True  # replayed nor left out of the next commit)
                continue
            state = (snapshot.streams[name] if name in snapshot.streams  # decoded just now
                     else snapshot.legacy_streams[name])
            stream.load_state_dict(state, owned=True)
            del state  # (freed before the next stream's is decoded)
            if name in snapshot.streams and name not in put_back:  # (replayed from its
                self._marks.set(name, 0, snapshot.written.get(name, 0))  # record's count)
            # a format-1 state, a record without its settings digest, or a stream put
            # back (unmarked, as the fresh ones): rewrite it
            stream.changed = snapshot.settings.get(name) is None or name in put_back
        for name in self._task_streams.get(number, ()):
            if name not in saved:  # no record yet: fresh, as written at record 0
                self._marks.set(name, 0, 0)
        count = int(meta["records"])
        self._log_start[number] = count
        if snapshot.logs:
            self._logs[number] = self._replay_logs(service, number, snapshot.logs, count)
        for name in (*saved, *(name for name in self._task_streams.get(number, ())
                                if name not in saved)):
            stream = service.pipeline.streams.get(name)
            if stream is not None and stream.latest_weights is not None:
                service.view.weights[name] = events.encode_to_keep(stream.latest_weights)
        if snapshot.legacy_streams:
            log.warning("%s: restored from a format-1 task snapshot; the next commit "
                        "rewrites its streams as per-stream records", where)
        if meta.get("format") in _NEWEST_RECORD_FORMATS:
            self._written_meta[number] = dumps_state(
                {k: v for k, v in meta.items() if k != "format"})
        self.task_invalid[number] = {k: int(v) for k, v in meta["invalid"].items()}
        self.source.released_counts[number] = int(meta["records"])
        self.task_exhausted[number] = bool(meta.get("exhausted"))
        return {(topic, number): int(offset) for topic, offset in meta["offsets"].items()}

    def _check_settings(self, number: int, snapshot: TaskRecords,
                        names: Collection[str]) -> set[str]:
        """The streams of task ``number`` that start fresh because their settings changed
        since their records (``fresh_changed_streams``; RuntimeSetupError naming them
        without it). Every stream matches when the task's digest does."""
        if self.digests.match(snapshot.meta):
            return set()
        saved = {name: snapshot.settings.get(name) for name in names}
        changes = compare_streams(self.digests, saved, self._task_streams.get(number, ()))
        where = f"kafka.changelog_topic: task {number}"
        if changes.changed and not self.fresh_changed_streams:
            raise RuntimeSetupError(changes.refusal(
                f"{where}'s snapshot", "use the old config (or a new changelog topic and "
                "group)"))
        if changes.changed:
            log.warning("%s: %s start(s) fresh under new settings "
                        "(--fresh-changed-streams); their saved state is replaced at the "
                        "next commit", where, named(changes.changed))
        if changes.added:  # (the task's records do not list its streams, so a stream
            # new to the config and one that never took a record look the same)
            log.info("%s: %s without a record (new to the config, or none written yet): "
                     "start(s) fresh", where, named(changes.added))
        return set(changes.changed)

    def _replay_logs(self, service: Service, number: int, logs: dict[int, bytes],
                     count: int) -> list[tuple[int, int]]:
        """Apply task ``number``'s logged records (``runtime.commit_spread``) again, in
        order, each to its stream if that stream's newest record was written before it
        (at a smaller task count), up to the task's restored ``count``; return the logs'
        ``(start, end)``, oldest first. Nothing is sent and nothing counted: the outputs
        and counts up to the commit are in the topics and the task's record. A record the
        run refused or failed on is refused or fails again, with the same effect on its
        stream, since it runs through the same code (``LocalCheckpoints._replay``)."""
        where = f"kafka.changelog_topic: task {number}"
        pipeline = service.pipeline
        process = type(pipeline).process  # the class's verb (see ``_replay`` there)
        invalid = dict(pipeline.invalid)
        written, tasks = self._marks.counts(), self._stream_task
        held: list[tuple[int, int]] = []
        strays: dict[str, int] = {}  # records of other tasks' streams (misrouted input)
        for start in sorted(logs):
            first, records = decode_log(logs[start], where)
            held.append((first, first + len(records)))
            for index, raw in enumerate(records, first):
                if index >= count:
                    break
                try:
                    record = events.decode(raw)
                except Exception:  # refused (or failed) at decode: no stream took it
                    continue
                name = record.stream
                since = written.get(name)
                owner = tasks.get(name)
                if owner is not None and owner != number:
                    strays[name] = strays.get(name, 0) + 1
                    continue
                if since is None or index < since or owner is None:
                    continue
                with contextlib.suppress(Exception):
                    process(pipeline, record)
                pipeline.streams[name].changed = True
                self.replayed += 1
        pipeline.invalid = invalid
        if strays:
            log.error("%s: its logged records include %s of streams that Kafka's default "
                      "partitioner puts on other partitions (%s): a spread commit may have "
                      "left those streams without them, and they are not replayed. Produce "
                      "the input keyed by stream with the default partitioner, or set "
                      "checkpoint.spread_over: 1", where, f"{sum(strays.values()):,}",
                      ", ".join(sorted(strays)))
        return held

    def _read_changelog(self, numbers: list[int], timeout: float = 60.0
                        ) -> dict[int, TaskRecords]:
        """Each task's committed changelog records (absent: the task starts fresh), as
        :class:`ChangelogReader` makes them of what a ``read_committed`` reader reads."""
        return read_changelog(self.kafka, numbers, timeout).tasks()

    def finished_before(self) -> bool:
        """A bounded replay whose every task had already finished (and published its
        final versions) before this restart: do not publish them again."""
        return bool(self.kafka.stop_at_end and self.task_exhausted
                    and all(self.task_exhausted.values()))

    def close(self) -> None:
        try:
            if self._committing is not None:
                try:
                    self._settle()
                except Exception as error:  # a third failure in a row: nothing to resume
                    log.warning("kafka: the last commit failed at close (%s: %s)",
                                type(error).__name__, error)
            if self._in_transaction:
                self._abort()
            try:
                self.producer.close(timeout=5)
            except Exception as error:  # a broken producer: the broker aborts what it left
                log.warning("kafka: the producer did not close cleanly (%s: %s)",
                            type(error).__name__, error)
        finally:
            self.source.close()


def read_changelog(kafka: KafkaConfig, numbers: list[int] | None = None,
                   timeout: float = 60.0) -> ChangelogReader:
    """A :class:`ChangelogReader` fed every committed record of the changelog's partitions
    ``numbers`` (all of the topic's when ``None``), up to their ends as of the call."""
    from kafka import KafkaConsumer, TopicPartition

    # a group-less reader: kafka-python refuses a group_instance_id without a group
    settings = client_settings(kafka, KafkaConsumer)
    settings.pop("group_instance_id", None)
    settings["allow_auto_create_topics"] = False  # (reading it must not create it)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             **settings)
    reader = ChangelogReader()
    try:
        if numbers is None:
            numbers = sorted(consumer.partitions_for_topic(kafka.changelog_topic) or ())
        reader.partitions = list(numbers)
        if not numbers:  # (no such topic)
            return reader
        partitions = [TopicPartition(kafka.changelog_topic, n) for n in numbers]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise SnapshotError(f"kafka.changelog_topic: could not read "
                                    f"{kafka.changelog_topic} to its end in {timeout:.0f}s")
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    reader.add(tp.partition, record.key, record.value)
    finally:
        consumer.close()
    return reader


def _find_config_value(found: Any, key: str) -> str | None:
    """Dig ``key``'s value out of kafka-python's describe_configs answer (its shape
    differs between versions)."""
    if isinstance(found, dict):
        for name, value in found.items():
            if name == key:
                return value.get("value") if isinstance(value, dict) else value
            nested = _find_config_value(value, key)
            if nested is not None:
                return nested
    elif isinstance(found, list | tuple):
        for item in found:
            nested = _find_config_value(item, key)
            if nested is not None:
                return nested
    return None
