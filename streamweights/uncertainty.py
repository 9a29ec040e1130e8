"""A stream's uncertainty layer: conformal sets or intervals on what it serves, their
coverage, and label-free performance estimates — for the adapted output and, beside it,
for each deployed model as shipped (the "raw vs adapted" comparison).

The pipeline calls ``serve`` for every accepted prediction (it returns the wire-form
sets or intervals of the adapted output and what must wait in the join with the
prediction) and ``learn`` when that prediction's label arrives (every layer learns on
the thresholds it served, every monitor records whether the served set covered the
label). Both run in the native core in one call per record (``UncertaintyCore``, which
holds the same layer, monitor and estimate objects as this class, so their
``state_dict`` sees every change); a restored stream serves the same sets, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import load_part
from streamweights.adapters.conformal import build_layer, level_key
from streamweights.adapters.performance_estimate import ConfidenceEstimate
from streamweights.coverage import CoverageMonitor


class StreamUncertainty:
    """Conformal layers and/or performance estimates of one stream.

    ``conformal`` and ``estimate`` are the stream's normalised config blocks (either may
    be ``None``); ``models`` the deployed models in configured order.
    """

    def __init__(self, conformal: dict[str, Any] | None, estimate: dict[str, Any] | None,
                 models: tuple[str, ...], n_classes: int | None) -> None:
        self.models = list(models)
        self.classification = n_classes is not None
        self.forecasters = ["adapted", *(f"raw:{m}" for m in self.models)]
        self.conformal = conformal
        self.layers = []
        self.monitors: list[CoverageMonitor] = []
        if conformal is not None:
            # the adapted output's layer, then (compare_raw) one per deployed model
            count = len(self.forecasters) if conformal.get("compare_raw", True) else 1
            self.layers = [build_layer(conformal, n_classes) for _ in range(count)]
            self.monitors = [CoverageMonitor(self.layers[0].alphas) for _ in range(count)]
        self.estimates: list[ConfidenceEstimate] = []
        if estimate is not None and n_classes is not None:
            self.estimates = [ConfidenceEstimate(n_classes, estimate["window"])
                              for _ in self.forecasters]
        #: Per-record constants: the wire keys of the levels, the shape of what is kept
        #: (every layer is built from one block: one row of thresholds each, one width).
        self._keys = [level_key(a) for a in self.layers[0].alphas] if self.layers else []
        self._kept_shape = (len(self.layers), self.layers[0]._core.served_len()) \
            if self.layers else (0, 0)
        self._core = _native.UncertaintyCore(
            self.classification, [layer._core for layer in self.layers],
            [monitor._core for monitor in self.monitors],
            [estimate._core for estimate in self.estimates])

    def _rows(self, served: Any, raw: np.ndarray) -> list[Any]:
        if self.classification:
            return [served.tolist(), *raw.tolist()]
        return [float(served), *(float(v) for v in raw)]

    def serve(self, served: Any, raw: np.ndarray,
              rows: list[Any] | None = None) -> tuple[dict[str, Any] | None, Any]:
        """For a prediction the chain served (``raw``: the models' rows): the adapted
        output's sets or intervals (``None`` without conformal) and the thresholds
        every layer served, to keep with the prediction (one row per layer). ``rows``:
        the same as plain lists (``[served, *raw]``), when the caller has them."""
        if rows is None:
            rows = self._rows(served, raw)
        if not self.layers:
            self._core.serve(rows)  # the estimates' expected scores
            return None, None
        kept = np.empty(self._kept_shape)  # the core writes the thresholds into it
        wire = self._core.serve_into(rows, kept)
        return dict(zip(self._keys, wire, strict=True)), kept

    def serve_flat(self, buffer: np.ndarray, raw: tuple[int, int],
                   width: int) -> tuple[dict[str, Any] | None, Any]:
        """``serve`` for a classification stream from the chain core's flat record of the
        prediction (``Chain.observe_predict_buffer``): the models' rows are
        ``buffer[raw[0]:raw[1]]``, ``width`` classes each, the adapted output the
        buffer's last ``width`` values. No lists of them are made."""
        if not self.layers:
            self._core.serve_flat(buffer, raw, width)
            return None, None
        kept = np.empty(self._kept_shape)
        wire = self._core.serve_flat(buffer, raw, width, kept)
        return dict(zip(self._keys, wire, strict=True)), kept

    def learn(self, kept: Any, served: Any, raw: np.ndarray, value: int | float,
              rows: list[Any] | None = None) -> None:
        """The label ``value`` of a prediction served as ``served`` from ``raw``; the
        chain validated the outputs and the pipeline the label: no second check.
        ``rows``: ``[served, *raw]`` as plain lists, when the caller has them."""
        self._core.learn(self.thresholds(kept),
                         self._rows(served, raw) if rows is None else rows, value)

    @staticmethod
    def thresholds(kept: Any) -> Any:
        """What ``serve`` kept with a prediction, as the core reads it back: the array as
        it is when it is C-ordered float64 (a snapshot may hold lists)."""
        if kept is None:
            return []
        if type(kept) is np.ndarray and kept.dtype == np.float64 and kept.flags.c_contiguous:
            return kept  # the core reads the array as it is, in C order
        return np.asarray(kept, dtype=np.float64).reshape(-1).tolist()

    @property
    def core(self) -> Any:
        """The native core that serves and learns (``UncertaintyCore``)."""
        return self._core

    def describe(self) -> dict[str, Any] | None:
        """For the weights record: the method and the adapted output's thresholds now."""
        if not self.layers:
            return None
        layer = self.layers[0]
        return {"method": self.conformal["method"], "score": layer.score,
                "thresholds": {level_key(a): None if math.isinf(q) else q
                               for a, q in zip(layer.alphas, layer.thresholds_, strict=True)}}

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.monitors:
            found["coverage"] = {name: monitor.summary() for name, monitor
                                 in zip(self.forecasters, self.monitors, strict=False)}
        if self.estimates:
            found["estimates"] = {name: estimate.estimates() for name, estimate
                                  in zip(self.forecasters, self.estimates, strict=True)}
        return found

    def state_dict(self) -> dict[str, Any]:
        return {"layers": [layer.state_dict() for layer in self.layers],
                "monitors": [monitor.state_dict() for monitor in self.monitors],
                "estimates": [estimate.state_dict() for estimate in self.estimates]}

    def load_state_dict(self, state: dict[str, Any], *, owned: bool = False) -> None:
        """Restore a state written by :meth:`state_dict`; ``owned``: the caller hands the
        tree over, so the layers take their parts without copying them first."""
        if (len(state["layers"]) != len(self.layers)
                or len(state["estimates"]) != len(self.estimates)):
            raise ValueError("snapshot: the stream's conformal / performance_estimate "
                             "blocks differ from the snapshot's; replay from the start or "
                             "restore with the config it was taken with")
        for layer, layer_state in zip(self.layers, state["layers"], strict=True):
            if owned:
                load_part(layer, layer_state)
            else:
                layer.load_state_dict(layer_state)
        for monitor, monitor_state in zip(self.monitors, state["monitors"], strict=True):
            monitor.load_state_dict(monitor_state)
        for estimate, estimate_state in zip(self.estimates, state["estimates"], strict=True):
            estimate.load_state_dict(estimate_state)
