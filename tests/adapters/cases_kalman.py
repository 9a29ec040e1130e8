"""Contract cases for the Kalman-filtered linear head and online stacking."""

from __future__ import annotations

import numpy as np

from streamweights.adapters import KalmanWeights, OnlineStacking
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)


def _feature_vectors(n_features):
    def make(rng, n):
        return list(rng.normal(size=(n, n_features)))

    return make


def _linear_targets(n_outputs):
    """Noisy linear targets in the features, so the learned γ and weights move."""

    def make(rng, xs):
        features = np.asarray(xs)
        weights = np.linspace(-1.0, 1.0, features.shape[1] * n_outputs).reshape(
            features.shape[1], n_outputs)
        targets = features @ weights + 0.3 * rng.normal(size=(len(xs), n_outputs))
        if n_outputs == 1:
            return [float(value) for value in targets[:, 0]]
        return list(targets)

    return make


def _bad_feature_vectors(n_features):
    good = np.zeros(n_features)
    nan, inf = good.copy(), good.copy()
    nan[0], inf[-1] = np.nan, -np.inf
    return [("NaN", nan), ("inf", inf), ("shape", np.zeros(n_features + 1)),
            ("shape", np.zeros((1, n_features))), ("numeric", ["a"] * n_features)]


def _bad_targets(n_outputs):
    return [("NaN", [np.nan] * n_outputs), ("inf", [np.inf] * n_outputs),
            ("shape", [0.0] * (n_outputs + 1)), ("numeric", "seven")]


def _model_values(n_models):
    def make(rng, n):
        return list(rng.normal(size=(n, n_models)))

    return make


def _stacked_targets(rng, xs):
    outputs = np.asarray(xs)
    return [float(v) for v in 1.5 * outputs[:, 0] - 0.5 * outputs[:, 1]
            + 0.2 * rng.normal(size=len(xs))]


CASES = [
    AdapterCase("KalmanWeights-regression-learned",
                lambda: KalmanWeights(n_features=4, noise_variance=0.1,
                                      forgetting_learning_rate=0.05),
                _feature_vectors(4), _linear_targets(1),
                _bad_feature_vectors(4), _bad_targets(1)),
    AdapterCase("KalmanWeights-regression-2-outputs-prior-mean",
                lambda: KalmanWeights(n_features=3, n_outputs=2, prior_mean=[0.5, 0.0, -0.5]),
                _feature_vectors(3), _linear_targets(2),
                _bad_feature_vectors(3), _bad_targets(2)),
    AdapterCase("KalmanWeights-classification-3",
                lambda: KalmanWeights(n_features=4, n_outputs=3, task="classification"),
                _feature_vectors(4), class_labels(3),
                _bad_feature_vectors(4), bad_class_labels(3)),
    AdapterCase("KalmanWeights-classification-monte-carlo",
                lambda: KalmanWeights(n_features=3, n_outputs=2, task="classification",
                                      probabilities="monte_carlo", n_samples=16, seed=7),
                _feature_vectors(3), class_labels(2),
                _bad_feature_vectors(3), bad_class_labels(2)),
    AdapterCase("OnlineStacking-regression",
                lambda: OnlineStacking(n_models=3, noise_variance=0.1, fit_intercept=True),
                _model_values(3), _stacked_targets,
                [("NaN", [np.nan, 0.0, 1.0]), ("inf", [np.inf, 0.0, 1.0]),
                 ("shape", [0.0, 1.0]), ("numeric", ["a", "b", "c"])],
                [("NaN", np.nan), ("inf", np.inf), ("shape", [1.0, 2.0]),
                 ("numeric", "x")]),
    AdapterCase("OnlineStacking-classification",
                lambda: OnlineStacking(n_models=4, n_classes=3),
                probability_inputs(4, 3), class_labels(3),
                bad_probability_inputs(4, 3), bad_class_labels(3)),
]
