"""Contract cases for the portfolio of candidate chains."""

from __future__ import annotations

import numpy as np

from streamweights.adapters import Portfolio
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)

CASES = [
    AdapterCase("Portfolio-binary-default-candidates",
                lambda: Portfolio(n_models=3, n_classes=2),
                probability_inputs(3, 2), class_labels(2),
                bad_probability_inputs(3, 2), bad_class_labels(2), uses_observe=True),
    AdapterCase("Portfolio-3-classes-drift-share",
                lambda: Portfolio(n_models=2, n_classes=3, drift_share=0.5, candidates=[
                    [{"type": "FixedShare", "share": 0.05}, {"type": "OnlineTemperature"},
                     {"type": "DriftMemory", "capacity": 8}],
                    [{"type": "Hedge"}], [{"type": "OnlineStacking"}]]),
                probability_inputs(2, 3), class_labels(3),
                bad_probability_inputs(2, 3), bad_class_labels(3), uses_observe=True),
]


def _values(rng, n):
    return list(rng.normal(size=(n, 3)))


def _targets(rng, xs):
    return [float(x[0] + 0.3 * rng.normal()) for x in xs]


CASES.append(AdapterCase(
    "Portfolio-regression-default-candidates", lambda: Portfolio(n_models=3, n_classes=None),
    _values, _targets,
    [("NaN", [np.nan, 0.0, 1.0]), ("inf", [np.inf, 0.0, 1.0]), ("shape", [0.0, 1.0]),
     ("numeric", ["a", "b", "c"])],
    [("NaN", np.nan), ("inf", -np.inf), ("numeric", "x"), ("target", [1.0, 2.0])]))
