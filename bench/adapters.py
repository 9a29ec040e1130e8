"""Per-event cost of every adapter as the service calls it, side by side with river.

Setting (issue 2): K = 5 deployed models, C = 2 classes, d = 16 features. For each pair
all contenders see the same events in the same process, timed in alternating rounds so
machine noise hits them alike; the best round of each is reported (the least disturbed
one).

* ours, per event (the headline, issue 11): the verbs the pipeline calls, one event at a
  time, in its order: ``observe(x)`` then ``predict(x)`` when a prediction arrives (the
  chain calls both on every stage, ``Chain.observe_predict_trace``; for an ensemble
  ``observe`` is a no-op, still paid), ``learn(x, y)`` when its label does. ``x`` is one
  row of a float64 array, as ``Pipeline.outputs_array`` hands it over.
* ours, batch: ``predict_many`` then ``learn_many`` on micro-batches of 256 events
  (``observe_many`` first for the adapters that observe). No service path calls these
  per record; shown separately, never as the headline.
* river: its per-event verbs (``predict_one`` / ``learn_one``), which is how river is
  fed a stream. The counterpart is the closest river model doing the same job, named in
  each row: ``EWARegressor`` over frozen models for Hedge / FixedShare (river's
  exponentially weighted average forecaster, the family both belong to; the
  "regression" rows are the like-for-like ones: same task, squared loss);
  ``BayesianLinearRegression(smoothing)`` for KalmanWeights regression (a Bayesian
  linear model with forgetting is a Kalman filter on the weights), SGD
  ``LogisticRegression`` for its classification mode; ``LinearRegression`` on the models'
  outputs for OnlineStacking (the meta-learner river's stacking would train; river's
  ``StackingClassifier`` is classification-only), ``LogisticRegression`` on the models'
  probabilities for its classification mode; ``LogisticRegression`` on the logit
  for the calibrators (Platt scaling is exactly that); ``ADWIN.update`` on the loss for
  DriftMemory (its detector alone: river has no replay memory). PriorShift: river has no
  label-shift corrector; its nearest part is ``proba.Multinomial``, the online class-mix
  estimate alone (``update(y)`` per label, the C class probabilities read per event),
  far less work than an EM step, a CUSUM gate and a corrected output.
  FeatureCorrection: SGD ``LogisticRegression`` on the features and the models'
  probabilities (the same regressors, first-order: O(m) per event where ours updates an
  m x m covariance, m = 29 here), and the ADWIN-retrained Hoeffding
  tree on the features (the evaluation's ``river ADWIN retrain``, what it competes with).

Run: ``python bench/adapters.py [--events 4096] [--rounds 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from river import base as river_base
from river import drift as river_drift
from river import ensemble as river_ensemble
from river import linear_model as river_linear
from river import optim as river_optim
from river import proba as river_proba
from river import tree as river_tree

import streamweights
from streamweights import adapters

BATCH = 256
N_MODELS = 5
N_CLASSES = 2
N_FEATURES = 16


@dataclass
class Contender:
    name: str
    setup: Callable[[], object]
    run: Callable[[object], None]


@dataclass
class Pair:
    adapter: str
    #: the per-event verbs, as the pipeline calls them (the headline)
    ours: Contender
    #: the batch verbs (``*_many``), timed beside it
    ours_batch: Contender | None
    river: list[Contender]


class _DeployedModel(river_base.Regressor):
    """A frozen deployed model inside river: returns its precomputed output, learns nothing.

    As cheap as a river model can be, so the mixture's own cost is what gets measured."""

    def __init__(self, index: int) -> None:
        self.index = index

    def learn_one(self, x, y):
        return None

    def predict_one(self, x):
        return x[self.index]


