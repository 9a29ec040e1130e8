"""A linear head whose weights drift, tracked by a Kalman filter that learns how fast to forget.

The weights ``w_t`` of a linear predictor on a feature vector ``x`` follow a stationary
drift: each event they shrink toward the prior mean by a factor ``γ`` and take fresh
prior noise, ``w_t ~ N(γ w_{t-1} + (1 - γ) μ0, (1 - γ²) σ_w² I)``, so the marginal
variance of every weight stays ``σ_w²`` and ``γ = 1`` is ordinary Bayesian linear
regression. The filter keeps the exact Gaussian posterior (one covariance shared by all
outputs) and learns ``γ`` itself from how well it predicts the next label.

The filter's state and arithmetic live in the native core (``native/src/kalman.rs``);
this class validates inputs and configuration and keeps the public API and snapshot
layout. The numpy implementation it replaced is the test oracle in
``tests/reference/kalman.py`` (equal within 1e-9 relative; the core sums left to right).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights._native import KalmanCore
from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    as_finite_array,
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_positive,
    check_target,
)

_TASKS = ("regression", "classification")
_PROBABILITY_METHODS = ("probit", "monte_carlo")

#: Highest allowed upper clamp of a learned forgetting factor: γ = 1 - 1e-6 remembers
#: ~5e5 events, far more than any stream we serve stays stationary, and keeps ρ finite.
_MAX_FORGETTING = 1.0 - 1e-6

#: Bounds on a learned noise variance (in log): wide enough for any target units,
#: finite so a run of exact fits cannot drive σ² to zero.
_LOG_NOISE_BOUND = 30.0

#: Bounds on the learned calibration β: beyond e^±5 (≈0.007 .. 148) the probabilities are
#: saturated or flat anyway, and an unbounded log β could run away on a separable stream.
_LOG_CALIBRATION_BOUND = 5.0


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class KalmanWeights(Adapter):
    """Kalman filter over the weights of a linear head, with learned forgetting.

    Tracks ``n_outputs`` weight columns over ``n_features`` inputs under the drift model
    ``w_t ~ N(γ w_{t-1} + (1 - γ) μ0, (1 - γ²) σ_w² I)`` and the likelihood
    ``y_t = x_tᵀ w_t + ε``, ``ε ~ N(0, σ² I)``. All outputs see the same features and
    noise, so one covariance ``A`` (n_features × n_features) serves them all and each
    event is one exact rank-one update, O(n_features²), in float64. ``learn_rows``
    applies ``b`` simultaneous observations in one transition and one ``b × b``
    Cholesky update. Because the transition blends ``A`` toward ``σ_w² I`` and an update
    only shrinks it, ``A`` never exceeds ``σ_w² I``: no covariance wind-up.

    ``γ = sigmoid(ρ)`` is learned online by ascending the one-step predictive
    log-likelihood of each incoming label (the closed-form gradient through the predict
    step only, summed over outputs, algorithms.md §1.1). A plain gradient step on ρ
    depends on the units of targets and features, so ρ takes Adam steps (normalised:
    each moves ρ by about ``forgetting_learning_rate`` whatever the units). γ is clamped
    into ``[min_forgetting, max_forgetting]``. The same likelihood can also learn the
    noise variance (``noise_variance="learn"``, Adam on ``log σ²``).

    Classification (``n_outputs`` = number of classes ``C``) uses the paper's Gaussian
    surrogate: the label becomes the one-hot vector minus ``1/C`` (centred, so the zero
    prior mean is the uniform prediction) and runs through the same recursion; the
    surrogate likelihood also drives γ and σ². Probabilities marginalise the weight
    uncertainty, logits ``f ~ N(μ, s I)`` with ``μ = xᵀm⁻`` and ``s = xᵀA⁻x``, scaled by a
    calibration ``β > 0``: by default with the probit approximation
    ``softmax(β μ / sqrt(1 + π β² s / 4))``, or by Monte-Carlo over a fixed set of
    standard-normal draws made once from ``seed`` (so ``predict`` stays pure and the
    draws, a function of the config, need no saved generator state). ``log β`` is
    learned by Adagrad on the log-loss of incoming labels, at the served prediction.

    Parameters
    ----------
    n_features
        Length of the feature vector ``x``.
    n_outputs
        Regression outputs, or the number of classes for classification (at least 2).
    task
        ``"regression"`` (``predict`` returns the ``(n_outputs,)`` predictive means) or
        ``"classification"`` (``predict`` returns ``(n_classes,)`` probabilities,
        ``learn`` takes an integer class).
    forgetting
        ``"learn"`` (default) or a fixed γ in ``(0, 1]``; ``1.0`` never forgets (exact
        Bayesian linear regression).
    prior_variance
        ``σ_w²``, the stationary variance of every weight; also the initial covariance
        and the ceiling the covariance never exceeds. 1.0 suits standardised features.
    noise_variance
        ``σ²``, the observation noise, or ``"learn"``. For classification it acts as an
        inverse step size. The learned γ is only as good as σ²: too large a σ² pushes γ
        toward ``max_forgetting``, too small toward ``min_forgetting``; learn it when the
        target scale is unknown.
    initial_forgetting
        Starting γ when learned. 0.999 remembers about ``1/(1-γ²)`` ≈ 500 events.
    min_forgetting, max_forgetting
        Clamp of the learned γ. 0.9 keeps one bad event from wiping the head; the
        ceiling ``1 - 1e-6`` (the highest allowed) effectively never forgets — lower it
        to cap the memory (``max_forgetting=0.9999``: about 5,000 events).
    forgetting_learning_rate
        Adam step size on ρ = logit(γ). 0.01 moves γ from 0.999 to 0.99 (ρ from 6.9 to
        4.6) in a few hundred events of consistent evidence, and keeps γ's jitter on
        stationary data small (tuned on piecewise-stationary streams; 0.005-0.05 give
        within 3% of the same error).
    prior_mean
        ``μ0``, shape ``(n_features,)`` (same for all outputs) or
        ``(n_features, n_outputs)``; weights start here and drift back toward it. Zero
        by default. For classification it lives in the centred one-hot space.
    drift_forgetting
        γ of the one-off transition applied by ``on_drift`` (algorithms.md §5.4):
        0.7 gives γ² ≈ 0.5, halfway back to the prior covariance.
    calibration
        ``"learn"`` (default) or a fixed β > 0 (classification only).
    initial_calibration
        Starting β when learned; learned β stays within ``[e^-5, e^5]``.
    calibration_learning_rate
        Adagrad step size on log β.
    probabilities
        ``"probit"`` (deterministic approximation, default) or ``"monte_carlo"``.
    n_samples
        Number of fixed draws for ``"monte_carlo"``.
    initial_noise_variance
        Starting σ² when learned.
    noise_learning_rate
        Adam step size on log σ² when learned.
    seed
        Seed of the Monte-Carlo draws.

    Notes
    -----
    Deviations from algorithms.md §1.1 (all ours): the prior mean ``μ0`` generalises the
    paper's zero mean (the transition shrinks toward ``μ0``); ρ takes Adam steps rather
    than plain SGD; σ² may be learned; the γ (and σ²) step uses the prediction served
    with the old values and the transition is then applied with the new ones, as §1.1
    describes. The one-step gradient is biased: it ignores how γ shapes the covariance
    over many steps. On streams where a switch is rare and the per-event evidence weak
    (e.g. :class:`OnlineStacking` on classification) it can settle at ``max_forgetting``
    while a slightly smaller fixed γ would do better; cap ``max_forgetting`` there. The
    covariance update ``A = γ² A + (1 - γ²) σ_w² I - u uᵀ`` with ``u = A⁻x / sqrt(s)`` is
    exactly symmetric in floating point (``u uᵀ`` is), so single events need no
    symmetrisation; the batch update symmetrises its correction term. Placement of the
    calibration β and the use of the surrogate likelihood for γ in classification are
    our reading (the paper is not explicit). algorithms.md's probit fallback divides by
    ``sqrt(1 + π β² s / 8)``; that treats one logit's noise alone, but class
    probabilities depend on logit *differences*, whose variance is ``2 s``, so we use
    ``π β² s / 4`` (the binary probit approximation, exactly, for two classes): against
    a brute-force integral the ``/8`` form was over-confident by up to 0.08 in
    probability, the ``/4`` form is within 0.03.

    Example
    -------
    >>> import numpy as np
    >>> from streamweights.adapters import KalmanWeights
    >>> rng = np.random.default_rng(0)
    >>> head = KalmanWeights(n_features=3, noise_variance=0.01)
    >>> for true_weights in ([1.0, -2.0, 0.5], [0.0, 1.0, 2.0]):  # the weights jump
    ...     for x in rng.normal(size=(300, 3)):
    ...         head.learn(x, x @ true_weights + 0.1 * rng.normal())
    >>> np.round(head.mean_[:, 0]) + 0.0
    array([0., 1., 2.])
    >>> bool(0.9 <= head.forgetting_ < 1.0)
    True

    References
    ----------
    Titsias, Galashov, Rannen-Triki, Pascanu, Teh, Bornschein. "Kalman Filter for Online
    Classification of Non-Stationary Data." ICLR 2024, arXiv:2306.08448.
    """

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(
        self,
        n_features: int,
        n_outputs: int = 1,
        task: str = "regression",
        forgetting: str | float = "learn",
        prior_variance: float = 1.0,
        noise_variance: str | float = 1.0,
        initial_forgetting: float = 0.999,
        min_forgetting: float = 0.9,
        max_forgetting: float = _MAX_FORGETTING,
        forgetting_learning_rate: float = 0.01,
        prior_mean: Any = None,
        drift_forgetting: float = 0.7,
        calibration: str | float = "learn",
        initial_calibration: float = 1.0,
        calibration_learning_rate: float = 0.05,
        probabilities: str = "probit",
        n_samples: int = 64,
        initial_noise_variance: float = 1.0,
        noise_learning_rate: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.n_features = check_count(n_features, "n_features")
        if task not in _TASKS:
            raise ValueError(f"task: must be one of {', '.join(_TASKS)}, got {task!r}")
        self.task = task
        self._classify = task == "classification"
        self.n_outputs = check_count(n_outputs, "n_outputs", 2 if self._classify else 1)
        #: Class count for classification (``Chain`` checks stages agree), else None.
        self.n_classes: int | None = self.n_outputs if self._classify else None
        self.prior_variance = check_positive(prior_variance, "prior_variance")
        if noise_variance == "learn":
            self.noise_variance: str | float = "learn"
        elif isinstance(noise_variance, str):
            raise ValueError(f"noise_variance: must be 'learn' or a positive number, "
                             f"got {noise_variance!r}")
        else:
            self.noise_variance = check_positive(noise_variance, "noise_variance")
        self.initial_noise_variance = check_positive(initial_noise_variance,
                                                     "initial_noise_variance")
        if abs(math.log(self.initial_noise_variance)) > _LOG_NOISE_BOUND:
            raise ValueError(f"initial_noise_variance: must be in [e^-30, e^30], "
                             f"got {initial_noise_variance!r}")
        self.noise_learning_rate = check_positive(noise_learning_rate, "noise_learning_rate")
        self.max_forgetting = check_in_range(max_forgetting, "max_forgetting", 0.0,
                                             _MAX_FORGETTING, high_open=False)
        self.min_forgetting = check_in_range(min_forgetting, "min_forgetting", 0.0,
                                             self.max_forgetting, high_open=False)
        self.initial_forgetting = check_in_range(
            initial_forgetting, "initial_forgetting", self.min_forgetting,
            self.max_forgetting, low_open=False, high_open=False)
        if forgetting == "learn":
            self.forgetting: str | float = "learn"
        elif isinstance(forgetting, str):
            raise ValueError(f"forgetting: must be 'learn' or a number in (0, 1], "
                             f"got {forgetting!r}")
        else:
            self.forgetting = check_in_range(forgetting, "forgetting", 0.0, 1.0,
                                             high_open=False)
        self.forgetting_learning_rate = check_positive(forgetting_learning_rate,
                                                       "forgetting_learning_rate")
        self.drift_forgetting = check_in_range(drift_forgetting, "drift_forgetting", 0.0, 1.0)
        if calibration == "learn":
            self.calibration: str | float = "learn"
        elif isinstance(calibration, str):
            raise ValueError(f"calibration: must be 'learn' or a positive number, "
                             f"got {calibration!r}")
        else:
            self.calibration = check_positive(calibration, "calibration")
        self.initial_calibration = check_positive(initial_calibration, "initial_calibration")
        if abs(math.log(self.initial_calibration)) > _LOG_CALIBRATION_BOUND:
            raise ValueError(f"initial_calibration: must be in [e^-5, e^5], "
                             f"got {initial_calibration!r}")
        self.calibration_learning_rate = check_positive(calibration_learning_rate,
                                                        "calibration_learning_rate")
        if probabilities not in _PROBABILITY_METHODS:
            raise ValueError(f"probabilities: must be one of {', '.join(_PROBABILITY_METHODS)}, "
                             f"got {probabilities!r}")
        self.probabilities = probabilities
        self.n_samples = check_count(n_samples, "n_samples")
        self.seed = check_count(seed, "seed", 0, maximum=None)  # numpy seeds any size

        shape = (self.n_features, self.n_outputs)
        if prior_mean is None:
            self._prior_mean_config = None
            self._prior_mean = np.zeros(shape)
        else:
            mean = as_finite_array(prior_mean, "prior_mean")
            if mean.shape == (self.n_features,):
                mean = np.repeat(mean[:, None], self.n_outputs, axis=1)
            elif mean.shape != shape:
                raise ValueError(f"prior_mean: expected shape ({self.n_features},) or "
                                 f"{shape}, got {mean.shape}")
            self._prior_mean_config = np.asarray(prior_mean, dtype=np.float64).tolist()
            self._prior_mean = np.ascontiguousarray(mean)
        self._prior_mean.flags.writeable = False

        self._target_offset = 1.0 / self.n_outputs if self._classify else 0.0
        learns_forgetting = self.forgetting == "learn"
        learns_noise = self.noise_variance == "learn"
        fixed_calibration = self.calibration != "learn"
        # Fixed standard-normal draws for Monte-Carlo probabilities; a function of the
        # config alone, so they are rebuilt rather than saved.
        draws = (np.random.default_rng(self.seed).standard_normal(
            (self.n_samples, self.n_outputs)) if self._classify else np.empty((0,)))
        # The state and the arithmetic live in the core (native/src/kalman.rs); the
        # starting values are computed here exactly as the numpy version did.
        self._core = KalmanCore(
            self.n_features, self.n_outputs, self._classify, self.probabilities == "probit",
            learns_forgetting, 0.0 if learns_forgetting else float(self.forgetting),
            learns_noise, 0.0 if learns_noise else float(self.noise_variance),
            self._classify and not fixed_calibration, self.prior_variance,
            self.min_forgetting, self.max_forgetting, _logit(self.min_forgetting),
            _logit(self.max_forgetting), self.forgetting_learning_rate,
            self.noise_learning_rate, self.drift_forgetting, self.calibration_learning_rate,
            _logit(self.initial_forgetting) if learns_forgetting else 0.0,
            math.log(self.initial_noise_variance if learns_noise
                     else float(self.noise_variance)),
            math.log(float(self.calibration) if fixed_calibration
                     else self.initial_calibration),
            self._prior_mean.reshape(-1).tolist(), draws.reshape(-1).tolist())

    # -- public read-only views -------------------------------------------------------
    @property
    def forgetting_(self) -> float:
        """Current forgetting factor γ."""
        return self._core.current()[0]

    @property
    def noise_variance_(self) -> float:
        """Current observation-noise variance σ² (learned or fixed)."""
        return self._core.current()[1]

    @property
    def calibration_(self) -> float:
        """Current calibration β of the predictive probabilities (classification)."""
        return math.exp(self._core.current()[2])

    @property
    def mean_(self) -> np.ndarray:
        """Posterior mean of the weights, ``(n_features, n_outputs)`` (a copy)."""
        return self._prior_mean + self._state_arrays()[0]

    @property
    def covariance_(self) -> np.ndarray:
        """Posterior covariance shared by all outputs, ``(n_features, n_features)`` (a copy)."""
        return self._state_arrays()[1]

    @property
    def n_updates_(self) -> int:
        """Number of labelled events (rows) the filter has learned from."""
        return self._core.current()[3]

    # -- the contract -----------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        out = self._core.predict(x)
        if out is None:  # not a float64 vector of the right length: convert or refuse
            out = self._core.predict(as_finite_array(x, "x", (self.n_features,)))
        return out  # a new float64 array, made by the core

    def predict_many(self, xs: Any) -> np.ndarray:
        rows = self._check_rows(xs, "xs")
        if not len(rows):
            return np.empty((0, self.n_outputs))
        return np.array(self._core.predict_rows(rows)).reshape(len(rows), self.n_outputs)

    def learn(self, x: Any, y: Any) -> None:
        if self._classify:
            label = y if type(y) is int and 0 <= y < self.n_outputs else check_class_label(
                y, "y", self.n_outputs)
            if not self._core.learn_label(x, label):
                self._core.learn_label(as_finite_array(x, "x", (self.n_features,)), label)
            return
        if type(y) is float and self.n_outputs == 1 and y - y == 0.0:
            target = [y]  # one finite Python float: the common regression case
        else:
            target = check_target(y, "y", self.n_outputs).tolist()
        if not self._core.learn_target(x, target):
            self._core.learn_target(as_finite_array(x, "x", (self.n_features,)), target)

    def learn_many(self, xs: Any, ys: Any) -> None:
        rows = self._check_rows(xs, "xs")
        targets, labels = self._check_labels(ys, len(rows), "ys")
        if not len(rows):
            return
        if labels is None:
            self._core.learn_many(rows, targets=targets)
        else:
            self._core.learn_many(rows, labels=labels.tolist())

    def learn_rows(self, rows: Any, targets: Any) -> None:
        """Learn ``b`` simultaneous observations in one exact update.

        One transition (with the current γ), then all rows condition the weights
        jointly through a ``b × b`` Cholesky factor of the innovation covariance. For
        ``γ = 1`` this equals learning the rows one by one; otherwise it treats them as
        one time step, which is what a micro-batch observed at once is. ``rows`` is
        ``(b, n_features)``; ``targets`` is ``(b, n_outputs)`` (or ``(b,)`` when
        ``n_outputs == 1``) for regression, ``(b,)`` integer classes for classification.
        """
        features = self._check_rows(rows, "rows")
        target_rows, labels = self._check_labels(targets, len(features), "targets")
        if len(features):
            self._learn_block(features, target_rows, labels)

    def on_drift(self) -> None:
        """One-off transition with γ = ``drift_forgetting``: the mean shrinks toward the
        prior and the covariance moves toward ``σ_w² I`` (algorithms.md §5.4)."""
        self._core.on_drift()

    def get_config(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features, "n_outputs": self.n_outputs, "task": self.task,
            "forgetting": self.forgetting, "prior_variance": self.prior_variance,
            "noise_variance": self.noise_variance,
            "initial_forgetting": self.initial_forgetting,
            "min_forgetting": self.min_forgetting, "max_forgetting": self.max_forgetting,
            "forgetting_learning_rate": self.forgetting_learning_rate,
            "prior_mean": self._prior_mean_config, "drift_forgetting": self.drift_forgetting,
            "calibration": self.calibration, "initial_calibration": self.initial_calibration,
            "calibration_learning_rate": self.calibration_learning_rate,
            "probabilities": self.probabilities, "n_samples": self.n_samples,
            "initial_noise_variance": self.initial_noise_variance,
            "noise_learning_rate": self.noise_learning_rate, "seed": self.seed,
        }

    def _state_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Deviation ``(d, K)`` and covariance ``(d, d)``, fresh arrays from the core."""
        deviation, covariance = self._core.get_state()[:2]
        return (np.array(deviation).reshape(self.n_features, self.n_outputs),
                np.array(covariance).reshape(self.n_features, self.n_features))

    def _get_state(self) -> dict[str, Any]:
        (deviation, covariance, rho, log_noise, adam_steps, adam_moments, log_calibration,
         calibration_square_sum, n_updates) = self._core.get_state()
        return {
            "deviation": np.array(deviation).reshape(self.n_features, self.n_outputs),
            "covariance": np.array(covariance).reshape(self.n_features, self.n_features),
            "rho": rho, "log_noise": log_noise, "adam_steps": adam_steps,
            "adam_moments": adam_moments,
            "log_calibration": log_calibration,
            "calibration_square_sum": calibration_square_sum,
            "n_updates": n_updates,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        deviation = np.asarray(state["deviation"], dtype=np.float64)
        covariance = np.asarray(state["covariance"], dtype=np.float64)
        shapes = ((self.n_features, self.n_outputs), (self.n_features, self.n_features))
        if (deviation.shape, covariance.shape) != shapes:
            raise ValueError(f"KalmanWeights.load_state_dict: state arrays have shapes "
                             f"{deviation.shape}, {covariance.shape}, expected "
                             f"{shapes[0]}, {shapes[1]}")
        moments = [float(value) for value in state["adam_moments"]]
        if len(moments) != 4:
            raise ValueError(f"KalmanWeights.load_state_dict: state.adam_moments has "
                             f"{len(moments)} values, expected 4")
        self._core.set_state(
            deviation.reshape(-1).tolist(), covariance.reshape(-1).tolist(),
            float(state["rho"]), float(state["log_noise"]), int(state["adam_steps"]), moments,
            float(state["log_calibration"]), float(state["calibration_square_sum"]),
            int(state["n_updates"]))

    # -- validation -------------------------------------------------------------------
    def _check_rows(self, rows: Any, name: str) -> np.ndarray:
        """A batch of feature vectors ``(n, n_features)``; an empty sequence is fine."""
        if isinstance(rows, list | tuple) and not rows:
            return np.empty((0, self.n_features))
        return as_finite_array(rows, name, (-1, self.n_features))

    def _check_labels(self, ys: Any, n_rows: int,
                      name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self._classify:
            if isinstance(ys, str | bytes) or not hasattr(ys, "__len__"):
                raise ValueError(f"{name}: expected a sequence of integer class labels, "
                                 f"got {type(ys).__name__}")
            labels = check_class_labels(ys, name, self.n_outputs)
            if labels.shape != (n_rows,):
                raise ValueError(f"{name}: expected shape ({n_rows},), got {labels.shape}")
            targets = np.full((n_rows, self.n_outputs), -self._target_offset)
            targets[np.arange(n_rows), labels] += 1.0
            return targets, labels
        targets = as_finite_array(ys, name)
        if n_rows == 0 and targets.size == 0:
            return np.empty((0, self.n_outputs)), None
        if targets.shape == (n_rows,) and self.n_outputs == 1:
            targets = targets.reshape(n_rows, 1)
        if targets.shape != (n_rows, self.n_outputs):
            raise ValueError(f"{name}: expected shape ({n_rows}, {self.n_outputs}), "
                             f"got {targets.shape}")
        return targets, None

    # -- validated entry points (used by OnlineStacking, which validates its own input) --
    def _predict_row(self, x: np.ndarray) -> np.ndarray:
        """``predict`` of one already validated float64 row ``(n_features,)``."""
        return self._core.predict(x)

    def _predictive_means(self, rows: np.ndarray) -> np.ndarray:
        """Predictive means of validated rows: ``(K,)`` for one row, ``(b, K)`` for
        several, at the current γ (no variance, no probabilities)."""
        matrix = np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, self.n_features)
        means = np.array(self._core.predict_rows(matrix, True))
        return means.reshape((*rows.shape[:-1], self.n_outputs))

    def _learn_row(self, x: np.ndarray, target: np.ndarray, label: int | None) -> None:
        """One validated labelled event: ``target`` ``(K,)``, and the class for
        classification (its target is recomputed from the class)."""
        if label is None:
            self._core.learn_target(x, [float(value) for value in target])
        else:
            self._core.learn_label(x, int(label))

    def _learn_block(self, rows: np.ndarray, targets: np.ndarray, labels: Any) -> None:
        """``b`` validated simultaneous rows ``(b, d)`` with targets ``(b, K)`` (and their
        classes for classification): one block update, all or nothing."""
        matrix = np.ascontiguousarray(rows, dtype=np.float64)
        if labels is None:
            self._core.learn_block(matrix, targets=np.ascontiguousarray(
                targets, dtype=np.float64).reshape(len(matrix), self.n_outputs))
        else:
            self._core.learn_block(matrix, labels=[int(value) for value in labels])
