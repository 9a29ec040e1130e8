"""Reference (oracle) implementation: the pure-Python/numpy calibeating that production ran
before the native core (issue 11). Kept only for the differential tests in
``tests/adapters/test_native_calibration.py``; not an ``Adapter`` (so it does not
register under the production name). Same verbs, same state layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights.adapters.base import rng_from_state, rng_state
from streamweights.adapters.validation import (
    check_class_label,
    check_class_labels,
    check_count,
    check_probability_vector,
)
from tests.reference.newton import _BinaryNewtonCalibrator, clip_probability

_MODES = ("tracking", "hedging")


class Calibeating:
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

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). D. P. Foster, "A proof of calibration via Blackwell's
    approachability theorem", Games and Economic Behavior 29, 1999 (the hedging
    forecaster). D. P. Foster and S. Hart, "'Calibeating': beating forecasters at their
    own game", 2023 (the idea and the name).
    """

    n_classes = 2

    def __init__(self, base: Any, mode: str = "tracking", n_bins: int = 10,
                 seed: int = 0) -> None:
        self.base = base
        if getattr(self.base, "n_classes", 2) != 2:
            raise ValueError(f"base: calibeating needs a binary base (n_classes=2), got "
                             f"n_classes={self.base.n_classes}")
        if mode not in _MODES:
            raise ValueError(f"mode: must be one of {', '.join(_MODES)}, got {mode!r}")
        self.mode = mode
        self.n_bins = check_count(n_bins, "n_bins", minimum=2)
        self.seed = check_count(seed, "seed", minimum=0)
        self._midpoints = [(index + 0.5) / self.n_bins for index in range(self.n_bins)]
        self._reset_records()
        self._random = np.random.default_rng(self.seed)
        self._uniform = float(self._random.random())

    def _reset_records(self) -> None:
        bins = self.n_bins
        if self.mode == "tracking":
            # per base bin: number of outcomes and number of ones
            self._counts = [0] * bins
            self._ones = [0] * bins
        else:
            # per base bin b, per output interval i: outcomes and ones when i was played
            self._counts = [[0] * bins for _ in range(bins)]
            self._ones = [[0] * bins for _ in range(bins)]

    # -- the forecasters --------------------------------------------------------------
    def _bin(self, q: float) -> int:
        return min(max(int(q * self.n_bins), 0), self.n_bins - 1)

    def _forecast(self, q: float) -> float:
        """Class-1 forecast for a base output ``q``, from the records; changes nothing."""
        base_bin = self._bin(q)
        if self.mode == "tracking":
            return ((self._ones[base_bin] + self._midpoints[base_bin])
                    / (self._counts[base_bin] + 1))
        return self._midpoints[self._hedged_interval(base_bin)]

    def _hedged_interval(self, base_bin: int) -> int:
        """Foster's choice of output interval in base bin ``base_bin`` (uses ``_uniform``).

        Interval ``i`` is [i/m, (i+1)/m]; its record is consistent when the mean outcome
        of the events it was played on lies inside it (an empty record counts as its
        midpoint, so as consistent). Exact integer comparisons: the mean ``k/n`` lies in
        the interval iff ``i*n <= k*m <= (i+1)*n``.
        """
        counts, ones, m = self._counts[base_bin], self._ones[base_bin], self.n_bins

        def consistent(i: int) -> bool:
            n, k = counts[i], ones[i]
            return n == 0 or i * n <= k * m <= (i + 1) * n

        if consistent(base_bin):
            return base_bin
        for i in range(m):
            if consistent(i):
                return i
        # No interval is consistent. Interval 0 cannot have its mean below it and the
        # last cannot have it above, so there is a first j whose mean is below it, and
        # j - 1 has its mean above it: hedge between the two.
        j = next(i for i in range(1, m) if ones[i] * m < i * counts[i])
        below = j / m - ones[j] / counts[j]              # d_j = L_j - mean_j > 0
        above = ones[j - 1] / counts[j - 1] - j / m      # e_{j-1} = mean_{j-1} - R_{j-1} > 0
        return j - 1 if self._uniform < below / (below + above) else j

    def _record(self, q: float, label: int) -> None:
        base_bin = self._bin(q)
        if self.mode == "tracking":
            self._counts[base_bin] += 1
            self._ones[base_bin] += label
            return
        interval = self._hedged_interval(base_bin)
        self._counts[base_bin][interval] += 1
        self._ones[base_bin][interval] += label
        self._uniform = float(self._random.random())

    def _record_batch(self, served: list[float], labels: np.ndarray) -> None:
        """``_record`` for each event in order (``labels``: 0/1 array). Tracking records
        are counts, which do not depend on the order, so they are added per bin at once."""
        if self.mode != "tracking":
            for q, label in zip(served, labels.tolist(), strict=True):
                self._record(q, label)
            return
        bins = self._bins(np.array(served))
        counts = np.bincount(bins, minlength=self.n_bins).tolist()
        ones = np.bincount(bins[labels.astype(bool)], minlength=self.n_bins).tolist()
        self._counts = [old + new for old, new in zip(self._counts, counts, strict=True)]
        self._ones = [old + new for old, new in zip(self._ones, ones, strict=True)]

    def _bins(self, q: np.ndarray) -> np.ndarray:
        """``_bin`` of each entry (``astype`` truncates towards zero, like ``int``)."""
        bins = (q * self.n_bins).astype(np.int64)
        np.maximum(bins, 0, out=bins)
        return np.minimum(bins, self.n_bins - 1, out=bins)

    # -- verbs ------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        forecast = self._forecast(self._base_probability(self.base.predict(x)))
        return np.array([1.0 - forecast, forecast])

    def predict_many(self, xs: Any) -> np.ndarray:
        if len(xs) == 0:
            return np.empty((0, 2))
        outputs = np.asarray(self.base.predict_many(xs), dtype=np.float64)
        if outputs.shape != (len(xs), 2):
            raise ValueError(f"base: outputs must be binary probability vectors (n, 2), got "
                             f"shape {outputs.shape}")
        q = outputs[:, 1].copy()
        # The base's batch output may differ from its per-event one in the last place
        # (numpy's logs against math's): harmless, except where that moves q across a bin
        # edge. Events that close to an edge take the per-event route, so each row equals
        # ``predict`` of its input.
        edges = q * self.n_bins
        for index in np.flatnonzero(np.abs(edges - np.rint(edges)) < 1e-9).tolist():
            q[index] = self._base_probability(self.base.predict(xs[index]))
        if self.mode == "tracking":  # each bin's forecast, as _forecast computes it
            table = [(ones + midpoint) / (count + 1) for ones, midpoint, count
                     in zip(self._ones, self._midpoints, self._counts, strict=True)]
            forecast = np.array(table)[self._bins(q)]
        else:
            forecast = np.array([self._forecast(value) for value in q.tolist()])
        out = np.empty((forecast.shape[0], 2))
        out[:, 0] = 1.0 - forecast
        out[:, 1] = forecast
        return out

    def learn(self, x: Any, y: Any) -> None:
        label = check_class_label(y, "y", 2)
        base = self.base
        if isinstance(base, _BinaryNewtonCalibrator):
            # the base's own loop on a batch of one: the same arithmetic as learn_many,
            # and the probability it returns is what base.predict(x) said
            f = clip_probability(check_probability_vector(x, "x", 2)[1])
            served = base._learn_scores([f], [label], True)
            self._record(served[0], label)
            return
        q = self._base_probability(base.predict(x))
        base.learn(x, label)
        self._record(q, label)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"ys: {len(xs)} inputs but {len(ys)} labels")
        label_array = check_class_labels(ys, "ys", 2)
        if len(xs) == 0:
            return
        labels = label_array.tolist()
        base = self.base
        if isinstance(base, _BinaryNewtonCalibrator):
            # Fast path: validate once, then the base's own loop, which also returns the
            # probability it served each event before learning from it.
            scores = base._score_array(xs, "xs").tolist()
            self._record_batch(base._learn_scores(scores, labels, True), label_array)
            return
        base.predict_many(xs)  # validates every input before anything changes
        for x, label in zip(xs, labels, strict=True):
            q = self._base_probability(base.predict(x))
            base.learn(x, label)
            self._record(q, label)

    def observe(self, x: Any) -> None:
        self.base.observe(x)

    def on_drift(self) -> None:
        """Pass the alarm to the base and start the bin records afresh."""
        self.base.on_drift()
        self._reset_records()

    @staticmethod
    def _base_probability(output: Any) -> float:
        output = np.asarray(output)
        if output.shape != (2,):
            raise ValueError(f"base: output must be a binary probability vector (2,), got "
                             f"shape {output.shape}")
        return float(output[1])

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"base": self.base.get_config(), "mode": self.mode, "n_bins": self.n_bins,
                "seed": self.seed}

    def _get_state(self) -> dict[str, Any]:
        return {"base": self.base._get_state(),
                "counts": np.array(self._counts, dtype=np.int64),
                "ones": np.array(self._ones, dtype=np.int64),
                "random": rng_state(self._random), "uniform": self._uniform}

    def _set_state(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.int64)
        ones = np.asarray(state["ones"], dtype=np.int64)
        expected = (self.n_bins,) if self.mode == "tracking" else (self.n_bins, self.n_bins)
        if counts.shape != expected or ones.shape != expected:
            raise ValueError(f"state: bin records of shape {expected} expected, got "
                             f"{counts.shape} and {ones.shape}")
        self.base._set_state(state["base"])
        self._counts = counts.tolist()
        self._ones = ones.tolist()
        self._random = rng_from_state(state["random"])
        self._uniform = float(state["uniform"])
