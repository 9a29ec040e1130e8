"""Reference (oracle) implementation: the pure-Python/numpy online beta scaling that production ran
before the native core (issue 11). Kept only for the differential tests in
``tests/adapters/test_native_calibration.py``; not an ``Adapter`` (so it does not
register under the production name). Same verbs, same state layout.
"""

from __future__ import annotations

import math

import numpy as np

from tests.reference.newton import (
    SIGMOID_ARGUMENT_LIMIT,
    _BinaryNewtonCalibrator,
    _project_onto_ball,
    sigmoid,
)


class OnlineBetaScaling(_BinaryNewtonCalibrator):
    """Online beta scaling (OBS): ``q = sigmoid(a * ln f + b * ln(1 - f) + c)``, online.

    Platt scaling treats a model's errors near 0 and near 1 alike (it maps ``logit f``,
    which weighs ``ln f`` and ``ln(1 - f)`` equally, ``b = -a``). Beta calibration
    (Kull et al. 2017) frees the two weights, so it can fix a model that is over-confident
    on one side and fine on the other. Fitted by Online Newton Step exactly like
    :class:`~streamweights.adapters.calibration.OnlinePlatt`, with ``D = 2`` in the
    authors' constants (Gupta & Ramdas 2023). Input and output are probability vectors of
    shape ``(2,)``; ``f`` is clipped to ``[1e-5, 1 - 1e-5]`` before the logs.

    Parameters
    ----------
    discount
        Memory of the curvature estimate, in ``(0, 1]``; ``1.0`` is the paper's
        algorithm, below 1 is ours (see ``OnlinePlatt``). Default ``0.9999``.
    exp_concavity
        The ONS constant ``beta`` (steps ``A^{-1} g / beta``); ``0.1`` (authors).
    initial_curvature
        ``A_0 = initial_curvature * I``; ``25 = (beta * D)^-2`` with ``D = 2`` (authors).
    radius
        ``||(a, b, c)|| <= radius`` by the generalised projection; ``100`` (authors).

    The map starts at ``(a, b, c) = (1, -1, 0)``, the identity
    (``sigmoid(ln f - ln(1 - f)) = f``); the authors' code starts at ``(0, 0, 0)``.
    ``b`` may take either sign (as in the authors' code; Kull et al. constrain it).
    ``on_drift`` resets the curvature to ``A_0`` and keeps the map.

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). M. Kull, T. Silva Filho and P. Flach, "Beta calibration: a
    well-founded and easily implemented improvement on logistic calibration for binary
    classifiers", AISTATS 2017.
    """

    _identity = (1.0, -1.0, 0.0)

    def __init__(self, discount: float = 0.9999, exp_concavity: float = 0.1,
                 initial_curvature: float = 25.0, radius: float = 100.0) -> None:
        super().__init__(discount, exp_concavity, initial_curvature, radius)

    @property
    def coefficients_(self) -> tuple[float, float, float]:
        """``(a, b, c)`` of ``q = sigmoid(a * ln f + b * ln(1 - f) + c)``."""
        a, b, c = self._newton.theta
        return a, b, c

    # -- per-event work (see _BinaryNewtonCalibrator) ---------------------------------
    def _probability(self, f: float) -> float:
        a, b, c = self._newton.theta
        return sigmoid(a * math.log(f) + b * math.log1p(-f) + c)

    def _probability_rows(self, f: np.ndarray) -> np.ndarray:
        a, b, c = self._newton.theta
        score = np.clip(a * np.log(f) + b * np.log1p(-f) + c, -SIGMOID_ARGUMENT_LIMIT,
                        SIGMOID_ARGUMENT_LIMIT)
        return 1.0 / (1.0 + np.exp(-score))

    def _learn_scores(self, scores: list[float], labels: list[int],
                      collect: bool) -> list[float] | None:
        # ONS on theta = (a, b, c) with features (u, v, 1) = (ln f, ln(1 - f), 1), written
        # out in floats: gradient g = (q - y) (u, v, 1); A (symmetric, entries k..) <-
        # discount A + add I + g g^T; theta <- theta - A^{-1} g / beta, with A^{-1} g
        # solved by A = L D L^T (fewer operations than the adjugate, and as stable for a
        # positive definite A; OnlineNewtonStep.step solves by the adjugate).
        newton = self._newton
        a, b, c = newton.theta
        k00, k01, k02, _, k11, k12, _, _, k22 = newton.curvature
        keep, add = newton.discount, newton.identity_scale
        rate = 1.0 / newton.exp_concavity
        limit = SIGMOID_ARGUMENT_LIMIT
        radius = self.radius
        squared_radius = radius * radius
        log, log1p, exp = math.log, math.log1p, math.exp
        served: list[float] = []
        for f, y in zip(scores, labels, strict=True):
            u = log(f)
            v = log1p(-f)
            z = a * u + b * v + c
            if z > limit:
                z = limit
            elif z < -limit:
                z = -limit
            q = 1.0 / (1.0 + exp(-z))
            if collect:
                served.append(q)
            r = q - y           # gradient (g0, g1, r)
            g0 = r * u
            g1 = r * v
            k00 = keep * k00 + add + g0 * g0
            k01 = keep * k01 + g0 * g1
            k02 = keep * k02 + g0 * r
            k11 = keep * k11 + add + g1 * g1
            k12 = keep * k12 + g1 * r
            k22 = keep * k22 + add + r * r
            # L = [[1, 0, 0], [l10, 1, 0], [l20, l21, 1]], D = diag(k00, d1, d2)
            l10 = k01 / k00
            l20 = k02 / k00
            d1 = k11 - l10 * k01
            e21 = k12 - l20 * k01           # l21 * d1
            l21 = e21 / d1
            d2 = k22 - l20 * k02 - l21 * e21
            # forward (L w = g / beta), scale by D^-1, back (L^T x = ...)
            w0 = rate * g0
            w1 = rate * g1 - l10 * w0
            x2 = (rate * r - l20 * w0 - l21 * w1) / d2
            x1 = w1 / d1 - l21 * x2
            a -= w0 / k00 - l10 * x1 - l20 * x2
            b -= x1
            c -= x2
            if a * a + b * b + c * c > squared_radius:
                a, b, c = _project_onto_ball(
                    [a, b, c], [k00, k01, k02, k01, k11, k12, k02, k12, k22], 3, radius)
        newton.theta = [a, b, c]
        newton.curvature = [k00, k01, k02, k01, k11, k12, k02, k12, k22]
        return served if collect else None
