"""Any ``(features, target)`` stream turned into what the service sees: frozen deployed
models' outputs and labels that arrive late.

This is the replay source's mechanism (:class:`streamweights.runtime.replay.ReplayStream`)
made reusable for any example iterator and any task, and kept as arrays instead of JSON
records so that many contenders can consume one stream cheaply. For a classification
stream it follows the replay step for step — the same deployed model families
(:func:`~streamweights.runtime.replay.deployed_models`) trained on the same window, the
same class order, the same label delays drawn from the same seeded generator, the same
event-time merge with the same tie rule — so an episode built from a replay scenario
holds exactly the records the service would read (a test checks it). Regression streams,
which the replay does not offer, get three regressor families of their own.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import compose, multiclass, neighbors, preprocessing, tree
from river import linear_model as river_linear

from streamweights.runtime.replay import MODEL_NAMES, deployed_models

#: Event time of the first replayed event (the replay's own origin).
START_TS = 1_750_000_000.0
#: The schedule's two kinds of step.
PREDICTION, LABEL = 0, 1
REGRESSOR_NAMES = ("linear_regression", "nearest_neighbours", "hoeffding_tree")


def deployed_classifiers(n_classes: int) -> dict[str, Any]:
    """The replay's deployed models; with more than two classes the logistic regression
    (binary in river) becomes one-vs-rest, which the replay itself does not do."""
    models = deployed_models()
    if n_classes > 2:
        models["logistic_regression"] = compose.Pipeline(
            preprocessing.StandardScaler(),
            multiclass.OneVsRestClassifier(river_linear.LogisticRegression()))
    return models


def deployed_regressors() -> dict[str, Any]:
    """Fresh instances of three regressor families with different inductive biases:
    global linear, local (5 nearest of the last 500 training examples) and piecewise
    (a Hoeffding tree with linear leaves). Each standardises its features first: a
    Hoeffding tree's leaf models diverge on raw features of large scale (a date ordinal)."""
    return {
        "linear_regression": compose.Pipeline(preprocessing.StandardScaler(),
                                              river_linear.LinearRegression()),
        "nearest_neighbours": compose.Pipeline(
            preprocessing.StandardScaler(),
            neighbors.KNNRegressor(n_neighbors=5,
                                   engine=neighbors.LazySearch(window_size=500))),
        "hoeffding_tree": compose.Pipeline(preprocessing.StandardScaler(),
                                           tree.HoeffdingTreeRegressor(grace_period=50)),
    }


@dataclass
class Episode:
    """One replayed stream, ready for contenders.

    ``outputs[i]`` is what the K frozen models said about event ``i`` (``(K, C)``
    probabilities or ``(K,)`` values); ``targets[i]`` its label (a class index or a
    value), valid where ``labelled[i]``; ``schedule`` is the merged event-time order of
    the service's input as rows ``(kind, event index)`` with ``kind`` ``PREDICTION`` or
    ``LABEL``. ``features[i]`` is the raw feature dict (for contenders that retrain a
    model). ``train_targets`` are the training window's targets (class indices or values).
    """

    name: str
    task: str
    model_names: tuple[str, ...]
    classes: list[Any] | None
    features: list[dict[str, Any]]
    outputs: np.ndarray
    targets: np.ndarray
    labelled: np.ndarray
    prediction_ts: np.ndarray
    label_ts: np.ndarray
    schedule: np.ndarray
    train_features: list[dict[str, Any]]
    train_targets: list[Any]
    #: Derived views built once and shared by contenders (e.g. the pipeline's records).
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def n_events(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def classification(self) -> bool:
        return self.task == "classification"


def build_episode(examples: Iterable[tuple[dict[str, Any], Any]], *, task: str,
                  train_window: int, events: int | None, seed: int,
                  seconds_between_events: float = 0.1, mean_label_delay_seconds: float = 20.0,
                  missing_label_rate: float = 0.005, name: str = "stream") -> Episode:
    """Train the deployed models on the first ``train_window`` examples, freeze them and
    replay the next ``events`` (all that remain when ``None``).

    Label delays are exponential with mean ``mean_label_delay_seconds`` of event time,
    drawn from ``random.Random(seed * 7919 + 17)`` exactly as the replay draws them; a
    fraction ``missing_label_rate`` of labels never arrives, and so does no label of a
    class the training window never showed (the deployed models cannot output it).
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task: must be 'classification' or 'regression', got {task!r}")
    stream = iter(examples)
    window = list(itertools.islice(stream, train_window))
    if len(window) < train_window:
        raise ValueError(f"train_window: only {len(window)} examples; the deployed models "
                         f"need {train_window} to train on before the replay starts")
    classification = task == "classification"
    if classification:
        classes = sorted({y for _, y in window}, key=repr)
        if len(classes) < 2:
            raise ValueError("train_window: the training window holds a single class")
        class_index = {c: i for i, c in enumerate(classes)}
        models, names = deployed_classifiers(len(classes)), MODEL_NAMES
    else:
        classes, class_index = None, {}
        models, names = deployed_regressors(), REGRESSOR_NAMES
    for x, y in window:
        for model in models.values():
            model.learn_one(x, y)
    replayed = stream if events is None else itertools.islice(stream, events)

    delays = random.Random(seed * 7919 + 17)
    pending: list[tuple[float, int]] = []
    schedule: list[tuple[int, int]] = []
    features: list[dict[str, Any]] = []
    outputs: list[Any] = []
    targets: list[float] = []
    labelled: list[bool] = []
    prediction_ts: list[float] = []
    label_ts: list[float] = []
    for index, (x, y) in enumerate(replayed):
        ts = round(START_TS + index * seconds_between_events, 3)
        while pending and pending[0][0] < ts:
            schedule.append((LABEL, heapq.heappop(pending)[1]))
        schedule.append((PREDICTION, index))
        features.append(x)
        prediction_ts.append(ts)
        if classification:
            rows = []
            for model in models.values():
                proba = model.predict_proba_one(x)
                row = [float(proba.get(c, 0.0)) for c in classes]
                total = math.fsum(row)
                rows.append([v / total for v in row] if total > 0 else
                            [1.0 / len(classes)] * len(classes))
            outputs.append(rows)
        else:
            outputs.append([float(model.predict_one(x)) for model in models.values()])
        delay = delays.expovariate(1.0 / mean_label_delay_seconds)
        arrives = delays.random() >= missing_label_rate and (not classification
                                                             or y in class_index)
        labelled.append(arrives)
        targets.append(class_index[y] if classification and arrives else
                       (float(y) if not classification else -1))
        if arrives:
            label_time = round(ts + delay, 3)
            label_ts.append(label_time)
            heapq.heappush(pending, (label_time, index))
        else:
            label_ts.append(math.nan)
    while pending:
        schedule.append((LABEL, heapq.heappop(pending)[1]))
    if not features:
        raise ValueError("events: the stream ended inside the training window")
    return Episode(
        name=name, task=task, model_names=tuple(names), classes=classes, features=features,
        outputs=np.array(outputs, dtype=np.float64),
        targets=np.array(targets, dtype=np.int64 if classification else np.float64),
        labelled=np.array(labelled, dtype=bool),
        prediction_ts=np.array(prediction_ts), label_ts=np.array(label_ts),
        schedule=np.array(schedule, dtype=np.int64).reshape(-1, 2),
        train_features=[x for x, _ in window],
        train_targets=[class_index[y] if classification else float(y) for _, y in window])
