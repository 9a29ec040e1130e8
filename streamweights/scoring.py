"""Prequential (test-then-train) scores: every prediction is scored on its label before
anything learns from that label.

For classification: log-loss, Brier score, accuracy and expected calibration error (ECE,
top-label, 15 equal-width confidence bins, Guo et al. 2017). For regression: MSE and
MAE. Scores are running sums, so they cost O(1) per label, are exact over the whole
stream and snapshot as a handful of numbers. The per-forecaster sums run in the native
core; this module keeps the per-stream bookkeeping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights._native import (
    ECE_BINS,
    PROBABILITY_FLOOR,
    ClassificationScore,
    RegressionScore,
    update_classification_scores,
    update_regression_scores,
)

__all__ = ["ECE_BINS", "PROBABILITY_FLOOR", "ClassificationScore", "RegressionScore",
           "StreamScores"]

# ClassificationScore / RegressionScore live in the native core (native/src/scores.rs):
# update(forecast, label) -> loss, summary(), state_dict(), load_state_dict(). Log-loss
# floors probabilities at PROBABILITY_FLOOR (1e-6: a confident miss costs ~13.8 nats
# instead of infinity, as in every ensemble adapter); ECE is top-label over ECE_BINS
# (15) equal-width confidence bins.


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
        #: Every score in update order (the models', then the adapted output's), for the
        #: core's one-call update.
        self._all = [*self.models, self.adapted]

    def update(self, raw_outputs: np.ndarray, adapted: np.ndarray, label: int | float) -> None:
        """Score each model's row of ``raw_outputs`` and the ``adapted`` output on
        ``label`` (one core call; a list of rows is taken as it is)."""
        rows = raw_outputs.tolist() if type(raw_outputs) is np.ndarray else raw_outputs
        if len(rows) != len(self.models):
            raise ValueError(f"raw_outputs: {len(rows)} rows for {len(self.models)} models")
        if self.classification:
            update_classification_scores(self._all, [*rows, adapted], label)
        else:
            update_regression_scores(self._all, [*rows, float(adapted)], label)

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
