"""What the three online conformal methods share: inputs, scores, the score window,
serving a set or interval per level, and learning on what was served.

A label arrives long after its prediction was served; by then the thresholds have
moved. Scoring the label against today's thresholds would grade a set nobody saw, and
the long-run coverage guarantee is about the sets that *were* served. So ``serve``
returns, with the output, the thresholds it used (``served``: a small float array), the
caller keeps them with the pending prediction (the pipeline's join does, as it keeps a
chain's stage inputs) and hands them to ``learn_served`` with the label. ``learn(x, y)``
uses the current thresholds: the label arrived at once.

The state and the per-label arithmetic live in the native core (``ConformalCore`` in
``native/src/conformal.rs``); these classes configure it, validate inputs at the edge
and keep the snapshot format.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.base import Adapter
from streamweights.adapters.conformal.scores import (
    CLASSIFICATION_SCORES,
    REGRESSION_SCORES,
    ScoreWindow,
    class_set,
    interval,
    ring_values,
    score,
)
from streamweights.adapters.validation import (
    as_finite_array,
    check_class_label,
    check_count,
    check_in_range,
    check_probability_vector,
)


class _ConformalLayer(Adapter):
    """Base of ``AdaptiveConformal``, ``ConformalPID`` and ``DtACI``.

    ``predict(x)`` gives, per level in ``alphas`` order, the set as a 0/1 row over the
    classes ``(L, C)`` or the interval ``(L, 2)`` (``±inf`` when unbounded); ``sets`` /
    ``intervals`` give the same as the wire contract writes them.
    """

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, alphas: list[float] | tuple[float, ...] = (0.1, 0.05),
                 n_classes: int | None = None, score: str | None = None,
                 window: int = 1000) -> None:
        if not isinstance(alphas, list | tuple) or not alphas:
            raise ValueError("alphas: expected a non-empty list of miscoverage levels, "
                             f"got {alphas!r}")
        self.alphas = [check_in_range(a, f"alphas[{i}]", 0.0, 1.0) for i, a in enumerate(alphas)]
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas: levels must be distinct, got {self.alphas}")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        self.classification = self.n_classes is not None
        allowed = CLASSIFICATION_SCORES if self.classification else REGRESSION_SCORES
        self.score = allowed[0] if score is None else score
        if self.score not in allowed:
            task = "classification" if self.classification else "regression"
            raise ValueError(f"score: must be one of {', '.join(allowed)} for {task}, got "
                             f"{score!r}")
        self.window = check_count(window, "window", 2)
        self._core: Any = None  # the method's ConformalCore, made by the subclass

    # -- the core's state, read-only views ------------------------------------------
    def _served_state(self) -> list[float]:
        """The thresholds a prediction served now is judged by when its label comes;
        the first ``L`` are the served score thresholds, one per level."""
        return self._core.served_state()

    @property
    def labels_(self) -> int:
        """Labels learned so far."""
        return self._core.labels

    @property
    def scores_(self) -> ScoreWindow:
        """A copy of the window of recent scores (``ring``, ``ordered``, ``head``)."""
        window = ScoreWindow(self.window)
        window.load({"ring": self._core.ring, "head": self._core.head})
        return window

    # -- inputs -----------------------------------------------------------------------
    def _input(self, x: Any) -> Any:
        if self.classification:
            return check_probability_vector(x, "x", self.n_classes)
        return float(as_finite_array(x, "x").reshape(-1)[0]) if np.size(x) == 1 else \
            _wrong_value(x)

    def _label(self, y: Any) -> Any:
        if self.classification:
            return check_class_label(y, "y", self.n_classes)
        return float(as_finite_array(y, "y").reshape(-1)[0]) if np.size(y) == 1 else \
            _wrong_value(y, "y")

    # -- serving ----------------------------------------------------------------------
    @property
    def thresholds_(self) -> list[float]:
        """The score threshold served now, per level."""
        return self._core.thresholds

    def predict(self, x: Any) -> np.ndarray:
        return self._output(self._input(x), self.thresholds_)

    def serve(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """``predict(x)`` and what to hand back to ``learn_served`` with the label."""
        value = self._input(x)
        served = self._served_state()
        return self._output(value, served[:len(self.alphas)]), np.array(served)

    def _output(self, value: Any, thresholds: list[float]) -> np.ndarray:
        if self.classification:
            rows = np.zeros((len(thresholds), self.n_classes))
            for row, q in enumerate(thresholds):
                rows[row, class_set(self.score, value, q)] = 1.0
            return rows
        return np.array([interval(value, q) for q in thresholds], dtype=np.float64)

    def sets(self, x: Any, thresholds: list[float] | None = None) -> dict[str, list[int]]:
        """``{"0.1": [class, ...], ...}``: the wire form of the prediction sets."""
        p = self._input(x)
        qs = self.thresholds_ if thresholds is None else thresholds
        return {level_key(a): class_set(self.score, p, q)
                for a, q in zip(self.alphas, qs, strict=True)}

    def intervals(self, x: Any, thresholds: list[float] | None = None
                  ) -> dict[str, list[float | None]]:
        """``{"0.1": [lo, hi], ...}``: the wire form of the intervals (``None`` for an
        unbounded end: JSON has no infinity)."""
        v = self._input(x)
        qs = self.thresholds_ if thresholds is None else thresholds
        found = {}
        for a, q in zip(self.alphas, qs, strict=True):
            lo, hi = interval(v, q)
            found[level_key(a)] = [None if math.isinf(lo) else lo,
                                   None if math.isinf(hi) else hi]
        return found

    # -- learning ---------------------------------------------------------------------
    def learn(self, x: Any, y: Any) -> None:
        self.learn_served(x, self._served_state(), y)

    def learn_served(self, x: Any, served: Any, y: Any) -> None:
        """The label ``y`` of a prediction ``x`` that was served with ``served``."""
        value = self._input(x)
        label = self._label(y)
        expected = self._core.served_len()
        given = np.asarray(served, dtype=np.float64).reshape(-1).tolist()
        if len(given) != expected:
            raise ValueError(f"served: expected {expected} thresholds, got {len(given)}")
        self.learn_scored(score(self.score, value, label), given)

    def learn_scored(self, value: float, served: list[float]) -> None:
        """``learn_served`` for a caller that validated its inputs and computed the
        label's score ``value`` itself (validation happens once, at the edge);
        ``served`` is the plain list ``serve`` returned."""
        self._core.learn_scored(value, served)

    @staticmethod
    def errors(value: float, thresholds: list[float]) -> list[int]:
        """1 where the score fell outside the set (``value > q``), per threshold."""
        return [1 if value > q else 0 for q in thresholds]

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"alphas": list(self.alphas), "n_classes": self.n_classes,
                "score": self.score, "window": self.window}

    def _base_state(self) -> dict[str, Any]:
        # the ring as an array: its bytes (base64) take about half the room of floats
        return {"scores": {"ring": self._core.ring_array(),
                           "head": self._core.head}, "labels": self._core.labels}

    def _get_state(self) -> dict[str, Any]:
        return {**self._base_state(), **self._core.method_state()}

    def _set_state(self, state: dict[str, Any]) -> None:
        """Window, label count and method state at once: a bad snapshot changes nothing."""
        scores = state["scores"]
        self._core.load(ring_values(scores["ring"]),
                        int(scores["head"]), int(state["labels"]), state)


def level_key(alpha: float) -> str:
    """How a level is written as a JSON key: ``repr`` of the float (``"0.1"``)."""
    return repr(float(alpha))


def _wrong_value(value: Any, name: str = "x") -> float:
    raise ValueError(f"{name}: expected one number (a regression prediction), got shape "
                     f"{np.shape(value)}")
