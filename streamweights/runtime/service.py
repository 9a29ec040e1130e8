"""The service loop: source -> decode -> pipeline -> sinks, with checkpoints, metrics,
HTTP endpoints, progress lines and graceful shutdown.

Where records come from, where outputs go and how state is kept is a :class:`Runtime`
built from the config: the embedded default below, or Kafka
(:mod:`streamweights.runtime.kafka_runtime`, with its own guarantees); the loop is the
same for both.

Guarantees (embedded mode):

* Exactly-once effect on state: a snapshot holds the pipeline state and the position of
  the next input record; restoring it and resuming from that position gives the same
  weights and summary as an uninterrupted run, bit for bit.
* Exactly-once output lines for file sinks: each sink's byte position is in the
  snapshot and the sink is truncated back to it on restore (to 0 on a fresh start, when
  the folder holds no snapshot). The state folder is locked: one process per folder.
* No silent loss: every bad record is counted by reason and written to the dead-letter
  sink with its reason and origin; predictions that never get a label are counted.

Failure scenarios: kill -9 at any point loses at most the work since the last
checkpoint, which is recomputed from the input on restart. SIGTERM / SIGINT stop after
the current record, write a checkpoint, flush the sinks and exit 0.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from streamweights import _native, events
from streamweights.config import ServiceConfig
from streamweights.pipeline import DeadLetter, Outcome, Pipeline
from streamweights.runtime import faults
from streamweights.runtime.artifact_store import ArtifactStore
from streamweights.runtime.checkpoint_load import CheckpointLoad
from streamweights.runtime.checkpoint_pacing import CheckpointPacer
from streamweights.runtime.commit_spread import oldest_due
from streamweights.runtime.compression import compressing
from streamweights.runtime.exceptions import RuntimeSetupError, SnapshotError
from streamweights.runtime.heap import collections_paused, return_freed_pages
from streamweights.runtime.http import HttpServer, ServiceView, load_http_token
from streamweights.runtime.metrics import ServiceMetrics
from streamweights.runtime.preflight import check_source_matches_streams
from streamweights.runtime.replay import Rejected
from streamweights.runtime.settings_digest import (
    SettingsDigests,
    compare_streams,
    named,
    settings_digests,
)
from streamweights.runtime.sinks import JsonlSink
from streamweights.runtime.sources import check_input, input_digest, make_source
from streamweights.runtime.state_store import (
    LocalStateStore,
    StateDirLock,
    encode_stream,
    saved_stream_settings,
)
from streamweights.runtime.stream_gauges import StreamGauges, gauge_keys, gauge_values

log = logging.getLogger("streamweights")

#: Dead-letter records keep at most this much of the offending input, so one oversized
#: record cannot blow up the dead-letter sink (the size itself is in the reason).
DEAD_LETTER_MAX_RAW = 64 * 1024

#: The interpreter's thread switch interval while a service runs (CPython's default: 5 ms).
#: The loop thread holds the GIL while it processes records; every other thread of the
#: process (kafka-python 3.0's network threads, the thread that waits on a commit, the
#: HTTP handlers) waits up to the interval for it at each hand-over, and a Kafka
#: transaction takes several hand-overs per round trip. Measured with ``bench/kafka.py``
#: (same sitting, this value against the default): at 5,000 records/s the commit's
#: offsets + ``commit_transaction`` 68 -> 41 ms, label -> weights p50 170 -> 119 ms and
#: p99 330 -> 207 ms; at ~17k records/s (CPU-bound) p50 271 -> 215 ms, p99 1,002 ->
#: 778 ms; throughput unchanged within noise (67k -> 74k records/s, best of 2). Set for
#: the duration of :meth:`Service.run` and restored after it.
THREAD_SWITCH_INTERVAL = 0.001

#: How far a due checkpoint may wait for the previous commit still in flight (Kafka), in
#: ``checkpoint.every_records`` intervals, while the loop goes on with the next records.
#: Blocking on that commit instead capped a replica at one cadence's worth of records per
#: commit: with commits taking 100-400 ms on a loaded broker, less than the input rate,
#: so a backlog built up and label -> weights latency grew to seconds. Past the cap
#: (a commit that slow) the loop blocks on it as before, bounding the records held.
DEFERRED_CHECKPOINT_RECORDS = 4

#: A checkpoint holding the next back at least this long is logged (once a run).
PACING_NOTED_SECONDS = 0.05

#: Streams named one by one in a progress line; a replica holding more gets their sums
#: (10,000 streams made a ~1 MB line every ``progress_every_seconds``).
PROGRESS_STREAMS_LISTED = 20

#: Loop time a progress line may spend bringing streams' gauges and HTTP entries up to
#: date (the streams that took records since theirs were last set; the next line goes
#: on where this one stopped). Refreshing every stream at every line held the loop for
#: ~1.1 s every 5 s with 10,000 streams: a latency spike and a fifth of the loop's time.
PROGRESS_REFRESH_SECONDS = 0.02


def _refresh_mark(stream: Any) -> tuple[int, int, int]:
    """What moves when a stream takes a record (or loads a state): its gauges and HTTP
    entry, set from it, need setting again once this differs."""
    return stream.predictions, stream.labels, len(stream.join)


class LocalCheckpoints:
    """The embedded state backend: whole-service snapshots in a local folder, which this
    process locks (:class:`StateDirLock`) before anything in it or in the outputs is
    touched. A restore checks each stream against its record's settings digest
    (``settings_digest``); streams the config no longer has keep their records, which
    every full snapshot copies (``kept``), unless the run drops them
    (``drop_removed_streams``: the first checkpoint is then a full one without them).

    A checkpoint writes the streams changed since their last record: all of them up to
    ``write_floor`` (``checkpoint.spread_above``); past it, the ``1 / write_spread``
    (``checkpoint.spread_over``) of them, at least ``write_floor``, whose records are
    oldest. The others stay changed and are written by the next ones; the snapshot's meta
    holds ``replay_from``, the oldest input position among their records, and a restore
    replays the input from there to the snapshot's position into those streams alone,
    each from its record's position, outputs and counts left out (a stream's state
    depends only on its own records, in order, so this is exact). Records spread over
    thousands of streams change nearly every stream between two checkpoints, and writing
    each whole (0.45-1.06 ms a stream) bound such a replica; this spreads the writes over
    ``write_spread`` checkpoints, for a restore that replays up to about as many
    intervals of input. A source that cannot be read again from an earlier position
    (standard input) writes every changed stream, as does the checkpoint at the input's
    end (the folder then stands without the input)."""

    def __init__(self, state_dir: str, write_floor: int = 256, write_spread: int = 8) -> None:
        self.state_dir = state_dir
        #: Changed streams a checkpoint always writes (the default three, and a few
        #: hundred, are written every time, so their restores never replay).
        self.write_floor = write_floor
        #: Past ``write_floor``, a checkpoint writes 1 / this of the changed streams,
        #: oldest records first: every stream within about as many checkpoints.
        self.write_spread = write_spread
        self.lock = StateDirLock(state_dir)
        self.lock.acquire()
        self.store = LocalStateStore(state_dir)
        #: (stream records, bytes) of the latest checkpoint (for benchmarks and tests).
        self.last_commit = (0, 0)
        #: Each stream's newest record: the input position of the checkpoint that wrote it.
        self.written: dict[str, int] = {}
        #: Records replayed into streams by the last restore (for benchmarks and tests).
        self.replayed = 0
        #: The join segments each stream's newest record lists (a full snapshot that
        #: copies the record copies them with it).
        self.listed: dict[str, list[int]] = {}
        #: Streams the snapshots hold that the config no longer has, with the position
        #: of their newest record: a full snapshot copies them, so nothing is lost.
        self.kept: dict[str, int] = {}
        #: Streams whose settings changed since their records start fresh (the run's
        #: ``--fresh-changed-streams``), rather than the restore being refused.
        self.fresh_changed_streams = False
        #: Streams the config no longer has are dropped at restore, not kept (the run's
        #: ``--drop-removed-streams``): the first checkpoint is a full one without them.
        self.drop_removed_streams = False
        #: The next checkpoint is a full one (the snapshots before it hold dropped streams).
        self._rebase = False

    def restore(self, service: Service) -> None:
        loaded = self.store.load_latest()
        if loaded is None:
            self._fresh_start(service)
            faults.at("restored")
            return
        for path, reason in loaded.damaged:
            log.error("snapshot %s is damaged and was set aside as %s.corrupt (%s); falling "
                      "back to the previous snapshot %s: the input is replayed from there, "
                      "so the results are the same, only recomputed", path.name, path.name,
                      reason, loaded.path.name)
        if loaded.legacy:
            log.warning("%s is a format-1 snapshot (no checksum): restored as it is; the next "
                        "checkpoint replaces it with a checksummed one", loaded.path)
        snapshot = loaded.snapshot
        fresh = self._check_settings(service, snapshot)
        check_input(service.source, snapshot.get("input"), self.state_dir)
        started = time.perf_counter()
        try:
            service.pipeline.load_state_dict(snapshot["pipeline"], owned=True,  # just read
                                             fresh=fresh)
            service.position = int(snapshot["position"])
            service.records_seen = int(snapshot["records_seen"])
            service._exhausted = bool(snapshot.get("exhausted", False))
            positions = {name: int(snapshot["sinks"].get(name, 0)) for name in service.sinks}
        except (KeyError, TypeError, ValueError) as error:
            raise SnapshotError(f"{loaded.path}: intact, but its content does not fit this "
                                f"build ({type(error).__name__}: {error}); restore with the "
                                "release that wrote it, or start from an empty state_dir"
                                ) from None
        for name, sink in service.sinks.items():
            sink.truncate(positions[name])
        self.written = dict(snapshot.get("written", {}))
        streams = service.pipeline.streams
        self.kept = {name: self.written.pop(name) for name in list(self.written)
                     if name not in streams}
        if self.kept and self.drop_removed_streams:
            log.warning("state_dir %s: drops the state of %s, no longer in the config "
                        "(--drop-removed-streams): the next checkpoint is a full snapshot "
                        "without them, and the one after it removes the snapshots that "
                        "held them", self.state_dir, named(sorted(self.kept)))
            self.kept = {}
            self._rebase = True
        elif self.kept:
            log.warning("state_dir %s: holds the state of %s, no longer in the config: kept "
                        "in the snapshots as saved, not restored (put the streams back, with "
                        "their settings, to resume them, or run with --drop-removed-streams "
                        "to delete them)", self.state_dir, named(sorted(self.kept)))
        listed = snapshot.get("listed", {})  # (a kept stream is decoded for it)
        self.listed = {name: listed[name] for name in (*streams, *self.kept)
                       if name in listed and name not in fresh}
        for name in fresh:  # never written as they stand: not replayed, written next
            self.written.pop(name, None)
            streams[name].changed = True
        for name in snapshot.get("kept", ()):
            if name in streams:  # put back: its record as saved, not the records the
                self.written.pop(name, None)  # run took for dead letters meanwhile
                streams[name].changed = True
        settings = snapshot.get("stream_settings", {})
        for name in streams:  # a record without its settings digest: rewritten with it,
            if name not in fresh and name in settings and settings[name] is None:
                streams[name].changed = True  # so that it is checked alone
        replay_from = snapshot.get("replay_from")
        if replay_from is not None and int(replay_from) < service.position:
            self.replayed = self._replay(service, int(replay_from))
        for name, stream in service.pipeline.streams.items():
            if stream.latest_weights is not None:
                service.view.weights[name] = events.encode_to_keep(stream.latest_weights)
        faults.at("restored")
        log.info("restored snapshot %s at input position %d in %.3fs%s", loaded.path,
                 service.position, time.perf_counter() - started,
                 f" ({self.replayed:,} records replayed into the streams it left "
                 f"unwritten, from input position {replay_from})" if self.replayed else "")

    def _check_settings(self, service: Service, snapshot: dict[str, Any]) -> set[str]:
        """The streams that start fresh: added to the config, or their settings changed
        since their records (``fresh_changed_streams``; RuntimeSetupError naming them
        without it). All match when the snapshot's digest does."""
        if service._settings_digests.match(snapshot):
            return set()
        changes = compare_streams(service._settings_digests, saved_stream_settings(snapshot),
                                  service.pipeline.streams)
        where = f"state_dir {self.state_dir}"
        if changes.changed and not self.fresh_changed_streams:
            raise RuntimeSetupError(changes.refusal(f"{where}: its snapshot",
                                                    "use the old config or a fresh state_dir"))
        if changes.changed:
            log.warning("%s: %s start(s) fresh under new settings (--fresh-changed-streams); "
                        "their saved state is replaced at the next checkpoint", where,
                        named(changes.changed))
        if changes.added:
            log.info("%s: %s new to the config: start(s) fresh at input position %d", where,
                     named(changes.added), int(snapshot["position"]))
        return set(changes.changed) | set(changes.added)

    def _replay(self, service: Service, start: int) -> int:
        """Apply the input from ``start`` to the restored position again to the streams
        whose records are older than it, each from its record's position on; return the
        records applied. Nothing is written and nothing counted: the outputs and counts
        up to the position are the snapshot's. A record the run refused or failed on is
        refused or fails again, with the same effect on its stream (none, or what the
        run's failure left), since it runs through the same code."""
        pipeline, written, end = service.pipeline, self.written, service.position
        # The class's own verb: a wrapper installed on the instance (``run --report``'s
        # recorder) traces what this process computes, not what an earlier one did.
        process = type(pipeline).process
        invalid = dict(pipeline.invalid)
        applied = 0
        records = service.source.open(start)
        try:
            for position, raw in records:
                if position >= end:
                    break
                if isinstance(raw, Rejected):
                    continue
                try:
                    record = events.decode(raw)
                except Exception:  # refused (or failed) at decode: no stream took it
                    continue
                since = written.get(record.stream)
                if since is None or position < since:
                    continue
                with contextlib.suppress(Exception):
                    process(pipeline, record)
                applied += 1
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
        pipeline.invalid = invalid
        return applied

    def _fresh_start(self, service: Service) -> None:
        """No snapshot: the run starts at input position 0, so the outputs start empty.
        Lines in them came from an earlier run (one killed before its first checkpoint,
        or one whose state folder was deleted to start over); kept, they would be
        followed by the same lines again."""
        log.info("no snapshot in %s: starting from the beginning", self.state_dir)
        for name, sink in service.sinks.items():
            if sink.position:
                log.warning("fresh start: emptying %s output %s (%d bytes from an earlier "
                            "run without a snapshot here) so that the outputs match the state",
                            name, sink.path, sink.position)
            sink.truncate(0)

    def checkpoint(self, service: Service) -> int:
        """A per-stream snapshot: the streams changed since their last records that are
        due (:meth:`_due`), and the position, sinks and counts. When the store asks for a
        full one, the streams not due are copied into it from the chain, records and
        join segments as they were written (:meth:`_copied`), rather than encoded anew:
        a full snapshot then costs reading the chain, not encoding every stream."""
        for sink in service.sinks.values():
            sink.flush()
        streams = service.pipeline.streams
        store = self.store
        full = store.needs_full() or self._rebase
        copy = full and store.can_copy() and len(self.written) == len(streams)
        if full and not copy:
            changed = names = list(streams)
        else:
            changed = service.pipeline.changed_streams()
            names = self._due(changed, service)
        # Every stream changed: a full one costs no more, unless a join would write again
        # the waiting predictions that the snapshots before hold (long label delays).
        full = full or (len(names) == len(streams)
                        and not any(streams[name].join.segment_count for name in names))
        copied = None
        if full and (len(names) < len(streams) or self.kept):
            copied = self._copied(set(names), streams) if store.can_copy() else None
            if copied is None:  # (never seen: the chain lacks what a stream lists)
                log.warning("a full snapshot could not copy every stream's newest record "
                            "from the snapshots before it: encoding every stream instead%s",
                            f"; the kept states of {named(list(self.kept))} (streams no "
                            "longer in the config) are left out of it" if self.kept else "")
                self.kept = {}
                changed = names = list(streams)
        own = service._settings_digests.streams
        with compressing():  # (one zstd context for the snapshot's records)
            encoded = {name: encode_stream(name, streams[name], rebase=full,
                                           settings=own[name]) for name in names}
        position, written = service.position, self.written
        left = ([] if len(names) == len(changed)
                else [written[name] for name in set(changed).difference(names)])
        meta = {
            "position": position, "records_seen": service.records_seen,
            "exhausted": service._exhausted,
            "sinks": {name: sink.position for name, sink in service.sinks.items()},
            "source": service.source.name, **service._settings_digests.meta(),
            "invalid": dict(service.pipeline.invalid)}
        digest = input_digest(service.source, service.position)
        if digest is not None:
            meta["input"] = digest
        if copied is None:
            records = [(name, item.record) for name, item in encoded.items()]
            segments = [(name, segment, data) for name, item in encoded.items()
                        for segment, data in item.segments]
        else:
            copied_records, segments, positions = copied
            records = [(name, encoded[name].record if name in encoded
                        else copied_records[name]) for name in (*streams, *self.kept)]
            segments += [(name, segment, data) for name, item in encoded.items()
                         for segment, data in item.segments]
            meta["written"] = positions
        if left:
            meta["replay_from"] = min(left)
        if self.kept:
            meta["kept"] = sorted(self.kept)
        size = store.save_streams(meta, records, full, segments)
        for name, item in encoded.items():  # only once written (a failed write leaves
            streams[name].changed = False  # them marked)
            written[name] = position
            self.listed[name] = item.listed
        self.last_commit = (len(encoded), size)
        if full:
            self._rebase = False
        return size

    def _copied(self, fresh: set[str], streams: dict[str, Any]
                ) -> tuple[dict[str, bytes], list[tuple[str, int, bytes]], dict[str, int]] | None:
        """For a full snapshot, every stream not in ``fresh``: its newest record in the
        chain, the join segments that record lists and the position it was taken at
        (``written`` in the snapshot's meta: a restore replays from there if the stream
        has changed since). ``None`` if the chain lacks one of them, or a file of it can
        no longer be read back intact."""
        try:
            records, segments = self.store.newest_records()
        except SnapshotError as error:
            log.warning("reading the snapshots a full one copies from: %s", error)
            return None
        out_records: dict[str, bytes] = {}
        out_segments: list[tuple[str, int, bytes]] = []
        positions: dict[str, int] = {}
        for name in (*streams, *self.kept):
            if name in fresh:
                continue
            found = records.get(name)
            if found is None:
                return None
            theirs = segments.get(name, {})
            for segment in self.listed.get(name, ()):
                data = theirs.get(segment)
                if data is None:
                    return None
                out_segments.append((name, segment, data))
            out_records[name], positions[name] = found
        return out_records, out_segments, positions

    def _due(self, changed: list[str], service: Service) -> list[str]:
        """The changed streams this checkpoint writes (see the class docstring), in
        config order: all of them, or past ``write_floor`` those whose records are
        oldest."""
        floor = self.write_floor
        if (len(changed) <= floor or not getattr(service.source, "rereadable", True)
                or service._exhausted):
            return changed
        return oldest_due(changed, self.written, floor, self.write_spread)

    def on_dead_letter(self, reason: str) -> None:
        """Dead letters are counted in the pipeline state already."""

    def dead_letter_origin(self) -> str | None:
        return None

    def finished_before(self) -> bool:
        return False

    def wait_committed(self) -> bool:
        """A local snapshot is written when ``checkpoint`` returns: nothing in flight."""
        return True

    def commit_in_flight(self) -> bool:
        """Never: a local checkpoint is done when it returns."""
        return False

    def close(self) -> None:
        """Release the state folder (the sinks belong to the service)."""
        self.lock.release()


