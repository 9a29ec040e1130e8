"""Online Newton Step (ONS) for the few parameters of a calibration map.

The calibrators of this package fit 1 to a handful of parameters by online logistic
(or softmax) regression. Gupta & Ramdas (2023) do it with Online Newton Step: keep the
sum ``A`` of the outer products of the gradients (a running curvature estimate) and step
``theta <- theta - A^{-1} g / beta``. Logarithmic regret, no learning rate to tune.

The state and the per-event arithmetic live in the native core
(``native/src/newton.rs`` and one file per calibrator); the classes here are thin
handles that validate their inputs once, at the edge, and keep the public API and the
snapshot layout (``theta``, ``curvature``, ``inverse``) of the numpy version, which lives
on as the test oracle in ``tests/reference/``.

Two things are ours, not the paper's: ``discount`` (old curvature fades towards ``A_0``
so the step does not shrink for ever) and ``on_drift`` resetting ``A`` to ``A_0``.
:class:`_BinaryNewtonCalibrator` is the common body of the two binary calibrators (Platt
and beta scaling), which differ only in their features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_in_range,
    check_positive,
    check_probability_vector,
    check_probability_vector_rows,
)

#: Scores are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] before a logit or a log
#: (authors' code: 1e-5); the core clips (``platt.rs``).
PROBABILITY_CLIP = 1e-5
#: The sigmoid's argument is clipped to +-100 (authors' code); exp(100) is far from overflow.
SIGMOID_ARGUMENT_LIMIT = 100.0

#: The generic ONS of the core (any dimension), for inspection and tests.
NewtonStep = _native.NewtonStep
#: ``argmin_{||x|| <= radius} (x - theta)^T A (x - theta)`` (``theta, A_flat, d, radius``).
project_onto_ball = _native.project_onto_ball


def check_newton_settings(exp_concavity: float, initial_curvature: float,
                          radius: float | None, discount: float) -> None:
    """Validate the ONS hyper-parameters (raises ``ValueError`` naming the field)."""
    check_positive(exp_concavity, "exp_concavity")
    check_positive(initial_curvature, "initial_curvature")
    if radius is not None:
        check_positive(radius, "radius")
    check_in_range(discount, "discount", 0.0, 1.0, high_open=False)


def newton_state(core: Any) -> dict[str, Any]:
    """A core's ONS state in the snapshot layout: ``theta (d,)``, ``curvature (d, d)``
    and the derived ``inverse (d, d)``."""
    theta, curvature, inverse = core.get_state()
    d = len(theta)
    return {"theta": np.array(theta), "curvature": np.array(curvature).reshape(d, d),
            "inverse": np.array(inverse).reshape(d, d)}


def load_newton_state(core: Any, state: dict[str, Any], d: int) -> None:
    """Load ``theta`` and ``A`` into a core; the stored ``inverse`` is derived, so only its
    shape is checked (the core recomputes it from ``A``)."""
    theta = np.asarray(state["theta"], dtype=np.float64)
    curvature = np.asarray(state["curvature"], dtype=np.float64)
    inverse = np.asarray(state["inverse"], dtype=np.float64)
    if theta.shape != (d,) or curvature.shape != (d, d) or inverse.shape != (d, d):
        raise ValueError(f"state: ONS arrays of dimension {d} expected, got shapes "
                         f"{theta.shape}, {curvature.shape}, {inverse.shape}")
    core.set_state(theta.tolist(), curvature.ravel().tolist())


class _BinaryNewtonCalibrator(Adapter):
    """``q = sigmoid(theta . features(f))`` fitted by ONS; ``f`` is the class-1 probability.

    A thin handle over a core class (``_core_type``: ``PlattCore`` or ``BetaCore``) with
    ``probability(f)``, ``probabilities(fs)``, ``learn(f, y)``, ``learn_many``,
    ``learn_served(fs, ys)`` / ``learn_served_one(f, y)`` (which also return the
    probability each event was served before its update; Calibeating records it),
    ``reset_curvature`` and ``get_state`` / ``set_state``. The core clips ``f``; the batch
    and per-event verbs run the same code, so they agree bit for bit. The per-event verbs
    first offer the raw input to the core (``predict_input`` / ``learn_input``), whose
    check clears the usual inputs (a numpy row or a list of floats, a plain ``int``
    label) with the arithmetic of ``check_probability_vector``; what it does not clear
    goes through the Python checks, which raise with the usual message or accept.
    """

    n_classes = 2
    _dimension = 0
    _core_type: Any = None

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, discount: float, exp_concavity: float, initial_curvature: float,
                 radius: float) -> None:
        check_newton_settings(exp_concavity, initial_curvature, radius, discount)
        self.discount = float(discount)
        self.exp_concavity = float(exp_concavity)
        self.initial_curvature = float(initial_curvature)
        self.radius = float(radius)
        self._core = self._core_type(self.discount, self.exp_concavity,
                                     self.initial_curvature, self.radius)

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        q = self._core.predict_input(x)  # the core clears the usual inputs itself
        if q is None:  # anything else: Python's checks, which raise or accept
            q = self._core.probability(check_probability_vector(x, "x", 2)[1])
        return binary_output(q)

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, 2))
        q = np.array(self._core.probabilities(self._score_array(xs, "xs").tolist()))
        out = np.empty((q.shape[0], 2))
        out[:, 0] = 1.0 - q
        out[:, 1] = q
        return out

    def learn(self, x: Any, y: Any) -> None:
        if not self._core.learn_input(x, y):
            f = check_probability_vector(x, "x", 2)[1]
            self._core.learn(f, check_class_label(y, "y", 2))

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        if len(xs) == 0:
            return
        scores = self._score_array(xs, "xs").tolist()
        labels = check_class_labels(ys, "ys", 2).tolist()
        self._core.learn_many(scores, labels)

    def on_drift(self) -> None:
        """Reset the curvature to ``A_0``, keeping the map: the next steps are large again."""
        self._core.reset_curvature()

    @staticmethod
    def _score_array(xs: Any, name: str) -> np.ndarray:
        """Validated, renormalised class-1 probabilities of a batch of rows:
        ``p_1 / (p_0 + p_1)`` per row, bit for bit what ``learn`` and ``predict`` take from
        ``check_probability_vector`` for each row (the core clips them)."""
        return check_probability_vector_rows(xs, name, 2)[:, 1]

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"discount": self.discount, "exp_concavity": self.exp_concavity,
                "initial_curvature": self.initial_curvature, "radius": self.radius}

    def _get_state(self) -> dict[str, Any]:
        return newton_state(self._core)

    def _set_state(self, state: dict[str, Any]) -> None:
        load_newton_state(self._core, state, self._dimension)


#: ``[1 - q, q]`` as a new float64 array, made by the core (a Python function filling
#: ``numpy.empty(2)`` cost about three times as much per event).
binary_output = _native.binary_output


def clip_probability(f: float) -> float:
    """``f`` clipped to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]``."""
    return min(max(f, PROBABILITY_CLIP), 1.0 - PROBABILITY_CLIP)
