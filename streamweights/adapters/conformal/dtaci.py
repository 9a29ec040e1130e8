"""Dynamically-tuned ACI (DtACI): several ACI step sizes, mixed by exponential weights.

ACI's step ``gamma`` trades reaction speed for steadiness, and the right one depends on
how fast the stream drifts, which nobody knows in advance. Gibbs & Candès (2022) run
one ACI expert per step on a grid; per target level ``alpha`` each expert ``i`` keeps a
working level ``alpha^i_t``, and the served level is their weighted mean
``alpha_t = sum_i p^i_t alpha^i_t``. When the label arrives, with ``beta_t`` the largest
level at which it would still have been covered, every expert pays the pinball loss

    l(beta_t, theta) = alpha (beta_t - theta) - min(0, beta_t - theta),

the weights become ``w^i <- w^i exp(-eta l(beta_t, alpha^i_t))``, then Fixed-Share
mixing ``w <- (1 - sigma) w / sum w + sigma / k`` keeps every expert revivable after a
change, and each expert takes its own ACI step ``alpha^i <- alpha^i + gamma_i (alpha -
err^i_t)`` with ``err^i_t`` judged on the threshold that expert had when the prediction
was served. The mixture tracks the best step size on every stretch of the stream
(dynamic regret); the served level is deterministic (the weighted mean, not a draw).
"""

from __future__ import annotations

import math
from typing import Any

from streamweights import _native
from streamweights.adapters.conformal._layer import _ConformalLayer
from streamweights.adapters.validation import check_count, check_in_range, check_positive

#: The paper's grid of step sizes.
DEFAULT_STEPS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)


class DtACI(_ConformalLayer):
    """DtACI prediction sets or intervals per level (the default conformal method).

    Parameters
    ----------
    alphas, n_classes, score, window
        As for :class:`~streamweights.adapters.conformal.aci.AdaptiveConformal`.
    steps
        The experts' ACI step sizes (default: the paper's grid 0.001 ... 0.128).
    interval
        ``I``, the length of the stretches on which the mixture should track the best
        step (default 500 labels). It sets the paper's defaults for the two below.
    learning_rate
        ``eta`` of the exponential weights; ``None`` (default) takes the paper's choice
        per level, ``sqrt(3 / I) sqrt((log(I k) + 2) / ((1 - alpha)^2 alpha^3))``.
    share
        ``sigma``, the Fixed-Share mixing; ``None`` (default) takes ``1 / (2 I)``.

    Example
    -------
    >>> dtaci = DtACI(alphas=[0.1], n_classes=2)
    >>> for t in range(300):
    ...     dtaci.learn([0.8, 0.2] if t % 3 else [0.3, 0.7], 0 if t % 5 else 1)
    >>> dtaci.sets([0.8, 0.2])
    {'0.1': [0, 1]}

    References
    ----------
    Gibbs, I. & Candès, E. (2022). Conformal inference for online prediction with
    arbitrary distribution shifts. arXiv:2208.08401 (JMLR 2024).
    """

    def __init__(self, alphas: list[float] | tuple[float, ...] = (0.1, 0.05),
                 n_classes: int | None = None, score: str | None = None,
                 window: int = 1000, steps: list[float] | tuple[float, ...] = DEFAULT_STEPS,
                 interval: int = 500, learning_rate: float | None = None,
                 share: float | None = None) -> None:
        super().__init__(alphas, n_classes, score, window)
        if not isinstance(steps, list | tuple) or not steps:
            raise ValueError(f"steps: expected a non-empty list of step sizes, got {steps!r}")
        self.steps = [check_in_range(g, f"steps[{i}]", 0.0, 1.0, high_open=False)
                      for i, g in enumerate(steps)]
        self.interval = check_count(interval, "interval", 2)
        self.learning_rate = None if learning_rate is None else check_positive(
            learning_rate, "learning_rate")
        self.share = None if share is None else check_in_range(share, "share", 0.0, 1.0,
                                                                low_open=False)
        k = len(self.steps)
        span = self.interval
        self._etas = [self.learning_rate if self.learning_rate is not None else
                      math.sqrt(3.0 / span) * math.sqrt((math.log(span * k) + 2.0)
                                                        / ((1.0 - a) ** 2 * a ** 3))
                      for a in self.alphas]
        self._sigma = self.share if self.share is not None else 1.0 / (2.0 * span)
        self._core = _native.ConformalCore.dtaci(self.alphas, self.score, self.window,
                                                 self.steps, self._etas, self._sigma)

    @property
    def levels_(self) -> list[list[float]]:
        """Per target level: each expert's working level."""
        return self._core.method_state()["levels"]

    @property
    def weights_(self) -> list[list[float]]:
        """Per target level: the experts' weights (summing to 1)."""
        return self._core.method_state()["weights"]

    def mixed_levels(self) -> list[float]:
        """The served working level per target level (the weighted mean of the experts)."""
        return self._core.mixed_levels()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "steps": list(self.steps), "interval": self.interval,
                "learning_rate": self.learning_rate, "share": self.share}