@dataclass
class Runtime:
    """Where a service reads from, writes to and keeps its state: the embedded default
    (replay / JSONL / CSV, JSONL files, a local folder) or Kafka."""

    source: Any
    sinks: dict[str, Any]
    state: Any


def build_runtime(config: ServiceConfig, state_dir: str, digests: SettingsDigests,
                  pipeline: Pipeline) -> Runtime:
    """The runtime the config asks for. A local source is opened and checked against the
    streams before the state folder is locked (and so created): a refused config leaves
    nothing behind."""
    if config.source.kind == "kafka":
        from streamweights.runtime.kafka_runtime import (
            KafkaRuntime,
            warn_checkpoint_past_timeout,
        )

        assert config.kafka is not None  # the config requires the block
        kafka = KafkaRuntime(config.kafka, digests)
        warn_checkpoint_past_timeout(config.checkpoint_every_seconds,
                                     kafka.transaction_timeout_ms)
        kafka.source.max_event_time_skew = max(
            stream.max_event_time_skew_seconds for stream in config.streams)
        kafka.spread_above = config.checkpoint_spread_above
        kafka.spread_over = config.checkpoint_spread_over
        return Runtime(kafka.source, dict(kafka.sinks), kafka)
    source = make_source(config.source)
    check_source_matches_streams(source, pipeline)  # validate runs it too
    state = LocalCheckpoints(state_dir, config.checkpoint_spread_above,
                             config.checkpoint_spread_over)  # locked before the outputs
    try:
        sinks = {name: JsonlSink(path) for name, path in (
            ("adapted", config.adapted_path), ("weights", config.weights_path),
            ("dead_letter", config.dead_letter_path)) if path}
    except BaseException:
        state.close()
        raise
    return Runtime(source, sinks, state)


