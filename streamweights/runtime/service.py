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
  snapshot and the sink is truncated back to it on restore.
* No silent loss: every bad record is counted by reason and written to the dead-letter
  sink with its reason and origin; predictions that never get a label are counted.

Failure scenarios: kill -9 at any point loses at most the work since the last
checkpoint, which is recomputed from the input on restart. SIGTERM / SIGINT stop after
the current record, write a checkpoint, flush the sinks and exit 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from streamweights import events
from streamweights.config import ServiceConfig
from streamweights.pipeline import DeadLetter, Outcome, Pipeline
from streamweights.runtime.artifact_store import ArtifactStore
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.http import HttpServer, ServiceView
from streamweights.runtime.metrics import ServiceMetrics
from streamweights.runtime.sinks import JsonlSink
from streamweights.runtime.sources import ReplaySource, make_source
from streamweights.runtime.state_store import LocalStateStore

log = logging.getLogger("streamweights")

#: Dead-letter records keep at most this much of the offending input, so one oversized
#: record cannot blow up the dead-letter sink (the size itself is in the reason).
DEAD_LETTER_MAX_RAW = 64 * 1024


class LocalCheckpoints:
    """The embedded state backend: whole-service snapshots in a local folder."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.store = LocalStateStore(state_dir)

    def restore(self, service: Service) -> None:
        snapshot = self.store.load()
        if snapshot is None:
            log.info("no snapshot in %s: starting from the beginning", self.state_dir)
            return
        if snapshot["config_digest"] != service._config_digest:
            raise RuntimeSetupError(f"state_dir {self.state_dir}: its snapshot was taken with "
                                    "other stream settings; use a fresh state_dir or the old "
                                    "config")
        started = time.perf_counter()
        service.pipeline.load_state_dict(snapshot["pipeline"])
        service.position = int(snapshot["position"])
        service.records_seen = int(snapshot["records_seen"])
        service._exhausted = bool(snapshot.get("exhausted", False))
        for name, sink in service.sinks.items():
            sink.truncate(int(snapshot["sinks"].get(name, 0)))
        for name, stream in service.pipeline.streams.items():
            if stream.latest_weights is not None:
                service.view.weights[name] = events.encode(stream.latest_weights)
        log.info("restored snapshot from %s at input position %d in %.3fs", self.state_dir,
                 service.position, time.perf_counter() - started)

    def checkpoint(self, service: Service) -> int:
        for sink in service.sinks.values():
            sink.flush()
        return self.store.save({
            "pipeline": service.pipeline.state_dict(), "position": service.position,
            "records_seen": service.records_seen, "exhausted": service._exhausted,
            "sinks": {name: sink.position for name, sink in service.sinks.items()},
            "source": service.source.name, "config_digest": service._config_digest,
        })

    def on_dead_letter(self, reason: str) -> None:
        """Dead letters are counted in the pipeline state already."""

    def dead_letter_origin(self) -> str | None:
        return None

    def finished_before(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to release: the sinks belong to the service."""


@dataclass
class Runtime:
    """Where a service reads from, writes to and keeps its state: the embedded default
    (replay / JSONL / CSV, JSONL files, a local folder) or Kafka."""

    source: Any
    sinks: dict[str, Any]
    state: Any


def build_runtime(config: ServiceConfig, state_dir: str, config_digest: str) -> Runtime:
    """The runtime the config asks for."""
    if config.source.kind == "kafka":
        from streamweights.runtime.kafka_runtime import KafkaRuntime

        assert config.kafka is not None  # the config requires the block
        kafka = KafkaRuntime(config.kafka, config_digest)
        return Runtime(kafka.source, dict(kafka.sinks), kafka)
    source = make_source(config.source)
    sinks = {name: JsonlSink(path) for name, path in (
        ("adapted", config.adapted_path), ("weights", config.weights_path),
        ("dead_letter", config.dead_letter_path)) if path}
    return Runtime(source, sinks, LocalCheckpoints(state_dir))


