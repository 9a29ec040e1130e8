"""Label-free performance estimation: how well is the model doing *now*, before the
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
The windows and their arithmetic run in the native core (``EstimateCore``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.validation import (
    check_class_label,
    check_count,
    check_probability_vector,
)

#: As in ``streamweights.scoring``: a confident miss costs -ln(1e-6), not infinity.
PROBABILITY_FLOOR = 1e-6
#: The names of ``predict``'s six numbers, in order.
FIELDS = ("estimated_accuracy", "estimated_brier", "estimated_log_loss",
          "realised_accuracy", "realised_brier", "realised_log_loss")


def expected_scores(p: list[float]) -> tuple[float, float, float]:
    """Expected accuracy, Brier and log-loss of ``p`` if its label were drawn from ``p``."""
    return _native.expected_scores(p)


def realised_scores(p: list[float], y: int) -> tuple[float, float, float]:
    """Accuracy (top class is ``y``, first index on ties), Brier and log-loss of ``p``."""
    return _native.realised_scores(p, y)


#: A window is kept as this many blocks of running sums, not item by item: the state is
#: a few dozen numbers whatever the window, and a mean covers the last ``window`` to
#: ``window + window / BLOCKS`` items. Each block is ``[count, sum_0, sum_1, sum_2]``,
#: summed in arrival order; the oldest block is dropped once the others cover
#: ``window`` items (exact and deterministic: no running total that subtracts).
BLOCKS = 10


class ConfidenceEstimate(Adapter):
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

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, n_classes: int, window: int = 500) -> None:
        self.n_classes = check_count(n_classes, "n_classes", 2)
        self.window = check_count(window, "window", 1)
        self._core = _native.EstimateCore(self.window)

    def observe(self, x: Any) -> None:
        self.observe_trusted(check_probability_vector(x, "x", self.n_classes))

    def learn(self, x: Any, y: Any) -> None:
        p = check_probability_vector(x, "x", self.n_classes)
        self.learn_trusted(p, check_class_label(y, "y", self.n_classes))

    def observe_trusted(self, p: list[float]) -> None:
        """``observe`` for a caller that validated ``p`` (a list of floats) already."""
        self._core.observe(p)

    def learn_trusted(self, p: list[float], label: int) -> None:
        """``learn`` for a caller that validated ``p`` and ``label`` already."""
        self._core.learn(p, label)

    def predict(self, x: Any) -> np.ndarray:
        check_probability_vector(x, "x", self.n_classes)
        return np.array(self._core.means())

    def estimates(self) -> dict[str, float | None]:
        """The six numbers by name (``None`` for an empty window)."""
        return dict(zip(FIELDS, self.values(), strict=True))

    def values(self) -> list[float | None]:
        """The six numbers in ``FIELDS`` order (``None`` for an empty window)."""
        return [None if math.isnan(v) else v for v in self._core.means()]

    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "window": self.window}

    def _get_state(self) -> dict[str, Any]:
        expected, realised = self._core.blocks()
        return {"expected": expected, "realised": realised}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._core.load(_blocks(state["expected"]), _blocks(state["realised"]))


def _blocks(values: Any) -> Any:
    """A saved window's blocks as the core reads them: a ``(blocks, 4)`` float64 array
    as it is (the core copies it), anything else (lists of rows, from records written
    before the blocks were arrays) as floats."""
    if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 2:
        return values
    return [[float(v) for v in block] for block in values]
