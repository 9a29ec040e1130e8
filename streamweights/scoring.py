"""Prequential (test-then-train) scores: every prediction is scored on its label before
anything learns from that label.

For classification: log-loss, Brier score, accuracy and expected calibration error (ECE,
top-label, 15 equal-width confidence bins, Guo et al. 2017). For regression: MSE and
MAE. Scores are running sums, so they cost O(1) per label, are exact over the whole
stream and snapshot as a handful of numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Probabilities are floored here inside the log-loss: a confident miss costs
#: -ln(1e-6) ~ 13.8 nats instead of infinity, as in every ensemble adapter.
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


class StreamScores:
    """Prequential scores of each raw deployed model and of the adapted output.

    The *raw best* model is the one with the lowest cumulative primary loss (log-loss or
    MSE) in hindsight, i.e. the model a user would have kept had they known.
    """

    def __init__(self, model_names: list[str], classification: bool) -> None:
        self.model_names = list(model_names)
        self.classification = classification
        factory = ClassificationScore if classification else RegressionScore
        self.models = [factory() for _ in model_names]
        self.adapted = factory()

    def update(self, raw_outputs: np.ndarray, adapted: np.ndarray, label: int | float) -> None:
        rows = raw_outputs.tolist() if type(raw_outputs) is np.ndarray else raw_outputs
        for score, output in zip(self.models, rows, strict=True):
            score.update(output, label)
        self.adapted.update(adapted, label)

    def primary(self, summary: dict[str, float]) -> float:
        return summary["log_loss"] if self.classification else summary["mse"]

    def summary(self) -> dict[str, Any]:
        models = {name: score.summary()
                  for name, score in zip(self.model_names, self.models, strict=True)}
        best = min(models, key=lambda name: self.primary(models[name])) if models else None
        return {"models": models, "raw_best": {"model": best, **models[best]} if best else None,
                "adapted": self.adapted.summary()}

    def state_dict(self) -> dict[str, Any]:
        return {"models": [s.state_dict() for s in self.models],
                "adapted": self.adapted.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for score, saved in zip(self.models, state["models"], strict=True):
            score.load_state_dict(saved)
        self.adapted.load_state_dict(state["adapted"])
