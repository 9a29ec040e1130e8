"""Reference (numpy) Hedge: the oracle of ``native/src/hedge.rs``.

Moved here from ``streamweights/adapters/ensemble/hedge.py``; the only change is that it
is a plain class (not a registered adapter) with the same state layout.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from streamweights.adapters.validation import check_count, check_finite_update, check_in_range
from tests.reference.expert_losses import (
    ExpertInputs,
    resolve_learning_rate,
    resolve_loss,
)


class Reference:
    """The state verbs of ``Adapter`` without its registry (an oracle is no adapter)."""

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": type(self).__name__, "version": 1,
                "config": copy.deepcopy(self.get_config()),
                "state": copy.deepcopy(self._get_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._set_state(copy.deepcopy(state_dict["state"]))


def exponential_weights(cumulative_loss: np.ndarray, learning_rate: float) -> np.ndarray:
    """``softmax(-learning_rate * L)``, computed stably; ``inf`` rate = uniform on the leaders."""
    shifted = cumulative_loss - cumulative_loss.min()
    if math.isinf(learning_rate):
        weights = (shifted == 0.0).astype(np.float64)
    else:
        weights = np.exp(-learning_rate * shifted)
    return weights / weights.sum()


class Hedge(Reference):
    """Exponentially weighted mixture of K deployed models (Hedge / EWA).

    Each model keeps its cumulative loss ``L_i``; the weights are ``softmax(-eta * L)`` and
    the output is the weighted average of the models' outputs. The mixture then loses at
    most about ``sqrt(T ln K)`` more than the best single model in hindsight.

    ``learning_rate="auto"`` picks ``eta`` without knowing the horizon:

    * for ``loss="log"`` it is 1: mixing probabilities with ``eta = 1`` is exactly the
      Bayesian mixture over the models, whose regret is at most ``ln K`` whatever the
      sequence (log-loss is 1-mixable) — better than any tuned rate;
    * for the other losses it is AdaHedge (de Rooij et al., 2014): ``eta = ln K / Delta``
      where ``Delta`` is the cumulative mixability gap. It needs no bound on the losses,
      is invariant to their scale and guarantees regret ``<= 2 sqrt(L*(T-L*)/T ln K) + c``
      for losses in ``[0, 1]``, i.e. at most ``sqrt(T ln K) + c``.

    Parameters
    ----------
    n_models
        K, the number of deployed models mixed.
    n_classes
        C for classification (inputs ``(K, C)`` probabilities, output ``(C,)``); ``None``
        for regression (inputs ``(K,)`` values, output a 0-d array).
    loss
        ``"log"`` (default for classification), ``"squared"`` (default for regression;
        the Brier score for classification) or ``"absolute"`` (``1 - p_y`` for
        classification).
    learning_rate
        ``"auto"`` or a fixed positive ``eta``.
    probability_floor
        Probabilities are floored here inside the log-loss so one model saying 0 for
        what happened costs ``-ln(1e-6) ~ 13.8`` instead of infinity.

    Example
    -------
    Two models, one right 90% of the time, one a coin: Hedge moves to the good one.

    >>> import numpy as np
    >>> from streamweights.adapters import Hedge
    >>> rng = np.random.default_rng(0)
    >>> hedge = Hedge(n_models=2, n_classes=2)
    >>> for _ in range(200):
    ...     y = int(rng.integers(2))
    ...     good = np.array([0.1, 0.9]) if y else np.array([0.9, 0.1])
    ...     hedge.learn(np.stack([good, [0.5, 0.5]]), y)
    >>> bool(hedge.weights_[0] > 0.99)
    True

    References
    ----------
    Freund & Schapire (1997), "A decision-theoretic generalization of on-line learning".
    Vovk (1990), "Aggregating strategies". de Rooij, van Erven, Grünwald & Koolen (2014),
    "Follow the leader if you can, hedge if you must" (AdaHedge), JMLR 15.
    """

    def __init__(self, n_models: int, n_classes: int | None = None, loss: str | None = None,
                 learning_rate: float | str = "auto", probability_floor: float = 1e-6) -> None:
        self.n_models = check_count(n_models, "n_models")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        self.loss = resolve_loss(loss, self.n_classes)
        self.learning_rate = resolve_learning_rate(learning_rate)
        self.probability_floor = check_in_range(probability_floor, "probability_floor", 0.0, 1.0)
        self._inputs = ExpertInputs(self.n_models, self.n_classes, self.loss,
                                    self.probability_floor)
        self._log_models = math.log(self.n_models)
        self._cumulative_loss = np.zeros(self.n_models)
        self._mixability_gap = 0.0
        self._n_learned = 0
        self._refresh()

    # -- rate and weights ---------------------------------------------------------------
    def _current_rate(self) -> float:
        if self.learning_rate != "auto":
            return float(self.learning_rate)
        if self.loss == "log":
            return 1.0
        if self._mixability_gap <= 0.0 or self._log_models == 0.0:
            return math.inf
        return self._log_models / self._mixability_gap

    def _refresh(self) -> None:
        self._rate = self._current_rate()
        self._weights = exponential_weights(self._cumulative_loss, self._rate)

    @property
    def weights_(self) -> np.ndarray:
        """Current mixing weights, one per model (a copy)."""
        return self._weights.copy()

    @property
    def learning_rate_(self) -> float:
        """The ``eta`` in use now (``inf`` while AdaHedge follows the leader)."""
        return self._rate

    # -- contract -----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        return self._inputs.mix(self._weights, self._inputs.outputs(x))

    def predict_many(self, xs: Any) -> np.ndarray:
        return self._inputs.mix_many(self._weights, self._inputs.outputs_many(xs))

    def learn(self, x: Any, y: Any) -> None:
        outputs = self._inputs.outputs(x)
        labels = self._inputs.label(y)
        losses = self._inputs.losses_many(outputs[None], labels)
        check_finite_update(losses, "loss")  # before any change: refused, nothing moved
        self._learn_losses(losses)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        outputs = self._inputs.outputs_many(xs)
        labels = self._inputs.labels_many(ys)
        losses = self._inputs.losses_many(outputs, labels)
        check_finite_update(losses, "loss")
        self._learn_losses(losses)

    @property
    def _adaptive(self) -> bool:
        return self.learning_rate == "auto" and self.loss != "log"

    def _learn_losses(self, losses: np.ndarray) -> None:
        """Apply a batch of per-model loss rows ``(n, K)`` in order."""
        if self._adaptive:
            for row in losses:
                self._mixability_gap += _mixability_gap(self._weights, row, self._rate)
                self._cumulative_loss = self._cumulative_loss + row
                self._refresh()
        else:
            self._cumulative_loss = _running_total(self._cumulative_loss, losses)
            self._refresh()
        self._n_learned += len(losses)

    def on_drift(self) -> None:
        """Forget half the evidence: halve every model's lead over the best one.

        Weights become proportional to the square root of the old ones, so a model that
        was written off can take over again in half the time (algorithms.md §5.4).
        """
        best = self._cumulative_loss.min()
        self._cumulative_loss = best + 0.5 * (self._cumulative_loss - best)
        self._refresh()

    # -- state --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_models": self.n_models, "n_classes": self.n_classes, "loss": self.loss,
                "learning_rate": self.learning_rate,
                "probability_floor": self.probability_floor}

    def _get_state(self) -> dict[str, Any]:
        return {"cumulative_loss": self._cumulative_loss, "mixability_gap": self._mixability_gap,
                "n_learned": self._n_learned}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._cumulative_loss = np.asarray(state["cumulative_loss"], dtype=np.float64)
        self._mixability_gap = float(state["mixability_gap"])
        self._n_learned = int(state["n_learned"])
        self._refresh()


def _running_total(total: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``total + rows[0] + rows[1] + ...`` added in that order (so batch = sequential)."""
    return np.add.accumulate(np.concatenate([total[None], rows]), axis=0)[-1]


def _mixability_gap(weights: np.ndarray, losses: np.ndarray, rate: float) -> float:
    """Hedge loss minus mix loss for one round (AdaHedge's delta), never negative."""
    hedge_loss = float(weights @ losses)
    support = weights > 0.0
    best = float(losses[support].min())
    if math.isinf(rate):
        mix_loss = best
    else:
        kept = weights[support] @ np.exp(-rate * (losses[support] - best))
        mix_loss = best - math.log(float(kept)) / rate
    return max(0.0, hedge_loss - mix_loss)
