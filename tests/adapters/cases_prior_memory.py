"""Contract cases for the label-free stages: ``PriorShift`` and ``DriftMemory``."""

from __future__ import annotations

from streamweights.adapters import DriftMemory, PriorShift
from tests.adapters.contract import (
    AdapterCase,
    bad_class_labels,
    bad_probability_inputs,
    class_labels,
    probability_inputs,
)

_C = 3


def _case(name, factory):
    return AdapterCase(name, factory, probability_inputs(None, _C), class_labels(_C),
                       bad_probability_inputs(None, _C), bad_class_labels(_C),
                       uses_observe=True)


CASES = [
    _case("PriorShift", lambda: PriorShift(n_classes=_C)),
    _case("PriorShift-source-prior-keep-on-drift",
          lambda: PriorShift(n_classes=_C, source_prior=[0.5, 0.3, 0.2], min_step=0.01,
                             label_weight=3.0, reset_on_drift=False)),
    # A short warm-up and a low evidence bar: the contract checks cross the end of the
    # source-prior warm-up, the refinement and the gate switching on.
    _case("PriorShift-learned-source-short-warm-up",
          lambda: PriorShift(n_classes=_C, source_window=8, evidence_threshold=0.5,
                             min_step=0.05)),
    _case("DriftMemory-adwin", lambda: DriftMemory(capacity=16, n_classes=_C)),
    _case("DriftMemory-page-hinkley",
          lambda: DriftMemory(capacity=16, n_classes=_C, detector="page_hinkley", loss="log")),
    # Alarm-prone on purpose (threshold 3): exercises eviction inside every contract check.
    _case("DriftMemory-page-hinkley-frequent-alarms",
          lambda: DriftMemory(capacity=16, n_classes=_C, detector="page_hinkley", loss="log",
                              detector_options={"threshold": 3.0, "min_instances": 5},
                              standardise_warmup=5)),
    _case("DriftMemory-no-detector", lambda: DriftMemory(capacity=16, n_classes=_C,
                                                          detector=None)),
    _case("DriftMemory-adwin-entropy-filtered",
          lambda: DriftMemory(capacity=7, n_classes=_C, signal="entropy", entropy_filter=0.8,
                              detector_options={"delta": 0.05, "clock": 4})),
]
