"""Reference (oracle) implementation: the pure-Python/numpy online temperature scaling
that production ran before the native core (issue 11). Kept only for the differential tests in
``tests/adapters/test_native_calibration.py``; not an ``Adapter`` (so it does not
register under the production name). Same verbs, same state layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_probability_vector,
    check_probability_vector_rows,
)
from tests.reference.newton import OnlineNewtonStep, check_newton_settings

#: Probabilities are floored at this value before the log (algorithms.md §7: 1e-6), so a
#: class the model rules out exactly still gets a finite score.
PROBABILITY_FLOOR = 1e-6
#: ``tau = ln T`` is kept in ``[ln 0.05, ln 20]`` (algorithms.md §2.6): beyond, the map
#: is a near-argmax or a near-uniform forecast, never a calibration.
LOG_TEMPERATURE_RANGE = (math.log(0.05), math.log(20.0))


class OnlineTemperature:
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

    References
    ----------
    C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On calibration of modern neural
    networks", ICML 2017 (temperature scaling). C. Gupta and A. Ramdas, "Online Platt
    Scaling with Calibeating", ICML 2023 (arXiv:2305.00070) — the online fitting by ONS.
    """

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
        start = [0.0] * (1 + (self.n_classes if bias else 0))
        self._newton = OnlineNewtonStep(start, initial_curvature, exp_concavity, None, discount)

    @property
    def temperature_(self) -> float:
        """Current temperature ``T = exp(tau)``."""
        return math.exp(self._newton.theta[0])

    @property
    def biases_(self) -> np.ndarray:
        """Current per-class biases (zeros when ``bias=False``)."""
        if not self.bias:
            return np.zeros(self.n_classes)
        return np.array(self._newton.theta[1:])

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        p = check_probability_vector(x, "x", self.n_classes)
        theta = self._newton.theta
        inverse_temperature = math.exp(-theta[0])
        log = math.log
        scores = [log(v if v > PROBABILITY_FLOOR else PROBABILITY_FLOOR) * inverse_temperature
                  for v in p]
        if self.bias:
            scores = [score + b for score, b in zip(scores, theta[1:], strict=True)]
        top = max(scores)
        weights = [math.exp(score - top) for score in scores]
        total = sum(weights)
        return np.array([weight / total for weight in weights])

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, self.n_classes))
        p = check_probability_vector_rows(xs, "xs", self.n_classes)
        theta = self._newton.theta
        scores = np.log(np.maximum(p, PROBABILITY_FLOOR)) * math.exp(-theta[0])
        if self.bias:
            scores += np.array(theta[1:])
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)

    def learn(self, x: Any, y: Any) -> None:
        p = check_probability_vector(x, "x", self.n_classes)
        label = check_class_label(y, "y", self.n_classes)
        floor = PROBABILITY_FLOOR
        self._learn_columns([[v if v > floor else floor] for v in p], [label])

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        columns = self._floored_columns(xs)
        labels = check_class_labels(ys, "ys", self.n_classes).tolist()
        self._learn_columns(columns, labels)

    def on_drift(self) -> None:
        """Reset the curvature to ``A_0`` (keep ``T`` and biases): adapt fast again."""
        self._newton.reset_curvature()

    # -- per-event work, shared by learn (a batch of one) and learn_many ----------------
    def _floored_columns(self, xs: Any) -> list[list[float]]:
        """Validated inputs, renormalised and floored, one list per class: row ``i`` is
        what ``learn`` takes from ``check_probability_vector(xs[i])``."""
        p = check_probability_vector_rows(xs, "xs", self.n_classes)
        return np.maximum(p, PROBABILITY_FLOOR).T.tolist()

    def _learn_columns(self, columns: list[list[float]], labels: list[int]) -> None:
        if self.bias:
            self._learn_with_bias(columns, labels)
        elif self.n_classes == 2:
            self._learn_two_classes(columns[0], columns[1], labels)
        else:
            self._learn_temperature(columns, labels)

    def _learn_two_classes(self, first: list[float], second: list[float],
                           labels: list[int]) -> None:
        # Two classes, tau only: with d = s_0 - s_1 = ln(p_0 / p_1) / T the calibrated
        # class-1 probability is q = 1 / (1 + e^d), and the tau-gradient of the log-loss
        # s_y - sum_k q_k s_k simplifies to (q - y) d. ONS in one dimension.
        newton = self._newton
        tau, curvature = newton.theta[0], newton.curvature[0]
        keep, add, beta = newton.discount, newton.identity_scale, newton.exp_concavity
        low, high = LOG_TEMPERATURE_RANGE
        log, exp = math.log, math.exp
        for p0, p1, y in zip(first, second, labels, strict=True):
            d = log(p0 / p1) * exp(-tau)
            gradient = (1.0 / (1.0 + exp(d)) - y) * d
            curvature = keep * curvature + add + gradient * gradient
            tau -= gradient / (beta * curvature)
            if tau < low:
                tau = low
            elif tau > high:
                tau = high
        newton.theta = [tau]
        newton.curvature = [curvature]

    def _learn_temperature(self, columns: list[list[float]], labels: list[int]) -> None:
        # tau only, any number of classes: d(-ln q_y)/d tau = s_y - sum_k q_k s_k with
        # s = ln p / T (algorithms.md §2.6). ONS in one dimension.
        newton = self._newton
        tau, curvature = newton.theta[0], newton.curvature[0]
        keep, add, beta = newton.discount, newton.identity_scale, newton.exp_concavity
        low, high = LOG_TEMPERATURE_RANGE
        log, exp = math.log, math.exp
        for row, y in zip(zip(*columns, strict=True), labels, strict=True):
            inverse_temperature = exp(-tau)
            scaled = [log(v) * inverse_temperature for v in row]
            top = max(scaled)
            weights = [exp(s - top) for s in scaled]
            mean = sum([w * s for w, s in zip(weights, scaled, strict=True)]) / sum(weights)
            gradient = scaled[y] - mean
            curvature = keep * curvature + add + gradient * gradient
            tau -= gradient / (beta * curvature)
            if tau < low:
                tau = low
            elif tau > high:
                tau = high
        newton.theta = [tau]
        newton.curvature = [curvature]

    def _learn_with_bias(self, columns: list[list[float]], labels: list[int]) -> None:
        # tau and the biases: d(-ln q_y)/d tau = s_y - sum_k q_k s_k with s = ln p / T;
        # d(-ln q_y)/d b_k = q_k - 1{k = y}, plus the pull on b. ONS in 1 + C dimensions.
        newton = self._newton
        low, high = LOG_TEMPERATURE_RANGE
        pull = self.bias_regularization
        log, exp = math.log, math.exp
        for row, y in zip(zip(*columns, strict=True), labels, strict=True):
            theta = newton.theta
            biases = theta[1:]
            inverse_temperature = exp(-theta[0])
            scaled = [log(v) * inverse_temperature for v in row]
            scores = [s + b for s, b in zip(scaled, biases, strict=True)]
            top = max(scores)
            weights = [exp(s - top) for s in scores]
            total = sum(weights)
            calibrated = [w / total for w in weights]
            gradient = [scaled[y] - sum([q * s for q, s in zip(calibrated, scaled, strict=True)])]
            gradient.extend(calibrated)
            gradient[1 + y] -= 1.0
            if pull:
                for index, b in enumerate(biases, start=1):
                    gradient[index] += pull * b
            newton.step(gradient)
            newton.theta[0] = min(max(newton.theta[0], low), high)

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "bias": self.bias,
                "bias_regularization": self.bias_regularization, "discount": self.discount,
                "exp_concavity": self.exp_concavity,
                "initial_curvature": self.initial_curvature}

    def _get_state(self) -> dict[str, Any]:
        return self._newton.get_state()

    def _set_state(self, state: dict[str, Any]) -> None:
        self._newton.set_state(state)
