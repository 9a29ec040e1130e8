"""Nonconformity scores, the sets and intervals they define, and the window of recent
scores the online methods take quantiles of.

A score says how badly a label fits a prediction; a prediction set at threshold ``q``
holds every label whose score is at most ``q``:

* ``"probability"`` (classification, default): ``s(p, y) = 1 - p_y``; the set is
  ``{k : 1 - p_k <= q}``, the classes with probability at least ``1 - q``. Smallest sets
  on average when ``p`` is calibrated (Sadinle, Lei & Wasserman 2019). The set may be
  empty (a threshold below ``1 - max p``): the long-run guarantees need that freedom, so
  it is served as it is, never padded.
* ``"aps"`` (classification): adaptive prediction sets (Romano, Sesia & Candès 2020),
  non-randomised: ``s(p, y)`` is the probability mass of the classes ranked at or above
  ``y`` (ranked by probability, ties by class index so the order is deterministic); the
  set is the top classes while their cumulative mass is at most ``q``.
* ``"absolute"`` (regression, the only one): ``s(yhat, y) = |y - yhat|``; the interval
  is ``[yhat - q, yhat + q]``.

The arithmetic runs in the native core (``native/src/conformal.rs``); these are its
Python faces for the layers' public verbs and the evaluation. The plain-Python version
is kept in ``tests/reference/conformal`` as the oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native

CLASSIFICATION_SCORES = ("probability", "aps")
REGRESSION_SCORES = ("absolute",)


def score(kind: str, x: Any, y: Any) -> float:
    """The nonconformity of label ``y`` for prediction ``x`` (probabilities or a value)."""
    return _native.nonconformity(kind, x, y)


def class_set(kind: str, p: list[float], q: float) -> list[int]:
    """The classes whose score is at most ``q``, in class order."""
    return _native.class_set(kind, p, q)


def interval(value: float, q: float) -> tuple[float, float]:
    """``[value - q, value + q]``; a negative threshold gives the degenerate interval
    ``[value, value]`` (nothing but an exact hit is covered), an infinite one
    ``(-inf, inf)``."""
    if q < 0.0:
        return value, value
    return value - q, value + q


def empirical_quantile(ordered: list[float], level: float) -> float:
    """The ``level`` quantile of the scores ``ordered`` (ascending) in the conformal
    sense: the ``ceil(level (n + 1))``-th smallest, ``+inf`` past the largest (too few
    scores to certify the level) and ``-inf`` for a level of 0 or less."""
    return _native.empirical_quantile(ordered, level)


def covered_level(ordered: list[float], value: float) -> float:
    """``beta``: the largest miscoverage level whose quantile still covers ``value``,
    ``1 - #{scores < value} / (n + 1)`` (the supremum of ``a`` with
    ``value <= empirical_quantile(ordered, 1 - a)``)."""
    return _native.covered_level(ordered, value)


class ScoreWindow:
    """The last ``size`` scores, in arrival order (a ring) and sorted (for quantiles).

    Insertion and eviction keep the sorted copy with a binary search and one shift, no
    sort; the sorted copy is rebuilt from the ring on restore, so only the ring is state.
    """

    def __init__(self, size: int, core: Any = None) -> None:
        self._core = _native.ScoreWindowCore(size) if core is None else core
        self.size = size

    @property
    def ring(self) -> list[float]:
        return self._core.ring

    @property
    def ordered(self) -> list[float]:
        return self._core.ordered

    @property
    def head(self) -> int:
        return self._core.head

    def push(self, value: float) -> None:
        self._core.push(float(value))

    def spread(self) -> float:
        """Largest minus smallest score (0 with fewer than two)."""
        return self._core.spread()

    def state(self) -> dict[str, Any]:
        # an array: its bytes (base64) take about half the room of printed floats
        return {"ring": self._core.ring_array(), "head": self.head}

    def load(self, state: dict[str, Any]) -> None:
        self._core.load(ring_values(state["ring"]), int(state["head"]))


def ring_values(ring: Any) -> Any:
    """A saved score ring as the core reads it: a one-dimensional float64 array (the core
    copies a contiguous one in one go; a list of 1,000 floats made from it cost ~10 µs a
    window at every restore), anything else as ``numpy.asarray(..., float64).tolist()``
    made it before (lists from older records, and shapes the core refuses)."""
    values = np.asarray(ring, dtype=np.float64)
    return values if values.ndim == 1 else values.tolist()
