"""Reference (oracle) implementation: the pure-Python/numpy Online Newton Step that production ran
before the native core (issue 11). Kept only for the differential tests in
``tests/adapters/test_native_calibration.py``; not an ``Adapter`` (so it does not
register under the production name). Same verbs, same state layout.

The calibrators of this package fit 1 to a handful of parameters by online logistic
(or softmax) regression. Gupta & Ramdas (2023) do it with Online Newton Step: keep the
sum ``A`` of the outer products of the gradients (a running curvature estimate) and step
``theta <- theta - A^{-1} g / beta``. Logarithmic regret, no learning rate to tune.

Everything per event runs on Python floats: for one to three parameters that is several
times faster than numpy's per-call overhead. :class:`OnlineNewtonStep` holds the state
(flat row-major lists) and has a generic :meth:`~OnlineNewtonStep.step` for any
dimension; the hot loops of the calibrators (``OnlinePlatt._learn_scores`` and the like)
write the same update out by hand for their dimension and hand the state back at the end
of a batch. The generalised projection onto the ball ``||theta|| <= radius`` is rare and
uses numpy.

Two things are ours, not the paper's (see :class:`OnlineNewtonStep`): ``discount``
(forget old curvature so the step does not shrink for ever) and :meth:`reset_curvature`
(what a drift alarm does). :class:`_BinaryNewtonCalibrator` is the common body of the two
binary calibrators (Platt and beta scaling), which differ only in their features.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_in_range,
    check_positive,
    check_probability_vector,
    check_probability_vector_rows,
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
    """ONS state ``(theta, A)`` for a parameter vector of dimension ``d``.

    Per gradient ``g`` (Gupta & Ramdas 2023, Algorithm 1 as in the authors' code)::

        A      <- A + g g^T
        theta  <- theta - A^{-1} g / exp_concavity
        theta  <- argmin_{||x|| <= radius} (x - theta)^T A (x - theta)   if ||theta|| > radius

    ``discount < 1`` [ours] first moves ``A`` towards its start,
    ``A <- discount * A + (1 - discount) * A_0``, before adding ``g g^T``: old curvature
    fades with a memory of about ``1 / (1 - discount)`` events, so the step settles at a
    constant size instead of shrinking like ``1/t`` and the map keeps tracking drift.
    Fading towards ``A_0`` rather than towards zero keeps ``A >= A_0``, so ``A^{-1}``
    stays bounded even when the gradients span fewer than ``d`` directions for a long
    time (a paused or constant-score model). ``discount = 1`` is the paper's algorithm.

    ``A^{-1} g`` is solved afresh from ``A`` at each step (closed forms up to 3x3, a
    Cholesky factorisation beyond) rather than carried by Sherman-Morrison: the discount
    re-weights ``A`` at every step anyway, and one code path serves both. ``A^{-1}`` is
    therefore not state; :attr:`inverse` computes it for inspection.
    """

    __slots__ = ("curvature", "dimension", "discount", "exp_concavity", "identity_scale",
                 "initial_curvature", "radius", "theta")

    def __init__(self, start: Sequence[float], initial_curvature: float, exp_concavity: float,
                 radius: float | None, discount: float) -> None:
        self.dimension = len(start)
        self.theta = [float(v) for v in start]
        self.initial_curvature = float(initial_curvature)
        self.exp_concavity = float(exp_concavity)
        self.radius = None if radius is None else float(radius)
        self.discount = float(discount)
        #: what the discount adds back on the diagonal, ``(1 - discount) * A_0``
        self.identity_scale = (1.0 - self.discount) * self.initial_curvature
        self.curvature: list[float] = []
        self.reset_curvature()

    @property
    def inverse(self) -> list[float]:
        """``A^{-1}``, flat row-major (derived from ``A``; not part of the update)."""
        return _invert_positive_definite(self.curvature, self.dimension)

    def reset_curvature(self) -> None:
        """``A <- A_0``, keeping ``theta``: the next steps are as large as the first ones."""
        d = self.dimension
        self.curvature = [0.0] * (d * d)
        for index in range(0, d * d, d + 1):
            self.curvature[index] = self.initial_curvature

    def step(self, gradient: Sequence[float]) -> None:
        """One ONS update with the loss gradient at the current ``theta``.

        Each entry of ``A`` becomes ``discount * A_ij (+ (1 - discount) A_0 on the
        diagonal) + g_i g_j``, evaluated in that order (the calibrators' hand-written
        loops use the same order).
        """
        d = self.dimension
        keep, add = self.discount, self.identity_scale
        curvature = self.curvature
        for row in range(d):
            g_row = gradient[row]
            start, diagonal = row * d, row * (d + 1)
            kept_diagonal = keep * curvature[diagonal] + add
            curvature[start:start + d] = [keep * entry + g_row * g for entry, g
                                          in zip(curvature[start:start + d], gradient, strict=True)]
            curvature[diagonal] = kept_diagonal + g_row * g_row
        direction = _solve_positive_definite(curvature, d, gradient)
        scale = 1.0 / self.exp_concavity
        theta = self.theta
        for row in range(d):
            theta[row] -= scale * direction[row]
        if self.radius is not None and sum(t * t for t in theta) > self.radius * self.radius:
            self.theta = _project_onto_ball(theta, curvature, d, self.radius)

    def get_state(self) -> dict[str, Any]:
        d = self.dimension
        return {"theta": np.array(self.theta),
                "curvature": np.array(self.curvature).reshape(d, d),
                "inverse": np.array(self.inverse).reshape(d, d)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Load ``theta`` and ``A``; the stored ``inverse`` is derived, so only its shape
        is checked (it is recomputed from ``A``)."""
        d = self.dimension
        theta = np.asarray(state["theta"], dtype=np.float64)
        curvature = np.asarray(state["curvature"], dtype=np.float64)
        inverse = np.asarray(state["inverse"], dtype=np.float64)
        if theta.shape != (d,) or curvature.shape != (d, d) or inverse.shape != (d, d):
            raise ValueError(f"state: ONS arrays of dimension {d} expected, got shapes "
                             f"{theta.shape}, {curvature.shape}, {inverse.shape}")
        self.theta = theta.tolist()
        self.curvature = curvature.ravel().tolist()


def _solve_positive_definite(matrix: list[float], d: int,
                             rhs: Sequence[float]) -> list[float]:
    """``matrix^{-1} rhs`` for a small symmetric positive definite matrix (flat).

    Adjugate over determinant up to 3x3 (the same formulas the calibrators' loops write
    out), Cholesky factorisation and two triangular solves beyond.
    """
    if d == 1:
        return [rhs[0] / matrix[0]]
    if d == 2:
        a, b, c = matrix[0], matrix[1], matrix[3]
        g0, g1 = rhs[0], rhs[1]
        scale = 1.0 / (a * c - b * b)
        return [(c * g0 - b * g1) * scale, (a * g1 - b * g0) * scale]
    if d == 3:
        a, b, c, e, f, i = matrix[0], matrix[1], matrix[2], matrix[4], matrix[5], matrix[8]
        m00, m01, m02 = e * i - f * f, c * f - b * i, b * f - c * e
        m11, m12, m22 = a * i - c * c, b * c - a * f, a * e - b * b
        g0, g1, g2 = rhs[0], rhs[1], rhs[2]
        scale = 1.0 / (a * m00 + b * m01 + c * m02)
        return [(m00 * g0 + m01 * g1 + m02 * g2) * scale,
                (m01 * g0 + m11 * g1 + m12 * g2) * scale,
                (m02 * g0 + m12 * g1 + m22 * g2) * scale]
    lower: list[list[float]] = []  # matrix = L L^T, L lower triangular (rows, ragged)
    for row in range(d):
        lower_row: list[float] = []
        for col in range(row):
            lower_col = lower[col]
            total = matrix[row * d + col] - sum(map(operator.mul, lower_row, lower_col))
            lower_row.append(total / lower_col[col])
        lower_row.append(math.sqrt(matrix[row * (d + 1)] - sum(map(operator.mul, lower_row,
                                                                     lower_row))))
        lower.append(lower_row)
    forward: list[float] = []  # L w = rhs
    for row in range(d):
        lower_row = lower[row]
        forward.append((rhs[row] - sum(map(operator.mul, lower_row, forward))) / lower_row[row])
    solution = [0.0] * d  # L^T x = w
    for row in range(d - 1, -1, -1):
        total = forward[row]
        for k in range(row + 1, d):
            total -= lower[k][row] * solution[k]
        solution[row] = total / lower[row][row]
    return solution


def _invert_positive_definite(matrix: list[float], d: int) -> list[float]:
    """Inverse of a small symmetric positive definite matrix (flat, row-major).

    Closed forms up to 3x3; beyond, Gauss-Jordan elimination without pivoting (stable
    for such matrices). The result is exactly symmetric.
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
        determinant = a * m00 + b * m01 + c * m02
        m01, m02, m12 = m01 / determinant, m02 / determinant, m12 / determinant
        return [m00 / determinant, m01, m02, m01, m11 / determinant, m12, m02, m12,
                m22 / determinant]
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


class _BinaryNewtonCalibrator:
    """``q = sigmoid(theta . features(f))`` fitted by ONS; ``f`` is the class-1 probability.

    Subclasses write the per-event work for their dimension, all on clipped scores
    ``f`` (``clip_probability``):

    * ``_probability(f)`` — the calibrated probability of one score (Python floats);
    * ``_probability_rows(f)`` — the same for an array of scores (numpy; equal to the
      former within a few units in the last place, the logs being numpy's);
    * ``_learn_scores(scores, labels, collect)`` — the ONS loop over a list of scores and
      0/1 labels. ``learn`` runs it on a batch of one and ``learn_many`` on the whole
      batch, so both do the same arithmetic; with ``collect`` it returns the probability
      of each event before its update, which is ``_probability(f)`` bit for bit
      (Calibeating records it).
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

    def _probability(self, f: float) -> float:
        raise NotImplementedError

    def _probability_rows(self, f: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _learn_scores(self, scores: list[float], labels: list[int],
                      collect: bool) -> list[float] | None:
        raise NotImplementedError

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        q = self._probability(clip_probability(check_probability_vector(x, "x", 2)[1]))
        return np.array([1.0 - q, q])

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, 2))
        q = self._probability_rows(self._score_array(xs, "xs"))
        out = np.empty((q.shape[0], 2))
        out[:, 0] = 1.0 - q
        out[:, 1] = q
        return out

    def learn(self, x: Any, y: Any) -> None:
        f = check_probability_vector(x, "x", 2)[1]
        label = check_class_label(y, "y", 2)
        self._learn_scores([clip_probability(f)], [label], False)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        scores = self._score_array(xs, "xs").tolist()
        labels = check_class_labels(ys, "ys", 2).tolist()
        self._learn_scores(scores, labels, False)

    def on_drift(self) -> None:
        """Reset the curvature to ``A_0``, keeping the map: the next steps are large again."""
        self._newton.reset_curvature()

    @staticmethod
    def _score_array(xs: Any, name: str) -> np.ndarray:
        """Validated, renormalised, clipped class-1 probabilities of a batch of rows.

        ``p_1 / (p_0 + p_1)`` per row, clipped: bit for bit what ``learn`` and ``predict``
        take from ``check_probability_vector`` and ``clip_probability`` for each row."""
        p = check_probability_vector_rows(xs, name, 2)
        return np.clip(p[:, 1], PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)

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
