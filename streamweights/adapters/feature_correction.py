"""A feature-aware correction stage: a Kalman-filtered logistic head over the record's
features and the models' logits, learned online on top of the chain's probabilities.

Re-weighting and recalibrating frozen models cannot fix what none of them knows: a
region of the feature space where all of them err the same way after a drift. A
contender that retrains on the features (river's ADWIN-retrained tree) can. This stage
closes that gap without leaving the chain: it takes the probabilities of the stage
before it as the starting point and learns an additive correction of their logits,

``q = softmax(log p + Wᵀ z)``,  ``z = [1, standardise(log p, log o_1, .., log o_K, x)]``,

from the labels, where ``p`` is the upstream output, ``o_k`` the K deployed models'
probabilities and ``x`` the record's ``features``. ``W`` starts at zero (the stage is
the identity until labels say otherwise) and drifts back toward zero at a fixed rate,
so on a stream where the features carry nothing the stage stays near the identity.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    NonFiniteUpdate,
    as_finite_array,
    check_class_label,
    check_count,
    check_in_range,
    check_positive,
    check_probabilities,
    check_probability_rows,
)

#: Probabilities are floored here before the log, as in ``OnlineTemperature``, so a
#: class a model rules out exactly still has a finite logit.
PROBABILITY_FLOOR = 1e-6
#: Variance added before the square root of the standardiser, so a constant regressor
#: (variance 0) maps to 0 rather than dividing by zero.
VARIANCE_FLOOR = 1e-12
#: The most a standardised regressor may be away from its mean, in standard deviations:
#: one outlying feature value (or the first events, before the scale is known) moves the
#: head by a bounded step instead of an arbitrary one.
MAX_STANDARDISED = 5.0
#: Probit moderation of the correction, ``Wᵀz / sqrt(1 + (π/4) zᵀPz)``: class
#: probabilities depend on differences of two logits, each with variance ``zᵀPz``, and the
#: probit approximation of a logistic integral N(m, v) is sigmoid(m / sqrt(1 + π v / 8)).
MODERATION = math.pi / 4.0


class FeatureCorrection(Adapter):
    """Correct the chain's probabilities from the record's features and the models' logits.

    A logistic head over ``z = [1, s]``, where ``s`` standardises (online, with an
    exponentially weighted mean and variance) the centred log-probabilities of the
    upstream output, of each of the K deployed models and the ``n_features`` features.
    Its weights ``W`` (one column per class) are tracked by an extended Kalman filter
    (a Laplace / online-Newton step) with the drift model of Titsias et al.: after each
    label ``W ← γ W`` and ``P ← γ² P + (1 - γ²) σ_w² I``, so the weights shrink toward the
    identity correction and their covariance ``P`` never exceeds the prior ``σ_w² I``
    (bounded memory of about ``1 / (1 - γ²)`` labels, no covariance wind-up). The update
    for a label ``y`` (one-hot ``e``) at the head's current output ``q`` is
    ``P ← P - h P z zᵀ P / (1 + h zᵀ P z)`` with ``h = Σ_c q_c (1 - q_c)`` and
    ``W ← W + P z (e - q)ᵀ``: one rank-one update, O(m²) for ``m = 1 + C + K C + n_features``
    regressors. For two classes this is exactly the Newton step of binary logistic
    regression on the logit difference; for more, the class columns share one
    covariance (the block-diagonal approximation of the softmax curvature).

    It is a chain stage after the ensemble (``(C,) -> (C,)``). The chain hands it one
    packed vector ``[p (C), o (K·C, row by row), features (n_features)]`` (see
    :meth:`pack`); ``Chain.predict_trace(outputs, features=...)`` builds it, and the
    pipeline passes each prediction's ``features`` along (a prediction without them is
    a dead letter ``missing_features``).

    Parameters
    ----------
    n_classes
        Number of classes ``C >= 2`` (set by the stream in a config).
    n_models
        Number of deployed models K whose rows are packed in (set by the stream).
    n_features
        Length of each prediction's ``features`` (required in a config).
    forgetting
        γ in ``(0, 1]``: the weights' drift per label. ``0.9999`` remembers about 5,000
        labels (``1 / (1 - γ²)``); on the evaluation's streams it beat ``0.999`` (500
        labels: too noisy a head with labels ~200 events late) on every stream tried;
        detected changes shorten it (``on_drift``); ``1.0`` never forgets.
    prior_variance
        ``σ_w²``, the variance of every weight before evidence: how far the correction may
        move per unit of standardised regressor. ``1.0`` suits standardised inputs.
    scaling_window
        The standardiser's memory: it averages exactly over the first ``scaling_window``
        labels, then exponentially with that time constant, so its scale follows a
        drifting feature and its state stays fixed-size.
    drift_forgetting
        γ of the one-off transition ``on_drift`` applies: ``0.7`` (γ² ≈ 0.5) moves the
        covariance halfway back to the prior, so the head relearns quickly after a
        detected change; the weights shrink by the same factor.
    moderate
        Shrink the correction where the head is unsure: ``Wᵀz / sqrt(1 + (π/4) zᵀPz)``
        (the probit approximation of averaging over the weights' posterior). Early
        corrections, and those in a region of feature space seldom seen, stay small.
    guard
        Serve the Bayes mixture ``(1 - g) p + g q`` of the upstream ``p`` and the
        corrected ``q``, ``g`` updated from each label's log-loss (exponential weights
        with learning rate 1): the stage's cumulative log-loss is then at most that of
        the better of the two plus ``ln 2`` (plus the fixed share's cost), so a head that
        cannot help costs next to nothing.
    guard_share
        Fixed share of the guard: after each label ``g ← (1 - α) g + α / 2``, so it can
        switch back to the head after a stretch where ``p`` was better (Herbster &
        Warmuth); ``0.01`` switches within a few hundred labels.

    Config keys (``adapters:`` entry ``{type: FeatureCorrection, n_features: d, ...}``):
    ``n_features`` (required), ``forgetting``, ``prior_variance``, ``scaling_window``,
    ``drift_forgetting``, ``moderate``, ``guard``, ``guard_share``; ``n_classes`` and
    ``n_models`` come from the stream.

    Example
    -------
    Two models that ignore a feature which flips the class on part of the space:

    >>> import numpy as np
    >>> from streamweights.adapters import FeatureCorrection
    >>> rng = np.random.default_rng(0)
    >>> stage = FeatureCorrection(n_classes=2, n_models=1, n_features=2)
    >>> losses = []
    >>> for t in range(4000):
    ...     x = rng.normal(size=2)
    ...     truth = 1.0 / (1.0 + np.exp(-3.0 * x[0]))
    ...     model = np.array([0.5, 0.5])  # knows nothing
    ...     packed = FeatureCorrection.pack(model, model[None, :], x)
    ...     q = stage.predict(packed)
    ...     y = int(rng.random() < truth)
    ...     losses.append(-np.log(q[y]))
    ...     stage.learn(packed, y)
    >>> bool(np.mean(losses[-1000:]) < 0.9 * np.log(2))  # beats the model's log 2
    True

    References
    ----------
    Titsias, Galashov, Rannen-Triki, Pascanu, Teh, Bornschein. "Kalman Filter for Online
    Classification of Non-Stationary Data." ICLR 2024, arXiv:2306.08448 (the drift model
    of a linear head's weights; we use the logistic likelihood through an extended
    Kalman step instead of their Gaussian surrogate, and a fixed γ).
    """

    #: The chain hands this stage the packed ``[p, outputs, features]`` vector.
    uses_features: ClassVar[bool] = True

    def __init__(self, n_classes: int, n_models: int, n_features: int,
                 forgetting: float = 0.9999, prior_variance: float = 1.0,
                 scaling_window: int = 1000, drift_forgetting: float = 0.7,
                 moderate: bool = True, guard: bool = True,
                 guard_share: float = 0.01) -> None:
        self.n_classes = check_count(n_classes, "n_classes", 2)
        self.n_models = check_count(n_models, "n_models")
        self.n_features = check_count(n_features, "n_features")
        self.forgetting = check_in_range(forgetting, "forgetting", 0.0, 1.0, high_open=False)
        self.prior_variance = check_positive(prior_variance, "prior_variance")
        self.scaling_window = check_count(scaling_window, "scaling_window")
        self.drift_forgetting = check_in_range(drift_forgetting, "drift_forgetting", 0.0, 1.0)
        self.moderate = _check_flag(moderate, "moderate")
        self.guard = _check_flag(guard, "guard")
        self.guard_share = check_in_range(guard_share, "guard_share", 0.0, 1.0, low_open=False)
        c, k = self.n_classes, self.n_models
        #: Length of the packed input ``[p, outputs, features]``.
        self.input_size = c + k * c + self.n_features
        #: Regressors of the head: the constant and the standardised rest.
        self.n_regressors = 1 + c + k * c + self.n_features
        self._reset()

    def _reset(self) -> None:
        m, c = self.n_regressors, self.n_classes
        self.head_weights_ = np.zeros((m, c))
        self.covariance_ = self.prior_variance * np.eye(m)
        self.mean_ = np.zeros(m - 1)
        self.variance_ = np.zeros(m - 1)
        self.guard_weight_ = 0.5
        self.n_learned_ = 0

    # -- input --------------------------------------------------------------------------
    @staticmethod
    def pack(proba: Any, outputs: Any, features: Any) -> np.ndarray:
        """The packed input ``[proba, outputs row by row, features]`` the chain builds."""
        return np.concatenate([np.ravel(np.asarray(proba, dtype=np.float64)),
                               np.ravel(np.asarray(outputs, dtype=np.float64)),
                               np.ravel(np.asarray(features, dtype=np.float64))])

    def _check(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split and validate a packed input; ValueError names the part that is wrong."""
        packed = as_finite_array(x, "x", (self.input_size,))
        c, k = self.n_classes, self.n_models
        proba = check_probabilities(packed[:c], "x.proba", c)
        outputs = check_probability_rows(packed[c:c + k * c].reshape(k, c), "x.outputs", k, c)
        return proba, outputs, packed[c + k * c:]

    def _regressors(self, proba: np.ndarray, outputs: np.ndarray,
                    features: np.ndarray) -> np.ndarray:
        """Raw regressors: centred log-probabilities (upstream, then each model), features."""
        logs = np.log(np.maximum(np.vstack([proba[None, :], outputs]), PROBABILITY_FLOOR))
        logs = logs - logs.mean(axis=1, keepdims=True)
        return np.concatenate([logs.ravel(), features])

    def _standardised(self, raw: np.ndarray) -> np.ndarray:
        scaled = (raw - self.mean_) / np.sqrt(self.variance_ + VARIANCE_FLOOR)
        return np.concatenate([[1.0], np.clip(scaled, -MAX_STANDARDISED, MAX_STANDARDISED)])

    def _head(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Regressors ``z``, raw regressors, the upstream and the corrected probabilities."""
        proba, outputs, features = self._check(x)
        raw = self._regressors(proba, outputs, features)
        z = self._standardised(raw)
        correction = z @ self.head_weights_
        if self.moderate:
            correction = correction / np.sqrt(1.0 + MODERATION * float(z @ self.covariance_ @ z))
        logits = np.log(np.maximum(proba, PROBABILITY_FLOOR)) + correction
        logits -= logits.max()
        q = np.exp(logits)
        return z, raw, proba, q / q.sum()

    def _served(self, proba: np.ndarray, corrected: np.ndarray) -> np.ndarray:
        if not self.guard:
            return corrected
        share = self.guard_weight_
        return (1.0 - share) * proba + share * corrected

    # -- the verbs ----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        _, _, proba, corrected = self._head(x)
        return self._served(proba, corrected)

    def learn(self, x: Any, y: Any) -> None:
        """One extended-Kalman step on the label, then the drift transition, then the
        standardiser takes in this event (so ``z`` here is what ``predict`` served)."""
        label = check_class_label(y, "y", self.n_classes)
        z, raw, proba, q = self._head(x)
        guard_weight = self.guard_weight_
        if self.guard:  # Bayes mixture of the two on log-loss, then a fixed share
            trusted = guard_weight * q[label]
            evidence = trusted + (1.0 - guard_weight) * proba[label]
            if evidence > 0.0:  # both gave the label probability 0: no evidence either way
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
        mean = self.mean_ + rate * delta
        variance = (1.0 - rate) * (self.variance_ + rate * delta * delta)
        if not (np.isfinite(coefficients).all() and np.isfinite(covariance).all()
                and np.isfinite(variance).all()):
            raise NonFiniteUpdate("FeatureCorrection: the update is not finite for this "
                                  "event (features too large for the arithmetic)")
        self.head_weights_, self.covariance_ = coefficients, covariance
        self.mean_, self.variance_ = mean, variance
        self.guard_weight_ = guard_weight
        self.n_learned_ += 1

    def on_drift(self) -> None:
        """A change was detected: move the covariance toward the prior and shrink the
        weights by ``drift_forgetting``, so the head relearns quickly."""
        gamma = self.drift_forgetting
        self.head_weights_ = gamma * self.head_weights_
        self.covariance_ = gamma * gamma * self.covariance_ + (1.0 - gamma * gamma) \
            * self.prior_variance * np.eye(self.n_regressors)

    # -- state --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "n_models": self.n_models,
                "n_features": self.n_features, "forgetting": self.forgetting,
                "prior_variance": self.prior_variance, "scaling_window": self.scaling_window,
                "drift_forgetting": self.drift_forgetting, "moderate": self.moderate,
                "guard": self.guard, "guard_share": self.guard_share}

    def _get_state(self) -> dict[str, Any]:
        return {"coefficients": self.head_weights_.copy(), "covariance": self.covariance_.copy(),
                "mean": self.mean_.copy(), "variance": self.variance_.copy(),
                "guard_weight": self.guard_weight_, "n_learned": self.n_learned_}

    def _set_state(self, state: dict[str, Any]) -> None:
        m, c = self.n_regressors, self.n_classes
        coefficients = as_finite_array(state["coefficients"], "state.coefficients", (m, c))
        covariance = as_finite_array(state["covariance"], "state.covariance", (m, m))
        mean = as_finite_array(state["mean"], "state.mean", (m - 1,))
        variance = as_finite_array(state["variance"], "state.variance", (m - 1,))
        n_learned = check_count(state["n_learned"], "state.n_learned", 0)
        self.head_weights_, self.covariance_ = coefficients.copy(), covariance.copy()
        self.mean_, self.variance_ = mean.copy(), variance.copy()
        guard_weight = float(state["guard_weight"])
        if not 0.0 <= guard_weight <= 1.0:
            raise ValueError(f"state.guard_weight: must be in [0, 1], got {guard_weight!r}")
        self.guard_weight_ = guard_weight
        self.n_learned_ = n_learned


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value
