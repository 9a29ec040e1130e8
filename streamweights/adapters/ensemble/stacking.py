"""Online stacking: any real-valued linear combination of K models, tracked by a Kalman filter.

The filter (``KalmanWeights``) holds the weights; the stacking-specific per-event
arithmetic (quick input check, the filter's design rows, the finiteness guard, the
floored class mixture) runs in the native core (``native/src/stacking.rs``). The numpy
implementation it replaced is the test oracle in ``tests/reference/stacking.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.ensemble._expert_losses import ExpertInputs
from streamweights.adapters.kalman import KalmanWeights
from streamweights.adapters.validation import (
    NonFiniteUpdate,
    as_finite_array,
    check_class_label,
    check_class_labels,
    check_count,
    check_finite_update,
    check_in_range,
    check_probability_vector_rows,
)

_empty = np.empty
_NOT_FINITE = ("update: not finite for this update (an output or a target too large for the "
               "arithmetic)")


class OnlineStacking(Adapter):
    """Linear stacking of K deployed models with drifting, unconstrained weights.

    Hedge and Fixed-Share pick a convex mixture, so they can never beat the best model
    by much. When models err in correlated ways the best combination may put a negative
    weight on one or have weights summing to more than one (``1.6 f1 - 0.6 f2``
    extrapolates past a biased model). Here the weights are a linear regression of the
    label on the models' outputs, tracked online by :class:`KalmanWeights` (which also
    learns how fast the weights drift); they start at the uniform average, ``1/K`` each.

    * Regression: features are the K outputs (plus 1 with ``fit_intercept``), the target
      is the label; ``predict`` returns a 0-d array.
    * Classification: one weight per model, shared by all classes. An event gives C
      observations, "the label is c" (0 or 1) against the models' probabilities of c,
      learned as one simultaneous batch (one transition, one C × C Cholesky update).
      The prediction ``Σ_i w_i p_i`` is floored at ``probability_floor`` and
      renormalised onto the simplex.

    Parameters
    ----------
    n_models
        K, the number of deployed models combined.
    n_classes
        C for classification (inputs ``(K, C)`` probabilities, output ``(C,)``); ``None``
        for regression (inputs ``(K,)`` values, output a 0-d array).
    forgetting
        ``"learn"`` (default) or a fixed γ in ``(0, 1]`` for the weight drift.
    prior_variance
        Stationary variance of each weight around ``1/K`` (and of the intercept around
        0). 1.0 lets a weight move well beyond [0, 1], as stacking needs.
    noise_variance
        Observation noise of the label given the combination, in squared label units,
        or ``"learn"`` (default): the label's units are unknown here, and a wrong noise
        level biases the learned forgetting (see :class:`KalmanWeights`).
    initial_noise_variance
        Starting noise variance when learned; ``None`` means 1.0 for regression and
        0.25 for classification (the largest variance of a 0/1 outcome).
    fit_intercept
        Add a constant feature (a bias term shared by all classes).
    max_forgetting
        Ceiling of the learned γ. 0.9999 caps the memory at about 5,000 events: the
        one-step gradient that learns γ sees a rare switch of the best model only
        faintly and would otherwise drift to ``1 - 1e-6``, which re-weights after a
        switch as slowly as a cumulative average (measured on a stream whose best model
        switches every 2,000 events: log-loss 0.435 capped vs 0.470 uncapped).
    initial_forgetting, min_forgetting, forgetting_learning_rate, drift_forgetting
        Passed to :class:`KalmanWeights`, which documents them.
    noise_learning_rate
        Passed to :class:`KalmanWeights` too (Adam step size on the log noise variance).
    probability_floor
        Classification probabilities are clipped below here before renormalising, so a
        combination that goes negative still gives a usable distribution. 1e-3 caps the
        log-loss of such an extrapolation at about 6.9 nats (measured on a stream with
        an anti-informative model: log-loss 0.565 at 1e-3 against 0.619 at 1e-6, same
        Brier score).

    Notes
    -----
    The C observations of one classification event are not independent (they sum to
    one), but treating them as such is the usual linear-probability stacking and keeps
    the update exact and cheap. ``on_drift`` delegates to the filter. The filter's state
    nests in this adapter's state. The defaults differ from :class:`KalmanWeights` in
    three places, each measured above or explained: the noise variance is learned, γ is
    capped at 0.9999 and the probability floor is 1e-3. Not from a single paper:
    stacking (Wolpert 1992; Breiman 1996) made online with the drift model of Titsias et
    al. (2023); algorithms.md has no section on it.

    Example
    -------
    >>> import numpy as np
    >>> from streamweights.adapters import OnlineStacking
    >>> rng = np.random.default_rng(0)
    >>> stacking = OnlineStacking(n_models=2)
    >>> for _ in range(1000):
    ...     f = rng.normal(size=2)
    ...     stacking.learn(f, 1.6 * f[0] - 0.6 * f[1] + 0.1 * rng.normal())
    >>> np.round(stacking.weights_, 1)
    array([ 1.6, -0.6])

    References
    ----------
    Wolpert. "Stacked generalization." Neural Networks 5 (1992).
    Breiman. "Stacked regressions." Machine Learning 24 (1996).
    Titsias, Galashov, Rannen-Triki, Pascanu, Teh, Bornschein. "Kalman Filter for Online
    Classification of Non-Stationary Data." ICLR 2024, arXiv:2306.08448.
    """

    fresh_state = True  # its filter's state_dict, a fresh copy (Adapter.fresh_state)

    def __init__(
        self,
        n_models: int,
        n_classes: int | None = None,
        forgetting: str | float = "learn",
        prior_variance: float = 1.0,
        noise_variance: str | float = "learn",
        initial_noise_variance: float | None = None,
        fit_intercept: bool = False,
        max_forgetting: float = 0.9999,
        initial_forgetting: float = 0.999,
        min_forgetting: float = 0.9,
        forgetting_learning_rate: float = 0.01,
        noise_learning_rate: float = 0.01,
        drift_forgetting: float = 0.7,
        probability_floor: float = 1e-3,
    ) -> None:
        self.n_models = check_count(n_models, "n_models")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        if not isinstance(fit_intercept, bool):
            raise ValueError(f"fit_intercept: must be True or False, got {fit_intercept!r}")
        self.fit_intercept = fit_intercept
        # A floor of 1/C or more would make every prediction uniform.
        self.probability_floor = check_in_range(probability_floor, "probability_floor", 0.0,
                                                1.0 / (self.n_classes or 1))
        starting_noise = initial_noise_variance
        if starting_noise is None:
            starting_noise = 0.25 if self.n_classes is not None else 1.0
        n_features = self.n_models + int(fit_intercept)
        prior_mean = [1.0 / self.n_models] * self.n_models + [0.0] * int(fit_intercept)
        self._filter = KalmanWeights(
            n_features=n_features, n_outputs=1, task="regression", forgetting=forgetting,
            prior_variance=prior_variance, noise_variance=noise_variance,
            initial_forgetting=initial_forgetting, min_forgetting=min_forgetting,
            max_forgetting=max_forgetting, forgetting_learning_rate=forgetting_learning_rate,
            prior_mean=prior_mean, drift_forgetting=drift_forgetting,
            initial_noise_variance=starting_noise, noise_learning_rate=noise_learning_rate)
        self._config = {
            "n_models": self.n_models, "n_classes": self.n_classes,
            "forgetting": self._filter.forgetting,
            "prior_variance": self._filter.prior_variance,
            "noise_variance": self._filter.noise_variance,
            "initial_noise_variance": initial_noise_variance, "fit_intercept": fit_intercept,
            "max_forgetting": self._filter.max_forgetting,
            "initial_forgetting": self._filter.initial_forgetting,
            "min_forgetting": self._filter.min_forgetting,
            "forgetting_learning_rate": self._filter.forgetting_learning_rate,
            "noise_learning_rate": self._filter.noise_learning_rate,
            "drift_forgetting": self._filter.drift_forgetting,
            "probability_floor": self.probability_floor,
        }
        if self.n_classes is not None:
            # The C observations of a classification event: targets 1{y = c}.
            self._class_targets = np.eye(self.n_classes)[:, :, None]  # (C, C, 1)
        self._inputs = ExpertInputs(self.n_models, self.n_classes, "squared",
                                    self.probability_floor)
        self._core = _native.StackingCore(self.n_models, self.n_classes, fit_intercept,
                                          self.probability_floor)
        self._output_shape = (self.n_classes or 1,)
        self._design_shape = ((n_features,) if self.n_classes is None
                              else (self.n_classes, n_features))

    # -- public read-only views -------------------------------------------------------
    @property
    def weights_(self) -> np.ndarray:
        """Current combination weights, one per model (may be negative or sum past 1)."""
        return self._filter.mean_[: self.n_models, 0]

    @property
    def intercept_(self) -> float:
        """Current intercept (0.0 without ``fit_intercept``)."""
        return float(self._filter.mean_[-1, 0]) if self.fit_intercept else 0.0

    @property
    def forgetting_(self) -> float:
        """Current forgetting factor γ of the weight drift."""
        return self._filter.forgetting_

    @property
    def noise_variance_(self) -> float:
        """Current noise variance of the label around the combination."""
        return self._filter.noise_variance_

    @property
    def filter_(self) -> KalmanWeights:
        """The Kalman filter tracking the weights (for inspection; do not drive it)."""
        return self._filter

    # -- the contract -----------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        out = self._core.predict_with(x, self._filter._core)  # one call: quick path
        if out is not None:  # a new float64 array (0-d for regression), made by the core
            return out
        design = _empty(self._design_shape)  # not cleared quickly: check fully (may raise)
        self._core.design_checked(self._checked(x), design)
        return self._predict_design(design)

    def predict_many(self, xs: Any) -> np.ndarray:
        batch = self._check_outputs_many(xs)
        if not len(batch):
            return np.empty((0,) if self.n_classes is None else (0, self.n_classes))
        out = _empty((len(batch), self._output_shape[0]) if self.n_classes is not None
                     else (len(batch),))
        self._core.predict_checked_many(np.ascontiguousarray(batch), self._filter._core, out)
        return out

    def learn(self, x: Any, y: Any) -> None:
        if self._core.learn_with(x, y, self._filter._core):  # one call: quick path
            return
        outputs = self._checked(x)
        if self.n_classes is None:
            target = as_finite_array(y, "y")
            if target.size != 1:
                raise ValueError(f"y: expected 1 target value, got shape {target.shape}")
            self._learn_outputs(outputs, float(target.reshape(())))
        else:
            self._learn_outputs(outputs, check_class_label(y, "y", self.n_classes))

    def learn_many(self, xs: Any, ys: Any) -> None:
        batch = self._check_outputs_many(xs)
        if self.n_classes is None:
            targets = as_finite_array(ys, "ys")
            if targets.shape == (len(batch), 1):
                targets = targets.reshape(len(batch))
            if targets.shape != (len(batch),):
                raise ValueError(f"ys: expected shape ({len(batch)},), got {targets.shape}")
            labels: list[Any] = [float(value) for value in targets]
            # The whole batch or nothing: no row learned before a later one is refused.
            check_finite_update(np.array([float(np.square(batch).sum()),
                                          float(np.square(targets).sum())]), "update")
        else:
            if isinstance(ys, str | bytes) or not hasattr(ys, "__len__"):
                raise ValueError(f"ys: expected a sequence of integer class labels, "
                                 f"got {type(ys).__name__}")
            label_array = check_class_labels(ys, "ys", self.n_classes)
            if label_array.shape != (len(batch),):
                raise ValueError(f"ys: expected shape ({len(batch)},), "
                                 f"got {label_array.shape}")
            labels = [int(value) for value in label_array]
        # The rows in one core call; a row the core refuses is learned through the full
        # per-event path, which raises what the loop would (rows before it stay learned).
        start = 0
        while start < len(batch):
            refused = self._core.learn_checked_many(np.ascontiguousarray(batch[start:]),
                                                    [float(v) for v in labels[start:]],
                                                    self._filter._core)
            if refused is None:
                return
            start += refused
            self._learn_outputs(batch[start], labels[start])
            start += 1

    def on_drift(self) -> None:
        """Delegate to the filter: a one-off transition toward the uniform average."""
        self._filter.on_drift()

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def _get_state(self) -> dict[str, Any]:
        return {"filter": self._filter.state_dict()}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._filter.load_state_dict(state["filter"])

    # -- internals --------------------------------------------------------------------
    def _checked(self, x: Any) -> np.ndarray:
        """One event's outputs through Python's full check (raises naming the field)."""
        return np.ascontiguousarray(self._inputs.outputs(x))

    def _check_outputs_many(self, xs: Any) -> np.ndarray:
        if isinstance(xs, list | tuple) and not xs:
            return np.empty((0, self.n_models) if self.n_classes is None
                            else (0, self.n_models, self.n_classes))
        if self.n_classes is None:
            return as_finite_array(xs, "outputs", (-1, self.n_models))
        batch = as_finite_array(xs, "outputs", (-1, self.n_models, self.n_classes))
        # Rows renormalised by their left-to-right sum, as the per-event path does.
        rows = check_probability_vector_rows(batch.reshape(-1, self.n_classes), "outputs",
                                             self.n_classes)
        return rows.reshape(batch.shape)

    def _design(self, outputs: np.ndarray) -> np.ndarray:
        """The filter's design rows of checked outputs: ``(K,)`` (+1) for regression,
        ``(C, K)`` (+1) for classification."""
        design = _empty(self._design_shape)
        self._core.design_checked(np.ascontiguousarray(outputs), design)
        return design

    def _predict_design(self, design: np.ndarray) -> np.ndarray:
        if self.n_classes is None:
            return np.asarray(self._filter._predict_row(design)[0])
        combined = _empty(self.n_classes)
        self._core.combine(np.ascontiguousarray(self._filter._predictive_means(design)),
                           combined)
        return combined

    def _learn_outputs(self, outputs: np.ndarray, label: Any) -> None:
        design = self._design(outputs)
        # The filter's update squares the design and the residual: refuse (before any
        # change) values whose squares overflow, which would turn every weight NaN.
        if self.n_classes is None and not self._core.update_is_finite(design, float(label)):
            raise NonFiniteUpdate(_NOT_FINITE)
        self._learn_design(design, label)

    def _learn_design(self, design: np.ndarray, label: Any) -> None:
        if self.n_classes is None:
            self._filter._learn_row(design, np.array([float(label)]), None)
        else:
            self._filter._learn_block(design, self._class_targets[int(label)], None)
