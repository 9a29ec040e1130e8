"""Online Newton Step (ONS) for the few parameters of a calibration map.

The calibrators of this package fit 1 to a handful of parameters by online logistic
(or softmax) regression. Gupta & Ramdas (2023) do it with Online Newton Step: keep the
sum ``A`` of the outer products of the gradients (a running curvature estimate) and step
``theta <- theta - A^{-1} g / beta``. Logarithmic regret, no learning rate to tune.

Everything runs on Python floats in flat row-major lists: for two or three parameters
that is several times faster than numpy's per-call overhead. The generalised projection
onto the ball ``||theta|| <= radius`` is rare and uses numpy.

Two things are ours, not the paper's (see :class:`OnlineNewtonStep`): ``discount``
(forget old curvature so the step does not shrink for ever) and :meth:`reset_curvature`
(what a drift alarm does). :class:`_BinaryNewtonCalibrator` is the common body of the two
binary calibrators (Platt and beta scaling), which differ only in their features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    check_class_label,
    check_in_range,
    check_positive,
    check_probabilities,
    check_probability_rows,
)

#: Scores are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] before a logit or a log
#: (authors' code: 1e-5).
PROBABILITY_CLIP = 1e-5
#: The sigmoid's argument is clipped to +-100 (authors' code); exp(100) is far from overflow.
SIGMOID_ARGUMENT_LIMIT = 100.0

#: Bisection steps of the projection's multiplier: each halves the bracket, and 200
#: halvings take any float64 bracket to adjacent floats.
_PROJECTION_BISECTIONS = 200


def check_newton_settings(exp_concavity: float, initial_curvature: float,
                          radius: float | None, discount: float) -> None:
    """Validate the ONS hyper-parameters (raises ``ValueError`` naming the field)."""
    check_positive(exp_concavity, "exp_concavity")
    check_positive(initial_curvature, "initial_curvature")
    if radius is not None:
        check_positive(radius, "radius")
    check_in_range(discount, "discount", 0.0, 1.0, high_open=False)


class OnlineNewtonStep:
    """ONS state ``(theta, A, A^{-1})`` for a parameter vector of dimension ``d``.

    Per gradient ``g`` (Gupta & Ramdas 2023, Algorithm 1 as in the authors' code)::

        A      <- A + g g^T              (A^{-1} by Sherman-Morrison)
        theta  <- theta - A^{-1} g / exp_concavity
        theta  <- argmin_{||x|| <= radius} (x - theta)^T A (x - theta)   if ||theta|| > radius

    ``discount < 1`` [ours] first moves ``A`` towards its start,
    ``A <- discount * A + (1 - discount) * A_0``, before adding ``g g^T``: old curvature
    fades with a memory of about ``1 / (1 - discount)`` events, so the step settles at a
    constant size instead of shrinking like ``1/t`` and the map keeps tracking drift.
    Fading towards ``A_0`` rather than towards zero keeps ``A >= A_0``, so ``A^{-1}``
    stays bounded even when the gradients span fewer than ``d`` directions for a long
    time (a paused or constant-score model). ``discount = 1`` is the paper's algorithm.
    """

    __slots__ = ("_identity_scale", "curvature", "dimension", "discount", "exp_concavity",
                 "initial_curvature", "inverse", "radius", "theta")

    def __init__(self, start: Sequence[float], initial_curvature: float, exp_concavity: float,
                 radius: float | None, discount: float) -> None:
        self.dimension = len(start)
        self.theta = [float(v) for v in start]
        self.initial_curvature = float(initial_curvature)
        self.exp_concavity = float(exp_concavity)
        self.radius = None if radius is None else float(radius)
        self.discount = float(discount)
        self._identity_scale = (1.0 - self.discount) * self.initial_curvature
        self.curvature: list[float] = []
        self.inverse: list[float] = []
        self.reset_curvature()

    def reset_curvature(self) -> None:
        """``A <- A_0``, keeping ``theta``: the next steps are as large as the first ones."""
        d = self.dimension
        diagonal = range(0, d * d, d + 1)
        self.curvature = [0.0] * (d * d)
        self.inverse = [0.0] * (d * d)
        for index in diagonal:
            self.curvature[index] = self.initial_curvature
            self.inverse[index] = 1.0 / self.initial_curvature

    def step(self, gradient: Sequence[float]) -> None:
        """One ONS update with the loss gradient at the current ``theta``."""
        d = self.dimension
        curvature = self.curvature
        if self.discount < 1.0:
            keep, add = self.discount, self._identity_scale
            for index in range(d * d):
                curvature[index] *= keep
            for index in range(0, d * d, d + 1):
                curvature[index] += add
            inverse = _invert_positive_definite(curvature, d)
        else:
            inverse = self.inverse
        # Sherman-Morrison: with v = A^{-1} g, (A + g g^T)^{-1} = A^{-1} - v v^T / (1 + g.v),
        # and the new inverse applied to g is v / (1 + g.v).
        v = [sum(inverse[row * d + col] * gradient[col] for col in range(d)) for row in range(d)]
        denominator = 1.0 + sum(g * vi for g, vi in zip(gradient, v, strict=True))
        for row in range(d):
            g_row = gradient[row]
            v_row = v[row] / denominator
            base = row * d
            for col in range(d):
                curvature[base + col] += g_row * gradient[col]
                inverse[base + col] -= v_row * v[col]
        self.inverse = inverse
        scale = 1.0 / (self.exp_concavity * denominator)
        theta = self.theta
        for row in range(d):
            theta[row] -= scale * v[row]
        if self.radius is not None and sum(t * t for t in theta) > self.radius * self.radius:
            self.theta = _project_onto_ball(theta, curvature, d, self.radius)

    def get_state(self) -> dict[str, Any]:
        d = self.dimension
        return {"theta": np.array(self.theta),
                "curvature": np.array(self.curvature).reshape(d, d),
                "inverse": np.array(self.inverse).reshape(d, d)}

    def set_state(self, state: dict[str, Any]) -> None:
        d = self.dimension
        theta = np.asarray(state["theta"], dtype=np.float64)
        curvature = np.asarray(state["curvature"], dtype=np.float64)
        inverse = np.asarray(state["inverse"], dtype=np.float64)
        if theta.shape != (d,) or curvature.shape != (d, d) or inverse.shape != (d, d):
            raise ValueError(f"state: ONS arrays of dimension {d} expected, got shapes "
                             f"{theta.shape}, {curvature.shape}, {inverse.shape}")
        self.theta = theta.tolist()
        self.curvature = curvature.ravel().tolist()
        self.inverse = inverse.ravel().tolist()


def _invert_positive_definite(matrix: list[float], d: int) -> list[float]:
    """Inverse of a small symmetric positive definite matrix (flat, row-major).

    Closed forms up to 3x3; beyond, Gauss-Jordan elimination without pivoting (stable
    for such matrices). The result is exactly symmetric, so the Sherman-Morrison updates
    keep it so.
    """
    if d == 1:
        return [1.0 / matrix[0]]
    if d == 2:
        a, b, c = matrix[0], matrix[1], matrix[3]
        determinant = a * c - b * b
        off = -b / determinant
        return [c / determinant, off, off, a / determinant]
    if d == 3:  # adjugate of [[a, b, c], [b, e, f], [c, f, i]] over the determinant
        a, b, c, e, f, i = matrix[0], matrix[1], matrix[2], matrix[4], matrix[5], matrix[8]
        m00, m01, m02 = e * i - f * f, c * f - b * i, b * f - c * e
        m11, m12, m22 = a * i - c * c, b * c - a * f, a * e - b * b
        scale = 1.0 / (a * m00 + b * m01 + c * m02)
        m01, m02, m12 = m01 * scale, m02 * scale, m12 * scale
        return [m00 * scale, m01, m02, m01, m11 * scale, m12, m02, m12, m22 * scale]
    work = [matrix[row * d:(row + 1) * d] + [1.0 if col == row else 0.0 for col in range(d)]
            for row in range(d)]
    for pivot in range(d):
        pivot_row = work[pivot]
        factor = 1.0 / pivot_row[pivot]
        for col in range(2 * d):
            pivot_row[col] *= factor
        for row in range(d):
            if row != pivot:
                target = work[row]
                ratio = target[pivot]
                if ratio != 0.0:
                    for col in range(2 * d):
                        target[col] -= ratio * pivot_row[col]
    inverse = [work[row][d + col] for row in range(d) for col in range(d)]
    for row in range(d):
        for col in range(row + 1, d):
            mean = 0.5 * (inverse[row * d + col] + inverse[col * d + row])
            inverse[row * d + col] = inverse[col * d + row] = mean
    return inverse


def _project_onto_ball(theta: list[float], curvature: list[float], d: int,
                       radius: float) -> list[float]:
    """``argmin_{||x|| <= radius} (x - theta)^T A (x - theta)``, exactly.

    The minimiser is ``x(lam) = (A + lam I)^{-1} A theta`` with the multiplier ``lam >= 0``
    at which ``||x(lam)|| = radius``; ``||x(lam)||`` decreases in ``lam``, so bisection
    finds it. In A's eigenbasis (``A = Q diag(w) Q^T``, ``c = Q^T A theta``) the norm is
    ``||c / (w + lam)||``. The feasible end of the bracket is returned.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(np.array(curvature).reshape(d, d))
    pulled = eigenvectors.T @ (np.array(curvature).reshape(d, d) @ np.array(theta))
    low, high = 0.0, float(np.linalg.norm(pulled)) / radius
    for _ in range(_PROJECTION_BISECTIONS):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if float(np.linalg.norm(pulled / (eigenvalues + middle))) > radius:
            low = middle
        else:
            high = middle
    projected = eigenvectors @ (pulled / (eigenvalues + high))
    return [float(v) for v in projected]


class _BinaryNewtonCalibrator(Adapter):
    """``q = sigmoid(theta . features(f))`` fitted by ONS; ``f`` is the class-1 probability.

    Subclasses give the features of one score (``_features``, Python floats) and of a
    batch (``_feature_rows``, numpy) and the identity map ``_identity``.
    """

    n_classes = 2
    _identity: tuple[float, ...] = ()

    def __init__(self, discount: float, exp_concavity: float, initial_curvature: float,
                 radius: float) -> None:
        check_newton_settings(exp_concavity, initial_curvature, radius, discount)
        self.discount = float(discount)
        self.exp_concavity = float(exp_concavity)
        self.initial_curvature = float(initial_curvature)
        self.radius = float(radius)
        self._newton = OnlineNewtonStep(self._identity, initial_curvature, exp_concavity,
                                        radius, discount)

    @staticmethod
    def _features(f: float) -> tuple[float, ...]:
        raise NotImplementedError

    @staticmethod
    def _feature_rows(f: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        q = self._probability(float(check_probabilities(x, "x", 2)[1]))
        return np.array([1.0 - q, q])

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, 2))
        p = check_probability_rows(xs, "xs", -1, 2)
        score = self._feature_rows(np.clip(p[:, 1], PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP))
        score = score @ np.array(self._newton.theta)
        score = np.clip(score, -SIGMOID_ARGUMENT_LIMIT, SIGMOID_ARGUMENT_LIMIT)
        q = 1.0 / (1.0 + np.exp(-score))
        return np.stack([1.0 - q, q], axis=1)

    def learn(self, x: Any, y: Any) -> None:
        p = check_probabilities(x, "x", 2)
        label = check_class_label(y, "y", 2)
        self._learn_one(float(p[1]), label)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        p = check_probability_rows(xs, "xs", -1, 2)
        labels = [check_class_label(y, f"ys[{i}]", 2) for i, y in enumerate(ys)]
        for f, label in zip(p[:, 1].tolist(), labels, strict=True):
            self._learn_one(f, label)

    def on_drift(self) -> None:
        """Reset the curvature to ``A_0``, keeping the map: the next steps are large again."""
        self._newton.reset_curvature()

    # -- unchecked per-event work, shared by the single and batch paths (and Calibeating)
    def _probability(self, f: float) -> float:
        """Calibrated class-1 probability of a (validated) class-1 score ``f``."""
        features = self._features(f)
        return sigmoid(sum(t * u for t, u in zip(self._newton.theta, features, strict=True)))

    def _learn_one(self, f: float, label: int) -> None:
        features = self._features(f)
        newton = self._newton
        residual = sigmoid(sum(t * u for t, u in zip(newton.theta, features, strict=True)))
        residual -= label
        newton.step([residual * u for u in features])

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"discount": self.discount, "exp_concavity": self.exp_concavity,
                "initial_curvature": self.initial_curvature, "radius": self.radius}

    def _get_state(self) -> dict[str, Any]:
        return self._newton.get_state()

    def _set_state(self, state: dict[str, Any]) -> None:
        self._newton.set_state(state)


def clip_probability(f: float) -> float:
    """``f`` clipped to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]``."""
    return min(max(f, PROBABILITY_CLIP), 1.0 - PROBABILITY_CLIP)


def sigmoid(score: float) -> float:
    """Logistic function of a score clipped to ``+-SIGMOID_ARGUMENT_LIMIT``."""
    score = min(max(score, -SIGMOID_ARGUMENT_LIMIT), SIGMOID_ARGUMENT_LIMIT)
    return 1.0 / (1.0 + math.exp(-score))
