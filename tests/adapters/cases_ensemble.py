"""Contract cases for the exponential-weights ensembles and the chain."""

from __future__ import annotations

import numpy as np

from streamweights.adapters import (
    Chain,
    DriftMemory,
    FixedShare,
    Hedge,
    OnlineTemperature,
    PriorShift,
)
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)


def _regression_inputs(n_models):
    def make(rng, n):
        return list(rng.normal(size=(n, n_models)))

    return make


def _regression_labels(rng, xs):
    return [float(x[0] + 0.3 * rng.normal()) for x in xs]


_BAD_VALUES = [("NaN", [np.nan, 0.0, 1.0]), ("inf", [np.inf, 0.0, 1.0]),
               ("shape", [0.0, 1.0]), ("shape", [[0.0, 1.0, 2.0]]), ("numeric", ["a", "b", "c"])]
_BAD_TARGETS = [("NaN", np.nan), ("inf", -np.inf), ("numeric", "x"), ("target", [1.0, 2.0])]

CASES = [
    AdapterCase("Hedge-log", lambda: Hedge(n_models=4, n_classes=3),
                probability_inputs(4, 3), class_labels(3),
                bad_probability_inputs(4, 3), bad_class_labels(3)),
    AdapterCase("Hedge-brier-fixed-rate",
                lambda: Hedge(n_models=3, n_classes=2, loss="squared", learning_rate=0.5),
                probability_inputs(3, 2), class_labels(2),
                bad_probability_inputs(3, 2), bad_class_labels(2)),
    AdapterCase("Hedge-regression-adahedge", lambda: Hedge(n_models=3),
                _regression_inputs(3), _regression_labels, _BAD_VALUES, _BAD_TARGETS),
    AdapterCase("FixedShare-log", lambda: FixedShare(n_models=4, n_classes=3, share=0.01),
                probability_inputs(4, 3), class_labels(3),
                bad_probability_inputs(4, 3), bad_class_labels(3)),
    AdapterCase("FixedShare-absolute-adahedge",
                lambda: FixedShare(n_models=3, loss="absolute"),
                _regression_inputs(3), _regression_labels, _BAD_VALUES, _BAD_TARGETS),
    AdapterCase("Chain-fixedshare-temperature-prior-memory",
                lambda: Chain([FixedShare(n_models=4, n_classes=3),
                               OnlineTemperature(n_classes=3), PriorShift(n_classes=3),
                               DriftMemory(capacity=16, n_classes=3)]),
                probability_inputs(4, 3), class_labels(3),
                bad_probability_inputs(4, 3), bad_class_labels(3), uses_observe=True),
]
