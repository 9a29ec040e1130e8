"""Who competes on a stream: the raw deployed models, the uniform average, river's own
answers to the problem, and ours.

Every contender consumes one :class:`~streamweights.evaluation.episode.Episode` in the
service's order — a prediction is answered when it comes, the label is learned when it
arrives, possibly hundreds of events later — and returns its answer for every event.

* **raw** — each deployed model as it is (and, chosen later in hindsight, the best one).
* **baseline** — the uniform average of the K models.
* **river** — river 0.26 has no classifier that mixes experts by exponential weights, so:
  ``river EWA``: :class:`river.ensemble.EWARegressor` (river's exponentially weighted
  average forecaster, defaults: squared loss, learning rate 0.5) over the class-1
  probability (binary), one per class renormalised (multi-class), or the values
  (regression); ``river bandit``: :class:`river.model_selection.BanditClassifier` /
  ``BanditRegressor`` with ε-greedy (ε = 0.1), selecting one model by accuracy / R²
  (river's bandits keep the model with the *largest* metric, so a loss metric such as
  LogLoss or MAE would make them pick the worst model); ``river stacking``:
  :class:`river.ensemble.StackingClassifier` with a logistic (softmax for more classes)
  meta-model on the models' probabilities (classification only); ``river ADWIN
  retrain``: a river model on the raw features, trained on the same window as the
  deployed models and then learning online, reset when ADWIN flags its error stream
  (:class:`river.drift.DriftRetrainingClassifier` around a Hoeffding tree; for
  regression a small wrapper does the same around a standardised Hoeffding tree
  regressor). River's defaults are kept everywhere else; note that EWARegressor's
  learning rate 0.5 is not scale-free, so on regression targets with large errors its
  weights underflow to zero (it then predicts 0), which the results show. Frozen
  deployed models enter river as estimators that look their recorded output up by event.
* **ours** — each adapter alone where it applies (the three ensembles on the K models;
  calibrators and the prior-shift corrector on the uniform average, since a chain starts
  with an ensemble), each candidate of the default portfolio alone (``candidate: ...``)
  and the default chain of ``configs/demo.yaml``, all run through the
  service's own :class:`~streamweights.pipeline.Pipeline` (join, drift reaction, the lot).
"""

from __future__ import annotations

import math
import numbers
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import bandit, compose, drift, ensemble, metrics, model_selection, preprocessing, tree
from river import base as river_base
from river import linear_model as river_linear

from streamweights.adapters.portfolio import default_candidates
from streamweights.config import (
    DEFAULT_CLASSIFICATION_ADAPTERS,
    DEFAULT_REGRESSION_ADAPTERS,
    StreamConfig,
)
from streamweights.evaluation.episode import PREDICTION, Episode
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline

#: The chain of ``configs/demo.yaml`` and of a stream that names no adapters (a test
#: keeps the three equal): the portfolio of candidate chains, then the drift watch.
DEFAULT_CHAIN: tuple[dict[str, Any], ...] = DEFAULT_CLASSIFICATION_ADAPTERS
#: Regression streams take one ensemble stage: the portfolio of the three ensembles
#: (each of which also runs alone as a contender).
REGRESSION_CHAIN: tuple[dict[str, Any], ...] = DEFAULT_REGRESSION_ADAPTERS
#: Name prefix of the contenders that run one of the portfolio's candidates alone.
CANDIDATE = "candidate: "
BINARY_CALIBRATORS = ("OnlinePlatt", "OnlineBetaScaling", "Calibeating")
#: Feature key that carries the event index to the frozen river wrappers.
EVENT = "__event__"
AVERAGE_MODEL = "uniform_average"


@dataclass
class ContenderRun:
    """A contender's answer for every event (``(n, C)`` or ``(n,)``) and the seconds it
    spent consuming the stream (``None`` when it does no per-event work)."""

    predictions: np.ndarray
    seconds: float | None
    #: The pipeline an ``ours`` contender ran (for its drift alarms and weights).
    pipeline: Pipeline | None = None