def _data(n_events: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_events, N_FEATURES))
    true_weights = rng.normal(size=N_FEATURES)
    target = features @ true_weights + 0.3 * rng.normal(size=n_events)
    p_true = 1 / (1 + np.exp(-(features @ true_weights) / 2))
    labels = (rng.random(n_events) < p_true).astype(int)
    noise = rng.normal(scale=1.0, size=(n_events, N_MODELS))
    model_p1 = 1 / (1 + np.exp(-(np.log(p_true / (1 - p_true))[:, None] + noise)))
    model_outputs = np.stack([1 - model_p1, model_p1], axis=2)
    model_values = target[:, None] + rng.normal(scale=[0.5, 1, 1.5, 2, 3], size=(n_events, 5))
    return {
        "features": features, "target": target, "labels": labels,
        "model_outputs": model_outputs, "model_values": model_values,
        "calib_in": model_outputs[:, 0, :],
        "features_dicts": [dict(enumerate(row)) for row in features.tolist()],
        "p1_dicts": [dict(enumerate(row)) for row in model_p1.tolist()],
        "values_dicts": [dict(enumerate(row)) for row in model_values.tolist()],
        "logit_dicts": [{"logit": math.log(p / (1 - p))} for p in model_p1[:, 0].tolist()],
        "losses": (-np.log(model_outputs[np.arange(n_events), 0, labels])).tolist(),
        # FeatureCorrection's packed input: [the models' average, their rows, features]
        "packed": np.concatenate([model_outputs.mean(axis=1),
                                  model_outputs.reshape(n_events, -1), features], axis=1),
        "features_p1_dicts": [{**dict(enumerate(f)), **{f"p{k}": p for k, p in enumerate(q)}}
                              for f, q in zip(features.tolist(), model_p1.tolist(),
                                              strict=True)],
    }


def _ours(name: str, factory: Callable[[], adapters.Adapter], inputs: np.ndarray,
          labels: np.ndarray, observe: bool = False) -> tuple[Contender, Contender]:
    """Ours per event (as the pipeline calls it) and ours in micro-batches."""
    label_list = labels.tolist()
    rows = list(np.asarray(inputs, dtype=np.float64))

    def per_event(adapter):
        adapter_observe, adapter_predict = adapter.observe, adapter.predict
        adapter_learn = adapter.learn
        for x, y in zip(rows, label_list, strict=True):
            adapter_observe(x)
            adapter_predict(x)
            adapter_learn(x, y)

    def batch(adapter):
        for start in range(0, len(inputs), BATCH):
            xs = inputs[start:start + BATCH]
            if observe:
                adapter.observe_many(xs)
            adapter.predict_many(xs)
            adapter.learn_many(xs, label_list[start:start + BATCH])

    return (Contender(f"{name} per event", factory, per_event),
            Contender(f"{name} batch of {BATCH}", factory, batch))


def _river(name: str, factory: Callable[[], object], xs: list, ys: list,
           predict: str = "predict_one") -> Contender:
    def run(model):
        model_predict = getattr(model, predict)
        learn = model.learn_one
        for x, y in zip(xs, ys, strict=True):
            model_predict(x)
            learn(x, y)

    return Contender(name, factory, run)


def _river_detector(name: str, factory: Callable[[], object], values: list) -> Contender:
    def run(detector):
        update = detector.update
        for value in values:
            update(value)

    return Contender(name, factory, run)


def _beta_feature_dicts(data: dict[str, object]) -> list[dict[str, float]]:
    """Beta calibration's features ``(ln f, ln(1 - f))`` of the calibrators' input, as
    river takes them: beta scaling is logistic regression on these two (Kull et al.)."""
    f = np.clip(np.asarray(data["calib_in"])[:, 1], 1e-5, 1 - 1e-5)
    return [{"ln_f": u, "ln_1_minus_f": v}
            for u, v in zip(np.log(f).tolist(), np.log1p(-f).tolist(), strict=True)]
def _river_class_mix(name: str, labels: list, n_classes: int) -> Contender:
    """river's online class-mix estimate: the C class probabilities read per event (the
    counterpart of ``predict``), ``update(y)`` per label (of ``learn``)."""

    def run(model):
        classes = range(n_classes)
        update = model.update
        for y in labels:
            [model(c) for c in classes]
            update(y)

    return Contender(name, river_proba.Multinomial, run)