class Service:
    """One service instance; its source, sinks and state backend come from
    :func:`build_runtime` (or are given, for tests and embedding)."""

    def __init__(self, config: ServiceConfig, *, state_dir: str | None = None,
                 max_events: int | None = None, runtime: Runtime | None = None) -> None:
        self.config = config
        self.state_dir = state_dir or config.state_dir
        self.max_events = max_events
        self.metrics = ServiceMetrics()
        self.view = ServiceView()
        self.pipeline = Pipeline(config.streams)
        self.artifacts: ArtifactStore | None = None
        if any(stream.torch is not None for stream in config.streams):
            self.artifacts = ArtifactStore(
                config.artifacts_dir or os.path.join(self.state_dir, "artifacts"),
                config.artifacts_retain)
            self.view.artifacts = self.artifacts
        self._config_digest = hashlib.sha256(orjson.dumps(
            [asdict(s) for s in config.streams])).hexdigest()
        if runtime is None:
            runtime = build_runtime(config, self.state_dir, self._config_digest)
        self.source = runtime.source
        self.sinks = runtime.sinks
        self.state = runtime.state
        self.store = getattr(self.state, "store", None)
        self._check_source_matches_streams()
        self.position = 0
        self.records_seen = 0
        self.http: HttpServer | None = None
        self._stop = threading.Event()
        self._event_counters: dict[tuple[str, str], Any] = {}
        self._joined_counters: dict[str, Any] = {}
        self._exhausted = False

    def _check_source_matches_streams(self) -> None:
        if isinstance(self.source, ReplaySource):
            stream = self.pipeline.streams.get(self.source.stream)
            if stream is None:
                raise RuntimeSetupError(f"source.stream: the replay emits stream "
                                        f"{self.source.stream!r}, which is not configured "
                                        f"(streams: {', '.join(self.pipeline.streams)})")
            if tuple(stream.config.models) != tuple(self.source.models):
                raise RuntimeSetupError(f"streams[{stream.name}].models: the replay's deployed "
                                        f"models are {list(self.source.models)}")

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Stop after the current record (signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def start_http(self) -> None:
        if self.config.http_port is None:
            return
        try:
            self.http = HttpServer(self.config.http_host, self.config.http_port, self.view,
                                   self.metrics)
        except OSError as error:
            raise RuntimeSetupError(f"http.port: cannot listen on {self.config.http_host}:"
                                    f"{self.config.http_port} ({error.strerror})") from None
        self.http.start()
        log.info("http listening on %s:%d", self.config.http_host, self.http.port)

    def restore(self) -> None:
        self.state.restore(self)

    def checkpoint(self) -> None:
        started = time.perf_counter()
        size = self.state.checkpoint(self)
        self.metrics.checkpoint_duration.observe(time.perf_counter() - started)
        self.metrics.snapshot_bytes.set(size)

    def run(self) -> dict[str, Any]:
        """Restore, process until the source ends, ``max_events`` or a stop request;
        checkpoint; return the summary."""
        if self.http is None:
            self.start_http()
        try:
            self.restore()
            self.view.ready = True
            self.metrics.ready.set(1)
            self._refresh_view()
            if not self._exhausted:
                self._loop()
            self.checkpoint()
        finally:
            for sink in self.sinks.values():
                sink.flush()
        return self.summary()

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        try:
            for sink in self.sinks.values():
                sink.close()
        finally:
            self.state.close()

    # -- processing -------------------------------------------------------------------
    def _loop(self) -> None:
        config = self.config
        last_checkpoint_records = 0
        last_checkpoint_time = last_progress = started = time.monotonic()
        progress_count = 0
        latency = {}
        for processed, (position, raw) in enumerate(self.source.open(self.position), start=1):
            # A record the source has handed over is processed before a stop is honoured:
            # the Kafka source counts it as consumed in the offsets the stop commits.
            began = time.perf_counter()
            kind = self._process(position, raw)
            child = latency.get(kind)
            if child is None:
                child = latency[kind] = self.metrics.update_latency.labels(kind)
            child.observe(time.perf_counter() - began)
            self.position = position + 1
            self.records_seen += 1
            if self.max_events is not None and processed >= self.max_events:
                log.info("reached --max-events %d", self.max_events)
                return
            if processed - last_checkpoint_records >= config.checkpoint_every_records:
                self.checkpoint()
                last_checkpoint_records = processed
                last_checkpoint_time = time.monotonic()
            if processed & 255 == 0:
                now = time.monotonic()
                if now - last_checkpoint_time >= config.checkpoint_every_seconds:
                    self.checkpoint()
                    last_checkpoint_records, last_checkpoint_time = processed, now
                if now - last_progress >= config.progress_every_seconds:
                    self._progress(processed - progress_count, now - last_progress,
                                   processed, now - started)
                    progress_count, last_progress = processed, now
            if self._stop.is_set():
                log.info("stop requested: checkpointing at input position %d", self.position)
                return
        if self._stop.is_set():  # a live source returned because a stop was requested
            log.info("stop requested: checkpointing at input position %d", self.position)
            return
        self._exhausted = True
        if not self.state.finished_before():
            self._finish()

    def _process(self, position: int, raw: bytes) -> str:
        try:
            record = events.decode(raw)
        except events.RecordError as error:
            self._route(self.pipeline.reject(error, raw), position)
            return "invalid"
        kind = "prediction" if isinstance(record, events.Prediction) else "label"
        counter = self._event_counters.get((record.stream, kind))
        if counter is None:
            counter = self.metrics.events.labels(record.stream, kind)
            self._event_counters[(record.stream, kind)] = counter
        counter.inc()
        outcome = self.pipeline.process(record)
        self._route(outcome, position, raw)
        return kind

    def _route(self, outcome: Outcome, position: int, raw: bytes | None = None) -> None:
        if outcome.adapted is not None and "adapted" in self.sinks:
            self.sinks["adapted"].write(events.encode(outcome.adapted))
        for artifact in outcome.artifacts:  # before the weights record that names it
            assert self.artifacts is not None  # a torch stream implies a store
            self.artifacts.write(artifact.stream, artifact.version, artifact.data,
                                 artifact.digest)
        for weights in outcome.weights:
            self._emit_weights(weights)
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
            stream = self._stream_of(outcome)
            counter = self._joined_counters.get(stream)
            if counter is None:
                counter = self._joined_counters[stream] = self.metrics.joined.labels(stream)
            counter.inc()
        if outcome.drift is not None:
            stream = self._stream_of(outcome)
            self.metrics.drift.labels(stream).inc()
            log.warning("drift detected on stream %s after %d labels; reaction: %s", stream,
                        outcome.drift["label_count"], outcome.drift["reaction"])

    def _stream_of(self, outcome: Outcome) -> str:
        return outcome.stream or "?"

    def _dead_letter(self, letter: DeadLetter, position: int, raw: bytes | None) -> None:
        self.metrics.invalid.labels(letter.reason).inc()
        self.state.on_dead_letter(letter.reason)
        origin = self.state.dead_letter_origin() or f"{self.source.name}@{position}"
        source_raw = letter.raw if letter.raw is not None else raw
        text = (source_raw or b"")[:DEAD_LETTER_MAX_RAW].decode("utf-8", "replace")
        record = {"schema": 1, "reason": letter.reason, "error": letter.error,
                  "origin": origin, "stream": letter.stream, "id": letter.id, "record": text}
        if "dead_letter" in self.sinks:
            self.sinks["dead_letter"].write(orjson.dumps(record), headers=[
                ("reason", letter.reason.encode()), ("error", letter.error.encode()),
                ("origin", origin.encode())])
        log.debug("dead letter at %s: %s", origin, letter.error)

    def _finish(self) -> None:
        """The input ended: publish a final weights version per stream."""
        for stream in self.pipeline.streams.values():
            if stream.latest_ts is None:
                continue
            self._emit_weights(stream.publish(stream.latest_ts))
        self._refresh_view()

    def _emit_weights(self, weights: events.Weights) -> None:
        """A new weights version: to the sink, to the HTTP view, into the metrics."""
        encoded = events.encode(weights)
        if "weights" in self.sinks:
            self.sinks["weights"].write(encoded)
        self.view.weights[weights.stream] = encoded
        self._publish_metrics(weights.stream)

    # -- observability ----------------------------------------------------------------
    def _publish_metrics(self, name: str) -> None:
        stream = self.pipeline.streams[name]
        metrics = self.metrics
        metrics.weights_version.labels(name).set(stream.weights_version)
        metrics.pending.labels(name).set(len(stream.join))
        for model, weight in stream.ensemble_weights().items():
            metrics.ensemble_weight.labels(name, model).set(weight)
        scores = stream.scores.summary()
        primary = "log_loss" if stream.classification else "mse"
        forecasters = {"adapted": scores["adapted"]}
        if scores["raw_best"] is not None:
            forecasters["raw_best"] = scores["raw_best"]
        forecasters.update({f"raw:{m}": s for m, s in scores["models"].items()})
        for label, values in forecasters.items():
            metrics.log_loss.labels(name, label).set(values[primary])
            if stream.classification:
                metrics.ece.labels(name, label).set(values["ece"])
        if stream.uncertainty is not None:
            metrics.publish_uncertainty(name, stream.uncertainty.summary())
        self._refresh_view()

    def _refresh_view(self) -> None:
        self.view.streams = {
            name: {"task": s.config.task, "models": list(s.config.models),
                   "predictions": s.predictions, "labels": s.labels, "pending": len(s.join),
                   "weights_version": s.weights_version, "drift_events": s.drift_total}
            for name, s in self.pipeline.streams.items()}

    def _progress(self, count: int, seconds: float, total: int, elapsed: float) -> None:
        parts = []
        for name, stream in self.pipeline.streams.items():
            scores = stream.scores.summary()
            metric = "log_loss" if stream.classification else "mse"
            best = scores["raw_best"][metric] if scores["raw_best"] else float("nan")
            parts.append(f"{name}: pending {len(stream.join)}, raw-best {metric} {best:.4f}, "
                         f"adapted {scores['adapted'][metric]:.4f}, drift {stream.drift_total}")
            self._publish_metrics(name)
        log.info("%d records (%.0f/s now, %.0f/s overall); %s", total, count / max(seconds, 1e-9),
                 total / max(elapsed, 1e-9), "; ".join(parts))

    def summary(self) -> dict[str, Any]:
        """Deterministic summary: per-stream prequential scores, final weights, counts."""
        return {"source": self.source.name, "records": self.records_seen,
                "complete": self._exhausted, **self.pipeline.summary()}