@dataclass
class Contender(ABC):
    name: str
    family: str  # "raw", "baseline", "river" or "ours"
    description: str

    @abstractmethod
    def run(self, episode: Episode) -> ContenderRun: ...


# -- raw and baseline ---------------------------------------------------------------------
@dataclass
class RawModel(Contender):
    index: int = 0

    def run(self, episode: Episode) -> ContenderRun:
        return ContenderRun(episode.outputs[:, self.index], None)


@dataclass
class UniformAverage(Contender):
    def run(self, episode: Episode) -> ContenderRun:
        return ContenderRun(episode.outputs.mean(axis=1), None)


# -- river --------------------------------------------------------------------------------
class FrozenClassifier(river_base.Classifier):
    """A deployed model as a river classifier: its recorded probabilities, no learning."""

    def __init__(self, table: list, model: int) -> None:
        self.table = table
        self.model = model

    def learn_one(self, x: dict, y: Any) -> None:
        return None

    def predict_proba_one(self, x: dict) -> dict[int, float]:
        return dict(enumerate(self.table[x[EVENT]][self.model]))


class FrozenRegressor(river_base.Regressor):
    """A deployed model's recorded output (or one class's probability) as a regressor."""

    def __init__(self, table: list, model: int, column: int | None = None) -> None:
        self.table = table
        self.model = model
        self.column = column

    def learn_one(self, x: dict, y: Any) -> None:
        return None

    def predict_one(self, x: dict) -> float:
        value = self.table[x[EVENT]][self.model]
        return value if self.column is None else value[self.column]


