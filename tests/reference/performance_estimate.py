"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Label-free performance estimation: how well is the model doing *now*, before the
labels come?

If served probabilities ``p`` are calibrated, the label of a prediction is distributed
as ``p`` itself, so its expected accuracy is ``max_k p_k``, its expected Brier score
``E_{y~p} sum_k (p_k - 1{k=y})^2 = 1 - sum_k p_k^2`` and its expected log-loss the
entropy ``-sum_k p_k log p_k`` — all computable the moment the prediction is served.
Averaged over the last ``window`` served predictions (to within a tenth: the window is
kept as ten blocks of sums) they estimate the current accuracy,
Brier and log-loss (confidence-based performance estimation, the idea behind NannyML's
CBPE, done online here). The realised values over the last ``window`` labels are kept
beside them: the estimate is only as good as calibration, and the gap between the two
is what to watch. Under covariate shift the model's confidence moves at once, while the
realised metrics wait for the label delay, so the estimate moves first.

``observe`` takes a served prediction, ``learn`` its label; ``predict`` returns
``[estimated accuracy, estimated Brier, estimated log-loss, realised accuracy,
realised Brier, realised log-loss]`` (NaN until there is something to average).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.validation import (
    check_class_label,
    check_count,
    check_probability_vector,
)
from tests.reference import Oracle

#: As in ``streamweights.scoring``: a confident miss costs -ln(1e-6), not infinity.
PROBABILITY_FLOOR = 1e-6
#: The names of ``predict``'s six numbers, in order.
FIELDS = ("estimated_accuracy", "estimated_brier", "estimated_log_loss",
          "realised_accuracy", "realised_brier", "realised_log_loss")


def expected_scores(p: list[float]) -> tuple[float, float, float]:
    """Expected accuracy, Brier and log-loss of ``p`` if its label were drawn from ``p``."""
    squares = 0.0
    entropy = 0.0
    for value in p:
        squares += value * value
        entropy -= value * math.log(max(value, PROBABILITY_FLOOR))
    return max(p), 1.0 - squares, entropy


def realised_scores(p: list[float], y: int) -> tuple[float, float, float]:
    """Accuracy (top class is ``y``, first index on ties), Brier and log-loss of ``p``."""
    squares = 0.0
    for value in p:
        squares += value * value
    hit = 1.0 if p.index(max(p)) == y else 0.0
    return hit, squares - 2.0 * p[y] + 1.0, -math.log(max(p[y], PROBABILITY_FLOOR))


#: A window is kept as this many blocks of running sums, not item by item: the state is
#: a few dozen numbers whatever the window, and a mean covers the last ``window`` to
#: ``window + window / BLOCKS`` items.
BLOCKS = 10


class _BlockWindow:
    """Sums of the last ``size``-odd triples, in blocks of ``ceil(size / BLOCKS)``.

    Each block is ``[count, sum_0, sum_1, sum_2]``, summed in arrival order; the oldest
    block is dropped once the others cover ``size`` items. Exact and deterministic (no
    running total that subtracts), and a restored window gives the same bits.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = -(-size // BLOCKS)
        self.blocks: list[list[float]] = []

    def push(self, item: tuple[float, float, float]) -> None:
        if not self.blocks or self.blocks[-1][0] >= self.block:
            self.blocks.append([0.0, 0.0, 0.0, 0.0])
        last = self.blocks[-1]
        last[0] += 1.0
        last[1] += item[0]
        last[2] += item[1]
        last[3] += item[2]
        while sum(b[0] for b in self.blocks) - self.blocks[0][0] >= self.size:
            del self.blocks[0]

    def means(self) -> list[float]:
        count = math.fsum(b[0] for b in self.blocks)
        if count == 0:
            return [math.nan] * 3
        return [math.fsum(b[j] for b in self.blocks) / count for j in (1, 2, 3)]

    def state(self) -> list[list[float]]:
        return [list(b) for b in self.blocks]

    def load(self, state: list[list[float]]) -> None:
        self.blocks = [[float(v) for v in b] for b in state]


class ConfidenceEstimate(Oracle):
    """Estimated (label-free) and realised accuracy, Brier and log-loss over a window.

    Parameters
    ----------
    n_classes
        Number of classes.
    window
        Served predictions (and labels) averaged over (default 500).

    Example
    -------
    >>> import numpy as np
    >>> estimate = ConfidenceEstimate(n_classes=2, window=1000)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(2000):
    ...     p1 = float(rng.uniform(0.05, 0.95))
    ...     estimate.observe([1 - p1, p1])
    ...     estimate.learn([1 - p1, p1], int(rng.random() < p1))
    >>> accuracy, _, _, realised, _, _ = estimate.predict([0.5, 0.5])
    >>> bool(abs(accuracy - realised) < 0.03)
    True

    References
    ----------
    NannyML, "Confidence-based performance estimation (CBPE)", documentation (2022);
    the calibration argument is Guo et al., "On calibration of modern neural networks",
    ICML 2017.
    """

    def __init__(self, n_classes: int, window: int = 500) -> None:
        self.n_classes = check_count(n_classes, "n_classes", 2)
        self.window = check_count(window, "window", 1)
        self.expected_ = _BlockWindow(self.window)
        self.realised_ = _BlockWindow(self.window)

    def observe(self, x: Any) -> None:
        self.observe_trusted(check_probability_vector(x, "x", self.n_classes))

    def learn(self, x: Any, y: Any) -> None:
        p = check_probability_vector(x, "x", self.n_classes)
        self.learn_trusted(p, check_class_label(y, "y", self.n_classes))

    def observe_trusted(self, p: list[float]) -> None:
        """``observe`` for a caller that validated ``p`` (a list of floats) already."""
        self.expected_.push(expected_scores(p))

    def learn_trusted(self, p: list[float], label: int) -> None:
        """``learn`` for a caller that validated ``p`` and ``label`` already."""
        self.realised_.push(realised_scores(p, label))

    def predict(self, x: Any) -> np.ndarray:
        check_probability_vector(x, "x", self.n_classes)
        return np.array(self.expected_.means() + self.realised_.means())

    def estimates(self) -> dict[str, float | None]:
        """The six numbers by name (``None`` for an empty window)."""
        values = self.expected_.means() + self.realised_.means()
        return {name: None if math.isnan(v) else v for name, v in zip(FIELDS, values,
                                                                       strict=True)}

    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "window": self.window}

    def _get_state(self) -> dict[str, Any]:
        return {"expected": self.expected_.state(), "realised": self.realised_.state()}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.expected_.load(state["expected"])
        self.realised_.load(state["realised"])
