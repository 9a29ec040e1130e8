"""Fixed-Share: Hedge that keeps every model in play, so it tracks a switching best model.

A thin handle over the native core (``native/src/fixed_share.rs``); the numpy
implementation it replaced is the test oracle in ``tests/reference/fixed_share.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.ensemble.hedge import Hedge, _floats
from streamweights.adapters.validation import check_in_range


class FixedShare(Hedge):
    """Exponential weights plus a constant share of mass spread back to every model.

    After each label the weights get the usual exponential update and then
    ``w <- (1 - share) * w + share / K``: no model's weight falls below ``share / K``, so
    when the world changes and another deployed model becomes the best one, it regains
    the lead after about ``ln(K / share) / eta`` bad rounds of the old leader instead of
    after paying back the whole cumulative gap, as plain Hedge must. The price is
    ``~share`` nats per round when nothing changes.

    Parameters
    ----------
    share
        Fraction mixed back toward uniform each round, in (0, 1). About (expected number
        of switches) / (stream length); the default 0.005 suits a switch every few hundred
        to thousand labels, the range algorithms.md §3.2 recommends being 1e-3 .. 1e-2.
    n_models, n_classes, loss, learning_rate, probability_floor
        As for :class:`Hedge`. ``learning_rate="auto"`` is 1 for log-loss (the
        Bayesian switching mixture) and the AdaHedge rate otherwise (the gap is measured
        on the exponential step, before sharing).

    Example
    -------
    The good model changes at event 300; after 400 events the new one leads.

    >>> import numpy as np
    >>> from streamweights.adapters import FixedShare
    >>> mixer = FixedShare(n_models=2, n_classes=2, share=0.01)
    >>> rng = np.random.default_rng(1)
    >>> for t in range(400):
    ...     y = int(rng.integers(2))
    ...     good = np.eye(2)[y] * 0.8 + 0.1
    ...     pair = [good, [0.5, 0.5]] if t < 300 else [[0.5, 0.5], good]
    ...     mixer.learn(np.array(pair), y)
    >>> bool(mixer.weights_[1] > 0.9)
    True

    References
    ----------
    Herbster & Warmuth (1998), "Tracking the best expert", Machine Learning 32.
    Bousquet & Warmuth (2002), "Tracking a small set of experts by mixing past posteriors".
    """

    def __init__(self, n_models: int, n_classes: int | None = None, loss: str | None = None,
                 share: float = 0.005, learning_rate: float | str = "auto",
                 probability_floor: float = 1e-6) -> None:
        self.share = check_in_range(share, "share", 0.0, 1.0)
        super().__init__(n_models, n_classes, loss, learning_rate, probability_floor)

    def _make_core(self) -> Any:
        return _native.FixedShareCore(self.n_models, self.n_classes, self.loss, self.share,
                                      self._fixed_rate(), self.probability_floor)

    def on_drift(self) -> None:
        """Move half of the mass back to uniform (algorithms.md §5.4)."""
        self._core.on_drift()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "share": self.share}

    def _get_state(self) -> dict[str, Any]:
        cumulative_loss, mixability_gap, n_learned, weights = self._core.get_state()
        return {"cumulative_loss": np.array(cumulative_loss), "mixability_gap": mixability_gap,
                "n_learned": n_learned, "weights": np.array(weights)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._core.set_state(_floats(state["cumulative_loss"]), float(state["mixability_gap"]),
                             int(state["n_learned"]), _floats(state["weights"]))