def build_pairs(data: dict[str, object]) -> list[Pair]:
    labels = data["labels"]
    target = data["target"]
    ys_class = [bool(v) for v in labels.tolist()]
    ys_reg = target.tolist()
    p1_targets = labels.astype(float).tolist()
    ewa = lambda: river_ensemble.EWARegressor(  # noqa: E731
        [_DeployedModel(i) for i in range(N_MODELS)], learning_rate=0.5)
    pairs = [
        Pair("KalmanWeights regression",
             *_ours("KalmanWeights(regression, forgetting=learn)",
                    lambda: adapters.KalmanWeights(N_FEATURES), data["features"], target),
             [_river("BayesianLinearRegression(smoothing=0.999)",
                     lambda: river_linear.BayesianLinearRegression(smoothing=0.999),
                     data["features_dicts"], ys_reg),
              _river("LinearRegression(SGD)", river_linear.LinearRegression,
                     data["features_dicts"], ys_reg)]),
        Pair("KalmanWeights classification",
             *_ours("KalmanWeights(classification, forgetting=learn)",
                    lambda: adapters.KalmanWeights(N_FEATURES, n_outputs=N_CLASSES,
                                                   task="classification"),
                    data["features"], labels),
             [_river("LogisticRegression(SGD)", river_linear.LogisticRegression,
                     data["features_dicts"], ys_class, "predict_proba_one")]),
        Pair("Hedge",
             *_ours("Hedge(log-loss, auto)", lambda: adapters.Hedge(N_MODELS, N_CLASSES),
                    data["model_outputs"], labels),
             [_river("EWARegressor(5 frozen models)", ewa, data["p1_dicts"], p1_targets)]),
        # The like-for-like pair: regression, squared loss, a fixed rate, as EWARegressor.
        Pair("Hedge regression",
             *_ours("Hedge(regression, squared, rate 0.5)",
                    lambda: adapters.Hedge(N_MODELS, learning_rate=0.5),
                    data["model_values"], target),
             [_river("EWARegressor(5 frozen models)", ewa, data["values_dicts"], ys_reg)]),
        Pair("FixedShare",
             *_ours("FixedShare(log-loss, auto)",
                    lambda: adapters.FixedShare(N_MODELS, N_CLASSES),
                    data["model_outputs"], labels),
             [_river("EWARegressor(5 frozen models)", ewa, data["p1_dicts"], p1_targets)]),
        Pair("FixedShare regression",
             *_ours("FixedShare(regression, squared, auto)",
                    lambda: adapters.FixedShare(N_MODELS), data["model_values"], target),
             [_river("EWARegressor(5 frozen models)", ewa, data["values_dicts"], ys_reg)]),
        Pair("OnlineStacking",
             *_ours("OnlineStacking(regression)",
                    lambda: adapters.OnlineStacking(N_MODELS), data["model_values"], target),
             [_river("LinearRegression on model outputs", river_linear.LinearRegression,
                     data["values_dicts"], ys_reg)]),
        Pair("OnlineStacking classification",
             *_ours("OnlineStacking(classification)",
                    lambda: adapters.OnlineStacking(N_MODELS, N_CLASSES),
                    data["model_outputs"], labels),
             [_river("LogisticRegression on model probabilities",
                     river_linear.LogisticRegression, data["p1_dicts"], ys_class,
                     "predict_proba_one")]),
        Pair("OnlinePlatt",
             *_ours("OnlinePlatt", adapters.OnlinePlatt, data["calib_in"], labels),
             [_river("LogisticRegression on the logit",
                     lambda: river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
                     data["logit_dicts"], ys_class, "predict_proba_one")]),
        Pair("OnlineBetaScaling",
             *_ours("OnlineBetaScaling", adapters.OnlineBetaScaling, data["calib_in"], labels),
             [_river("LogisticRegression on (ln f, ln(1 - f))",
                     lambda: river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
                     _beta_feature_dicts(data), ys_class, "predict_proba_one")]),
        Pair("Calibeating",
             *_ours("Calibeating(OnlinePlatt, tracking)",
                    lambda: adapters.Calibeating(adapters.OnlinePlatt()), data["calib_in"],
                    labels),
             [_river("LogisticRegression on the logit",
                     lambda: river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
                     data["logit_dicts"], ys_class, "predict_proba_one")]),
        Pair("Calibeating hedging",
             *_ours("Calibeating(OnlineBetaScaling, hedging)",
                    lambda: adapters.Calibeating(adapters.OnlineBetaScaling(), mode="hedging",
                                                 seed=1),
                    data["calib_in"], labels),
             [_river("LogisticRegression on (ln f, ln(1 - f))",
                     lambda: river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
                     _beta_feature_dicts(data), ys_class, "predict_proba_one")]),
        Pair("OnlineTemperature",
             *_ours("OnlineTemperature", lambda: adapters.OnlineTemperature(N_CLASSES),
                    data["calib_in"], labels),
             [_river("LogisticRegression on the logit",
                     lambda: river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
                     data["logit_dicts"], ys_class, "predict_proba_one")]),
        Pair("PriorShift",
             *_ours("PriorShift (observe+predict+learn)",
                    lambda: adapters.PriorShift(N_CLASSES), data["calib_in"], labels,
                    observe=True),
             [_river_class_mix("proba.Multinomial (class mix alone)", labels.tolist(),
                               N_CLASSES)]),
        Pair("DriftMemory",
             *_ours("DriftMemory(64, adwin) (observe+predict+learn)",
                    lambda: adapters.DriftMemory(64, N_CLASSES), data["calib_in"], labels,
                    observe=True),
             [_river_detector("ADWIN.update on the loss alone", river_drift.ADWIN,
                              data["losses"])]),
        Pair("FeatureCorrection",
             *_ours("FeatureCorrection(d=16, K=5)",
                    lambda: adapters.FeatureCorrection(N_CLASSES, N_MODELS, N_FEATURES),
                    data["packed"], labels),
             [_river("LogisticRegression(SGD) on features + model p1",
                     river_linear.LogisticRegression, data["features_p1_dicts"], ys_class,
                     "predict_proba_one"),
              _river("DriftRetrainingClassifier(HoeffdingTree) on features",
                     lambda: river_drift.DriftRetrainingClassifier(
                         river_tree.HoeffdingTreeClassifier()),
                     data["features_dicts"], ys_class, "predict_proba_one")]),
    ]
    return pairs


