"""DriftMemory's detector as it ran before issue 11: river's own ADWIN / PageHinkley.

``RiverMonitor`` is the reference memory's ``_Monitor`` (``tests/reference/drift_memory.py``,
the numpy adapter as it was) with the detector swapped back to river's object and the
state read and written through river's internals, exactly as the adapter did when it
held river's detectors. A ``RiverDriftMemory`` given one (``river_memory``) writes the
snapshots that version wrote, and runs the reference the core's ports are compared with
(``tests/adapters/test_native_drift_memory.py``). Its entropy is summed the core's way
(left to right, libm's log: see test_native_drift_memory_core.py for the numpy way's
last-bit drift), so the two agree bit for bit. Not a product path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import river
from river import drift as river_drift

from tests.reference import drift_memory as production
from tests.reference.drift_memory import DriftMemory


class RiverMonitor(production._Monitor):
    """Production's monitor (history, standardisation, change point) on river's detector."""

    def __init__(self, kind: str, options: dict[str, Any], warmup: int) -> None:
        super().__init__(kind, options, warmup)
        arguments = dict(production._PAGE_HINKLEY_DEFAULTS) if kind == "page_hinkley" else {}
        arguments.update(options)
        factory = river_drift.ADWIN if kind == "adwin" else river_drift.PageHinkley
        self.detector = factory(**arguments)

    def get_state(self) -> dict[str, Any]:
        """The detector state as the river-backed adapter wrote it."""
        detector = self.detector
        state: dict[str, Any] = {"river_version": river.__version__, "kind": self.kind,
                                 "drift_detected": bool(detector.drift_detected),
                                 "history": self._history.copy(),
                                 "since_alarm": self._since_alarm}
        if self.kind == "adwin":
            state["window"] = np.frombuffer(detector._helper.__getstate__(), dtype=np.uint8).copy()
        else:
            mean = detector._x_mean
            state["sums"] = np.array([detector._sum_increase, detector._min_increase,
                                      detector._sum_decrease, detector._max_decrease,
                                      mean.n, mean._mean], dtype=np.float64)
            state["moments"] = np.array([self._count, self._mean, self._squares],
                                        dtype=np.float64)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load a state the way the river-backed adapter did (same river version only)."""
        assert state["river_version"] == river.__version__, state["river_version"]
        detector = self.detector
        if self.kind == "adwin":
            detector._helper.__setstate__(np.asarray(state["window"], dtype=np.uint8).tobytes())
        else:
            sums = np.asarray(state["sums"], dtype=np.float64).tolist()
            (detector._sum_increase, detector._min_increase, detector._sum_decrease,
             detector._max_decrease, detector._x_mean.n, detector._x_mean._mean) = sums
            count, self._mean, self._squares = np.asarray(state["moments"], np.float64).tolist()
            self._count = int(count)
        detector._drift_detected = bool(state["drift_detected"])
        self._history = np.array(state["history"], dtype=np.float64)
        self._since_alarm = int(state["since_alarm"])


def _entropy(p: np.ndarray) -> float:
    """The core's entropy: left to right over the classes, libm's log."""
    total = 0.0
    for value in p.tolist():
        total += value * math.log(max(value, 1e-300))
    return -total


class RiverDriftMemory(DriftMemory):
    """The reference memory with the core's entropy arithmetic."""

    def observe(self, x: Any) -> None:
        p = np.array(production.check_probability_vector(x, "x", self.n_classes))
        self._observe_unchecked(p, int(p.argmax()), _entropy(p))

    def observe_many(self, xs: Any) -> None:
        for row in self._check_rows(xs, "xs"):
            self._observe_unchecked(row, int(row.argmax()), _entropy(row))

    def learn(self, x: Any, y: Any) -> None:
        p = np.array(production.check_probability_vector(x, "x", self.n_classes))
        label = production.check_class_label(y, "y", self.n_classes)
        self._learn_unchecked(p, label, int(p.argmax()), _entropy(p))

    def learn_many(self, xs: Any, ys: Any) -> None:
        rows = self._check_rows(xs, "xs")
        for row, y in zip(rows, ys, strict=True):
            label = production.check_class_label(y, "y", self.n_classes)
            self._learn_unchecked(row, label, int(row.argmax()), _entropy(row))


# Snapshots carry the adapter's class name: this one writes DriftMemory's.
RiverDriftMemory.__name__ = RiverDriftMemory.__qualname__ = "DriftMemory"


def river_memory(**config: Any) -> DriftMemory:
    """A ``DriftMemory`` whose detector is river's own (``config`` as for DriftMemory)."""
    memory = RiverDriftMemory(**config)
    if memory.detector is not None:
        memory._monitor = RiverMonitor(memory.detector, memory.detector_options,
                                       memory.standardise_warmup)
    return memory


def load_into_river_memory(state_dict: dict[str, Any]) -> DriftMemory:
    """A river-backed ``DriftMemory`` restored from ``state_dict`` the old way: what a
    process still running the river-backed adapter makes of a snapshot."""
    memory = river_memory(**state_dict["config"])
    monitor = memory._monitor
    memory.load_state_dict(state_dict)  # restores the memory; the monitor it builds is native
    if monitor is not None:
        monitor.set_state(state_dict["state"]["detector"])
        memory._monitor = monitor
    return memory
