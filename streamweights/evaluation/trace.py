"""The time series a report plots, recorded while a pipeline runs, and their files.

:class:`TraceRecorder` wraps :meth:`Pipeline.process <streamweights.pipeline.Pipeline.process>`
and, for every record, keeps what the report needs and the pipeline does not keep: per
labelled event the raw models' outputs, the ensemble's output (the input of any
calibrator: "before calibration"), the served output and the label; the ensemble weights
and the prior-shift estimate every few labels; every drift alarm; and, every few
hundred records, the pending labels per stream and the records processed against the
wall clock (throughput). It reads the pipeline through public methods only and changes
nothing in it, so a recorded run gives the same numbers as an unrecorded one.

The evaluation suite records its default-chain run this way; ``streamweights run
--report DIR`` installs one on the service's pipeline. ``save`` writes ``trace.json``
(metadata, drift alarms, samples) and one ``trace-<i>.npz`` of arrays per stream;
:func:`load_trace` reads them back for :mod:`streamweights.report`.

Memory: about ``(K + 2) * C + 4`` floats per labelled event, i.e. a few MB per 100,000
events; a report run is meant for a replay or a bounded file, not for weeks of traffic.
"""

from __future__ import annotations

import json
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamweights.adapters import Portfolio, PriorShift
from streamweights.config import ENSEMBLE_TYPES
from streamweights.events import Label, Prediction, RecordError
from streamweights.pipeline import Outcome, Pipeline, StreamPipeline

TRACE_FORMAT = 1
#: Calibrating stages: a chain holding one has a "before calibration" to show.
CALIBRATORS = ("OnlinePlatt", "OnlineBetaScaling", "Calibeating", "OnlineTemperature")


