"""Per-stream adaptation: join predictions with late labels, run the adapter chain,
score everything prequentially, publish weights, react to drift.

The pipeline is pure and deterministic: records in, records out, no I/O and no clock
(every time is event time from the records). The runtime feeds it records in a fixed
order and routes what comes back (adapted predictions, weights versions, dead letters);
restoring a snapshot and feeding the same remaining records gives the same numbers.

What happens per record (``design.md``):

* prediction — outputs are put in the configured model order and checked; every stage
  observes its input and predicts; the served probabilities and what each stage saw
  wait in the bounded join; an adapted record is emitted.
* label — the waiting prediction is taken from the join; the raw models and the served
  output are scored (test), then every stage learns on what it saw (train); if a drift
  memory in the chain confirmed a drift (its detector's alarm *and* evidence of a rise,
  see ``adapters/drift_evidence.py``), the configured reaction runs — on the stages whose
  own loss rose — and is recorded; every
  ``publish_every_labels`` labels or ``publish_every_seconds`` of event time a new
  weights version is emitted.
* anything wrong — a :class:`DeadLetter` naming the reason; counted, never dropped.

A stream with a ``torch:`` block also holds its deployed torch model
(:class:`~streamweights.adapters.torch.stream_model.DeployedTorchModel`): predictions
carry the model's input as ``features``; the adapted model's probabilities become its
row of the outputs (test-time adaptation observes the input once the record is
accepted), while the scores' "raw" row for it is the deployed model as shipped; labels
also train its Kalman head; and every ``export.every_updates`` adaptation steps a new
weights version carries a freshly exported weights file (``Outcome.artifacts``, written
to the artifact store by the runtime).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamweights import _native
from streamweights import events as _events
from streamweights.adapters import Adapter, DriftMemory, Portfolio, PriorShift
from streamweights.adapters.base import load_part
from streamweights.adapters.drift_evidence import RiseEvidence, update_log_losses
from streamweights.adapters.validation import NonFiniteUpdate, check_class_label
from streamweights.config import ENSEMBLE_TYPES, ConfigError, StreamConfig
from streamweights.events import Adapted, Label, Prediction, RecordError, Weights
from streamweights.join import Pending, PendingJoin
from streamweights.scoring import StreamScores
from streamweights.uncertainty import StreamUncertainty

#: Drift events remembered in the weights record (the count is exact; this is the tail).
DRIFT_HISTORY = 20

#: Evidence (e-value scale) a stage's own log-loss needs, when a drift is confirmed, to
#: count as a stage whose loss moved and so react (per-component reaction). The drift
#: itself already passed its memory's test at α = 1e-5; this only names the stages, at
#: α = 1e-3 (on stationary stages the statistic stays in the tens to hundreds).
STAGE_EVIDENCE = 1e3

#: A stage's log-loss is clipped here (as DriftMemory's), so one confident mistake costs
#: at most ln 1e6 ≈ 13.8.
_STAGE_LOSS_CLIP = 1e-6

#: Refused records, agreeing with each other, that move a stream's event time on past
#: ``join.max_event_time_skew_seconds`` (see ``StreamPipeline._check_event_time``). One
#: stray far-future ts is refused; a stream that really jumped loses two records.
SKEW_CONFIRMATIONS = 3


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be used, with why and where it came from."""

    reason: str
    error: str
    raw: bytes | None = None
    stream: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Artifact:
    """An exported weights file for the artifact store: its bytes and digest."""

    stream: str
    version: int
    data: bytes
    digest: str


@dataclass(slots=True, init=False)
class Outcome:
    """What one input record produced."""

    adapted: Adapted | None
    weights: list[Weights]
    dead_letters: list[DeadLetter]
    expired: list[Pending]
    evicted: list[Pending]
    drift: dict[str, Any] | None
    learned: bool
    stream: str | None
    artifacts: list[Artifact]

    def __init__(self, adapted: Adapted | None = None, weights: list[Weights] | None = None,
                 dead_letters: list[DeadLetter] | None = None,
                 expired: list[Pending] | None = None, evicted: list[Pending] | None = None,
                 drift: dict[str, Any] | None = None, learned: bool = False,
                 stream: str | None = None, artifacts: list[Artifact] | None = None) -> None:
        # Written out: one is made per record, and the generated ``__init__`` calls a
        # default factory per list (0.47 µs against 0.31 here).
        self.adapted = adapted
        self.weights = [] if weights is None else weights
        self.dead_letters = [] if dead_letters is None else dead_letters
        self.expired = [] if expired is None else expired
        self.evicted = [] if evicted is None else evicted
        self.drift = drift
        self.learned = learned
        self.stream = stream
        self.artifacts = [] if artifacts is None else artifacts


