"""Reference (oracle) implementation: the pure-Python/numpy Online Platt scaling that production ran
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


class OnlinePlatt(_BinaryNewtonCalibrator):
    """Online Platt scaling (OPS): ``q = sigmoid(a * logit(f) + b)``, fitted online.

    A binary model's probability ``f`` for class 1 becomes ``q`` through a logistic map
    of its logit: ``a > 1`` sharpens an under-confident model, ``a < 1`` softens an
    over-confident one, ``b`` shifts the base rate. The two numbers are fitted by online
    logistic regression with Online Newton Step (ONS) as in Gupta & Ramdas (2023):
    logarithmic regret against the best fixed Platt map in hindsight, no step size to
    tune. Input and output are probability vectors of shape ``(2,)``; ``f`` is clipped
    to ``[1e-5, 1 - 1e-5]`` before the logit and ``a * logit(f) + b`` to ``+-100``
    (authors' code).

    Parameters
    ----------
    discount
        Memory of the curvature estimate, in ``(0, 1]``. ``1.0`` is the paper's algorithm
        exactly: ONS never forgets, its steps shrink like ``1/t``, and after a long stable
        period a change of the model's mis-calibration takes very long to undo. Below 1
        [ours], old curvature fades towards ``A_0`` with a memory of about
        ``1 / (1 - discount)`` events, so the steps stop shrinking and the map keeps
        tracking drift. The default ``0.9999`` (memory ~10,000 events) is tuned on our
        drift tests. algorithms.md suggests ``0.999``, but the ONS step is
        ``A^{-1} g / beta`` with ``1 / beta = 10``, about a Newton step of relative size
        ``10 * (1 - discount)``: on a calibrated model, at ``0.999`` the coefficients
        jitter with a standard deviation of ~0.13 for ever; at ``0.9999`` of ~0.04, less
        than the paper's algorithm still has after 5,000 events (~0.07).
    exp_concavity
        The ONS constant ``beta``: steps are ``A^{-1} g / beta``. ``0.1`` as in the
        authors' code, for all data sets.
    initial_curvature
        ``A_0 = initial_curvature * I``; ``100 = (beta * D)^-2`` with ``D = 1`` (authors).
    radius
        ``||(a, b)|| <= radius``, enforced by the generalised (A-norm) projection; ``100``.

    The map starts at ``(a, b) = (1, 0)``, the identity: the base model's probabilities
    are served unchanged until labels say otherwise (the authors' code starts at
    ``(0, 0)``, a first forecast of 0.5). ``on_drift`` resets the curvature to ``A_0``
    and keeps ``(a, b)``, so the next steps are as large as the first ones.

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). E. Hazan, A. Agarwal and S. Kale, "Logarithmic regret algorithms
    for online convex optimization", Machine Learning 69, 2007 (Online Newton Step).
    """

    _identity = (1.0, 0.0)

    def __init__(self, discount: float = 0.9999, exp_concavity: float = 0.1,
                 initial_curvature: float = 100.0, radius: float = 100.0) -> None:
        super().__init__(discount, exp_concavity, initial_curvature, radius)

    @property
    def coefficients_(self) -> tuple[float, float]:
        """``(a, b)`` of ``q = sigmoid(a * logit(f) + b)``."""
        a, b = self._newton.theta
        return a, b

    # -- per-event work (see _BinaryNewtonCalibrator) ---------------------------------
    def _probability(self, f: float) -> float:
        a, b = self._newton.theta
        return sigmoid(a * math.log(f / (1.0 - f)) + b)

    def _probability_rows(self, f: np.ndarray) -> np.ndarray:
        a, b = self._newton.theta
        score = np.clip(a * np.log(f / (1.0 - f)) + b, -SIGMOID_ARGUMENT_LIMIT,
                        SIGMOID_ARGUMENT_LIMIT)
        return 1.0 / (1.0 + np.exp(-score))

    def _learn_scores(self, scores: list[float], labels: list[int],
                      collect: bool) -> list[float] | None:
        # ONS on theta = (a, b) with features (x, 1), x = logit f, written out in floats:
        # gradient g = (q - y) (x, 1); A (entries k00, k01, k11) <- discount A + add I
        # + g g^T; theta <- theta - adj(A) g / (det A * beta): OnlineNewtonStep.step for d = 2.
        newton = self._newton
        a, b = newton.theta
        k00, k01, _, k11 = newton.curvature
        keep, add, beta = newton.discount, newton.identity_scale, newton.exp_concavity
        limit = SIGMOID_ARGUMENT_LIMIT
        radius = self.radius
        squared_radius = radius * radius
        log, exp = math.log, math.exp
        served: list[float] = []
        for f, y in zip(scores, labels, strict=True):
            x = log(f / (1.0 - f))
            z = a * x + b
            if z > limit:
                z = limit
            elif z < -limit:
                z = -limit
            q = 1.0 / (1.0 + exp(-z))
            if collect:
                served.append(q)
            r = q - y           # gradient (r x, r)
            g = r * x
            k00 = keep * k00 + add + g * g
            k01 = keep * k01 + g * r
            k11 = keep * k11 + add + r * r
            scale = 1.0 / (beta * (k00 * k11 - k01 * k01))
            a -= (k11 * g - k01 * r) * scale
            b -= (k00 * r - k01 * g) * scale
            if a * a + b * b > squared_radius:
                a, b = _project_onto_ball([a, b], [k00, k01, k01, k11], 2, radius)
        newton.theta = [a, b]
        newton.curvature = [k00, k01, k01, k11]
        return served if collect else None
