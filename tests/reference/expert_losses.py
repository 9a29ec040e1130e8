"""Reference (numpy) per-model losses and mixtures of the exponential-weights ensembles.

The oracle of ``native/src/expert_losses.rs``: moved here from
``streamweights/adapters/ensemble/_expert_losses.py`` unchanged.

Everything is computed for a batch of events at once; a single event is a batch of one,
so ``learn`` and ``learn_many`` run the same arithmetic and agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights.adapters.validation import (
    as_finite_array,
    check_class_labels,
    check_in_range,
    check_model_outputs,
    check_probability_vector,
    check_probability_vector_rows,
)

LOSSES = ("log", "squared", "absolute")


def resolve_loss(loss: str | None, n_classes: int | None) -> str:
    """Default loss: log-loss for classification, squared error for regression."""
    if loss is None:
        return "log" if n_classes is not None else "squared"
    if loss not in LOSSES:
        raise ValueError(f"loss: must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "log" and n_classes is None:
        raise ValueError("loss: 'log' needs class probabilities; set n_classes")
    return loss


def resolve_learning_rate(learning_rate: float | str) -> float | str:
    if learning_rate == "auto":
        return "auto"
    if isinstance(learning_rate, str):
        raise ValueError(
            f"learning_rate: must be 'auto' or a positive number, got {learning_rate!r}")
    return check_in_range(learning_rate, "learning_rate", 0.0, float("inf"))


class ExpertInputs:
    """Validates model outputs and labels and computes each model's loss."""

    def __init__(self, n_models: int, n_classes: int | None, loss: str,
                 probability_floor: float) -> None:
        self.n_models = n_models
        self.n_classes = n_classes
        self.loss = loss
        self.floor = probability_floor

    def outputs(self, x: Any) -> np.ndarray:
        """One event: ``(K, C)`` probabilities or ``(K,)`` values.

        Rows are checked one by one with the quick vector check (plain floats: a few
        hundred nanoseconds each instead of several numpy reductions); anything that is
        not K rows goes through the full check, which names the problem."""
        if self.n_classes is None:
            return check_model_outputs(x, "outputs", self.n_models, None)
        rows = x.tolist() if type(x) is np.ndarray and x.ndim == 2 else x
        if (type(rows) is list or type(rows) is tuple) and len(rows) == self.n_models:
            try:
                return np.array([check_probability_vector(row, "outputs", self.n_classes)
                                 for row in rows])
            except ValueError:
                pass  # fall through for the full check's message about the whole array
        return check_model_outputs(x, "outputs", self.n_models, self.n_classes)

    def outputs_many(self, xs: Any) -> np.ndarray:
        """A batch: ``(n, K, C)`` or ``(n, K)``, validated in one pass."""
        if self.n_classes is None:
            return as_finite_array(xs, "outputs", (-1, self.n_models))
        if isinstance(xs, np.ndarray) and xs.ndim == 3 and xs.shape[1:] == (
                self.n_models, self.n_classes):
            rows = check_probability_vector_rows(xs.reshape(-1, self.n_classes), "outputs",
                                                 self.n_classes)
            return rows.reshape(len(xs), self.n_models, self.n_classes)
        return np.stack([self.outputs(x) for x in xs]) if len(xs) else np.empty(
            (0, self.n_models, self.n_classes))

    def labels_many(self, ys: Any) -> np.ndarray:
        if self.n_classes is None:
            return as_finite_array(ys, "label", (-1,))
        return check_class_labels(ys, "label", self.n_classes)

    def label(self, y: Any) -> np.ndarray:
        """One label, as a batch of one."""
        if self.n_classes is None:
            target = as_finite_array(y, "label")
            if target.size != 1:
                raise ValueError(f"label: expected 1 target value, got shape {target.shape}")
            return target.reshape(1)
        return check_class_labels([y], "label", self.n_classes)

    def losses_many(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Loss of every model on every event, shape ``(n, K)``."""
        if self.n_classes is None:
            error = outputs - labels[:, None]
            return error * error if self.loss == "squared" else np.abs(error)
        chance = outputs[np.arange(len(labels)), :, labels]
        if self.loss == "log":
            return -np.log(np.maximum(chance, self.floor))
        if self.loss == "absolute":
            return 1.0 - chance
        brier = (outputs * outputs).sum(axis=2)
        return brier - 2.0 * chance + 1.0

    @staticmethod
    def mix(weights: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Weighted mixture of one event's outputs: ``(C,)`` or a 0-d value."""
        return weights @ outputs

    @staticmethod
    def mix_many(weights: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Weighted mixture for a batch: ``(n, C)`` or ``(n,)``."""
        return np.tensordot(outputs, weights, axes=([1], [0]))
