"""Coverage bookkeeping of served prediction sets and intervals, per level.

For each miscoverage level the conformal layer serves at, count how often the label
fell inside the set served for it — over the whole run (long-run coverage, the
quantity the online methods guarantee) and over the last ``rolling`` labels (what a
dashboard and an alert watch) — and the mean size of what was served (classes in a set,
or interval width; unbounded intervals are counted apart, not averaged in). Integer
counts and a ring of 0/1 flags: exact, O(1) per event, a few numbers in a snapshot.
The counts live in the native core (``CoverageCore``).
"""

from __future__ import annotations

from typing import Any

from streamweights import _native

#: Labels in the rolling coverage window (the issue's "rolling 500").
ROLLING_LABELS = 500


class CoverageMonitor:
    """Coverage and size of one forecaster's served sets, per level (the counts live in
    the native core's ``CoverageCore``)."""

    def __init__(self, alphas: list[float], rolling: int = ROLLING_LABELS) -> None:
        self.alphas = list(alphas)
        self.rolling = rolling
        self._core = _native.CoverageCore(len(self.alphas), rolling)

    @property
    def labelled(self) -> int:
        """Labels recorded."""
        return self._core.counts()[0]

    @property
    def covered(self) -> list[int]:
        """Labels inside the set served for them, per level."""
        return self._core.counts()[1]

    @property
    def served(self) -> int:
        """Predictions served."""
        return self._core.counts()[2]

    def record_served(self, sizes: list[float]) -> None:
        """Sizes (class count or width, ``inf`` for unbounded) served, per level."""
        self._core.record_served(sizes)

    def record_label(self, covered: list[int]) -> None:
        """Whether the label fell inside the set served for it (1) or not (0), per level."""
        self._core.record_label(covered)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """``{"0.1": {"target", "coverage", "rolling_coverage", "mean_size", ...}}``."""
        from streamweights.adapters.conformal import level_key

        labelled, covered, served, size_sums, unbounded, ring, ring_covered = \
            self._core.counts()
        found: dict[str, dict[str, float | int | None]] = {}
        for i, alpha in enumerate(self.alphas):
            bounded = served - unbounded[i]
            found[level_key(alpha)] = {
                "target": 1.0 - alpha,
                "labels": labelled,
                "coverage": covered[i] / labelled if labelled else None,
                "rolling_coverage": ring_covered[i] / ring if ring else None,
                "mean_size": size_sums[i] / bounded if bounded else None,
                "unbounded": unbounded[i],
            }
        return found

    def state_dict(self) -> dict[str, Any]:
        return self._core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._core.load_state_dict(state)
