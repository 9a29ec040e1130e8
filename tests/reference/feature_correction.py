"""Reference (oracle) of ``FeatureCorrection``: the numpy implementation the native core
(``native/src/feature_correction.rs``) was ported from, kept for the differential tests
(``tests/adapters/test_native_feature_correction.py``) only.

It takes the packed input ``[p, outputs row by row, features]`` already validated and
renormalised (the Python handle's edge does that) and keeps the same state. Sums here are
numpy's (``@``, ``mean``: pairwise / BLAS order); the core sums left to right, so the two
agree to rounding, not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

PROBABILITY_FLOOR = 1e-6
VARIANCE_FLOOR = 1e-12
MAX_STANDARDISED = 5.0
MODERATION = math.pi / 4.0


class ReferenceFeatureCorrection:
    """Same constructor as ``streamweights.adapters.FeatureCorrection``; ``predict`` and
    ``learn`` take a packed float64 vector and a class index."""

    def __init__(self, n_classes: int, n_models: int, n_features: int,
                 forgetting: float = 0.9999, prior_variance: float = 1.0,
                 scaling_window: int = 1000, drift_forgetting: float = 0.7,
                 moderate: bool = True, guard: bool = True, guard_share: float = 0.01) -> None:
        self.n_classes, self.n_models, self.n_features = n_classes, n_models, n_features
        self.forgetting, self.prior_variance = forgetting, prior_variance
        self.scaling_window, self.drift_forgetting = scaling_window, drift_forgetting
        self.moderate, self.guard, self.guard_share = moderate, guard, guard_share
        m = self.n_regressors = 1 + n_classes + n_models * n_classes + n_features
        self.head_weights_ = np.zeros((m, n_classes))
        self.covariance_ = prior_variance * np.eye(m)
        self.mean_ = np.zeros(m - 1)
        self.variance_ = np.zeros(m - 1)
        self.guard_weight_ = 0.5
        self.n_learned_ = 0

    def _head(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
        c, k = self.n_classes, self.n_models
        proba = packed[:c]
        rows = packed[:c + k * c].reshape(k + 1, c)
        logs = np.log(np.maximum(rows, PROBABILITY_FLOOR))
        logs = logs - logs.mean(axis=1, keepdims=True)
        raw = np.concatenate([logs.ravel(), packed[c + k * c:]])
        scaled = (raw - self.mean_) / np.sqrt(self.variance_ + VARIANCE_FLOOR)
        z = np.concatenate([[1.0], np.clip(scaled, -MAX_STANDARDISED, MAX_STANDARDISED)])
        correction = z @ self.head_weights_
        if self.moderate:
            correction = correction / np.sqrt(1.0 + MODERATION * float(z @ self.covariance_ @ z))
        logits = np.log(np.maximum(proba, PROBABILITY_FLOOR)) + correction
        logits -= logits.max()
        q = np.exp(logits)
        return z, raw, proba, q / q.sum()

    def predict(self, packed: np.ndarray) -> np.ndarray:
        _, _, proba, q = self._head(packed)
        if not self.guard:
            return q
        return (1.0 - self.guard_weight_) * proba + self.guard_weight_ * q

    def learn(self, packed: np.ndarray, label: int) -> None:
        z, raw, proba, q = self._head(packed)
        guard_weight = self.guard_weight_
        if self.guard:
            trusted = guard_weight * q[label]
            evidence = trusted + (1.0 - guard_weight) * proba[label]
            if evidence > 0.0:
                guard_weight = trusted / evidence
            guard_weight = (1.0 - self.guard_share) * guard_weight + self.guard_share / 2.0
        residual = -q
        residual[label] += 1.0
        curvature = float(np.sum(q * (1.0 - q)))
        gain = self.covariance_ @ z
        denominator = 1.0 + curvature * float(z @ gain)
        covariance = self.covariance_ - (curvature / denominator) * np.outer(gain, gain)
        coefficients = self.head_weights_ + np.outer(gain / denominator, residual)
        gamma = self.forgetting
        coefficients *= gamma
        covariance = gamma * gamma * covariance + (1.0 - gamma * gamma) * self.prior_variance \
            * np.eye(self.n_regressors)
        rate = max(1.0 / (self.n_learned_ + 1), 1.0 / self.scaling_window)
        delta = raw - self.mean_
        self.head_weights_, self.covariance_ = coefficients, covariance
        self.mean_ = self.mean_ + rate * delta
        self.variance_ = (1.0 - rate) * (self.variance_ + rate * delta * delta)
        self.guard_weight_ = guard_weight
        self.n_learned_ += 1

    def on_drift(self) -> None:
        gamma = self.drift_forgetting
        self.head_weights_ = gamma * self.head_weights_
        self.covariance_ = gamma * gamma * self.covariance_ + (1.0 - gamma * gamma) \
            * self.prior_variance * np.eye(self.n_regressors)
