"""Reference oracle (the numpy implementation before the native core; see tests/reference): a
linear head whose weights drift, tracked by a Kalman filter that learns how fast to forget.

The weights ``w_t`` of a linear predictor on a feature vector ``x`` follow a stationary
drift: each event they shrink toward the prior mean by a factor ``γ`` and take fresh
prior noise, ``w_t ~ N(γ w_{t-1} + (1 - γ) μ0, (1 - γ²) σ_w² I)``, so the marginal
variance of every weight stays ``σ_w²`` and ``γ = 1`` is ordinary Bayesian linear
regression. The filter keeps the exact Gaussian posterior (one covariance shared by all
outputs) and learns ``γ`` itself from how well it predicts the next label.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.validation import (
    as_finite_array,
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_positive,
    check_target,
)
from tests.reference import Oracle

_TASKS = ("regression", "classification")
_PROBABILITY_METHODS = ("probit", "monte_carlo")

#: Highest allowed upper clamp of a learned forgetting factor: γ = 1 - 1e-6 remembers
#: ~5e5 events, far more than any stream we serve stays stationary, and keeps ρ finite.
_MAX_FORGETTING = 1.0 - 1e-6

# Adam constants for the forgetting logit (the usual ones of Kingma & Ba).
_ADAM_MEAN_DECAY = 0.9
_ADAM_SQUARE_DECAY = 0.999
_ADAM_EPSILON = 1e-12

#: Bounds on a learned noise variance (in log): wide enough for any target units,
#: finite so a run of exact fits cannot drive σ² to zero.
_LOG_NOISE_BOUND = 30.0

#: Probit approximation of E[softmax(β f)], f ~ N(μ, s I): softmax(β μ / sqrt(1 + c β² s)).
#: Every pair of logits differs by N(μ_k - μ_j, 2 s), and the probit approximation of a
#: logistic integral N(m, v) is sigmoid(m / sqrt(1 + π v / 8)); hence c = π·2/8 = π/4
#: (exact in form for two classes; the pairwise "mean-field" approximation for more).
_PROBIT_FACTOR = math.pi / 4.0

#: Adagrad's guard against dividing by zero on the first calibration step.
_ADAGRAD_EPSILON = 1e-12

#: Bounds on the learned calibration β: beyond e^±5 (≈0.007 .. 148) the probabilities are
#: saturated or flat anyway, and an unbounded log β could run away on a separable stream.
_LOG_CALIBRATION_BOUND = 5.0


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _adam_step(moments: list[float], at: int, gradient: float, mean_correction: float,
               square_correction: float) -> float:
    """Update Adam moments ``moments[at:at + 2]`` in place; return the normalised step."""
    mean = _ADAM_MEAN_DECAY * moments[at] + (1.0 - _ADAM_MEAN_DECAY) * gradient
    square = (_ADAM_SQUARE_DECAY * moments[at + 1]
              + (1.0 - _ADAM_SQUARE_DECAY) * gradient * gradient)
    moments[at], moments[at + 1] = mean, square
    return (mean / mean_correction) / (math.sqrt(square / square_correction) + _ADAM_EPSILON)


class KalmanWeights(Oracle):
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
        self.seed = check_count(seed, "seed", 0)

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
        self._has_prior_mean = bool(np.any(self._prior_mean))

        self._learns_forgetting = self.forgetting == "learn"
        self._learns_noise = self.noise_variance == "learn"
        self._learns_variances = self._learns_forgetting or self._learns_noise
        self._rho_low = _logit(self.min_forgetting)
        self._rho_high = _logit(self.max_forgetting)
        self._learns_calibration = self._classify and self.calibration == "learn"
        self._target_offset = 1.0 / self.n_outputs if self._classify else 0.0
        # Fixed standard-normal draws for Monte-Carlo probabilities; a function of the
        # config alone, so they are rebuilt rather than saved.
        self._draws = (np.random.default_rng(self.seed).standard_normal(
            (self.n_samples, self.n_outputs)) if self._classify else None)

        self._covariance = np.zeros((self.n_features, self.n_features))
        # A writable view of the diagonal, for the in-place blend toward σ_w² I.
        self._covariance_diagonal = self._covariance.reshape(-1)[:: self.n_features + 1]
        self._deviation = np.zeros(shape)  # posterior mean minus prior mean
        self._reset()

    # -- public read-only views -------------------------------------------------------
    @property
    def forgetting_(self) -> float:
        """Current forgetting factor γ."""
        return self._gamma

    @property
    def noise_variance_(self) -> float:
        """Current observation-noise variance σ² (learned or fixed)."""
        return self._noise

    @property
    def calibration_(self) -> float:
        """Current calibration β of the predictive probabilities (classification)."""
        return math.exp(self._log_calibration)

    @property
    def mean_(self) -> np.ndarray:
        """Posterior mean of the weights, ``(n_features, n_outputs)`` (a copy)."""
        return self._prior_mean + self._deviation

    @property
    def covariance_(self) -> np.ndarray:
        """Posterior covariance shared by all outputs, ``(n_features, n_features)`` (a copy)."""
        return self._covariance.copy()

    @property
    def n_updates_(self) -> int:
        """Number of labelled events (rows) the filter has learned from."""
        return self._n_updates

    # -- the contract -----------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        features = as_finite_array(x, "x", (self.n_features,))
        return self._predict_row(features)

    def predict_many(self, xs: Any) -> np.ndarray:
        rows = self._check_rows(xs, "xs")
        if not len(rows):
            return np.empty((0, self.n_outputs))
        return np.stack([self._predict_row(row) for row in rows])

    def learn(self, x: Any, y: Any) -> None:
        features = as_finite_array(x, "x", (self.n_features,))
        target, label = self._check_label(y, "y")
        self._learn_row(features, target, label)

    def learn_many(self, xs: Any, ys: Any) -> None:
        rows = self._check_rows(xs, "xs")
        targets, labels = self._check_labels(ys, len(rows), "ys")
        for index in range(len(rows)):
            self._learn_row(rows[index], targets[index],
                            None if labels is None else labels[index])

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
        self._transition(self.drift_forgetting)

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

    def _get_state(self) -> dict[str, Any]:
        return {
            "deviation": self._deviation, "covariance": self._covariance,
            "rho": self._rho, "log_noise": self._log_noise, "adam_steps": self._adam_steps,
            "adam_moments": list(self._adam_moments),
            "log_calibration": self._log_calibration,
            "calibration_square_sum": self._calibration_square_sum,
            "n_updates": self._n_updates,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        deviation = np.asarray(state["deviation"], dtype=np.float64)
        covariance = np.asarray(state["covariance"], dtype=np.float64)
        if deviation.shape != self._deviation.shape or covariance.shape != self._covariance.shape:
            raise ValueError(f"KalmanWeights.load_state_dict: state arrays have shapes "
                             f"{deviation.shape}, {covariance.shape}, expected "
                             f"{self._deviation.shape}, {self._covariance.shape}")
        np.copyto(self._deviation, deviation)
        np.copyto(self._covariance, covariance)
        self._set_rho(float(state["rho"]))
        self._set_log_noise(float(state["log_noise"]))
        self._adam_steps = int(state["adam_steps"])
        self._adam_moments = [float(value) for value in state["adam_moments"]]
        self._log_calibration = float(state["log_calibration"])
        self._calibration_square_sum = float(state["calibration_square_sum"])
        self._n_updates = int(state["n_updates"])

    # -- validation -------------------------------------------------------------------
    def _check_rows(self, rows: Any, name: str) -> np.ndarray:
        """A batch of feature vectors ``(n, n_features)``; an empty sequence is fine."""
        if isinstance(rows, list | tuple) and not rows:
            return np.empty((0, self.n_features))
        return as_finite_array(rows, name, (-1, self.n_features))

    def _check_label(self, y: Any, name: str) -> tuple[np.ndarray, int | None]:
        if self._classify:
            label = check_class_label(y, name, self.n_outputs)
            target = np.full(self.n_outputs, -self._target_offset)
            target[label] += 1.0
            return target, label
        return check_target(y, name, self.n_outputs), None

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

    # -- the filter -------------------------------------------------------------------
    def _reset(self) -> None:
        self._deviation[...] = 0.0
        self._covariance[...] = 0.0
        self._covariance_diagonal[...] = self.prior_variance
        self._set_rho(_logit(self.initial_forgetting) if self._learns_forgetting else 0.0)
        self._set_log_noise(math.log(self.initial_noise_variance if self._learns_noise
                                     else float(self.noise_variance)))
        # Adam moments: mean and square of the ρ gradient, then of the log σ² gradient.
        self._adam_moments = [0.0, 0.0, 0.0, 0.0]
        self._adam_steps = 0
        fixed = self.calibration != "learn"
        self._log_calibration = math.log(float(self.calibration) if fixed
                                         else self.initial_calibration)
        self._calibration_square_sum = 0.0
        self._n_updates = 0

    def _set_rho(self, rho: float) -> None:
        self._rho = rho
        if self._learns_forgetting:
            gamma = 1.0 / (1.0 + math.exp(-rho))
            self._gamma = min(max(gamma, self.min_forgetting), self.max_forgetting)
        else:
            self._gamma = float(self.forgetting)

    def _set_log_noise(self, log_noise: float) -> None:
        self._log_noise = log_noise
        self._noise = math.exp(log_noise) if self._learns_noise else float(self.noise_variance)

    def _transition(self, gamma: float) -> None:
        """Apply the drift transition in place: mean shrinks, covariance blends to σ_w² I."""
        squared = gamma * gamma
        self._deviation *= gamma
        self._covariance *= squared
        self._covariance_diagonal += (1.0 - squared) * self.prior_variance

    def _predictive(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Predictive mean (K,) and weight-uncertainty variance xᵀA⁻x at the current γ."""
        squared = self._gamma * self._gamma
        mean = self._predictive_means(x)
        variance = (squared * float(x @ (self._covariance @ x))
                    + (1.0 - squared) * self.prior_variance * float(x @ x))
        return mean, variance

    def _predictive_means(self, rows: np.ndarray) -> np.ndarray:
        """Predictive means, ``(K,)`` for one row or ``(b, K)`` for several, at the current
        γ (no variance)."""
        means = rows @ self._deviation
        means *= self._gamma
        if self._has_prior_mean:
            means += rows @ self._prior_mean
        return means

    def _predict_row(self, x: np.ndarray) -> np.ndarray:
        if not self._classify:
            return self._predictive_means(x)  # the variance is not needed
        mean, variance = self._predictive(x)
        probabilities, _ = self._class_probabilities(mean[None, :], np.array([variance]), None)
        return probabilities[0]

    def _learn_row(self, x: np.ndarray, target: np.ndarray, label: Any) -> None:
        """One labelled event: calibration step, γ and σ² steps, transition, rank-one update."""
        covariance = self._covariance
        covariance_x = covariance @ x
        weight_variance = float(x @ covariance_x)  # xᵀ A x
        prior_spread = self.prior_variance * float(x @ x)  # σ_w² xᵀx
        along = x @ self._deviation  # ∂(predictive mean)/∂γ, per output
        base = x @ self._prior_mean if self._has_prior_mean else 0.0
        gamma = self._gamma
        if label is not None and self._learns_calibration:
            squared = gamma * gamma
            mean = base + gamma * along
            variance = squared * weight_variance + (1.0 - squared) * prior_spread
            _, gradient = self._class_probabilities(mean[None, :], np.array([variance]),
                                                    [label])
            self._step_calibration(gradient)
        if self._learns_variances:
            # Gradients of ℓ = Σ_k log N(y_k | μ_k, s) at the served (γ, σ²), with
            # μ = base + γ q and s = γ² a + (1 - γ²) c + σ² (algorithms.md §1.1).
            squared = gamma * gamma
            innovation = (squared * weight_variance + (1.0 - squared) * prior_spread
                          + self._noise)
            residual = target - base - gamma * along
            # ½ Σ_k (r_k² / s² - 1 / s): the derivative of ℓ with respect to s.
            spread = 0.5 * (float(residual @ residual) / (innovation * innovation)
                            - self.n_outputs / innovation)
            forgetting_gradient = (float(residual @ along) / innovation
                                   + 2.0 * gamma * (weight_variance - prior_spread) * spread)
            self._step_variances(forgetting_gradient * gamma * (1.0 - gamma),
                                 spread * self._noise)
            gamma = self._gamma
        squared = gamma * gamma
        blend = (1.0 - squared) * self.prior_variance
        innovation = squared * weight_variance + blend * float(x @ x) + self._noise
        residual = target - base - gamma * along
        predicted_covariance_x = covariance_x * squared
        predicted_covariance_x += blend * x  # A⁻ x
        self._deviation *= gamma
        self._deviation += np.outer(predicted_covariance_x * (1.0 / innovation), residual)
        covariance *= squared
        self._covariance_diagonal += blend
        scaled = predicted_covariance_x * (1.0 / math.sqrt(innovation))
        covariance -= np.outer(scaled, scaled)
        self._n_updates += 1

    def _learn_block(self, rows: np.ndarray, targets: np.ndarray, labels: Any) -> None:
        """b simultaneous rows: calibration step, γ and σ² steps, transition, b × b update."""
        n_rows = len(rows)
        rows_t = rows.T
        covariance_rows = self._covariance @ rows_t  # A Φᵀ, (d, b)
        weight_block = rows @ covariance_rows  # Φ A Φᵀ
        prior_block = rows @ rows_t
        prior_block *= self.prior_variance  # σ_w² Φ Φᵀ
        along = rows @ self._deviation  # (b, K)
        base = rows @ self._prior_mean if self._has_prior_mean else 0.0
        gamma = self._gamma
        if labels is not None and self._learns_calibration:
            squared = gamma * gamma
            variances = (squared * np.diagonal(weight_block)
                         + (1.0 - squared) * np.diagonal(prior_block))
            _, gradient = self._class_probabilities(base + gamma * along, variances, labels)
            self._step_calibration(gradient)
        if self._learns_variances:
            # ℓ = Σ_k log N(Y_k | μ_k, S); ∂ℓ/∂S = ½ Σ_k (u_k u_kᵀ - S⁻¹) with u_k = S⁻¹ r_k,
            # ∂S/∂γ = 2γ (Φ A Φᵀ - σ_w² Φ Φᵀ), ∂S/∂σ² = I, ∂μ/∂γ = Φ (m - μ0).
            squared = gamma * gamma
            innovation = squared * weight_block + (1.0 - squared) * prior_block
            innovation.flat[:: n_rows + 1] += self._noise
            residual = targets - base - gamma * along
            inverse = np.linalg.inv(innovation)
            scaled_residual = inverse @ residual  # (b, K)
            spread = scaled_residual @ scaled_residual.T
            spread -= self.n_outputs * inverse
            spread *= 0.5
            forgetting_gradient = (float(np.vdot(along, scaled_residual))
                                   + 2.0 * gamma * float(np.vdot(spread,
                                                                 weight_block - prior_block)))
            self._step_variances(forgetting_gradient * gamma * (1.0 - gamma),
                                 float(np.trace(spread)) * self._noise)
            gamma = self._gamma
        squared = gamma * gamma
        blend = (1.0 - squared) * self.prior_variance
        innovation = squared * weight_block + (1.0 - squared) * prior_block
        innovation.flat[:: n_rows + 1] += self._noise
        residual = targets - base - gamma * along
        # S = L Lᵀ (only the lower triangle of S is read); V = L⁻¹ Φ A⁻ and W = L⁻¹ R give
        # the gain term Vᵀ W and the covariance correction Vᵀ V, positive semi-definite
        # by construction.
        inverse_factor = np.linalg.inv(np.linalg.cholesky(innovation))
        predicted_covariance_rows = covariance_rows * squared
        predicted_covariance_rows += blend * rows_t  # A⁻ Φᵀ
        whitened_gain = inverse_factor @ predicted_covariance_rows.T  # (b, d)
        correction = whitened_gain.T @ whitened_gain
        correction += correction.T
        correction *= 0.5
        self._transition(gamma)
        self._deviation += whitened_gain.T @ (inverse_factor @ residual)
        self._covariance -= correction
        self._n_updates += n_rows

    # -- learned forgetting, noise and calibration ------------------------------------
    def _step_variances(self, forgetting_gradient: float, noise_gradient: float) -> None:
        """One Adam ascent step on ρ = logit(γ) and/or log σ², then clamp.

        Arguments are the log-likelihood gradients with respect to ρ and to log σ².
        """
        self._adam_steps += 1
        moments = self._adam_moments
        mean_correction = 1.0 - _ADAM_MEAN_DECAY ** self._adam_steps
        square_correction = 1.0 - _ADAM_SQUARE_DECAY ** self._adam_steps
        if self._learns_forgetting:
            step = _adam_step(moments, 0, forgetting_gradient, mean_correction,
                              square_correction)
            rho = self._rho + self.forgetting_learning_rate * step
            self._set_rho(min(max(rho, self._rho_low), self._rho_high))
        if self._learns_noise:
            step = _adam_step(moments, 2, noise_gradient, mean_correction, square_correction)
            log_noise = self._log_noise + self.noise_learning_rate * step
            self._set_log_noise(min(max(log_noise, -_LOG_NOISE_BOUND), _LOG_NOISE_BOUND))

    def _step_calibration(self, gradient: float) -> None:
        """One Adagrad descent step on log β (gradient of the summed log-loss)."""
        self._calibration_square_sum += gradient * gradient
        step = (self.calibration_learning_rate * gradient
                / (math.sqrt(self._calibration_square_sum) + _ADAGRAD_EPSILON))
        self._log_calibration = min(max(self._log_calibration - step,
                                        -_LOG_CALIBRATION_BOUND), _LOG_CALIBRATION_BOUND)

    def _class_probabilities(self, means: np.ndarray, variances: np.ndarray,
                             labels: Any) -> tuple[np.ndarray, float]:
        """Probabilities (n, C) from logits N(means, variances I); with ``labels``, also the
        gradient of the summed log-loss with respect to log β."""
        beta = math.exp(self._log_calibration)
        if self.probabilities == "probit":
            shrink = 1.0 / np.sqrt(1.0 + _PROBIT_FACTOR * beta * beta * variances)
            logits = means * (beta * shrink)[:, None]
            logits -= logits.max(axis=1, keepdims=True)
            weights = np.exp(logits)
            probabilities = weights / weights.sum(axis=1, keepdims=True)
            if labels is None:
                return probabilities, 0.0
            # ∂z/∂β = μ κ³ with κ = (1 + π β² s / 4)^(-1/2); ∂L/∂z = p - onehot(y).
            error = probabilities.copy()
            error[np.arange(len(labels)), labels] -= 1.0
            gradient = beta * float(np.sum(error * means * (shrink ** 3)[:, None]))
            return probabilities, gradient
        draws = self._draws  # (S, C)
        logits_unscaled = means[:, None, :] + np.sqrt(variances)[:, None, None] * draws
        logits = beta * logits_unscaled
        logits -= logits.max(axis=2, keepdims=True)
        weights = np.exp(logits)
        per_draw = weights / weights.sum(axis=2, keepdims=True)  # (n, S, C)
        probabilities = per_draw.mean(axis=1)
        if labels is None:
            return probabilities, 0.0
        rows = np.arange(len(labels))
        label_index = np.asarray(labels)
        own = per_draw[rows, :, label_index]  # (n, S)
        spread = (logits_unscaled[rows, :, label_index]
                  - np.sum(per_draw * logits_unscaled, axis=2))
        derivative = np.mean(own * spread, axis=1)  # ∂p_y/∂β
        label_probability = np.maximum(probabilities[rows, label_index], 1e-300)
        gradient = -beta * float(np.sum(derivative / label_probability))
        return probabilities, gradient