class _Children(dict):
    """A labelled Prometheus metric's children by their label values (a tuple, or one
    value), each made on first use: ``labels()`` costs about a microsecond, a lookup
    here a few tens of nanoseconds, and the service counts every record."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: Any) -> Any:
        child = self._metric.labels(*key) if type(key) is tuple else self._metric.labels(key)
        self[key] = child
        return child


def _decoded_or_none(raw: bytes) -> events.Record | None:
    """The record ``raw`` holds, or ``None``: for an internal error's dead letter, which
    names the record's stream and id when it has them."""
    try:
        return events.decode(raw)
    except Exception:
        return None


#: What ``RecordLane.drain`` stopped at (``native/src/lane.rs``): paused between records,
#: the source ended, a record for the general path, one the lane applied with something
#: to route, one the lane raised on.
_DRAIN_PAUSED, _DRAIN_ENDED, _DRAIN_GENERAL, _DRAIN_APPLIED, _DRAIN_FAILED = range(5)


class Service:
    """One service instance; its source, sinks and state backend come from
    :func:`build_runtime` (or are given, for tests and embedding)."""

    def __init__(self, config: ServiceConfig, *, state_dir: str | None = None,
                 max_records: int | None = None, runtime: Runtime | None = None,
                 max_events: int | None = None, fresh_changed_streams: bool = False,
                 drop_removed_streams: bool = False) -> None:
        """``max_records``: stop at this input position (see :meth:`run`); ``max_events``
        is its old name, kept for callers written before the rename.
        ``fresh_changed_streams``: a restore starts the streams whose settings changed
        since their records fresh, rather than refusing (``settings_digest``).
        ``drop_removed_streams``: a restore deletes the saved state of streams the config
        no longer has, rather than keeping it as saved."""
        self.config = config
        self.state_dir = state_dir or config.state_dir
        self.max_records = max_records if max_records is not None else max_events
        self.metrics = ServiceMetrics()
        self._gauges: dict[str, StreamGauges] = {}
        #: what each stream's gauges were last set from, and where the next progress
        #: line's refresh starts (``_refresh_streams``)
        self._refreshed_marks: dict[str, tuple[int, int, int]] = {}
        self._refresh_cursor = 0
        self._checkpoint_load = CheckpointLoad()
        #: holds the loop's next checkpoint back after a long one (many streams)
        self._pacer = CheckpointPacer(config.checkpoint_max_share)
        self._pacing_noted = False
        self.view = ServiceView()
        with collections_paused():
            self.pipeline = Pipeline(config.streams)
        self._refresh_order = list(self.pipeline.streams)
        self.artifacts: ArtifactStore | None = None
        if any(stream.torch is not None for stream in config.streams):
            self.artifacts = ArtifactStore(
                config.artifacts_dir or os.path.join(self.state_dir, "artifacts"),
                config.artifacts_retain)
            self.view.artifacts = self.artifacts
        self._settings_digests = settings_digests(config.streams)
        if runtime is None:
            runtime = build_runtime(config, self.state_dir, self._settings_digests,
                                    self.pipeline)
        else:  # given (tests, embedding): check it here
            try:
                check_source_matches_streams(runtime.source, self.pipeline)
            except BaseException:
                runtime.state.close()  # the state folder's lock
                raise
        self.source = runtime.source
        self.sinks = runtime.sinks
        self.state = runtime.state
        self.state.fresh_changed_streams = fresh_changed_streams
        self.state.drop_removed_streams = drop_removed_streams
        self.store = getattr(self.state, "store", None)
        self.position = 0
        self.records_seen = 0
        self.http: HttpServer | None = None
        #: A stop request (``request_stop``): the core's flag, which the lane's drain
        #: reads after every record without calling into Python, and which the Kafka
        #: source reads while it waits for input (``is_set``).
        self._stop = _native.StopFlag()
        #: The core's lane for the streams it takes whole (``None``: every record
        #: takes the general path, ``_process_general``).
        self._lane = self.pipeline.record_lane()
        #: Counter children by label values, made on first use (per record a lookup).
        self._event_counters = _Children(self.metrics.events)  # (stream, kind)
        self._joined_counters = _Children(self.metrics.joined)  # stream
        self._counted_lanes: list[Any] = []
        self._count_lane(self._lane)
        self._stream_keys: dict[str, bytes | None] = {}
        self._exhausted = False

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Stop after the current record (signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT stop after the current record (with a checkpoint); SIGUSR1
        writes every thread's Python stack to stderr and logs :meth:`report_state`, and
        the run goes on, so a replica that seems stuck (a commit waiting on the broker, a
        source waiting for input) shows where without a debugger (``kill -USR1 PID``)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGUSR1"):  # not on Windows
            # The stacks at once (from C, whatever the threads do); then, chained, the
            # state report, which Python runs on the main thread at its next bytecode.
            signal.signal(signal.SIGUSR1, self.report_state)
            faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)

    def report_state(self, *_: Any) -> None:
        """Log where the run stands (signal handler, SIGUSR1): input position, records
        seen and, from the state backend that has one (Kafka), its cycle, tasks and
        client."""
        describe = getattr(self.state, "describe", None)
        lines = describe() if describe is not None else []
        log.warning("state on request (SIGUSR1): position %d, %d record(s) seen%s",
                    self.position, self.records_seen,
                    "".join(f"; {line}" for line in lines))

    def start_http(self) -> None:
        if self.config.http_port is None:
            return
        try:
            self.http = HttpServer(self.config.http_host, self.config.http_port, self.view,
                                   self.metrics, token=load_http_token(
                                       self.config.http_token_file, os.environ),
                                   stream_names=tuple(self.pipeline.streams))
        except OSError as error:
            raise RuntimeSetupError(f"http.port: cannot listen on {self.config.http_host}:"
                                    f"{self.config.http_port} ({error.strerror})") from None
        self.http.start()
        log.info("http listening on %s:%d", self.config.http_host, self.http.port)

    def restore(self) -> None:
        with collections_paused():
            self.state.restore(self)
        return_freed_pages()  # (what reading the states back freed: runtime/heap.py)

    def checkpoint(self) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        changed = self.pipeline.changed_count()
        size = self.state.checkpoint(self)
        seconds = time.perf_counter() - started
        cpu = time.thread_time() - cpu
        rest = self._pacer.taken(cpu, time.monotonic(), changed)  # (the cadence's clock)
        if rest >= PACING_NOTED_SECONDS and not self._pacing_noted:
            self._pacing_noted = True
            log.info("a checkpoint took %.3f s of CPU: the next waits for %.3f s of records "
                     "at least, so that checkpoints take at most checkpoint.max_share (%.2f) "
                     "of the loop's time (said once)", cpu, rest,
                     self.config.checkpoint_max_share)
        self.metrics.checkpoint_duration.observe(seconds)
        self.metrics.snapshot_bytes.set(size)
        warning = self._checkpoint_load.record(seconds)
        if warning is not None:
            log.warning(warning)

    def run(self) -> dict[str, Any]:
        """Restore, process until the source ends, input position ``max_records`` or a
        stop request; checkpoint; return the summary. A bounded run whose last commit
        fails (Kafka) reads on from the committed offsets to the end again before it
        returns (``_redo_uncommitted``).

        ``max_records`` bounds the input *position*, not the records of this run: with a
        file or replay source the same bounded command ends at the same record whether or
        not an earlier attempt was killed half way (a restored run already at or past the
        bound processes nothing). A Kafka source numbers records from 0 in each process,
        so there it counts the records this process consumes."""
        if self.http is None:
            self.start_http()
        previous_interval = sys.getswitchinterval()
        sys.setswitchinterval(THREAD_SWITCH_INTERVAL)
        try:
            self.restore()
            self.view.ready = True
            self.metrics.ready.set(1)
            self._refresh_view()
            while True:
                if not self._exhausted and not self._bound_reached(self.position):
                    self._loop()
                self.checkpoint()
                if self.state.wait_committed():  # (Kafka: committed, not merely in flight)
                    break
                if not self._redo_uncommitted():
                    break
        finally:
            sys.setswitchinterval(previous_interval)
            for sink in self.sinks.values():
                sink.flush()
        return self.summary()

    def _redo_uncommitted(self) -> bool:
        """The run's last commit failed (Kafka: e.g. a broker restart fenced the producer
        and the answer came only after the input ended), so its tasks roll back to their
        last committed snapshots and offsets. A run that ended with its input reads on
        from there to the end again (``True``: loop once more), since a bounded run
        promises its outputs committed when it returns; one stopped by a request or
        ``--max-records`` ends as asked, its last cycle left to the next run (logged)."""
        if self._exhausted and not self._stop.is_set():
            log.warning("the run's last commit failed after its input ended: reading on "
                        "from the last committed offsets to the end again")
            self._exhausted = False
            return True
        log.warning("the last commit failed as the run stopped (a stop request or "
                    "--max-records): what was processed since the previous commit is not "
                    "committed; the next run resumes from the last committed offsets and "
                    "redoes it")
        return False

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        try:
            for sink in self.sinks.values():
                sink.close()
        finally:
            self.state.close()

    def _bound_reached(self, position: int) -> bool:
        """Input position ``position`` is at or past ``max_records`` (logged)."""
        if self.max_records is None or position < self.max_records:
            return False
        log.info("reached --max-records %d (input position %d)", self.max_records, position)
        return True

    # -- processing -------------------------------------------------------------------
    def _loop(self) -> None:
        config = self.config
        # Asked again here: a wrapper installed on the pipeline's process since the
        # service was built (``run --report``'s recorder) must see every record.
        self._lane = lane = self.pipeline.record_lane()
        self._count_lane(lane)
        drain = lane.drain if lane is not None else None
        adapted_wanted = "adapted" in self.sinks
        kill_at = faults.kill_position()
        last_checkpoint_records = 0
        last_checkpoint_time = last_progress = started = time.monotonic()
        progress_count = 0
        latency = {}
        bound = self.max_records
        bounded = bound is not None
        every_records = config.checkpoint_every_records
        every_seconds = config.checkpoint_every_seconds
        wait_cap = DEFERRED_CHECKPOINT_RECORDS * every_records
        in_flight = self.state.commit_in_flight
        paced = self._pacer.allows  # (a long checkpoint holds the next back)
        general, clock = self._process_general, time.perf_counter
        state, stop = self.__dict__, self._stop

        def deferred(since: int) -> bool:
            """A checkpoint now due waits, while the records keep coming, for the previous
            one's commit still in flight on the broker (Kafka), rather than blocking the
            loop on it: up to ``DEFERRED_CHECKPOINT_RECORDS`` intervals' worth of records,
            then it blocks as before."""
            return since < wait_cap and in_flight()

        def after(processed: int) -> bool:
            """What follows a record (or the last of a run the lane drained, which ends
            wherever one of these could act): the kill hook, the bound, the checkpoint
            cadence (the clock every 16 records), progress lines, a stop request. True:
            the loop ends."""
            nonlocal last_checkpoint_records, last_checkpoint_time, last_progress
            nonlocal progress_count
            if kill_at is not None and self.position == kill_at:
                faults.kill()
            if bounded and self.position >= bound and self._bound_reached(self.position):
                return True
            since = processed - last_checkpoint_records
            if (since >= every_records and not deferred(since)
                    and paced(time.monotonic())):
                self.checkpoint()
                last_checkpoint_records = processed
                last_checkpoint_time = time.monotonic()
            if processed & 15 == 0:  # the clock every 16 records: a 100 ms cadence holds
                now = time.monotonic()  # from ~200 records/s (slower inputs commit when idle)
                if (now - last_checkpoint_time >= every_seconds and not deferred(since)
                        and paced(now)):
                    self.checkpoint()
                    last_checkpoint_records, last_checkpoint_time = processed, now
                if processed & 255 == 0 and now - last_progress >= config.progress_every_seconds:
                    self._progress(processed - progress_count, now - last_progress,
                                   processed, now - started)
                    progress_count, last_progress = processed, now
            if stop.is_set():
                log.info("stop requested: checkpointing at input position %d", self.position)
                return True
            return False

        # Most records never reach this frame: the core's lane pulls them from the source
        # one at a time and applies them (``RecordLane.drain``: position and records_seen
        # moved, counted and timed by the lane, see ``_count_lane``), up to the next
        # record after which ``after`` could act, and hands back any record that needs
        # Python. A record the source has handed over is processed before a stop is
        # honoured: the Kafka source counts it as consumed in the offsets the stop commits.
        records = iter(self.source.open(self.position))
        processed = 0
        while True:
            status, result = _DRAIN_GENERAL, None
            if drain is not None:
                limit = 16 - (processed & 15)
                if processed - last_checkpoint_records < every_records:
                    limit = min(limit, every_records - (processed - last_checkpoint_records))
                done, status, item, result = drain(records, state, adapted_wanted,
                                                   max(limit, 1), stop, bound, kill_at)
                processed += done
                # Only a pause can fall where ``after`` acts (the drain pauses at the
                # first record after which it could): otherwise nothing was due after
                # the records it applied, and a record it pulled since (``item``) must
                # be processed before anything ends the loop, a stop included.
                if status == _DRAIN_PAUSED:
                    if after(processed):
                        return
                    continue
                if status == _DRAIN_ENDED:
                    break
            else:
                item = next(records, None)
                if item is None:
                    break
            position, raw = item
            processed += 1
            # (a file source may have skipped blank lines past the bound)
            if bounded and position >= bound and self._bound_reached(position):
                return
            if status == _DRAIN_APPLIED:  # by the lane, with something to route
                self._laned(result, position, raw)
            elif status == _DRAIN_FAILED:
                self._lane_failed(result, position, raw)
            else:  # the general path
                began = clock()
                kind = general(position, raw)
                child = latency.get(kind)
                if child is None:
                    child = latency[kind] = self.metrics.update_latency.labels(kind)
                child.observe(clock() - began)
            self.position = position + 1
            self.records_seen += 1
            if after(processed):
                return
        if self._stop.is_set():  # a live source returned because a stop was requested
            log.info("stop requested: checkpointing at input position %d", self.position)
            return
        self._exhausted = True
        if not self.state.finished_before():
            self._finish()

    def _lane_failed(self, error: Exception, position: int, raw: bytes) -> None:
        """The core's lane raised on a record (a bug, never a contract breach): the
        record is dead-lettered as ``internal_error`` and the loop goes on. Timed here as
        an ``invalid`` record (the lane times only what it applies)."""
        began = time.perf_counter()
        self._route(self._internal_error(error, "process", position, raw,
                                         _decoded_or_none(raw)), position)
        self.metrics.update_latency.labels("invalid").observe(time.perf_counter() - began)

    def _process_general(self, position: int, raw: bytes | Rejected) -> str:
        """Decode and apply one record the core's lane did not take (the loop tries the
        lane first). Nothing raised here stops the stream: a contract breach is
        dead-lettered with its reason, anything else (a bug) as ``internal_error``
        naming the exception, and the loop goes on. Returns the record's kind, or
        ``"invalid"``."""
        if isinstance(raw, Rejected):  # a source row that cannot become a record
            self._route(self.pipeline.reject(events.RecordError(raw.reason, raw.error), raw.raw,
                                             raw.stream, raw.id), position)
            return "invalid"
        try:
            record = events.decode(raw)
        except events.RecordError as error:
            self._route(self.pipeline.reject(error, raw), position)
            return "invalid"
        except Exception as error:
            self._route(self._internal_error(error, "decode", position, raw), position)
            return "invalid"
        kind = "prediction" if isinstance(record, events.Prediction) else "label"
        self._event_counters[record.stream, kind].inc()
        try:
            outcome = self.pipeline.process(record)
        except Exception as error:
            self._route(self._internal_error(error, "process", position, raw, record),
                        position)
            return "invalid"
        return self._deliver(outcome, kind, position, raw, record)

    def _laned(self, done: tuple[tuple[str, str], Any], position: int, raw: bytes) -> str:
        """Count and route a record the core's lane applied with something to write
        (``Pipeline.record_lane``): what the general path above does with the same
        outcome. (A record done with nothing to write is counted by the lane itself.)"""
        key, result = done
        self._event_counters[key].inc()
        if type(result) is bytes:  # the adapted record
            self.sinks["adapted"].write(result, key=self._stream_key(key[0]))
            return key[1]
        return self._deliver(result, key[1], position, raw)  # a refusal, a drift, a version

    def _count_lane(self, lane: Any) -> None:
        """Expose the records ``lane`` applies and counts itself (``done_counts``: those
        with nothing to route) in the event and joined counters, and the time it takes
        over every record it applies (``time_records``) in the latency histogram, once
        per lane."""
        if lane is None or lane in self._counted_lanes:
            return
        self._counted_lanes.append(lane)

        def events() -> dict[tuple[str, ...], float]:
            counts: dict[tuple[str, ...], float] = {}
            for stream, predictions, labels, _ in lane.done_counts():
                counts[stream, "prediction"] = predictions
                counts[stream, "label"] = labels
            return counts

        self.metrics.events.count_also(events)
        self.metrics.joined.count_also(
            lambda: {(stream,): joined for stream, _, _, joined in lane.done_counts()})
        latency = self.metrics.update_latency
        lane.time_records(list(latency.bounds))
        latency.observe_also(lambda: {(kind,): (counts, seconds)
                                      for kind, counts, seconds in lane.latency_counts()})

    def _deliver(self, outcome: Outcome, kind: str, position: int, raw: bytes,
                 record: events.Record | None = None) -> str:
        """Encode every output of a processed record, then route them (a record whose
        outputs cannot be encoded is dead-lettered as ``internal_error`` instead):
        ``kind``, or ``"invalid"``. ``record``: the decoded record, when there is one."""
        try:
            encoded = self._encode(outcome, "adapted" in self.sinks)
        except Exception as error:
            if record is None:
                record = _decoded_or_none(raw)
            self._route(self._internal_error(error, "process", position, raw, record),
                        position)
            return "invalid"
        self._route(outcome, position, raw, encoded)
        return kind

    def _internal_error(self, error: Exception, stage: str, position: int, raw: bytes,
                        record: events.Record | None = None) -> Outcome:
        """An unexpected exception on one record: a dead letter naming it, a counter and
        a log line with the traceback (which is what a bug report needs)."""
        origin = self.state.dead_letter_origin() or f"{self.source.name}@{position}"
        log.error("internal error while %s the record at %s: %s: %s (dead-lettered as "
                  "internal_error; the stream goes on)",
                  "decoding" if stage == "decode" else "processing", origin,
                  type(error).__name__, error, exc_info=True)
        message = f"{stage}: {type(error).__name__}: {error}"
        return self.pipeline.reject(events.RecordError("internal_error", message), raw,
                                    record.stream if record is not None else None,
                                    record.id if record is not None else None)

    @staticmethod
    def _encode(outcome: Outcome, adapted_wanted: bool = True
                ) -> tuple[bytes | None, list[bytes]]:
        """Every output of one record encoded before any is written, so a record that
        cannot be encoded writes nothing rather than half of its outputs. Without an
        adapted sink (``outputs.adapted`` / ``kafka.adapted_topic`` unset, the default)
        the adapted record is not encoded at all: ~0.6 µs per prediction for nothing."""
        adapted = None if outcome.adapted is None or not adapted_wanted \
            else events.encode(outcome.adapted)
        if not outcome.weights:  # most records publish no weights version
            return adapted, []
        return adapted, [events.encode(weights) for weights in outcome.weights]

    def _route(self, outcome: Outcome, position: int, raw: bytes | None = None,
               encoded: tuple[bytes | None, list[bytes]] | None = None) -> None:
        adapted, weights_encoded = encoded if encoded is not None else self._encode(outcome)
        if adapted is not None and "adapted" in self.sinks:
            self.sinks["adapted"].write(adapted, key=self._stream_key(outcome.adapted.stream)
                                        if outcome.adapted is not None else None)
        if outcome.artifacts:
            for artifact in outcome.artifacts:  # before the weights record that names it
                assert self.artifacts is not None  # a torch stream implies a store
                self.artifacts.write(artifact.stream, artifact.version, artifact.data,
                                     artifact.digest)
        if outcome.weights:
            for weights, weights_raw in zip(outcome.weights, weights_encoded, strict=True):
                self._emit_weights(weights, weights_raw)
        if outcome.dead_letters:
            for letter in outcome.dead_letters:
                self._dead_letter(letter, position, raw)
        if outcome.expired or outcome.evicted:
            stream = self._stream_of(outcome)
            if outcome.expired:
                self.metrics.expired.labels(stream, "ttl").inc(len(outcome.expired))
            if outcome.evicted:
                self.metrics.expired.labels(stream, "capacity").inc(len(outcome.evicted))
                log.warning("join full for stream %s: evicted %d oldest pending predictions",
                            stream, len(outcome.evicted))
        if outcome.learned:
            self._joined_counters[self._stream_of(outcome)].inc()
        if outcome.drift is not None:
            stream = self._stream_of(outcome)
            self.metrics.drift.labels(stream).inc()
            log.warning("drift detected on stream %s after %d labels; reaction: %s", stream,
                        outcome.drift["label_count"], outcome.drift["reaction"])

    def _stream_key(self, stream: str) -> bytes | None:
        """A stream's name as the Kafka message key of its outputs (what the sinks would
        read back from each record's ``stream`` field), encoded once per stream."""
        try:
            return self._stream_keys[stream]
        except KeyError:
            try:
                key = stream.encode("utf-8")
            except UnicodeEncodeError:  # no UTF-8 form: the sink reads the record
                key = None
            self._stream_keys[stream] = key
            return key

    def _stream_of(self, outcome: Outcome) -> str:
        return outcome.stream or "?"

    def _dead_letter(self, letter: DeadLetter, position: int, raw: bytes | None) -> None:
        self.metrics.invalid.labels(letter.reason).inc()
        self.state.on_dead_letter(letter.reason)
        origin = self.state.dead_letter_origin() or f"{self.source.name}@{position}"
        source_raw = letter.raw if letter.raw is not None else raw
        chunk = (source_raw or b"")[:DEAD_LETTER_MAX_RAW]
        try:
            text, exact = chunk.decode("utf-8"), None
        except UnicodeDecodeError:  # readable text for people, and the bytes as they came
            text, exact = chunk.decode("utf-8", "replace"), base64.b64encode(chunk).decode()
        # An exception's message may hold anything (a lone surrogate): made UTF-8-safe so
        # the dead letter itself always encodes.
        error = letter.error.encode("utf-8", "backslashreplace").decode("utf-8")
        record = {"schema": 1, "reason": letter.reason, "error": error,
                  "origin": origin, "stream": letter.stream, "id": letter.id, "record": text}
        if exact is not None:
            record["record_base64"] = exact
        if "dead_letter" in self.sinks:
            self.sinks["dead_letter"].write(orjson.dumps(record), headers=[
                ("reason", letter.reason.encode()), ("error", error.encode()),
                ("origin", origin.encode())])
        log.debug("dead letter at %s: %s", origin, letter.error)

    def _finish(self) -> None:
        """The input ended: publish a final weights version per stream."""
        for stream in self.pipeline.streams.values():
            if stream.latest_ts is None:
                continue
            self._emit_weights(stream.publish(stream.latest_ts))
        self._refresh_view()

    def _emit_weights(self, weights: events.Weights, encoded: bytes | None = None) -> None:
        """A new weights version: to the sink, to the HTTP view, into the metrics."""
        if encoded is None:  # (the core's lane hands its own exact-size bytes)
            encoded = events.encode_to_keep(weights)
        if "weights" in self.sinks:
            self.sinks["weights"].write(encoded, key=self._stream_key(weights.stream))
        self.view.weights[weights.stream] = encoded
        self._publish_metrics(weights.stream)

    # -- observability ----------------------------------------------------------------
    def _publish_metrics(self, name: str) -> None:
        stream = self.pipeline.streams[name]
        gauges = self._gauges.get(name)
        if gauges is None:  # (a stream's series, found once: runtime/stream_gauges.py)
            gauges = self._gauges[name] = StreamGauges(gauge_keys(self.metrics, stream))
        gauges.set_all(gauge_values(stream))
        self._refreshed_marks[name] = _refresh_mark(stream)
        if name in self.view.streams:  # this stream's entry alone: a replica may hold
            # 10,000 streams, and every one's weights version would rebuild every entry
            self.view.streams[name] = self._stream_view(stream)
        else:
            self._refresh_view()

    def _refresh_view(self) -> None:
        self.view.streams = {name: self._stream_view(s)
                             for name, s in self.pipeline.streams.items()}

    @staticmethod
    def _stream_view(s: Any) -> dict[str, Any]:
        return {"task": s.config.task, "models": list(s.config.models),
                "predictions": s.predictions, "labels": s.labels, "pending": len(s.join),
                "weights_version": s.weights_version, "drift_events": s.drift_total}

    def _progress(self, count: int, seconds: float, total: int, elapsed: float) -> None:
        streams = self.pipeline.streams
        if len(streams) <= PROGRESS_STREAMS_LISTED:
            parts = []
            for name, stream in streams.items():
                scores = stream.scores.summary()
                metric = "log_loss" if stream.classification else "mse"
                best = scores["raw_best"][metric] if scores["raw_best"] else float("nan")
                parts.append(f"{name}: pending {len(stream.join)}, raw-best {metric} "
                             f"{best:.4f}, adapted {scores['adapted'][metric]:.4f}, "
                             f"drift {stream.drift_total}")
            detail = "; ".join(parts)
        else:
            pending = sum(len(stream.join) for stream in streams.values())
            drift = sum(stream.drift_total for stream in streams.values())
            detail = (f"{len(streams):,} streams: {pending:,} predictions waiting for labels, "
                      f"{drift:,} drift alarms (per stream: /metrics, /v1/streams)")
        log.info("%d records (%.0f/s now, %.0f/s overall); %s", total, count / max(seconds, 1e-9),
                 total / max(elapsed, 1e-9), detail)
        self._refresh_streams(PROGRESS_REFRESH_SECONDS)

    def _refresh_streams(self, budget: float) -> None:
        """Set the gauges and the HTTP entry of each stream that took records since they
        were last set (by a weights version or here), in turn from where the last call
        stopped, for about ``budget`` seconds (at least one stream's worth). Between
        weights versions this keeps the pending count and the running scores current."""
        names = self._refresh_order
        if not names:
            return
        streams, marks = self.pipeline.streams, self._refreshed_marks
        deadline = time.perf_counter() + budget
        start = self._refresh_cursor
        for step in range(len(names)):
            index = (start + step) % len(names)
            stream = streams[names[index]]
            if marks.get(stream.name) == _refresh_mark(stream):
                continue
            self._publish_metrics(stream.name)
            if time.perf_counter() >= deadline:
                self._refresh_cursor = index + 1
                return

    def summary(self) -> dict[str, Any]:
        """Deterministic summary: per-stream prequential scores, final weights, counts."""
        return {"source": self.source.name, "records": self.records_seen,
                "complete": self._exhausted, **self.pipeline.summary()}
