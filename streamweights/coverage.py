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

        counts = self._core.counts()
        labelled, unbounded = counts[0], counts[4]
        found: dict[str, dict[str, float | int | None]] = {}
        for i, (target, coverage, rolling, size) in enumerate(_levels(self.alphas, counts)):
            found[level_key(self.alphas[i])] = {
                "target": target, "labels": labelled, "coverage": coverage,
                "rolling_coverage": rolling, "mean_size": size, "unbounded": unbounded[i]}
        return found

    def levels(self) -> list[tuple[float, float | None, float | None, float | None]]:
        """Per level, in ``alphas`` order: target, coverage, rolling coverage and mean
        size (``None`` while not known): :meth:`summary`'s gauges without its dicts, for
        a weights version's metrics."""
        return _levels(self.alphas, self._core.counts())

    def state_dict(self) -> dict[str, Any]:
        return self._core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._core.load_state_dict(state)


def _levels(alphas: list[float], counts: tuple) -> list[
        tuple[float, float | None, float | None, float | None]]:
    """Target, coverage, rolling coverage and mean size per level from the core's
    ``counts()``; ``None`` where nothing is counted yet (no label, nothing bounded)."""
    labelled, covered, served, size_sums, unbounded, ring, ring_covered = counts
    found = []
    for i, alpha in enumerate(alphas):
        bounded = served - unbounded[i]
        found.append((1.0 - alpha, covered[i] / labelled if labelled else None,
                      ring_covered[i] / ring if ring else None,
                      size_sums[i] / bounded if bounded else None))
    return found
