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

from typing import Any, ClassVar

import numpy as np

from streamweights._native import FeatureCorrectionCore
from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    NonFiniteUpdate,
    as_finite_array,
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_positive,
)

# The arithmetic and the state live in the native core (``native/src/feature_correction.rs``,
# design.md "The native core"); this class validates at the edge and keeps the API. The
# core's constants: probabilities floored at 1e-6 before the log (as OnlineTemperature);
# 1e-12 added to a variance before its square root (a constant regressor maps to 0); a
# standardised regressor clipped to ±5 standard deviations (an outlier, or the first
# events before the scale is known, moves the head a bounded step); probit moderation
# ``Wᵀz / sqrt(1 + (π/4) zᵀPz)`` (logit differences have variance ``2 zᵀPz``).


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

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

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
        self._core = FeatureCorrectionCore(
            self.n_classes, self.n_models, self.n_features, self.forgetting,
            self.prior_variance, self.scaling_window, self.drift_forgetting, self.moderate,
            self.guard, self.guard_share)

    # -- the state, read from the core (for dashboards and tests) ------------------------
    @property
    def head_weights_(self) -> np.ndarray:
        """``W``, ``(n_regressors, n_classes)``: row 0 the constant, then the regressors."""
        return np.array(self._core.get_state()[0]).reshape(self.n_regressors, self.n_classes)

    @property
    def covariance_(self) -> np.ndarray:
        """``P``, ``(n_regressors, n_regressors)``."""
        m = self.n_regressors
        return np.array(self._core.get_state()[1]).reshape(m, m)

    @property
    def guard_weight_(self) -> float:
        """The guard's weight on the corrected probabilities (0.5 at the start)."""
        return float(self._core.get_state()[4])

    # -- input --------------------------------------------------------------------------
    @staticmethod
    def pack(proba: Any, outputs: Any, features: Any) -> np.ndarray:
        """The packed input ``[proba, outputs row by row, features]`` the chain builds."""
        return np.concatenate([np.ravel(np.asarray(proba, dtype=np.float64)),
                               np.ravel(np.asarray(outputs, dtype=np.float64)),
                               np.ravel(np.asarray(features, dtype=np.float64))])

    def _checked_many(self, xs: Any) -> np.ndarray | list[float]:
        """A batch of packed inputs for the core (which checks every row, in order,
        before using any): as one C-contiguous float64 array when it converts whole to
        rows of the packed length (read by the core directly), else flattened row by row,
        so a bad row is named."""
        try:
            whole = np.asarray(xs, dtype=np.float64)
        except (TypeError, ValueError):
            whole = None
        if whole is not None and whole.ndim == 2 and whole.shape[1] == self.input_size:
            return np.ascontiguousarray(whole)
        flat: list[float] = []
        for index, x in enumerate(xs):
            try:
                flat.extend(self._edge(x))
            except ValueError as error:
                raise ValueError(f"xs[{index}]: {error}") from None
        return flat

    def _edge(self, x: Any) -> list[float]:
        """``x`` as the core takes it: numeric and of the packed length. The core checks
        the rest (finite; ``x.proba`` and the rows of ``x.outputs`` on the simplex within
        ``PROBABILITY_TOLERANCE``, with the messages of :mod:`.validation`) and
        renormalises, before anything changes."""
        try:
            packed = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"x: not numeric ({error})") from None
        if packed.shape != (self.input_size,):
            raise ValueError(f"x: expected shape ({self.input_size},), got {packed.shape}")
        return packed.tolist()

    # -- the verbs ----------------------------------------------------------------------
    # ``predict`` and ``learn`` first offer ``x`` to the core as it is (a float64 vector
    # of the packed length is read directly); any other form is converted here first.
    def predict(self, x: Any) -> np.ndarray:
        out = self._core.predict(x)
        if out is None:
            out = self._core.predict_checked(self._edge(x))
        return out  # a new float64 array, made by the core

    def predict_many(self, xs: Any) -> np.ndarray:
        if not len(xs):
            return np.empty((0,))
        served = self._core.predict_many(self._checked_many(xs))
        return np.array(served).reshape(len(xs), self.n_classes)

    def learn(self, x: Any, y: Any) -> None:
        """One extended-Kalman step on the label (at the head's current output for ``x``),
        the drift transition, then the guard and the standardiser take the event in."""
        try:  # ValueError for a bad x or y passes through
            if not self._core.learn(x, y):  # not a plain int class and a float64 row
                label = check_class_label(y, "y", self.n_classes)
                self._core.learn_checked(self._edge(x), label)
        except ArithmeticError as error:  # a non-finite update, refused: nothing changed
            raise NonFiniteUpdate(str(error)) from None

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        labels = check_class_labels(ys, "ys", self.n_classes).tolist()
        flat = self._checked_many(xs)
        try:
            self._core.learn_many(flat, labels)  # every row checked before the first step
        except ArithmeticError as error:  # the loop would have raised at the same event
            raise NonFiniteUpdate(str(error)) from None

    def on_drift(self) -> None:
        """A change was detected: move the covariance toward the prior and shrink the
        weights by ``drift_forgetting``, so the head relearns quickly."""
        self._core.on_drift()

    # -- state --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "n_models": self.n_models,
                "n_features": self.n_features, "forgetting": self.forgetting,
                "prior_variance": self.prior_variance, "scaling_window": self.scaling_window,
                "drift_forgetting": self.drift_forgetting, "moderate": self.moderate,
                "guard": self.guard, "guard_share": self.guard_share}

    def _get_state(self) -> dict[str, Any]:
        weights, covariance, mean, variance, guard_weight, n_learned = self._core.get_state()
        m, c = self.n_regressors, self.n_classes
        return {"coefficients": np.array(weights).reshape(m, c),
                "covariance": np.array(covariance).reshape(m, m),
                "mean": np.array(mean), "variance": np.array(variance),
                "guard_weight": guard_weight, "n_learned": n_learned}

    def _set_state(self, state: dict[str, Any]) -> None:
        m, c = self.n_regressors, self.n_classes
        coefficients = as_finite_array(state["coefficients"], "state.coefficients", (m, c))
        covariance = as_finite_array(state["covariance"], "state.covariance", (m, m))
        mean = as_finite_array(state["mean"], "state.mean", (m - 1,))
        variance = as_finite_array(state["variance"], "state.variance", (m - 1,))
        n_learned = check_count(state["n_learned"], "state.n_learned", 0)
        guard_weight = float(state["guard_weight"])
        if not 0.0 <= guard_weight <= 1.0:
            raise ValueError(f"state.guard_weight: must be in [0, 1], got {guard_weight!r}")
        self._core.set_state((coefficients.ravel().tolist(), covariance.ravel().tolist(),
                              mean.tolist(), variance.tolist(), guard_weight, n_learned))


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value