class AdwinRetrainedRegressor:
    """A river regressor reset (re-cloned) whenever ADWIN flags its absolute error; the
    regression counterpart of :class:`river.drift.DriftRetrainingClassifier`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.detector = drift.ADWIN()

    def predict_one(self, x: dict) -> float:
        return float(self.model.predict_one(x))

    def learn_one(self, x: dict, y: float) -> None:
        self.detector.update(abs(self.predict_one(x) - y))
        if self.detector.drift_detected:
            self.model = self.model.clone()
        self.model.learn_one(x, y)


def _as_row(proba: dict, n_classes: int) -> list[float]:
    row = [max(float(proba.get(c, 0.0)), 0.0) for c in range(n_classes)]
    total = sum(row)
    return [v / total for v in row] if total > 0 else [1.0 / n_classes] * n_classes


@dataclass
class RiverContender(Contender):
    """Drives a river estimator through the episode: predict at the prediction, learn at
    the label (features are the event index for mixtures of frozen models)."""

    kind: str = "ewa"  # "ewa", "bandit", "stacking" or "retrain"
    seed: int = 0

    def applies(self, episode: Episode) -> bool:
        return self.kind != "stacking" or episode.classification

    def _build(self, episode: Episode) -> tuple[Any, Any]:
        """``(predict(i) -> answer, learn(i, y))`` for event ``i``."""
        if self.kind == "retrain":
            return self._retrain(episode)
        table = episode.outputs.tolist()
        k, c = len(episode.model_names), episode.n_classes
        index_features = [{EVENT: i} for i in range(episode.n_events)]
        if not episode.classification:
            if self.kind == "ewa":
                model = ensemble.EWARegressor([FrozenRegressor(table, m) for m in range(k)])
            else:
                model = model_selection.BanditRegressor(
                    [FrozenRegressor(table, m) for m in range(k)], metric=metrics.R2(),
                    policy=bandit.EpsilonGreedy(epsilon=0.1, seed=self.seed))
            return (lambda i: float(model.predict_one(index_features[i])),
                    lambda i, y: model.learn_one(index_features[i], y))
        assert c is not None
        if self.kind == "ewa":
            columns = [1] if c == 2 else list(range(c))
            mixtures = [ensemble.EWARegressor([FrozenRegressor(table, m, col)
                                               for m in range(k)]) for col in columns]

            def predict(i: int) -> list[float]:
                x = index_features[i]
                if c == 2:
                    p = min(max(mixtures[0].predict_one(x), 0.0), 1.0)
                    return [1.0 - p, p]
                return _as_row(dict(enumerate(m.predict_one(x) for m in mixtures)), c)

            def learn(i: int, y: int) -> None:
                x = index_features[i]
                for column, mixture in zip(columns, mixtures, strict=True):
                    mixture.learn_one(x, float(y == column))

            return predict, learn
        if self.kind == "bandit":
            model = model_selection.BanditClassifier(
                [FrozenClassifier(table, m) for m in range(k)], metric=metrics.Accuracy(),
                policy=bandit.EpsilonGreedy(epsilon=0.1, seed=self.seed))
        else:
            meta = river_linear.LogisticRegression() if c == 2 else \
                river_linear.SoftmaxRegression()
            # include_features=False: the "features" here are only the event index.
            model = ensemble.StackingClassifier([FrozenClassifier(table, m) for m in range(k)],
                                                meta_classifier=meta, include_features=False)
        if self.kind == "stacking" and c == 2:
            def predict(i: int) -> list[float]:
                proba = model.predict_proba_one(index_features[i])
                p = float(proba.get(True, proba.get(1, 0.5)))
                return [1.0 - p, p]

            return predict, lambda i, y: model.learn_one(index_features[i], bool(y))
        return (lambda i: _as_row(model.predict_proba_one(index_features[i]), c),
                lambda i, y: model.learn_one(index_features[i], y))

    def _retrain(self, episode: Episode) -> tuple[Any, Any]:
        features = episode.features
        if episode.classification:
            c = episode.n_classes
            assert c is not None
            model = drift.DriftRetrainingClassifier(
                model=tree.HoeffdingTreeClassifier(grace_period=50),
                drift_detector=drift.ADWIN(), train_in_background=False)
            for x, y in zip(episode.train_features, episode.train_targets, strict=True):
                model.model.learn_one(x, y)
            return (lambda i: _as_row(model.predict_proba_one(features[i]), c),
                    lambda i, y: model.learn_one(features[i], y))
        regressor = AdwinRetrainedRegressor(compose.Pipeline(
            preprocessing.StandardScaler(), tree.HoeffdingTreeRegressor(grace_period=50)))
        for x, y in zip(episode.train_features, episode.train_targets, strict=True):
            regressor.model.learn_one(x, y)
        return (lambda i: regressor.predict_one(features[i]),
                lambda i, y: regressor.learn_one(features[i], y))

    def run(self, episode: Episode) -> ContenderRun:
        predict, learn = self._build(episode)
        targets = episode.targets.tolist()
        answers: list[Any] = [None] * episode.n_events
        started = time.perf_counter()
        for kind, i in episode.schedule.tolist():
            if kind == PREDICTION:
                answers[i] = predict(i)
            else:
                learn(i, targets[i])
        seconds = time.perf_counter() - started
        return ContenderRun(np.array(answers, dtype=np.float64), seconds)


# -- ours ---------------------------------------------------------------------------------
def feature_vectors(episode: Episode) -> list[list[float]]:
    """Each event's features as a list of floats, in the sorted key order of the first
    training example (a key an event lacks, or a value that is not a number, reads 0):
    what a producer would send as a prediction's ``features``."""
    cached = episode.cache.get("feature_vectors")
    if cached is not None:
        return cached
    first = episode.train_features[0] if episode.train_features else episode.features[0]
    keys = sorted(first, key=str)

    def number(value: Any) -> float:
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else 0.0

    vectors = [[number(x.get(key, 0.0)) for key in keys] for x in episode.features]
    episode.cache["feature_vectors"] = vectors
    return vectors


