"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Adaptive conformal inference (ACI): one step size, the level moves with every miss.

Gibbs & Candès (2021) keep, per target level ``alpha``, a working level ``alpha_t`` and
serve the set at the ``1 - alpha_t`` quantile of recent scores. After each label,

    alpha_{t+1} = alpha_t + gamma * (alpha - err_t),

with ``err_t = 1`` when the label fell outside the set served for it. A miss lowers the
working level (bigger sets), a hit raises it a little. Whatever the data do — drift,
adversarial sequences — the long-run miscoverage satisfies

    |(1/T) sum_t err_t - alpha| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma T),

because ``alpha_t`` stays in ``[-gamma, 1 + gamma]`` and the sum telescopes. The working
level is kept unclamped (the bound needs it); a level at or below 0 serves everything
(an infinite threshold), at or above 1 nothing.
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters.validation import check_in_range
from tests.reference.conformal._layer import _ConformalLayer
from tests.reference.conformal.scores import empirical_quantile


class AdaptiveConformal(_ConformalLayer):
    """ACI prediction sets (classification) or intervals (regression) per level.

    Parameters
    ----------
    alphas
        Target miscoverage levels (default ``(0.1, 0.05)``).
    n_classes
        Number of classes; ``None`` for a regression stream (intervals).
    score
        ``"probability"`` (``1 - p_y``, default) or ``"aps"`` for classification;
        ``"absolute"`` (``|y - yhat|``) for regression (see :mod:`.scores`).
    window
        How many recent scores the quantile is taken over (default 1,000).
    step
        ``gamma`` (default 0.005, the paper's choice): larger reacts faster to drift,
        with noisier set sizes.

    Example
    -------
    >>> aci = AdaptiveConformal(alphas=[0.1], n_classes=2, step=0.05)
    >>> for t in range(200):
    ...     p = [0.8, 0.2] if t % 3 else [0.3, 0.7]
    ...     aci.learn(p, 0 if t % 5 else 1)
    >>> aci.sets([0.8, 0.2])
    {'0.1': [0]}

    References
    ----------
    Gibbs, I. & Candès, E. (2021). Adaptive conformal inference under distribution
    shift. NeurIPS 34.
    """

    def __init__(self, alphas: list[float] | tuple[float, ...] = (0.1, 0.05),
                 n_classes: int | None = None, score: str | None = None,
                 window: int = 1000, step: float = 0.005) -> None:
        super().__init__(alphas, n_classes, score, window)
        self.step = check_in_range(step, "step", 0.0, 1.0, high_open=False)
        self.levels_ = list(self.alphas)
        self._refresh()

    def _served_state(self) -> list[float]:
        return list(self._thresholds)

    def _update(self, value: float, served: list[float]) -> None:
        errors = self.errors(value, served)
        self.levels_ = [level + self.step * (alpha - err) for level, alpha, err
                        in zip(self.levels_, self.alphas, errors, strict=True)]

    def _refresh(self) -> None:
        ordered = self.scores_.ordered
        self._thresholds = [empirical_quantile(ordered, 1.0 - level) for level in self.levels_]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "step": self.step}

    def _get_state(self) -> dict[str, Any]:
        return {**self._base_state(), "levels": list(self.levels_)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self.levels_ = [float(v) for v in state["levels"]]
        self._refresh()
