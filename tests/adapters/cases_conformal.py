"""Contract cases for the online conformal layers (classification sets, regression
intervals, each method and score)."""

from __future__ import annotations

from streamweights.adapters.conformal import AdaptiveConformal, ConformalPID, DtACI
from streamweights.adapters.performance_estimate import ConfidenceEstimate
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)

_C = 3


def _values(rng, n):
    return [float(v) for v in rng.normal(size=n)]


def _targets(rng, xs):
    return [float(x + rng.normal(scale=0.5)) for x in xs]


_BAD_VALUES = [("NaN", float("nan")), ("inf", float("inf")), ("one number", [1.0, 2.0]),
               ("numeric", "not numbers")]
_BAD_TARGETS = [("NaN", float("nan")), ("inf", float("-inf")), ("one number", [0.0, 1.0]),
                ("numeric", "x")]


def _classification(name, factory):
    return AdapterCase(name, factory, probability_inputs(None, _C), class_labels(_C),
                       bad_probability_inputs(None, _C), bad_class_labels(_C))


def _regression(name, factory):
    return AdapterCase(name, factory, _values, _targets, _BAD_VALUES, _BAD_TARGETS)


CASES = [
    _classification("AdaptiveConformal", lambda: AdaptiveConformal(n_classes=_C, window=50,
                                                                    step=0.05)),
    _classification("AdaptiveConformal-aps",
                    lambda: AdaptiveConformal(alphas=[0.2], n_classes=_C, score="aps",
                                              window=40)),
    _classification("ConformalPID", lambda: ConformalPID(n_classes=_C, window=50)),
    _classification("DtACI", lambda: DtACI(n_classes=_C, window=50)),
    _classification("DtACI-aps", lambda: DtACI(alphas=[0.1], n_classes=_C, score="aps")),
    _regression("AdaptiveConformal-regression", lambda: AdaptiveConformal(window=30)),
    _regression("ConformalPID-regression", lambda: ConformalPID(window=30, gain=0.0)),
    _regression("DtACI-regression", lambda: DtACI(window=30)),
]

CASES.append(AdapterCase("ConfidenceEstimate",
                         lambda: ConfidenceEstimate(n_classes=_C, window=40),
                         probability_inputs(None, _C), class_labels(_C),
                         bad_probability_inputs(None, _C), bad_class_labels(_C),
                         uses_observe=True))
