"""Online temperature scaling: soften or sharpen a multiclass model's probabilities.

A thin handle: validation here, the state and the per-event arithmetic in the native core
(``native/src/temperature.rs``); the numpy version it replaced is the test oracle
(``tests/reference/temperature.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.calibration._newton import (
    check_newton_settings,
    load_newton_state,
    newton_state,
)
from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_probability_vector,
    check_probability_vector_rows,
)

#: Probabilities are floored at this value before the log (algorithms.md §7: 1e-6), so a
#: class the model rules out exactly still gets a finite score (the core floors:
#: ``native/src/temperature.rs``).
PROBABILITY_FLOOR = 1e-6
#: ``tau = ln T`` is kept in ``[ln 0.05, ln 20]`` (algorithms.md §2.6): beyond, the map
#: is a near-argmax or a near-uniform forecast, never a calibration (the core's clip).
LOG_TEMPERATURE_RANGE = (math.log(0.05), math.log(20.0))


class OnlineTemperature(Adapter):
    """Online temperature scaling: ``p = softmax(ln p_in / T (+ b))``, fitted online.

    Deep classifiers are typically over-confident; dividing their logits by one number
    ``T > 1`` fixes much of it without changing which class wins (Guo et al. 2017). Here
    ``T`` is fitted online from delayed labels: Online Newton Step on ``tau = ln T`` with
    the multinomial log-loss, the constants mirroring Online Platt scaling. The log of
    the input probability plays the role of the logits (the same up to a constant per
    event, which softmax ignores). This multiclass analogue is ours (algorithms.md §2.6),
    not Gupta & Ramdas'.

    Parameters
    ----------
    n_classes
        Number of classes ``C >= 2``; inputs and outputs are probability vectors ``(C,)``.
    bias
        Also learn a bias per class (``softmax(ln p_in / T + b)``): corrects a model that
        is wrong about the class mix, not only over/under-confident. Off by default: one
        parameter is the most robust recalibration when labels are few. The biases join
        ``tau`` in one ONS over ``1 + C`` parameters (full curvature matrix, its system
        solved afresh at each step: slower per event than ``tau`` alone), with an L2 pull
        ``bias_regularization / 2 * ||b||^2`` added to the loss so that the bias of a
        class that never occurs stays finite [ours].
    bias_regularization
        Strength of that pull towards 0; ``1e-3``: negligible next to the log-loss
        gradient of any class seen more than about once in a thousand events.
    discount
        Memory of the curvature, in ``(0, 1]``, as in ``OnlinePlatt`` [ours]: ``1.0`` is
        plain ONS (steps shrink like ``1/t``), the default ``0.9999`` keeps adapting with
        a memory of about 10,000 events.
    exp_concavity
        ONS ``beta`` (steps ``A^{-1} g / beta``); ``0.1`` as for Platt scaling.
    initial_curvature
        ``A_0 = initial_curvature * I``; ``100`` as for Platt scaling.

    ``tau`` starts at 0 (``T = 1``, the identity) and is clipped to ``[ln 0.05, ln 20]``
    after each step (a Euclidean clip, not the A-norm projection; the biases are not
    bounded other than by the pull). Probabilities are floored at ``1e-6`` before the
    log. ``on_drift`` resets the curvature to ``A_0``, keeping ``T`` and the biases.

    Example
    -------
    A 3-class model whose logits are 2.5 times too large:

    >>> import numpy as np
    >>> from streamweights.adapters import OnlineTemperature
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(scale=4.0, size=(3000, 3))
    >>> model = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    >>> truth = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    >>> labels = (rng.random((3000, 1)) > truth.cumsum(axis=1)).sum(axis=1)
    >>> calibrator = OnlineTemperature(n_classes=3)
    >>> calibrator.learn_many(model, labels)
    >>> bool(2.0 < calibrator.temperature_ < 3.0)
    True

    References
    ----------
    C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On calibration of modern neural
    networks", ICML 2017 (temperature scaling). C. Gupta and A. Ramdas, "Online Platt
    Scaling with Calibeating", ICML 2023 (arXiv:2305.00070) — the online fitting by ONS.
    """

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, n_classes: int, bias: bool = False, bias_regularization: float = 1e-3,
                 discount: float = 0.9999, exp_concavity: float = 0.1,
                 initial_curvature: float = 100.0) -> None:
        self.n_classes = check_count(n_classes, "n_classes", minimum=2)
        if not isinstance(bias, bool):
            raise ValueError(f"bias: must be True or False, got {bias!r}")
        self.bias = bias
        self.bias_regularization = check_in_range(bias_regularization, "bias_regularization",
                                                  0.0, math.inf, low_open=False)
        check_newton_settings(exp_concavity, initial_curvature, None, discount)
        self.discount = float(discount)
        self.exp_concavity = float(exp_concavity)
        self.initial_curvature = float(initial_curvature)
        self._core = _native.TemperatureCore(self.n_classes, self.bias,
                                             self.bias_regularization, self.discount,
                                             self.exp_concavity, self.initial_curvature)

    @property
    def temperature_(self) -> float:
        """Current temperature ``T = exp(tau)``."""
        return math.exp(self._core.theta[0])

    @property
    def biases_(self) -> np.ndarray:
        """Current per-class biases (zeros when ``bias=False``)."""
        if not self.bias:
            return np.zeros(self.n_classes)
        return np.array(self._core.theta[1:])

    # -- verbs (validation here, the arithmetic in the core) ---------------------------
    def predict(self, x: Any) -> np.ndarray:
        out = self._core.predict_input(x)  # the core clears the usual inputs itself
        if out is None:  # anything else: Python's checks, which raise or accept
            out = self._core.predict(check_probability_vector(x, "x", self.n_classes))
        return out  # a new float64 array, made by the core

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, self.n_classes))
        p = check_probability_vector_rows(xs, "xs", self.n_classes)
        return np.array(self._core.predict_many(p.ravel().tolist())).reshape(-1, self.n_classes)

    def learn(self, x: Any, y: Any) -> None:
        if not self._core.learn_input(x, y):
            p = check_probability_vector(x, "x", self.n_classes)
            self._core.learn(p, check_class_label(y, "y", self.n_classes))

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        p = check_probability_vector_rows(xs, "xs", self.n_classes)
        labels = check_class_labels(ys, "ys", self.n_classes).tolist()
        self._core.learn_many(p.ravel().tolist(), labels)

    def on_drift(self) -> None:
        """Reset the curvature to ``A_0`` (keep ``T`` and biases): adapt fast again."""
        self._core.reset_curvature()

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "bias": self.bias,
                "bias_regularization": self.bias_regularization, "discount": self.discount,
                "exp_concavity": self.exp_concavity,
                "initial_curvature": self.initial_curvature}

    def _get_state(self) -> dict[str, Any]:
        return newton_state(self._core)

    def _set_state(self, state: dict[str, Any]) -> None:
        load_newton_state(self._core, state, 1 + (self.n_classes if self.bias else 0))
