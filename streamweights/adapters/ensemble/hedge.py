"""Hedge: exponentially weighted average of K deployed models.

A thin handle over the native core (``native/src/hedge.rs``), which holds the state and
does the per-event arithmetic; this class keeps the public API, the option checks and
the messages of inputs the core does not clear by itself. The numpy implementation it
replaced is the test oracle in ``tests/reference/hedge.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.ensemble._expert_losses import (
    ExpertInputs,
    resolve_learning_rate,
    resolve_loss,
)
from streamweights.adapters.validation import NonFiniteUpdate, check_count, check_in_range

_empty = np.empty
_NOT_FINITE = ("loss: not finite for this update (an output or a target too large for the "
               "arithmetic)")


class Hedge(Adapter):
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

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, n_models: int, n_classes: int | None = None, loss: str | None = None,
                 learning_rate: float | str = "auto", probability_floor: float = 1e-6) -> None:
        self.n_models = check_count(n_models, "n_models")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        self.loss = resolve_loss(loss, self.n_classes)
        self.learning_rate = resolve_learning_rate(learning_rate)
        self.probability_floor = check_in_range(probability_floor, "probability_floor", 0.0, 1.0)
        self._inputs = ExpertInputs(self.n_models, self.n_classes, self.loss,
                                    self.probability_floor)
        self._core = self._make_core()

    def _make_core(self) -> Any:
        return _native.HedgeCore(self.n_models, self.n_classes, self.loss, self._fixed_rate(),
                                 self.probability_floor)

    def _fixed_rate(self) -> float | None:
        return None if self.learning_rate == "auto" else float(self.learning_rate)

    @property
    def weights_(self) -> np.ndarray:
        """Current mixing weights, one per model (a copy)."""
        return np.array(self._core.weights())

    @property
    def learning_rate_(self) -> float:
        """The ``eta`` in use now (``inf`` while AdaHedge follows the leader)."""
        return self._core.rate()

    # -- contract -----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        if self.n_classes is None:
            value = self._core.predict_value(x)
            if value is None:  # not cleared by the core's quick check: check fully (may raise)
                value = self._predict_checked(x)[0]
            return np.float64(value)
        mixed = _empty(self.n_classes)
        if not self._core.predict_into(x, mixed):
            mixed[:] = self._predict_checked(x)
        return mixed

    def _predict_checked(self, x: Any) -> list[float]:
        return self._core.predict_checked(np.ascontiguousarray(self._inputs.outputs(x)))

    def predict_many(self, xs: Any) -> np.ndarray:
        outputs = np.ascontiguousarray(self._inputs.outputs_many(xs))
        mixed = np.array(self._core.predict_checked(outputs), dtype=np.float64)
        return mixed if self.n_classes is None else mixed.reshape(len(outputs), self.n_classes)

    def learn(self, x: Any, y: Any) -> None:
        if not self._core.learn(x, y):  # not cleared or not finite: nothing changed yet
            self._learn_checked(self._inputs.outputs(x), self._inputs.label(y))

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        self._learn_checked(self._inputs.outputs_many(xs), self._inputs.labels_many(ys))

    def _learn_checked(self, outputs: np.ndarray, labels: np.ndarray) -> None:
        """Learn checked events in order, all or none: a non-finite update is refused
        before anything changed."""
        if not self._core.learn_checked(np.ascontiguousarray(outputs),
                                        np.asarray(labels, dtype=np.float64)):
            raise NonFiniteUpdate(_NOT_FINITE)

    def on_drift(self) -> None:
        """Forget half the evidence: halve every model's lead over the best one.

        Weights become proportional to the square root of the old ones, so a model that
        was written off can take over again in half the time (algorithms.md §5.4).
        """
        self._core.on_drift()

    # -- state --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_models": self.n_models, "n_classes": self.n_classes, "loss": self.loss,
                "learning_rate": self.learning_rate,
                "probability_floor": self.probability_floor}

    def _get_state(self) -> dict[str, Any]:
        cumulative_loss, mixability_gap, n_learned = self._core.get_state()
        return {"cumulative_loss": np.array(cumulative_loss), "mixability_gap": mixability_gap,
                "n_learned": n_learned}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._core.set_state(_floats(state["cumulative_loss"]), float(state["mixability_gap"]),
                             int(state["n_learned"]))


def _floats(values: Any) -> list[float]:
    """A state vector as plain floats for the core."""
    return np.asarray(values, dtype=np.float64).reshape(-1).tolist()
