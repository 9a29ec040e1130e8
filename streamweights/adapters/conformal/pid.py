"""Conformal PID control: track the score quantile directly, with an integral term.

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

from streamweights import _native
from streamweights.adapters.conformal._layer import _ConformalLayer
from streamweights.adapters.validation import check_count, check_in_range, check_positive


class ConformalPID(_ConformalLayer):
    """Quantile tracker with a saturating integrator, per level.

    Parameters
    ----------
    alphas, n_classes, score, window
        As for :class:`~streamweights.adapters.conformal.aci.AdaptiveConformal`; the
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
        self._core = _native.ConformalCore.pid(self.alphas, self.score, self.window, self.lr,
                                               self.gain, self._saturation)

    @property
    def tracked_(self) -> list[float]:
        """The quantile tracker's threshold per level (before the integral term)."""
        return self._core.method_state()["tracked"]

    @property
    def error_sums_(self) -> list[float]:
        """``E_t = sum (err_i - alpha)`` per level."""
        return self._core.method_state()["error_sums"]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lr": self.lr, "gain": self.gain,
                "horizon": self.horizon}
