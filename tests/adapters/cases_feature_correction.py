"""Contract cases for the feature-aware correction stage (packed ``[p, outputs, x]``)."""

from __future__ import annotations

import numpy as np

from streamweights.adapters import FeatureCorrection
from tests.adapters.contract import AdapterCase, bad_class_labels


def _packed_inputs(n_classes, n_models, n_features):
    """Upstream probabilities, K model rows and features whose first coordinate moves
    the class, so the head's weights, covariance and standardiser all move."""

    def make(rng, n):
        rows = []
        for _ in range(n):
            logits = rng.normal(scale=2.0, size=(n_models + 1, n_classes))
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            features = rng.normal(loc=3.0, scale=[10.0] + [1.0] * (n_features - 1))
            rows.append(FeatureCorrection.pack(p[0], p[1:], features))
        return rows

    return make


def _labels_from_first_feature(n_classes, n_models):
    def make(rng, xs):
        start = n_classes + n_models * n_classes
        return [int(x[start] > 3.0) % n_classes if rng.random() < 0.8
                else int(rng.integers(0, n_classes)) for x in xs]

    return make


def _bad_packed(n_classes, n_models, n_features):
    good = FeatureCorrection.pack(np.full(n_classes, 1.0 / n_classes),
                                  np.full((n_models, n_classes), 1.0 / n_classes),
                                  np.zeros(n_features))
    nan, inf, not_summing, bad_row, negative = (good.copy() for _ in range(5))
    nan[-1] = np.nan  # a feature
    inf[0] = np.inf  # the upstream probability
    not_summing[:n_classes] *= 0.5
    bad_row[n_classes] += 0.3  # the first model's row no longer sums to 1
    negative[n_classes], negative[n_classes + 1] = -0.2, negative[n_classes + 1] + 0.2
    return [("NaN", nan), ("inf", inf), ("x.proba", not_summing), ("x.outputs", bad_row),
            ("[0, 1]", negative), ("shape", good[:-1]), ("shape", good[None, :]),
            ("numeric", ["a"] * len(good))]


CASES = [
    AdapterCase("FeatureCorrection-binary",
                lambda: FeatureCorrection(n_classes=2, n_models=3, n_features=4),
                _packed_inputs(2, 3, 4), _labels_from_first_feature(2, 3),
                _bad_packed(2, 3, 4), bad_class_labels(2)),
    AdapterCase("FeatureCorrection-3-classes-short-memory",
                lambda: FeatureCorrection(n_classes=3, n_models=2, n_features=2,
                                          forgetting=0.99, scaling_window=50,
                                          prior_variance=0.5),
                _packed_inputs(3, 2, 2), _labels_from_first_feature(3, 2),
                _bad_packed(3, 2, 2), bad_class_labels(3)),
]