def service_records(episode: Episode, on_average: bool,
                    with_features: bool = False) -> tuple[list, list]:
    """The episode as the pipeline's decoded records: one prediction and one label (or
    ``None``) per event. ``on_average`` gives a one-model stream whose model is the
    uniform average (for stages that follow an ensemble); ``with_features`` adds each
    event's :func:`feature_vectors` row to its prediction."""
    key = ("records", on_average, with_features)
    cached = episode.cache.get(key)
    if cached is not None:
        return cached
    if on_average:
        outputs = episode.outputs.mean(axis=1).tolist()
        rows = [{AVERAGE_MODEL: row} for row in outputs]
    else:
        names = episode.model_names
        rows = [dict(zip(names, row, strict=True)) for row in episode.outputs.tolist()]
    name = episode.name
    ids = [f"{name}-{i}" for i in range(episode.n_events)]
    prediction_ts = episode.prediction_ts.tolist()
    features: list[Any] = feature_vectors(episode) if with_features else \
        [None] * episode.n_events
    predictions = [Prediction(name, ids[i], prediction_ts[i], rows[i], features[i])
                   for i in range(episode.n_events)]
    targets = episode.targets.tolist()
    label_ts = episode.label_ts.tolist()
    labels = [Label(name, ids[i], label_ts[i], targets[i]) if episode.labelled[i] else None
              for i in range(episode.n_events)]
    episode.cache[key] = (predictions, labels)
    return predictions, labels


def stream_config(episode: Episode, adapters: list[dict[str, Any]],
                  on_average: bool, with_features: bool = False) -> StreamConfig:
    """A stream config for the episode (the service's defaults for join and publishing);
    ``with_features``: it declares the length of the :func:`feature_vectors` its
    predictions carry, as a user's config would (``features:``)."""
    models = (AVERAGE_MODEL,) if on_average else episode.model_names
    n_features = (len(feature_vectors(episode)[0]) or None) if with_features else None
    return StreamConfig(name=episode.name, task=episode.task, n_classes=episode.n_classes,
                        models=tuple(models), adapters=tuple(adapters),
                        n_features=n_features)


@dataclass
class PipelineContender(Contender):
    """One of our chains, run by the service's pipeline on the episode's records."""

    adapters: list[dict[str, Any]] = field(default_factory=list)
    on_average: bool = False
    #: Send each event's features with its prediction (for a ``FeatureCorrection`` stage).
    with_features: bool = False

    def pipeline(self, episode: Episode) -> Pipeline:
        return Pipeline([stream_config(episode, self.adapters, self.on_average,
                                       self.with_features)])

    def run(self, episode: Episode, process: Any = None) -> ContenderRun:
        """``process`` replaces ``Pipeline.process`` (a trace recorder wraps it)."""
        predictions, labels = service_records(episode, self.on_average, self.with_features)
        pipeline = None
        if process is None:
            pipeline = self.pipeline(episode)
            process = pipeline.process
        classification = episode.classification
        answers: list[Any] = [None] * episode.n_events
        started = time.perf_counter()
        for kind, i in episode.schedule.tolist():
            if kind == PREDICTION:
                outcome = process(predictions[i])
                adapted = outcome.adapted
                if adapted is None:
                    raise RuntimeError(f"{self.name} on {episode.name}: event {i} rejected: "
                                       f"{outcome.dead_letters[0].error}")
                answers[i] = adapted.proba if classification else adapted.value
            else:
                outcome = process(labels[i])
                if not outcome.learned:
                    why = outcome.dead_letters[0].error if outcome.dead_letters else "expired"
                    raise RuntimeError(f"{self.name} on {episode.name}: label {i} not "
                                       f"learned: {why}")
        seconds = time.perf_counter() - started
        return ContenderRun(np.array(answers, dtype=np.float64), seconds, pipeline)


def default_chain(task: str, n_classes: int | None) -> list[dict[str, Any]]:
    """The demo chain for the task: classification streams (any number of classes; the
    portfolio picks its candidates by it) as it is; regression the portfolio alone (the
    service takes a single stage for regression)."""
    if task == "regression":
        return [dict(stage) for stage in REGRESSION_CHAIN]
    return [dict(stage) for stage in DEFAULT_CHAIN]