class StreamPipeline(_native.StreamCounters):
    """One stream's chain, join, scores and weights versions.

    Its counters and clocks (``predictions``, ``labels``, ``weights_version``,
    ``labels_since_publish``, ``last_publish_ts``, ``latest_ts``, ``changed``) are fields of
    the native base class: plain attributes to Python, and fields the core's record lane
    moves without a dictionary write (``native/src/stream_counters.rs``)."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.name = config.name
        self.classification = config.task == "classification"
        self.chain = config.build_chain()
        self.join = PendingJoin(config.max_pending, config.ttl_seconds)
        self.scores = StreamScores(list(config.models), self.classification)
        self._model_index = {name: i for i, name in enumerate(config.models)}
        self._outputs_shape = ((len(config.models), config.n_classes) if self.classification
                               else (len(config.models),))
        self._memories = [i for i, s in enumerate(self.chain.stages) if isinstance(s, DriftMemory)]
        self._memory_stages = [self.chain.stages[i] for i in self._memories]
        # Per-component reactions: the log-loss of every stage's output that is not a
        # memory (a memory passes its input through) carries its own rise evidence.
        self._tracked = [i for i in range(len(self.chain.stages)) if i not in self._memories]
        self._stage_evidence = {i: RiseEvidence() for i in self._tracked} \
            if self._memories and self.classification else {}
        #: Where each tracked stage's output is when the label comes: the next stage's
        #: input in the trace, or (the last stage) what was served (``None``).
        last = len(self.chain.stages) - 1
        self._loss_slots = [None if index == last else index + 1
                            for index in self._stage_evidence]
        self._evidence_cores = [evidence._core for evidence in self._stage_evidence.values()]
        # Per-record constants (the config is frozen): what the hot path would otherwise
        # look up or rebuild on every record.
        self._models = tuple(config.models)
        #: The native chain writes every trace entry as an array, and a snapshot gives
        #: arrays back as arrays: its traces need no re-wrapping when the label comes.
        self._array_trace = self.chain.native
        self._no_features = self.chain.n_features is None
        self._rows_path = self._no_features and config.torch is None and self.chain.native
        #: A classification stream on that path keeps the core's flat record of each
        #: prediction whole in the join; its label is learnt, scored, taught to the
        #: uncertainty layers and fed to the stages' evidence in one core call
        #: (``learn_served``), from the layout below.
        self._fused_labels = self._rows_path and self.classification
        self._all_scores = self.scores._all
        if self._fused_labels:
            ranges = self.chain.trace_ranges()
            self._raw_range, self._width = ranges[0], config.n_classes
            self._evidence_ranges = [ranges[-1] if slot is None else ranges[slot]
                                     for slot in self._loss_slots]
        self._every_labels = config.publish_every_labels
        self._every_seconds = config.publish_every_seconds
        self.predictions = 0
        self.labels = 0
        self.weights_version = 0
        self.labels_since_publish = 0
        self.last_publish_ts: float | None = None
        self.latest_ts: float | None = None
        self.skew_anchor: float | None = None  # see _check_event_time
        self.skew_count = 0
        self.drift_events: list[dict[str, Any]] = []
        self.drift_total = 0
        self.latest_weights: Weights | None = None
        self.latest_artifact: dict[str, Any] | None = None
        #: Touched since the state was last saved or loaded: an incremental snapshot
        #: writes only the streams with this set (see runtime/state_store.py).
        self.changed = False
        self.uncertainty = None  # conformal sets / label-free estimates, when configured
        if config.conformal is not None or config.performance_estimate is not None:
            self.uncertainty = StreamUncertainty(config.conformal, config.performance_estimate,
                                                 config.models, config.n_classes)
        self.torch_model = None
        if config.torch is not None:
            from streamweights.adapters.torch.stream_model import DeployedTorchModel

            path = f"streams[{self.name}].torch"
            try:
                self.torch_model = DeployedTorchModel(config.torch, config.n_classes, path)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            except ImportError as error:  # torch missing: "install streamweights[torch]"
                raise ConfigError(f"{path}: {error}") from None
            except (RuntimeError, MemoryError, OverflowError, TypeError) as error:
                # e.g. factory_options that ask torch for terabytes: a config error
                raise ConfigError(f"{path}: cannot build the model ({type(error).__name__}: "
                                  f"{error})") from None

    # -- records ----------------------------------------------------------------------
    def outputs_array(self, prediction: Prediction) -> np.ndarray:
        """The models' outputs as ``(K, C)`` (or ``(K,)``) in configured order."""
        outputs = prediction.outputs
        models = self._models
        if self.torch_model is None and len(outputs) == len(models):
            # Quick path for a well-formed record (every configured model, nothing else,
            # the right shape); anything else goes through the checks below, which say
            # what is wrong. The decoder has checked the values are finite numbers.
            try:
                array = np.array([outputs[m] for m in models], dtype=np.float64)
            except (KeyError, ValueError, TypeError):
                array = None
            if array is not None and array.shape == self._outputs_shape:
                return array
        torch_name = self.torch_model.name if self.torch_model is not None else None
        for model in outputs:
            if model == torch_name:
                raise RecordError("unknown_model", f"outputs.{model}: computed by the service "
                                  "from features (a torch model); do not send it")
            if model not in self._model_index:
                raise RecordError("unknown_model", f"outputs.{model}: unknown model for stream "
                                  f"{self.name!r} (configured: {', '.join(self.config.models)})")
        missing = [m for m in self.config.models if m not in outputs and m != torch_name]
        if missing:
            raise RecordError("missing_model", f"outputs.{missing[0]}: missing (stream "
                              f"{self.name!r} expects every configured model)")
        rows = [outputs.get(m, [0.0] * (self.config.n_classes or 1)) for m in self.config.models]
        if self.classification:
            width = self.config.n_classes
            for model, row in zip(self.config.models, rows, strict=True):
                if not isinstance(row, list) or len(row) != width:
                    raise RecordError("wrong_shape", f"outputs.{model}: expected {width} class "
                                      "probabilities")
        else:
            for model, row in zip(self.config.models, rows, strict=True):
                if isinstance(row, list):
                    raise RecordError("wrong_shape", f"outputs.{model}: expected one number")
        return np.array(rows, dtype=np.float64)

    def on_prediction(self, prediction: Prediction) -> Outcome:
        self.changed = True  # (set before the checks: a refused record may cost a write)
        ts = prediction.ts
        latest = self.latest_ts
        if latest is not None and not ts - latest <= self.config.max_event_time_skew_seconds:
            self._check_event_time(ts)  # (the same test first: most records pass it)
        # The quick path (no torch model, no feature stage: nothing between the checks
        # below and serving can refuse the record): the outputs go to the core as the
        # decoded lists; anything it does not clear takes the path below, which checks
        # and names what is wrong in the usual order.
        rows = self._quick_rows(prediction.outputs) if self._rows_path else None
        join = self.join
        if rows is not None and prediction.id not in join:
            try:
                buffer = self.chain.observe_predict_buffer(rows)
            except ValueError as error:
                raise RecordError("invalid_outputs", str(error)) from None
            if buffer is not None:  # the join keeps the core's flat record whole
                return self._served(prediction, self.chain.output_of(buffer), None,
                                    {"buffer": buffer})
        outputs = self.outputs_array(prediction)
        if prediction.id in join:
            raise RecordError("duplicate_id", f"id: prediction {prediction.id!r} is already "
                              "waiting for its label")
        head_features = inputs = frozen = None
        if self.torch_model is not None:
            try:
                inputs = self.torch_model.inputs(prediction.features)
            except ValueError as error:
                raise RecordError("invalid_features", str(error)) from None
            row, head_features = self.torch_model.serve(inputs)
            frozen = self.torch_model.frozen_probabilities(inputs)
            outputs[self._model_index[self.torch_model.name]] = row
        features = None
        if not self._no_features:
            try:  # a FeatureCorrection stage learns from the prediction's features
                features = self.chain.check_features(prediction.features)
            except ValueError as error:
                reason = "missing_features" if prediction.features is None \
                    else "invalid_features"
                raise RecordError(reason, str(error)) from None
        try:
            # The first stage is an ensemble (config enforces it): its observe is a no-op
            # and its predict validates the outputs before any later stage observes.
            served, trace = self.chain.observe_predict_trace(outputs, features)
        except ValueError as error:
            raise RecordError("invalid_outputs", str(error)) from None
        if inputs is not None:
            self.torch_model.observe(inputs)  # only once the record is accepted
        payload = {"trace": list(trace), "served": served}
        if head_features is not None:
            payload["head_features"] = head_features
        if frozen is not None:
            payload["frozen"] = frozen.tolist()
        return self._served(prediction, served, trace[0], payload)

    def _quick_rows(self, outputs: dict[str, Any]) -> list[Any] | None:
        """The decoded outputs in configured order when every configured model, and
        nothing else, is there (``None`` otherwise: ``outputs_array`` says what is wrong)."""
        if len(outputs) != len(self._models):
            return None
        try:
            return [outputs[m] for m in self._models]
        except KeyError:
            return None

    def _served(self, prediction: Prediction, served: np.ndarray, raw: np.ndarray | None,
                payload: dict[str, Any]) -> Outcome:
        """An accepted prediction, once the chain served it: time, join, uncertainty,
        the adapted record, publishing. ``payload`` is what waits in the join for the
        label: the core's flat record (``{"buffer": ...}``, ``raw`` ``None``: it is in
        there) or the trace and the served output."""
        outcome = Outcome(stream=self.name)
        ts = prediction.ts
        join = self.join
        self._advance_time(ts, outcome)
        wire = None
        proba = served.tolist() if self.classification else None
        if self.uncertainty is not None:  # the sets served now are the ones scored later
            if raw is not None:
                wire, kept = self.uncertainty.serve(
                    served, raw, None if proba is None else [proba, *raw.tolist()])
            elif self._fused_labels:
                wire, kept = self.uncertainty.serve_flat(payload["buffer"], self._raw_range,
                                                         self._width)
            else:
                wire, kept = self.uncertainty.serve(served, self.chain.input_of(
                    payload["buffer"]))
            if kept is not None:
                payload["conformal"] = kept
        evicted = join.add(prediction.id, ts, payload)
        if evicted:
            outcome.evicted = evicted
        self.predictions += 1
        if self.classification:
            outcome.adapted = Adapted(self.name, prediction.id, ts, proba, None,
                                      self.weights_version, sets=wire)
        else:
            outcome.adapted = Adapted(self.name, prediction.id, ts, None, float(served),
                                      self.weights_version, intervals=wire)
        if self.torch_model is not None:
            self._maybe_export(ts, outcome)
        self._maybe_publish(ts, outcome)
        return outcome

    def on_label(self, label: Label) -> Outcome:
        """Every check comes before the first change of state, and the first change is
        the chain's update, whose first stage (the ensemble) refuses a non-finite one
        before changing anything: a refused label leaves the stream as it was."""
        outcome = Outcome(stream=self.name)
        self.changed = True
        value = label.label
        if not (self.classification and type(value) is int
                and 0 <= value < self.config.n_classes):  # (the common case, checked)
            value = self._check_label(label)
        ts = label.ts
        latest = self.latest_ts
        if latest is not None and not ts - latest <= self.config.max_event_time_skew_seconds:
            self._check_event_time(ts)  # (the same test first: most records pass it)
        join = self.join
        pending = join.get(label.id)
        if pending is None:
            raise RecordError("unmatched_label", f"id: no prediction {label.id!r} is waiting "
                              "(never seen, already labelled, or expired)")
        payload = pending.payload
        buffer = payload.get("buffer")
        if buffer is not None:  # the core's flat record of the prediction
            if self._fused_labels:
                uncertainty = self.uncertainty
                try:
                    fired = _native.learn_served(
                        self.chain.core, buffer, value, self._all_scores, self._evidence_cores,
                        self._evidence_ranges, _STAGE_LOSS_CLIP,
                        None if uncertainty is None else uncertainty.core,
                        None if uncertainty is None
                        else uncertainty.thresholds(payload.get("conformal")))
                except NonFiniteUpdate as error:
                    raise RecordError("non_finite_state", f"label: {error}; the stream keeps "
                                      "its last good state") from None
                if fired is not None:
                    return self._learned(label, fired, outcome)
            served, trace = self.chain.split(buffer)  # the general path decides
        else:
            trace = tuple(payload["trace"]) if self._array_trace else \
                tuple(np.asarray(t) for t in payload["trace"])
            served = payload["served"]
            if type(served) is not np.ndarray:
                served = np.asarray(served)
        raw = trace[0]
        if "frozen" in payload:  # score the deployed torch model as it was shipped
            raw = raw.copy()
            raw[self._model_index[self.torch_model.name]] = payload["frozen"]
        memories = self._memory_stages
        drift_before = [memory.drift_count for memory in memories] if memories else None
        try:
            self.chain.learn_trace(trace, value)
        except NonFiniteUpdate as error:
            raise RecordError("non_finite_state", f"label: {error}; the stream keeps its "
                              "last good state") from None
        if self.torch_model is not None:
            self.torch_model.learn(payload.get("head_features"), value)
        join.pop(label.id)
        self._advance_time(ts, outcome)
        if self.classification and raw is trace[0]:  # the rows as lists, made once
            raw_rows, proba = raw.tolist(), served.tolist()
            self.scores.update(raw_rows, proba, value)
            if self.uncertainty is not None:
                self.uncertainty.learn(payload.get("conformal"), served, raw, value,
                                       [proba, *raw_rows])
        else:
            self.scores.update(raw, served, value)
            if self.uncertainty is not None:
                self.uncertainty.learn(payload.get("conformal"), served, trace[0], value)
        self.labels += 1
        self.labels_since_publish += 1
        outcome.learned = True
        if memories:
            # Each tracked stage's evidence gets the log-loss of what that stage output
            # (stage i's output is stage i+1's input; the last stage's is what was served:
            # a trace goes on after the stages' inputs with the portfolio's own rows).
            if self._evidence_cores:
                update_log_losses(self._evidence_cores,
                                  [served if slot is None else trace[slot]
                                   for slot in self._loss_slots], value, _STAGE_LOSS_CLIP)
            drift_after = [memory.drift_count for memory in memories]
            if drift_after != drift_before:
                fired = [i for i, b, a in zip(self._memories, drift_before, drift_after,
                                              strict=True) if a != b]
                outcome.drift = self._react_to_drift(label, fired)
        if self.torch_model is not None:
            self._maybe_export(ts, outcome)
        self._maybe_publish(ts, outcome)
        return outcome

    def _learned(self, label: Label, fired: list[int], outcome: Outcome) -> Outcome:
        """The rest of a label once ``learn_served`` taught the chain, scored the models
        and the served output, taught the uncertainty layers and fed each stage's
        evidence (what ``on_label``'s general path does, in the same order of state
        changes per part)."""
        ts = label.ts
        self.join.pop(label.id)
        self._advance_time(ts, outcome)
        self.labels += 1
        self.labels_since_publish += 1
        outcome.learned = True
        if fired:
            outcome.drift = self._react_to_drift(label, fired)
        self._maybe_publish(ts, outcome)
        return outcome

    def _check_label(self, label: Label) -> int | float:
        if not self.classification:
            return float(label.label)
        try:
            return check_class_label(label.label, "label", self.config.n_classes)
        except ValueError as error:
            raise RecordError("invalid_label", str(error)) from None

    def _check_event_time(self, ts: float) -> None:
        """Refuse an event time too far ahead of the stream's newest: accepted, it would
        expire every pending prediction and hold time-based publishing for good.

        A stream whose time really moved on (a pause longer than the limit, a producer's
        clock put right) is not refused for ever: ``SKEW_CONFIRMATIONS`` refused records
        that agree with each other (within the limit) move it on, the last one accepted."""
        latest = self.latest_ts
        limit = self.config.max_event_time_skew_seconds
        if latest is None or ts - latest <= limit:
            return
        anchor = self.skew_anchor
        if anchor is not None and abs(ts - anchor) <= limit:
            count = self.skew_count + 1
        else:
            anchor, count = ts, 1
        if count >= SKEW_CONFIRMATIONS:
            self.skew_anchor, self.skew_count = None, 0
            return
        self.skew_anchor, self.skew_count = anchor, count
        raise RecordError("event_time_skew", f"ts: {ts!r} is {ts - latest:.6g} s ahead of "
                          f"stream {self.name!r}'s newest event time ({latest!r}); the limit "
                          f"is join.max_event_time_skew_seconds = {limit:g} (refused "
                          f"{count} of {SKEW_CONFIRMATIONS} agreeing records that would "
                          "move the stream's time on)")

    def _advance_time(self, ts: float, outcome: Outcome) -> None:
        latest = self.latest_ts
        if latest is None or ts > latest:
            self.latest_ts = latest = ts
        join = self.join
        if not join.head_ts >= latest - join.ttl_seconds:  # expire's own test on its head
            outcome.expired.extend(join.expire(latest))

    # -- drift and publishing ---------------------------------------------------------
    def _moved_stages(self, fired: list[int]) -> list[int]:
        """The stages whose own log-loss shows a rise (``STAGE_EVIDENCE``); if none does,
        the stage that feeds the memory that confirmed the drift (its output is the loss
        that moved). Memories are always included (their reaction is idempotent)."""
        moved = [i for i, evidence in self._stage_evidence.items()
                 if evidence.statistic >= STAGE_EVIDENCE]
        if not moved:
            feeding = [max((i for i in self._tracked if i < memory), default=None)
                       for memory in fired]
            moved = sorted({i for i in feeding if i is not None})
        return sorted({*moved, *self._memories})

    def _react_to_drift(self, label: Label, fired: list[int]) -> dict[str, Any]:
        reaction = "on_drift" if self.config.react_to_drift else "none"
        stages = self._moved_stages(fired)
        if self.config.react_to_drift:
            if len(stages) == len(self.chain.stages):
                self.chain.on_drift()
            else:
                for index in stages:
                    self.chain.stages[index].on_drift()
            # The deployed torch model is an input of the first stage: it reacts with it.
            if self.torch_model is not None and 0 in stages:
                self.torch_model.on_drift()
        for index in stages:  # a stage that reacted starts a new baseline
            if index in self._stage_evidence:
                self._stage_evidence[index].reset()
        self.drift_total += 1
        event = {"n": self.drift_total, "ts": label.ts, "label_count": self.labels,
                 "reaction": reaction, "stages": stages}
        self.drift_events = [*self.drift_events, event][-DRIFT_HISTORY:]
        return event

    def _maybe_publish(self, ts: float, outcome: Outcome) -> None:
        """A new weights version when ``publish_every_labels`` labels or
        ``publish_every_seconds`` of event time (with a label since) have passed."""
        since, last = self.labels_since_publish, self.last_publish_ts
        if last is None:
            self.last_publish_ts = last = ts
        if since >= self._every_labels or (since > 0 and ts - last >= self._every_seconds):
            outcome.weights.append(self.publish(ts))

    def _maybe_export(self, ts: float, outcome: Outcome) -> None:
        """A torch stream adapted enough since its last export: a weights version with a
        new weights file."""
        if self.torch_model is None or not self.torch_model.export_due():
            return
        version = self.weights_version + 1
        data, digest = self.torch_model.export(self.name, version)
        self.latest_artifact = {"version": version, "digest": digest,
                                "location": artifact_location(self.name, version),
                                "format": "safetensors", "bytes": len(data)}
        outcome.artifacts.append(Artifact(self.name, version, data, digest))
        outcome.weights.append(self.publish(ts))

    def publish(self, ts: float) -> Weights:
        """Emit a new weights version describing every stage now."""
        self.changed = True
        self.weights_version += 1
        self.labels_since_publish = 0
        self.last_publish_ts = ts
        self.latest_weights = Weights(
            stream=self.name, version=self.weights_version, ts=ts,
            ensemble=self.ensemble_weights(), calibration=self._calibration(),
            prior=self._prior(), drift={"events": self.drift_total,
                                        "recent": list(self.drift_events)},
            artifact=None if self.latest_artifact is None else dict(self.latest_artifact),
            conformal=None if self.uncertainty is None else self.uncertainty.describe(),
            portfolio=self.portfolio())
        return self.latest_weights

    def ensemble_weights(self) -> dict[str, float]:
        """Per deployed model (a portfolio: ``Portfolio.model_weights``)."""
        first = self.chain.stages[0]
        weights = first.model_weights() if isinstance(first, Portfolio) else \
            getattr(first, "weights_", None)
        if weights is None or len(weights) != len(self.config.models):
            return {}
        return {m: float(w) for m, w in zip(self.config.models, weights, strict=True)}

    def portfolio(self) -> dict[str, Any] | None:
        """The portfolio's candidate weights, losses and regret (``None``: no portfolio)."""
        first = self.chain.stages[0]
        return first.describe() if isinstance(first, Portfolio) else None

    def portfolio_weights(self) -> dict[str, float]:
        """``{candidate: weight}`` of a portfolio stream (empty otherwise)."""
        first = self.chain.stages[0]
        return first.candidate_weights() if isinstance(first, Portfolio) else {}

    def _calibration(self) -> dict[str, Any]:
        described = {}
        for index, stage in enumerate(self.chain.stages):
            if isinstance(stage, Portfolio):  # each candidate's calibrators, by candidate
                for name, candidate in zip(stage.names, stage.chains, strict=True):
                    for inner, part in enumerate(candidate.stages[1:], start=1):
                        described[f"{index}:{name}:{inner}:{type(part).__name__}"] = \
                            describe(part)
                continue
            if type(stage).__name__ in ENSEMBLE_TYPES or isinstance(stage, PriorShift):
                continue
            described[f"{index}:{type(stage).__name__}"] = describe(stage)
        return described

    def _prior(self) -> list[float] | None:
        for stage in self.chain.stages:
            if isinstance(stage, PriorShift):
                return [float(v) for v in stage.prior_]
        return None

    # -- state ------------------------------------------------------------------------
    def state_dict(self, join_entries: bool = True) -> dict[str, Any]:
        """The stream's whole state; without ``join_entries`` the join's waiting
        predictions are left out, for a snapshot that writes ``join.encoded_segments()``
        beside it (each entry encoded once, not every commit)."""
        return {
            "chain": self.chain.state_dict(), "join": self.join.state_dict(join_entries),
            "scores": self.scores.state_dict(), "predictions": self.predictions,
            "labels": self.labels, "weights_version": self.weights_version,
            "labels_since_publish": self.labels_since_publish,
            "last_publish_ts": self.last_publish_ts, "latest_ts": self.latest_ts,
            "skew_anchor": self.skew_anchor, "skew_count": self.skew_count,
            "drift_events": self.drift_events, "drift_total": self.drift_total,
            "stage_evidence": {str(i): e.get_state() for i, e in self._stage_evidence.items()},
            "latest_weights": None if self.latest_weights is None
            else self.latest_weights.to_json(),
            **({} if self.torch_model is None else {
                "torch": self.torch_model.state_dict(),
                "latest_artifact": self.latest_artifact}),
            **({} if self.uncertainty is None else {
                "uncertainty": self.uncertainty.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any], *, owned: bool = False) -> None:
        """Restore a state written by :meth:`state_dict`. ``owned``: the caller hands the
        tree over (it has just parsed it from a snapshot), so the adapters take their
        parts without copying them first (``load_part``; the copy of a default stream's
        chain was ~15% of restoring it)."""
        self.changed = False
        if owned:
            load_part(self.chain, state["chain"])
        else:
            self.chain.load_state_dict(state["chain"])
        self.join.load_state_dict(state["join"])
        self.scores.load_state_dict(state["scores"])
        self.predictions = int(state["predictions"])
        self.labels = int(state["labels"])
        self.weights_version = int(state["weights_version"])
        self.labels_since_publish = int(state["labels_since_publish"])
        self.last_publish_ts = state["last_publish_ts"]
        self.latest_ts = state["latest_ts"]
        self.skew_anchor = state.get("skew_anchor")  # absent from older snapshots
        self.skew_count = int(state.get("skew_count", 0))
        self.drift_events = list(state["drift_events"])
        self.drift_total = int(state["drift_total"])
        # Absent from snapshots written before per-stage evidence: it starts afresh.
        for index, evidence in self._stage_evidence.items():
            saved = state.get("stage_evidence", {}).get(str(index))
            if saved is None:
                evidence.reset()
            else:
                evidence.set_state(saved)
        latest = state["latest_weights"]
        self.latest_weights = None if latest is None else Weights(
            **{k: v for k, v in latest.items() if k != "schema"})
        if self.torch_model is not None:
            if "torch" not in state:
                raise ValueError(f"snapshot: stream {self.name!r} has no torch state; was it "
                                 "taken before the torch block was added?")
            self.torch_model.load_state_dict(state["torch"])
            self.latest_artifact = state["latest_artifact"]
        if self.uncertainty is not None:
            if "uncertainty" not in state:
                raise ValueError(f"snapshot: stream {self.name!r} has no conformal / "
                                 "performance_estimate state; was it taken before the block "
                                 "was added? Replay the stream from the start")
            self.uncertainty.load_state_dict(state["uncertainty"], owned=owned)

    def summary(self) -> dict[str, Any]:
        return {"task": self.config.task, "models": list(self.config.models),
                "predictions": self.predictions, "labels": self.labels,
                "pending": len(self.join), "expired": self.join.expired_total,
                "evicted": self.join.evicted_total, "drift_events": self.drift_total,
                "weights_version": self.weights_version, "scores": self.scores.summary(),
                "weights": None if self.latest_weights is None
                else self.latest_weights.to_json(),
                **({} if self.uncertainty is None else self.uncertainty.summary())}


def artifact_location(stream: str, version: int) -> str:
    """Where a weights file lives relative to the artifact store's root (the store in
    ``runtime/artifact_store.py`` uses the same layout)."""
    from urllib.parse import quote

    return f"{quote(stream, safe='')}/{version:010d}.safetensors"


def describe(stage: Adapter) -> dict[str, Any]:
    """The few numbers a dashboard shows for a stage (plain floats)."""
    found: dict[str, Any] = {}
    for attribute in ("coefficients_", "temperature_", "biases_", "forgetting_", "drift_count",
                      "guard_weight_"):  # FeatureCorrection: how far its head is trusted
        value = getattr(stage, attribute, None)
        if value is None:
            continue
        if isinstance(value, np.ndarray | tuple | list):
            found[attribute.rstrip("_")] = [float(v) for v in np.ravel(value)]
        else:
            found[attribute.rstrip("_")] = float(value)
    if hasattr(stage, "base"):
        found["base"] = describe(stage.base)
    return found


def _no_clock() -> float:
    """The stamp of a record when ``process_many`` is given no clock."""
    return 0.0


class Pipeline:
    """All configured streams; routes each record to its stream."""

    def __init__(self, streams: list[StreamConfig] | tuple[StreamConfig, ...]) -> None:
        self.streams = {config.name: StreamPipeline(config) for config in streams}
        self.invalid: dict[str, int] = {}
        #: Where streams note that they changed (see :meth:`changed_streams`).
        self._changes = _native.ChangedStreams(len(self.streams))
        self._stream_order = list(self.streams.items())
        for index, stream in enumerate(self.streams.values()):
            stream.attach_changes(self._changes, index)
        self._lane: Any = False  # built by record_lane() on first use

    def process(self, record: Prediction | Label) -> Outcome:
        """Apply one decoded record; a bad one comes back as a dead letter."""
        stream = self.streams.get(record.stream)
        try:
            if stream is None:
                raise RecordError("unknown_stream", f"stream: unknown stream {record.stream!r} "
                                  f"(configured: {', '.join(self.streams)})")
            if isinstance(record, Prediction):
                return stream.on_prediction(record)
            return stream.on_label(record)
        except RecordError as error:
            return self.reject(error, None, record.stream, record.id)

    def process_many(self, raws: Iterable[bytes], clock: Callable[[], float] | None = None
                     ) -> list[tuple[str, Outcome | None, Any, float]]:
        """Decode, apply and encode a run of raw records, in order, each exactly as
        ``events.decode`` -> :meth:`process` -> ``events.encode`` would one at a time:
        state, outputs, dead letters and counters are the same whatever the run's
        boundaries (every record is finished before the next one starts; what a run
        saves is the per-record dispatch, not any of the work).

        One ``(kind, outcome, encoded, stamp)`` per record:

        * ``"prediction"`` / ``"label"``: a decoded record; ``outcome`` is what it
          produced (a dead letter if its stream refused it) and ``encoded`` its outputs as
          ``(adapted bytes or None, [weights bytes])``, encoded before any is written;
        * ``"invalid"``: refused at decode; ``outcome`` holds the dead letter, ``encoded``
          is ``(None, [])``;
        * ``"error"``: an unexpected exception (a bug, never a contract breach); nothing
          is counted here: ``outcome`` is ``None`` and ``encoded`` is ``(stage, error,
          record)``, ``stage`` ``"decode"`` or ``"process"`` and ``record`` the decoded
          record or ``None``, for the caller to log and dead-letter.

        ``stamp`` is ``clock()`` read once the record is done (``0.0`` without a clock):
        the runtime passes its clock to time each record of a run; the pipeline reads
        none of its own."""
        decode, encode, process = _events.decode, _events.encode, self.process
        stamp = clock if clock is not None else _no_clock
        results: list[tuple[str, Outcome | None, Any, float]] = []
        append = results.append
        for raw in raws:
            try:
                record = decode(raw)
            except RecordError as error:
                append(("invalid", self.reject(error, raw), (None, []), stamp()))
                continue
            except Exception as error:
                append(("error", None, ("decode", error, None), stamp()))
                continue
            kind = "prediction" if type(record) is Prediction else "label"
            try:
                outcome = process(record)
                adapted = outcome.adapted
                encoded = (None if adapted is None else encode(adapted),
                           [encode(weights) for weights in outcome.weights]
                           if outcome.weights else [])
            except Exception as error:
                append(("error", None, ("process", error, record), stamp()))
                continue
            append((kind, outcome, encoded, stamp()))
        return results

    def record_lane(self) -> Any | None:
        """The core's record lane over the streams it can take whole, or ``None`` when
        none can: a classification stream whose chain the core drives (no torch model,
        no feature stage), with its conformal sets and estimates. ``lane.process(raw,
        adapted)`` applies a raw record exactly as ``events.decode`` -> :meth:`process`
        -> ``events.encode`` of its adapted record would, or returns ``None`` with
        nothing changed (``native/src/lane.rs`` says which records it takes and what it
        returns). Built once; it holds the stream objects, which live as long as this.

        ``None`` too while :meth:`process` is wrapped (an instance attribute, as
        ``evaluation.trace.TraceRecorder`` installs): the lane would bypass the wrapper,
        so every record goes through it instead."""
        if "process" in self.__dict__:
            return None
        if self._lane is not False:
            return self._lane
        entries = []
        for name, stream in self.streams.items():
            chain, join = stream.chain, stream.join
            if not (stream._fused_labels and stream.torch_model is None
                    and chain.core is not None and stream._every_labels < 1 << 62):
                continue
            uncertainty = stream.uncertainty
            if uncertainty is not None:
                uncertainty = (uncertainty, bool(uncertainty.layers), uncertainty._kept_shape,
                               [orjson.dumps(key) for key in uncertainty._keys],
                               stream._raw_range)
            entries.append((stream, name, list(stream.config.models), stream.config.n_classes,
                            float(stream.config.max_event_time_skew_seconds),
                            join.ttl_seconds, join.max_pending, stream._every_labels,
                            float(stream._every_seconds), chain._size, chain._output,
                            stream._all_scores, stream._evidence_cores,
                            list(stream._evidence_ranges), _STAGE_LOSS_CLIP, uncertainty))
        self._lane = None if not entries else _native.RecordLane(
            weakref.ref(self), entries,
            (Label, RecordError, NonFiniteUpdate, Outcome),
            _events.DEFAULT_MAX_RECORD_BYTES)
        return self._lane

    def reject(self, error: RecordError, raw: bytes | None, stream: str | None = None,
               record_id: str | None = None) -> Outcome:
        """Count a bad record by reason and turn it into a dead letter."""
        self.invalid[error.reason] = self.invalid.get(error.reason, 0) + 1
        return Outcome(dead_letters=[DeadLetter(error.reason, str(error), raw, stream,
                                                record_id)], stream=stream)

    def state_dict(self) -> dict[str, Any]:
        return {"streams": {name: s.state_dict() for name, s in self.streams.items()},
                "invalid": dict(self.invalid)}

    def changed_streams(self) -> list[str]:
        """Names of the streams touched since their state was last saved or loaded, in
        config order. Read from the streams' own notes of their flag turning on and off
        (:meth:`changed_indices`), so its cost follows the streams changed, not the
        streams held (a scan of 10,000 flags was ~0.7 ms of every commit)."""
        order = self._stream_order
        return [order[index][0] for index in self._changes.changed().tolist()]

    def changed_indices(self) -> np.ndarray:
        """The changed streams' places in config order (``int64``, ascending), for a
        caller that keeps its own per-stream arrays in that order."""
        return self._changes.changed()

    def changed_count(self) -> int:
        """How many streams :meth:`changed_streams` would name, without listing them."""
        return self._changes.count()

    def load_state_dict(self, state: dict[str, Any], *, owned: bool = False,
                        fresh: Collection[str] = ()) -> None:
        """Restore every stream (``owned``: see :meth:`StreamPipeline.load_state_dict`)
        but those in ``fresh``, which stay as built (new to the config, or their settings
        changed since the state was saved); states of streams not held are left alone."""
        missing = set(self.streams) - set(state["streams"]) - set(fresh)
        if missing:
            raise ValueError(f"snapshot: has no state for stream(s) {sorted(missing)}; was it "
                             "taken with another config?")
        for name, stream in self.streams.items():
            if name not in fresh:
                stream.load_state_dict(state["streams"][name], owned=owned)
        self.invalid = {k: int(v) for k, v in state["invalid"].items()}

    def summary(self) -> dict[str, Any]:
        return {"streams": {name: s.summary() for name, s in self.streams.items()},
                "invalid": dict(self.invalid)}
