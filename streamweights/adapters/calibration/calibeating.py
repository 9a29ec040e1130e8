"""Calibeating: make a binary calibrator's output calibrated per bin, whatever the outcomes.

A thin handle: validation here, the state and the per-event arithmetic in the native core
(``native/src/calibeating.rs``); the numpy version it replaced is the test oracle
(``tests/reference/calibeating.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import (
    Adapter,
    adapter_spec,
    build_adapter,
    load_part,
    rng_state,
    rng_state_checked,
)
from streamweights.adapters.calibration._newton import _BinaryNewtonCalibrator, binary_output
from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_count,
    check_probability_vector,
)

_MODES = ("tracking", "hedging")


class Calibeating(Adapter):
    """Re-forecast within each bin of a base calibrator's output (Gupta & Ramdas 2023).

    Online Platt or beta scaling is calibrated only as far as a 2- or 3-parameter map can
    be; when the distortion is of another shape, or the outcomes are adversarial, some of
    its output bins stay mis-calibrated. Calibeating keeps the base's ranking (which
    events share a bin) and replaces each bin's forecast by one that is calibrated on the
    events of that bin, so it "beats" the base by its own mis-calibration. ``n_bins``
    equal-width bins of the base's class-1 probability ``q``; input is whatever the base
    takes, output a probability vector ``(2,)``.

    * ``mode="tracking"`` (TOPS / TOBS): forecast the running mean of the past outcomes of
      events whose base output fell in the same bin. Each bin starts with one
      pseudo-observation at its midpoint (the authors' code uses ``right edge - 0.005``,
      algorithms.md §2.2), so an empty bin forecasts about what the base says.
    * ``mode="hedging"`` (HOPS / HOBS): in each base bin ``b`` runs Foster's (1999)
      randomized calibrated forecaster over ``n_bins`` output intervals of width
      ``1 / n_bins``: forecast the midpoint of an interval whose own record of outcomes
      agrees with it — interval ``b`` if it does, else the first that does — and when
      none does, randomize between two neighbouring intervals whose records err in
      opposite directions (algorithms.md §2.3). Calibrated against any outcome sequence;
      outputs are the midpoints ``0.05, 0.15, ..., 0.95`` (for 10 bins).

    Parameters
    ----------
    base
        The binary calibrator (an Adapter, or its spec ``{"adapter": ..., "config": ...}``)
        whose output is re-forecast, e.g. ``OnlinePlatt()``; any adapter whose output is
        a probability vector ``(2,)`` works. It learns on every label.
    mode
        ``"tracking"`` (default: keeps sharpness, deterministic) or ``"hedging"``.
    n_bins
        Bins of the base output (and, for hedging, output intervals per bin); ``10`` as in
        the paper.
    seed
        Seed of the hedging forecaster's random choices (unused when tracking). Use one
        that nothing else draws from: a simulation generating its stream from the same
        seed makes the "random" choices mirror the data.

    Randomness and purity (hedging): ``predict`` must not change state, yet it plays a
    random choice. The uniform number that decides the event's choice is drawn *ahead*,
    stored in the state, and replaced by the next draw of the seeded generator only in
    ``learn``. So repeated ``predict`` calls give the same answer, ``learn`` updates the
    interval that ``predict`` played for the same input (when no other label came in
    between), and a restored snapshot continues bit for bit.

    ``learn(x, y)`` computes the base's output on ``x`` *before* the base learns, updates
    the bin record with it, then teaches the base. ``on_drift`` passes the alarm to the
    base and clears the bin records [ours]: after a change the outcomes recorded per bin
    describe the old regime, and the fresh records start again from the base's forecast.

    Example
    -------
    A distortion that no monotone map can fix: tracking cuts the squared error of the
    served probability (against the true one) to less than half of Online Platt's:

    >>> import numpy as np
    >>> from streamweights.adapters import Calibeating, OnlinePlatt
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.uniform(0.0, 1.0, size=4000)
    >>> truth = 0.5 + 0.4 * np.sin(2 * np.pi * scores)
    >>> labels = rng.random(4000) < truth
    >>> calibrator = Calibeating(OnlinePlatt(), mode="tracking")
    >>> platt, tracked = [], []
    >>> for f, y in zip(scores, labels):
    ...     platt.append(calibrator.base.predict([1 - f, f])[1])
    ...     tracked.append(calibrator.predict([1 - f, f])[1])
    ...     calibrator.learn([1 - f, f], int(y))
    >>> def error(served):
    ...     return np.mean((np.array(served[-2000:]) - truth[-2000:]) ** 2)
    >>> bool(error(tracked) < error(platt) / 2)
    True

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). D. P. Foster, "A proof of calibration via Blackwell's
    approachability theorem", Games and Economic Behavior 29, 1999 (the hedging
    forecaster). D. P. Foster and S. Hart, "'Calibeating': beating forecasters at their
    own game", 2023 (the idea and the name).
    """

    n_classes = 2

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)
    fresh_config = True  # scalars and the base's spec, a fresh copy (Adapter.fresh_config)

    def __init__(self, base: Adapter | dict[str, Any], mode: str = "tracking",
                 n_bins: int = 10, seed: int = 0) -> None:
        if isinstance(base, Adapter):
            self.base = base
        elif isinstance(base, dict):
            try:
                self.base = build_adapter(base)
            except (TypeError, ValueError) as error:
                raise ValueError(f"base: {error}") from None
        else:
            raise ValueError(f"base: expected an Adapter or a spec dict, got "
                             f"{type(base).__name__}")
        if getattr(self.base, "n_classes", 2) != 2:
            raise ValueError(f"base: calibeating needs a binary base (n_classes=2), got "
                             f"n_classes={self.base.n_classes}")
        if mode not in _MODES:
            raise ValueError(f"mode: must be one of {', '.join(_MODES)}, got {mode!r}")
        self.mode = mode
        self.n_bins = check_count(n_bins, "n_bins", minimum=2)
        self.seed = check_count(seed, "seed", minimum=0, maximum=None)  # numpy seeds any size
        # The records and the hedging generator live in the core (calibeating.rs), which
        # draws from numpy's PCG64 stream: seeded here by numpy, continued there.
        generator = np.random.default_rng(self.seed)
        uniform = float(generator.random())
        random = rng_state(generator)
        self._rng_extra = (random["has_uint32"], random["uinteger"])
        self._core = _native.CalibeatingCore(self.mode == "hedging", self.n_bins,
                                             random["state"], random["inc"], uniform)

    def _native_base(self) -> bool:
        """Whether the base is a native ONS calibrator, whose core this one talks to
        directly (same numbers as its verbs, without the numpy round trips)."""
        return isinstance(self.base, _BinaryNewtonCalibrator)

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        if self._native_base():
            core = self.base._core
            q = core.predict_input(x)
            if q is None:
                q = core.probability(check_probability_vector(x, "x", 2)[1])
        else:
            q = self._base_probability(self.base.predict(x))
        return binary_output(self._core.forecast(q))

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, 2))
        if self._native_base():
            # the base core's batch is its per-event arithmetic, bit for bit
            q = self.base._core.probabilities(self.base._score_array(xs, "xs").tolist())
        else:
            q = self._generic_base_probabilities(xs)
        forecast = np.array(self._core.forecasts(q))
        out = np.empty((forecast.shape[0], 2))
        out[:, 0] = 1.0 - forecast
        out[:, 1] = forecast
        return out

    def _generic_base_probabilities(self, xs: Any) -> list[float]:
        outputs = np.asarray(self.base.predict_many(xs), dtype=np.float64)
        if outputs.shape != (len(xs), 2):
            raise ValueError(f"base: outputs must be binary probability vectors (n, 2), got "
                             f"shape {outputs.shape}")
        q = outputs[:, 1].copy()
        # A base's batch output may differ from its per-event one in the last place:
        # harmless, except where that moves q across a bin edge. Events that close to an
        # edge take the per-event route, so each row equals ``predict`` of its input.
        edges = q * self.n_bins
        for index in np.flatnonzero(np.abs(edges - np.rint(edges)) < 1e-9).tolist():
            q[index] = self._base_probability(self.base.predict(xs[index]))
        return q.tolist()

    def learn(self, x: Any, y: Any) -> None:
        base = self.base
        if self._native_base():
            # the base's core learns and says what it served x before learning (its
            # input check clears the usual inputs; Python checks the rest)
            q = base._core.learn_served_input(x, y)
            if q is not None:
                self._core.record(q, y)
                return
            label = check_class_label(y, "y", 2)
            f = check_probability_vector(x, "x", 2)[1]
            self._core.record(base._core.learn_served_one(f, label), label)
            return
        label = check_class_label(y, "y", 2)
        q = self._base_probability(base.predict(x))
        base.learn(x, label)
        self._core.record(q, label)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        label_array = check_class_labels(ys, "ys", 2)
        if len(xs) == 0:
            return
        labels = label_array.tolist()
        base = self.base
        if self._native_base():
            # validate once, then the base core's loop, which also returns the
            # probability it served each event before learning from it
            scores = base._score_array(xs, "xs").tolist()
            self._core.record_many(base._core.learn_served(scores, labels), labels)
            return
        base.predict_many(xs)  # validates every input before anything changes
        for x, label in zip(xs, labels, strict=True):
            q = self._base_probability(base.predict(x))
            base.learn(x, label)
            self._core.record(q, label)

    def observe(self, x: Any) -> None:
        self.base.observe(x)

    def on_drift(self) -> None:
        """Pass the alarm to the base and start the bin records afresh."""
        self.base.on_drift()
        self._core.reset()

    @staticmethod
    def _base_probability(output: Any) -> float:
        output = np.asarray(output)
        if output.shape != (2,):
            raise ValueError(f"base: output must be a binary probability vector (2,), got "
                             f"shape {output.shape}")
        return float(output[1])

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"base": adapter_spec(self.base), "mode": self.mode, "n_bins": self.n_bins,
                "seed": self.seed}

    def _get_state(self) -> dict[str, Any]:
        counts, ones, random_state, random_increment, uniform = self._core.get_state()
        shape = (self.n_bins,) if self.mode == "tracking" else (self.n_bins, self.n_bins)
        has_uint32, uinteger = self._rng_extra
        return {"base": self.base.state_dict(),
                "counts": np.array(counts, dtype=np.int64).reshape(shape),
                "ones": np.array(ones, dtype=np.int64).reshape(shape),
                "random": {"state": random_state, "inc": random_increment,
                           "has_uint32": has_uint32, "uinteger": uinteger},
                "uniform": uniform}

    def _set_state(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.int64)
        ones = np.asarray(state["ones"], dtype=np.int64)
        expected = (self.n_bins,) if self.mode == "tracking" else (self.n_bins, self.n_bins)
        if counts.shape != expected or ones.shape != expected:
            raise ValueError(f"state: bin records of shape {expected} expected, got "
                             f"{counts.shape} and {ones.shape}")
        random = rng_state_checked(state["random"])
        uniform = float(state["uniform"])
        load_part(self.base, state["base"], config_checked=True)  # in get_config's
        self._core.set_state(counts.ravel().tolist(), ones.ravel().tolist(), random["state"],
                             random["inc"], uniform)
        self._rng_extra = (random["has_uint32"], random["uinteger"])