def _time(contender: Contender) -> float:
    model = contender.setup()
    start = time.perf_counter()
    contender.run(model)
    return time.perf_counter() - start


def measure(pairs: list[Pair], n_events: int, rounds: int) -> list[dict[str, object]]:
    rows = []
    for pair in pairs:
        contenders = [pair.ours, *([pair.ours_batch] if pair.ours_batch else []), *pair.river]
        best = [math.inf] * len(contenders)
        for _ in range(rounds):
            for index, contender in enumerate(contenders):
                best[index] = min(best[index], _time(contender))
        rates = [n_events / seconds for seconds in best]
        ours_rate = rates[0]
        batch_rate = rates[1] if pair.ours_batch else None
        row = {"adapter": pair.adapter, "ours": pair.ours.name, "ours_events_per_s": ours_rate,
               "ours_batch": pair.ours_batch.name if pair.ours_batch else None,
               "ours_batch_events_per_s": batch_rate, "river": []}
        for contender, rate in zip(pair.river, rates[len(contenders) - len(pair.river):],
                                   strict=True):
            row["river"].append({"name": contender.name, "events_per_s": rate,
                                 "speedup": ours_rate / rate,
                                 "batch_speedup": batch_rate / rate if batch_rate else None})
        rows.append(row)
        _print_row(row)
    return rows


def _print_row(row: dict[str, object]) -> None:
    print(f"{row['adapter']:<30} ours  {row['ours_events_per_s']:>10,.0f} ev/s  per event  "
          f"[{row['ours']}]", flush=True)
    if row["ours_batch_events_per_s"] is not None:
        print(f"{'':<30} ours  {row['ours_batch_events_per_s']:>10,.0f} ev/s  batch  "
              f"[{row['ours_batch']}]", flush=True)
    for baseline in row["river"]:
        batch = (f", batch x{baseline['batch_speedup']:.2f}"
                 if baseline["batch_speedup"] is not None else "")
        print(f"{'':<30} river {baseline['events_per_s']:>10,.0f} ev/s  "
              f"per event x{baseline['speedup']:.2f}{batch}  [{baseline['name']}]",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096, help="events per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per pair")
    parser.add_argument("--only", default=None, help="substring filter on adapter names")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    print(f"streamweights {streamweights.__version__}, numpy {np.__version__}, "
          f"per event + batch {BATCH}, K={N_MODELS}, C={N_CLASSES}, d={N_FEATURES}, "
          f"{args.events} events x {args.rounds} rounds", flush=True)
    pairs = [p for p in build_pairs(_data(args.events))
             if args.only is None or args.only.lower() in p.adapter.lower()]
    rows = measure(pairs, args.events, args.rounds)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
