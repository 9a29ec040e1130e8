"""Reference (numpy) Fixed-Share: the oracle of ``native/src/fixed_share.rs``.

Moved here from ``streamweights/adapters/ensemble/fixed_share.py`` unchanged but for the
imports (it extends the reference Hedge).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.validation import check_count, check_in_range
from tests.reference.hedge import Hedge, _mixability_gap, _running_total


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
        self._shared_weights = np.full(check_count(n_models, "n_models"), 1.0 / n_models)
        super().__init__(n_models, n_classes, loss, learning_rate, probability_floor)

    def _refresh(self) -> None:
        self._rate = self._current_rate()
        self._weights = self._shared_weights

    def _learn_losses(self, losses: np.ndarray) -> None:
        """Exponential step then share, event by event; the per-event factors
        ``exp(-eta (loss - min loss))`` are computed for the whole batch when eta is
        fixed, which is the expensive part."""
        keep, spread = 1.0 - self.share, self.share / self.n_models
        weights = self._shared_weights
        if self._adaptive:
            for row in losses:
                self._mixability_gap += _mixability_gap(weights, row, self._rate)
                weights = _share(weights * _factors(row[None], self._rate)[0], keep, spread)
                self._cumulative_loss = self._cumulative_loss + row
                self._shared_weights = weights
                self._refresh()
        else:
            # Plain floats: for a handful of models a Python loop beats numpy's per-call
            # overhead several times over, and learn / learn_many share this exact path.
            current = weights.tolist()
            for factor in _factors(losses, self._rate).tolist():
                moved = [w * f for w, f in zip(current, factor, strict=True)]
                scale = keep / math.fsum(moved)
                current = [m * scale + spread for m in moved]
            weights = np.array(current)
            self._cumulative_loss = _running_total(self._cumulative_loss, losses)
        self._shared_weights = weights
        self._n_learned += len(losses)
        self._refresh()

    def on_drift(self) -> None:
        """Move half of the mass back to uniform (algorithms.md §5.4)."""
        self._shared_weights = 0.5 * self._shared_weights + 0.5 / self.n_models
        self._refresh()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "share": self.share}

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "weights": self._shared_weights}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._shared_weights = np.asarray(state["weights"], dtype=np.float64)
        super()._set_state(state)


def _factors(losses: np.ndarray, rate: float) -> np.ndarray:
    """``exp(-rate * (loss - row min))`` per event; an infinite rate keeps only the leaders."""
    excess = losses - losses.min(axis=1, keepdims=True)
    if math.isinf(rate):
        return (excess == 0.0).astype(np.float64)
    return np.exp(-rate * excess)


def _share(unnormalised: np.ndarray, keep: float, spread: float) -> np.ndarray:
    return unnormalised * (keep / math.fsum(unnormalised.tolist())) + spread