def candidate_chains(n_classes: int,
                     n_features: int | None = None) -> list[list[dict[str, Any]]]:
    """Each of the default portfolio's candidates as a chain of its own, with the default
    chain's drift watch after it: what a user who picked that candidate would run
    (``n_features``: the predictions carry features, so the feature candidate too)."""
    tail = [dict(stage) for stage in DEFAULT_CHAIN[1:]]
    return [[*candidate, *tail] for candidate in default_candidates(n_classes, n_features)]


def feature_chain(n_classes: int, n_features: int, **options: Any) -> list[dict[str, Any]]:
    """The default chain with a ``FeatureCorrection`` stage (``options``: its config
    keys) before its drift memory, for classification streams whose predictions carry
    ``n_features`` features (see :func:`feature_vectors`)."""
    stages = default_chain("classification", n_classes)
    correction = {"type": "FeatureCorrection", "n_features": n_features, **options}
    return [*stages[:-1], correction, stages[-1]]


def class_mix(episode: Episode) -> list[float]:
    """The training window's class mix (add-one smoothed): the deployed models' prior."""
    assert episode.n_classes is not None
    counts = np.bincount(np.asarray(episode.train_targets), minlength=episode.n_classes) + 1.0
    return (counts / counts.sum()).tolist()


def contenders_for(episode: Episode, seed: int = 0) -> list[Contender]:
    """Every contender that applies to the episode's task, in report order."""
    found: list[Contender] = [RawModel(f"raw:{name}", "raw", f"deployed model {name}", index=i)
                              for i, name in enumerate(episode.model_names)]
    found.append(UniformAverage("uniform average", "baseline", "mean of the K models"))
    river_kinds = [("ewa", "river EWA"), ("bandit", "river bandit"),
                   ("stacking", "river stacking"), ("retrain", "river ADWIN retrain")]
    for kind, name in river_kinds:
        contender = RiverContender(name, "river", kind, kind=kind, seed=seed)
        if contender.applies(episode):
            found.append(contender)
    for ensemble_type in ("Hedge", "FixedShare", "OnlineStacking"):
        found.append(PipelineContender(ensemble_type, "ours", f"{ensemble_type} on the K "
                                       "models", adapters=[{"type": ensemble_type}]))
    if episode.classification:
        stages: list[dict[str, Any]] = []
        if episode.n_classes == 2:
            stages += [{"type": "OnlinePlatt"}, {"type": "OnlineBetaScaling"},
                       {"type": "Calibeating", "base": {"adapter": "OnlinePlatt",
                                                        "config": {}}}]
        stages += [{"type": "OnlineTemperature"},
                   {"type": "PriorShift", "source_prior": class_mix(episode)}]
        for stage in stages:
            found.append(PipelineContender(
                stage["type"], "ours", f"{stage['type']} on the uniform average",
                adapters=[{"type": "Hedge"}, stage], on_average=True))
    # Every suite stream's predictions carry the event's features (a classification
    # stream's default portfolio then adds its feature candidate; regression has none).
    n_features = (len(feature_vectors(episode)[0]) or None) if episode.classification \
        else None
    if episode.classification:
        assert episode.n_classes is not None
        for chain in candidate_chains(episode.n_classes, n_features):
            name = " → ".join(stage["type"] for stage in chain)
            found.append(PipelineContender(f"{CANDIDATE}{name}", "ours", f"the portfolio's "
                                           f"candidate {name}, alone", adapters=chain,
                                           with_features=n_features is not None))
    chain = default_chain(episode.task, episode.n_classes)
    names = "; ".join(" → ".join(stage["type"] for stage in candidate)
                      for candidate in default_candidates(episode.n_classes, n_features))
    description = " → ".join(s["type"] for s in chain).replace(
        "Portfolio", f"Portfolio({names})", 1)
    found.append(PipelineContender("default chain", "ours", description, adapters=chain,
                                   with_features=n_features is not None))
    return found
