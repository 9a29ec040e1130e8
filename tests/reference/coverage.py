"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Coverage bookkeeping of served prediction sets and intervals, per level.

For each miscoverage level the conformal layer serves at, count how often the label
fell inside the set served for it — over the whole run (long-run coverage, the
quantity the online methods guarantee) and over the last ``rolling`` labels (what a
dashboard and an alert watch) — and the mean size of what was served (classes in a set,
or interval width; unbounded intervals are counted apart, not averaged in). Integer
counts and a ring of 0/1 flags: exact, O(1) per event, a few numbers in a snapshot.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Labels in the rolling coverage window (the issue's "rolling 500").
ROLLING_LABELS = 500


class CoverageMonitor:
    """Coverage and size of one forecaster's served sets, per level."""

    def __init__(self, alphas: list[float], rolling: int = ROLLING_LABELS) -> None:
        self.alphas = list(alphas)
        self.rolling = rolling
        n = len(self.alphas)
        self.labelled = 0
        self.covered = [0] * n
        self.served = 0
        self.size_sums = [0.0] * n
        self.unbounded = [0] * n
        self.ring: list[list[int]] = []  # per label: covered flag per level
        self.head = 0
        self.ring_covered = [0] * n

    def record_served(self, sizes: list[float]) -> None:
        """Sizes (class count or width, ``inf`` for unbounded) served, per level."""
        self.served += 1
        for i, size in enumerate(sizes):
            if math.isinf(size):
                self.unbounded[i] += 1
            else:
                self.size_sums[i] += size

    def record_label(self, covered: list[int]) -> None:
        """Whether the label fell inside the set served for it (1) or not (0), per level."""
        self.labelled += 1
        for i, flag in enumerate(covered):
            self.covered[i] += flag
            self.ring_covered[i] += flag
        if len(self.ring) < self.rolling:
            self.ring.append(list(covered))
        else:
            for i, flag in enumerate(self.ring[self.head]):
                self.ring_covered[i] -= flag
            self.ring[self.head] = list(covered)
            self.head = (self.head + 1) % self.rolling

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """``{"0.1": {"target", "coverage", "rolling_coverage", "mean_size", ...}}``."""
        from tests.reference.conformal import level_key

        found: dict[str, dict[str, float | int | None]] = {}
        for i, alpha in enumerate(self.alphas):
            bounded = self.served - self.unbounded[i]
            found[level_key(alpha)] = {
                "target": 1.0 - alpha,
                "labels": self.labelled,
                "coverage": self.covered[i] / self.labelled if self.labelled else None,
                "rolling_coverage": (self.ring_covered[i] / len(self.ring)
                                     if self.ring else None),
                "mean_size": self.size_sums[i] / bounded if bounded else None,
                "unbounded": self.unbounded[i],
            }
        return found

    def state_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "covered": list(self.covered),
                "served": self.served, "size_sums": list(self.size_sums),
                "unbounded": list(self.unbounded),
                "ring": np.array(self.ring, dtype=np.uint8).reshape(len(self.ring),
                                                                   len(self.alphas)),
                "head": self.head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labelled = int(state["labelled"])
        self.covered = [int(v) for v in state["covered"]]
        self.served = int(state["served"])
        self.size_sums = [float(v) for v in state["size_sums"]]
        self.unbounded = [int(v) for v in state["unbounded"]]
        self.ring = [[int(v) for v in r] for r in state["ring"]]
        self.head = int(state["head"])
        self.ring_covered = [sum(r[i] for r in self.ring) for i in range(len(self.alphas))]
