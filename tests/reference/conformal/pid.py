"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Conformal PID control: track the score quantile directly, with an integral term.

Angelopoulos, Candès & Tibshirani (2023) update the score threshold itself rather than
a level. Per target level ``alpha``, with ``err_t = 1`` when the label fell outside the
set served for it,

    P:  q_{t+1} = q_t + eta_t * (err_t - alpha)                 (quantile tracking)
    I:  r_t = K_I * tan(E_t * log(t + 1) / (C_sat * (t + 1))),  E_t = sum_{i<=t} (err_i - alpha)
    served threshold  q_{t+1} + r_t

The P part is online gradient descent on the pinball loss; it has ACI's long-run
guarantee with no score history and no infinite-set regime. The integrator reacts to
the *accumulated* coverage error, saturating (tan reaches infinity) if misses pile up,
which forces long-run coverage whatever the step size. As in the authors' code, the
step and the integrator gain are proportional to the spread of recent scores
(``eta_t = lr * spread``, ``K_I = gain * spread``), so one setting fits any score scale;
``C_sat = (2 / pi) (ceil(log H) - 1 / log H)`` with ``H`` the ``horizon``. The
scorecaster (the "D" part, a forecast of the next score) is not included.
"""

from __future__ import annotations

import math
from typing import Any

from streamweights.adapters.validation import check_count, check_in_range, check_positive
from tests.reference.conformal._layer import _ConformalLayer


class ConformalPID(_ConformalLayer):
    """Quantile tracker with a saturating integrator, per level.

    Parameters
    ----------
    alphas, n_classes, score, window
        As for :class:`~tests.reference.conformal.aci.AdaptiveConformal`; the
        window only sets the scale (the spread of recent scores).
    lr
        Step of the quantile tracker as a fraction of the score spread (default 0.05).
    gain
        Integrator gain as a multiple of the score spread (default 1.0; 0 turns the
        integrator off: plain quantile tracking).
    horizon
        ``H`` in the saturation constant (default 10,000 labels).

    Example
    -------
    >>> pid = ConformalPID(alphas=[0.1], n_classes=2)
    >>> for t in range(300):
    ...     pid.learn([0.8, 0.2] if t % 3 else [0.3, 0.7], 0 if t % 5 else 1)
    >>> pid.sets([0.8, 0.2])
    {'0.1': [0, 1]}

    References
    ----------
    Angelopoulos, A. N., Candès, E. J. & Tibshirani, R. J. (2023). Conformal PID control
    for time series prediction. NeurIPS 36. arXiv:2307.16895.
    """

    def __init__(self, alphas: list[float] | tuple[float, ...] = (0.1, 0.05),
                 n_classes: int | None = None, score: str | None = None,
                 window: int = 1000, lr: float = 0.05, gain: float = 1.0,
                 horizon: int = 10_000) -> None:
        super().__init__(alphas, n_classes, score, window)
        self.lr = check_positive(lr, "lr")
        self.gain = check_in_range(gain, "gain", 0.0, math.inf, low_open=False)
        self.horizon = check_count(horizon, "horizon", 3)
        log_h = math.log(self.horizon)
        self._saturation = (2.0 / math.pi) * (math.ceil(log_h) - 1.0 / log_h)
        self.tracked_ = [0.0] * len(self.alphas)
        self.error_sums_ = [0.0] * len(self.alphas)
        self._refresh()

    def _served_state(self) -> list[float]:
        return list(self._thresholds)

    def _scale(self, value: float) -> float:
        """The spread of recent scores; the newest score's size while there is none."""
        spread = self.scores_.spread()
        return spread if spread > 0.0 else max(abs(value), 1e-12)

    def _update(self, value: float, served: list[float]) -> None:
        scale = self._scale(value)
        errors = self.errors(value, served)
        for i, (alpha, err) in enumerate(zip(self.alphas, errors, strict=True)):
            self.tracked_[i] = self.tracked_[i] + self.lr * scale * (err - alpha)
            self.error_sums_[i] = self.error_sums_[i] + (err - alpha)

    def _refresh(self) -> None:
        t = self.labels_
        scale = self.scores_.spread() if t else 0.0
        thresholds = []
        for tracked, total in zip(self.tracked_, self.error_sums_, strict=True):
            integral = 0.0
            if self.gain > 0.0 and t > 0:
                argument = total * math.log(t + 1) / (self._saturation * (t + 1))
                if argument >= math.pi / 2:
                    integral = math.inf
                elif argument <= -math.pi / 2:
                    integral = -math.inf
                else:
                    integral = self.gain * scale * math.tan(argument)
            thresholds.append(tracked + integral)
        self._thresholds = thresholds

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lr": self.lr, "gain": self.gain,
                "horizon": self.horizon}

    def _get_state(self) -> dict[str, Any]:
        return {**self._base_state(), "tracked": list(self.tracked_),
                "error_sums": list(self.error_sums_)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self.tracked_ = [float(v) for v in state["tracked"]]
        self.error_sums_ = [float(v) for v in state["error_sums"]]
        self._refresh()
