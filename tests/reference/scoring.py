"""The plain-Python prequential scores the native core's score classes are checked
against (tests/test_native_scores.py): the service's implementation until the core took
the per-record loop over. Not a product path."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PROBABILITY_FLOOR = 1e-6
ECE_BINS = 15


class ClassificationScore:
    """Running log-loss, Brier, accuracy and top-label ECE of one forecaster."""

    def __init__(self) -> None:
        self.count = 0
        self.log_loss_sum = 0.0
        self.brier_sum = 0.0
        self.correct = 0
        self._bins = [[0.0, 0.0, 0.0] for _ in range(ECE_BINS)]

    def update(self, proba: np.ndarray | list[float], label: int) -> float:
        """Score one prediction; return its log-loss. Plain floats: per-event numpy calls
        on a handful of classes would cost more than the arithmetic."""
        values = proba.tolist() if type(proba) is np.ndarray else proba
        chance = values[label]
        loss = -math.log(max(chance, PROBABILITY_FLOOR))
        confidence = max(values)
        top = values.index(confidence)
        hit = top == label
        self.count += 1
        self.log_loss_sum += loss
        self.brier_sum += math.fsum(v * v for v in values) - 2.0 * chance + 1.0
        self.correct += hit
        index = min(int(confidence * ECE_BINS), ECE_BINS - 1)
        self._bins[index][0] += 1.0
        self._bins[index][1] += confidence
        self._bins[index][2] += hit
        return loss

    def summary(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {
            "count": self.count,
            "log_loss": self.log_loss_sum / n,
            "brier": self.brier_sum / n,
            "accuracy": self.correct / n,
            "ece": math.fsum(abs(confidence - correct)
                             for _, confidence, correct in self._bins) / n,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "log_loss_sum": self.log_loss_sum,
                "brier_sum": self.brier_sum, "correct": self.correct,
                "bins": [list(b) for b in self._bins]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.log_loss_sum = float(state["log_loss_sum"])
        self.brier_sum = float(state["brier_sum"])
        self.correct = int(state["correct"])
        self._bins = [[float(v) for v in b] for b in state["bins"]]


class RegressionScore:
    """Running mean squared and mean absolute error of one forecaster."""

    def __init__(self) -> None:
        self.count = 0
        self.squared_sum = 0.0
        self.absolute_sum = 0.0

    def update(self, value: float, target: float) -> float:
        """Score one prediction; return its squared error."""
        error = float(value) - float(target)
        self.count += 1
        self.squared_sum += error * error
        self.absolute_sum += abs(error)
        return error * error

    def summary(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"count": self.count, "mse": self.squared_sum / n, "mae": self.absolute_sum / n}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "squared_sum": self.squared_sum,
                "absolute_sum": self.absolute_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.squared_sum = float(state["squared_sum"])
        self.absolute_sum = float(state["absolute_sum"])
