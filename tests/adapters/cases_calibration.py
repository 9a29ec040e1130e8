"""Contract cases for the calibrators (Platt, beta, calibeating, temperature)."""

from __future__ import annotations

from streamweights.adapters import (
    Calibeating,
    OnlineBetaScaling,
    OnlinePlatt,
    OnlineTemperature,
)
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)


def _binary_case(name, factory):
    return AdapterCase(name, factory, probability_inputs(None, 2), class_labels(2),
                       bad_probability_inputs(None, 2), bad_class_labels(2))


def _three_class_case(name, factory):
    return AdapterCase(name, factory, probability_inputs(None, 3), class_labels(3),
                       bad_probability_inputs(None, 3), bad_class_labels(3))


CASES = [
    _binary_case("OnlinePlatt", OnlinePlatt),
    _binary_case("OnlinePlatt-paper-no-discount", lambda: OnlinePlatt(discount=1.0)),
    _binary_case("OnlineBetaScaling", OnlineBetaScaling),
    _binary_case("Calibeating-tracking-platt", lambda: Calibeating(OnlinePlatt())),
    _binary_case("Calibeating-hedging-beta",
                 lambda: Calibeating({"adapter": "OnlineBetaScaling", "config": {}},
                                     mode="hedging", n_bins=10, seed=7)),
    # a base without the ONS fast path: learn_many takes the generic per-event route
    _binary_case("Calibeating-hedging-temperature",
                 lambda: Calibeating(OnlineTemperature(n_classes=2), mode="hedging", seed=3)),
    _three_class_case("OnlineTemperature", lambda: OnlineTemperature(n_classes=3)),
    _three_class_case("OnlineTemperature-bias",
                      lambda: OnlineTemperature(n_classes=3, bias=True)),
]