class StreamTrace:
    """What one stream's report needs, accumulated record by record."""

    def __init__(self, stream: StreamPipeline, weights_every_labels: int) -> None:
        self.stream = stream
        config = stream.config
        self.classification = stream.classification
        self.weights_every_labels = weights_every_labels
        types = [spec["type"] for spec in config.adapters]
        self.has_ensemble = bool(types) and types[0] in ENSEMBLE_TYPES
        first = stream.chain.stages[0]
        if isinstance(first, Portfolio):  # its candidates' calibrators count
            types += [type(s).__name__ for chain in first.chains for s in chain.stages]
        self.has_calibrator = any(t in CALIBRATORS for t in types)
        self._pending: dict[str, tuple[float, list, Any, Any]] = {}
        self.prediction_ts: list[float] = []
        self.label_ts: list[float] = []
        self.labels: list[float] = []
        self.raw: list[Any] = []
        self.before: list[Any] = []
        self.served: list[Any] = []
        self.weights_ts: list[float] = []
        self.weights_labels: list[int] = []
        self.weights: list[list[float]] = []
        #: A portfolio stream's candidate weights, sampled with the ensemble weights.
        self.portfolio_labels: list[int] = []
        self.portfolio_ts: list[float] = []
        self.portfolio: list[list[float]] = []
        self.prior_ts: list[float] = []
        self.prior: list[list[float]] = []
        self.drift: list[dict[str, Any]] = []
        #: Conformal levels (as the adapted records write them) and, per labelled event,
        #: whether the served set / interval covered the label and its size, per level.
        self.levels: list[str] = []
        self.covered: list[list[float]] = []
        self.set_size: list[list[float]] = []

    @property
    def prior_stage(self) -> PriorShift | None:
        """Looked up each time: restoring a snapshot may replace the chain's stages."""
        return next((s for s in self.stream.chain.stages if isinstance(s, PriorShift)), None)

    def before_prediction(self, prediction: Prediction) -> tuple[list, Any] | None:
        """The raw outputs and the ensemble's output for a prediction about to be
        processed (the ensemble's predict is pure and its observe a no-op, so this is what
        the chain's first stage will hand on)."""
        try:
            outputs = self.stream.outputs_array(prediction)
            first = self.stream.chain.stages[0]
            before = None if not self.has_ensemble else first.before_calibration(outputs) \
                if isinstance(first, Portfolio) else first.predict(outputs)
        except (RecordError, ValueError):
            return None
        return outputs.tolist(), None if before is None else before.tolist()

    def after(self, record: Prediction | Label, outcome: Outcome,
              seen: tuple[list, Any] | None) -> None:
        for entry in (*outcome.expired, *outcome.evicted):
            self._pending.pop(entry.id, None)
        if isinstance(record, Prediction):
            adapted = outcome.adapted
            if adapted is not None and seen is not None:
                served = adapted.proba if self.classification else adapted.value
                shown = adapted.sets if self.classification else adapted.intervals
                self._pending[record.id] = (record.ts, seen[0], seen[1], served, shown)
            return
        if not outcome.learned:
            return
        entry = self._pending.pop(record.id, None)
        if entry is None:  # predicted before recording started (a restored run)
            return
        self.prediction_ts.append(entry[0])
        self.label_ts.append(record.ts)
        self.labels.append(float(record.label))
        self.raw.append(entry[1])
        self.before.append(entry[2])
        self.served.append(entry[3])
        if entry[4] is not None:
            self._record_coverage(entry[4], record.label)
        if outcome.drift is not None:
            self.drift.append({"ts": record.ts, "label_count": outcome.drift["label_count"],
                               "n": outcome.drift["n"], "reaction": outcome.drift["reaction"]})
        if len(self.labels) % self.weights_every_labels == 0 or outcome.drift is not None:
            self._sample_weights(record.ts)

    def _record_coverage(self, shown: dict[str, list], label: Any) -> None:
        """Whether the set / interval served for this label covered it, and its size."""
        if not self.levels:
            self.levels = list(shown)
        covered, sizes = [], []
        for level in self.levels:
            if self.classification:
                covered.append(1.0 if int(label) in shown[level] else 0.0)
                sizes.append(float(len(shown[level])))
            else:
                lo, hi = shown[level]
                lo = -np.inf if lo is None else lo
                hi = np.inf if hi is None else hi
                covered.append(1.0 if lo <= float(label) <= hi else 0.0)
                sizes.append(hi - lo)
        self.covered.append(covered)
        self.set_size.append(sizes)

    def _sample_weights(self, ts: float) -> None:
        weights = self.stream.ensemble_weights()
        if weights:
            self.weights_ts.append(ts)
            self.weights_labels.append(len(self.labels))
            self.weights.append(list(weights.values()))
        candidates = self.stream.portfolio_weights()
        if candidates:
            self.portfolio_ts.append(ts)
            self.portfolio_labels.append(len(self.labels))
            self.portfolio.append(list(candidates.values()))
        prior_stage = self.prior_stage
        if prior_stage is not None:
            self.prior_ts.append(ts)
            self.prior.append(prior_stage.prior_.tolist())

    def arrays(self) -> dict[str, np.ndarray]:
        def matrix(rows: list, width: int) -> np.ndarray:
            return np.array(rows, dtype=np.float64) if rows else np.zeros((0, width))

        n_models = len(self.stream.config.models)
        n_classes = self.stream.config.n_classes or 1
        has_before = self.before and self.before[0] is not None
        return {
            "prediction_ts": np.array(self.prediction_ts, dtype=np.float64),
            "label_ts": np.array(self.label_ts, dtype=np.float64),
            "labels": np.array(self.labels, dtype=np.float64),
            "raw": np.array(self.raw, dtype=np.float64) if self.raw else np.zeros(
                (0, n_models, n_classes) if self.classification else (0, n_models)),
            "before": matrix(self.before, n_classes) if has_before else np.zeros(
                (0, n_classes)),
            "served": np.array(self.served, dtype=np.float64) if self.served else np.zeros(
                (0, n_classes) if self.classification else (0,)),
            "weights_ts": np.array(self.weights_ts, dtype=np.float64),
            "weights_labels": np.array(self.weights_labels, dtype=np.int64),
            "weights": matrix(self.weights, n_models),
            "portfolio_ts": np.array(self.portfolio_ts, dtype=np.float64),
            "portfolio_labels": np.array(self.portfolio_labels, dtype=np.int64),
            "portfolio": matrix(self.portfolio, len(self.stream.portfolio_weights())),
            "prior_ts": np.array(self.prior_ts, dtype=np.float64),
            "prior": matrix(self.prior, n_classes),
            "covered": matrix(self.covered, len(self.levels)),
            "set_size": matrix(self.set_size, len(self.levels)),
        }


