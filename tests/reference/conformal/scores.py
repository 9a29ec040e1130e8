"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Nonconformity scores, the sets and intervals they define, and the window of recent
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

Everything here is plain per-event float arithmetic on Python floats (no numpy calls),
so it ports line for line to the native core.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

CLASSIFICATION_SCORES = ("probability", "aps")
REGRESSION_SCORES = ("absolute",)


def score(kind: str, x: Any, y: Any) -> float:
    """The nonconformity of label ``y`` for prediction ``x`` (probabilities or a value)."""
    if kind == "probability":
        return 1.0 - x[y]
    if kind == "aps":
        return _aps_mass(x, y)
    return abs(y - x)


def _aps_mass(p: list[float], y: int) -> float:
    """Mass of the classes ranked at or above ``y``: higher probability, or equal
    probability and a lower index; summed in class order (a fixed order of additions)."""
    target = p[y]
    total = 0.0
    for k, value in enumerate(p):
        if value > target or (value == target and k <= y):
            total += value
    return total


def class_set(kind: str, p: list[float], q: float) -> list[int]:
    """The classes whose score is at most ``q``, in class order."""
    if kind == "probability":
        return [k for k, value in enumerate(p) if 1.0 - value <= q]
    return [k for k in range(len(p)) if _aps_mass(p, k) <= q]


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
    n = len(ordered)
    rank = math.ceil(level * (n + 1))
    if rank > n:
        return math.inf
    if rank < 1:
        return -math.inf
    return ordered[rank - 1]


def covered_level(ordered: list[float], value: float) -> float:
    """``beta``: the largest miscoverage level whose quantile still covers ``value``,
    ``1 - #{scores < value} / (n + 1)`` (the supremum of ``a`` with
    ``value <= empirical_quantile(ordered, 1 - a)``)."""
    below = bisect.bisect_left(ordered, value)
    return 1.0 - below / (len(ordered) + 1)


class ScoreWindow:
    """The last ``size`` scores, in arrival order (a ring) and sorted (for quantiles).

    Insertion and eviction keep the sorted copy with a binary search and one list
    shift, O(size) per label at worst and no sort; the sorted copy is rebuilt from the
    ring on restore, so only the ring is state.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring: list[float] = []
        self.head = 0  # where the next score goes once the ring is full
        self.ordered: list[float] = []

    def push(self, value: float) -> None:
        if len(self.ring) < self.size:
            self.ring.append(value)
        else:
            oldest = self.ring[self.head]
            del self.ordered[bisect.bisect_left(self.ordered, oldest)]
            self.ring[self.head] = value
            self.head = (self.head + 1) % self.size
        bisect.insort(self.ordered, value)

    def spread(self) -> float:
        """Largest minus smallest score (0 with fewer than two)."""
        return self.ordered[-1] - self.ordered[0] if self.ordered else 0.0

    def state(self) -> dict[str, Any]:
        # an array: its bytes (base64) take about half the room of printed floats
        return {"ring": np.array(self.ring, dtype=np.float64), "head": self.head}

    def load(self, state: dict[str, Any]) -> None:
        self.ring = np.asarray(state["ring"], dtype=np.float64).tolist()
        self.head = int(state["head"])
        self.ordered = sorted(self.ring)