class TraceRecorder:
    """Wraps a pipeline's ``process`` and records as records go by.

    >>> from streamweights.config import StreamConfig
    >>> from streamweights.events import Label, Prediction
    >>> pipeline = Pipeline([StreamConfig("s", "classification", 2, ("a", "b"),
    ...                                   ({"type": "Hedge"},))])
    >>> recorder = TraceRecorder(pipeline).install()
    >>> _ = pipeline.process(Prediction("s", "e1", 1.0, {"a": [0.9, 0.1], "b": [0.5, 0.5]}))
    >>> _ = pipeline.process(Label("s", "e1", 2.0, 0))
    >>> recorder.streams["s"].arrays()["raw"].shape
    (1, 2, 2)
    """

    def __init__(self, pipeline: Pipeline, sample_every_records: int = 256,
                 weights_every_labels: int = 25) -> None:
        self.pipeline = pipeline
        self._process = pipeline.process
        self.sample_every_records = sample_every_records
        self.streams = {name: StreamTrace(stream, weights_every_labels)
                        for name, stream in pipeline.streams.items()}
        self.records = 0
        self._started = time.perf_counter()
        self._latest_ts = float("nan")
        self.samples: dict[str, list] = {"records": [], "seconds": [], "ts": [],
                                         **{f"pending:{n}": [] for n in self.streams}}

    def install(self) -> TraceRecorder:
        """Route the pipeline's ``process`` through this recorder."""
        self.pipeline.process = self.process  # type: ignore[method-assign]
        return self

    def process(self, record: Prediction | Label) -> Outcome:
        trace = self.streams.get(record.stream)
        seen = trace.before_prediction(record) if trace is not None and isinstance(
            record, Prediction) else None
        outcome = self._process(record)
        if trace is not None:
            trace.after(record, outcome, seen)
        self.records += 1
        self._latest_ts = record.ts
        if self.records % self.sample_every_records == 0:
            self.sample()
        return outcome

    def sample(self) -> None:
        """Record pending labels per stream and the wall-clock progress now."""
        self.samples["records"].append(self.records)
        self.samples["seconds"].append(time.perf_counter() - self._started)
        self.samples["ts"].append(self._latest_ts)
        for name, stream in self.pipeline.streams.items():
            self.samples[f"pending:{name}"].append(len(stream.join))

    def save(self, folder: str | pathlib.Path, meta: dict[str, Any] | None = None,
             change_points_ts: dict[str, list[float]] | None = None) -> pathlib.Path:
        """Write ``trace.json`` and ``trace-<i>.npz`` files into ``folder``."""
        if not self.samples["records"] or self.samples["records"][-1] != self.records:
            self.sample()
        path = pathlib.Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        streams = {}
        for index, (name, trace) in enumerate(self.streams.items()):
            stream = trace.stream
            np.savez_compressed(path / f"trace-{index}.npz", **trace.arrays())
            streams[name] = {
                "file": f"trace-{index}.npz", "task": stream.config.task,
                "models": list(stream.config.models), "n_classes": stream.config.n_classes,
                "chain": [dict(spec) for spec in stream.config.adapters],
                "candidates": list(stream.portfolio_weights()),
                "has_calibrator": trace.has_calibrator,
                "has_prior_shift": trace.prior_stage is not None,
                "drift_events": trace.drift, "drift_total": stream.drift_total,
                "conformal_levels": list(trace.levels),
                "change_points_ts": (change_points_ts or {}).get(name, []),
                "summary": stream.summary(),
            }
        document = {"format": TRACE_FORMAT, "records": self.records,
                    "samples": self.samples, "streams": streams, **(meta or {})}
        (path / "trace.json").write_text(json.dumps(document, indent=1, default=float),
                                         encoding="utf-8")
        return path


@dataclass
class StreamData:
    """One stream of a saved trace: its metadata and arrays."""

    name: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RunTrace:
    folder: pathlib.Path
    meta: dict[str, Any]
    streams: list[StreamData]


def load_trace(folder: str | pathlib.Path) -> RunTrace:
    """Read a folder written by :meth:`TraceRecorder.save`."""
    path = pathlib.Path(folder)
    index = path / "trace.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path}: no trace.json; record one with `streamweights run "
                                "--report DIR` or `streamweights evaluate --record DIR`")
    meta = json.loads(index.read_text(encoding="utf-8"))
    if meta.get("format") != TRACE_FORMAT:
        raise ValueError(f"{index}: trace format {meta.get('format')!r}, this version reads "
                         f"{TRACE_FORMAT}; re-record the run")
    streams = []
    for name, stream_meta in meta["streams"].items():
        with np.load(path / stream_meta["file"]) as arrays:
            streams.append(StreamData(name, stream_meta, {k: arrays[k] for k in arrays.files}))
    return RunTrace(path, meta, streams)
