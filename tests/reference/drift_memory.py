"""The reference oracle for the native core's DriftMemory memory
(``native/src/drift_memory.rs``): the numpy version production ran before issue 11, kept
as it was (on the reference RiseEvidence). Not a product path.

A small class-balanced memory of recent, informative examples, with a drift detector.

Replay needs examples that are recent (the stream drifts), confident (uncertain ones are
often wrong) and spread over the classes (a class-correlated stream would otherwise fill
the memory with one class). RoTTA's category-balanced memory scores each item by age and
uncertainty and evicts the worst; a river drift detector on the loss stream (ADWIN or
Page-Hinkley) says when the concept changed, and the memory then drops what came before.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.validation import (
    as_finite_array,
    check_class_label,
    check_count,
    check_in_range,
    check_probability_batch,
    check_probability_vector,
)
from tests.reference import Oracle
from tests.reference.drift_evidence import RiseEvidence

#: Probabilities are clipped here before the log-loss (algorithms.md §7), so one confident
#: mistake costs at most ln(1e6) ≈ 13.8 and cannot dominate the detector's window.
_LOG_LOSS_CLIP = 1e-6

_DETECTORS = ("adwin", "page_hinkley")
_LOSSES = ("zero_one", "log")
_SIGNALS = ("loss", "entropy")

#: Page-Hinkley on *standardised* losses (unit variance): river's delta = 0.005 and
#: threshold = 50 assume raw values; in standard-deviation units a tolerance of half a
#: standard deviation (the CUSUM choice for detecting a one-sigma shift) keeps false
#: alarms away (none in 20 x 10,000 stationary Bernoulli(0.1) errors, against 6.7 per
#: 10,000 with delta = 0.005) and still fires within ~40-130 events on a 0.1 -> 0.4 rise.
_PAGE_HINKLEY_DEFAULTS = {"delta": 0.5, "threshold": 50.0}

#: Monitored values kept to locate a change point once a detector fires. Detection delays
#: for shifts worth reacting to are tens to a few hundred values (ADWIN at δ = 0.002 needs
#: ~40-100 for an error rate 0.1 -> 0.4), and the split needs as many values on the old
#: side, so 1,024 (8 KiB of state) covers them with room to spare.
_HISTORY = 1024

#: The detectors are the core's ports of river's (``native/src/adwin.rs``,
#: ``page_hinkley.rs``; tests/adapters/test_native_drift_river.py proves them identical to
#: river 0.26.1's) and keep river 0.26.1's state layout, so snapshots written while this
#: adapter held river's own detectors load, and their ``river_version`` field keeps
#: naming that layout. Snapshots written under other river versions are refused.
_RIVER_STATE_LAYOUT = "0.26.1"


class DriftMemory(Oracle):
    """Class-balanced memory scored by timeliness and uncertainty, plus a drift detector.

    As a chain stage it is a pass-through ``(C,) -> (C,)``: ``predict(p)`` returns ``p``
    (validated, renormalised). ``observe(p)`` offers ``p`` to the memory with pseudo-class
    argmax(p) and uncertainty H(p) (entropy, natural log). ``learn(p, y)`` feeds the loss
    of ``p`` at ``y`` to the detector and turns the stored pseudo-labelled copy of ``p``
    (found by its bytes) into a labelled item of class ``y``; when ``p`` is not in memory
    (never observed, rejected, or evicted since) it is offered again as a labelled item.
    A labelled item's uncertainty is 0: RoTTA's uncertainty term is there to push out
    items whose pseudo-label is likely wrong, and a true label cannot be. With labels,
    the memory therefore leans toward recent labelled examples. Outside a chain:
    ``add(item, label, uncertainty)`` stores any numpy array and ``update_loss(loss)``
    feeds the detector; replay reads ``items()``.

    **Memory** (RoTTA's CSTU memory, algorithms.md §4.2). Per-class quota
    ``capacity / C``; score H(age, u) = λ_t · 1/(1 + e^(−age/capacity)) + λ_u · u / ln C,
    a high score means old or uncertain, i.e. the first to go. A new item (age 0) of
    class c: if class c is below its quota it is accepted while the memory has room,
    else it replaces the highest-scoring item of the largest classes if that item scores
    higher than the newcomer; if class c is at its quota it replaces the highest-scoring
    item of class c on the same condition; otherwise it is rejected. After every offer —
    accepted or not — every stored item ages by one (the newcomer included, as in
    RoTTA's code; an event observed and then labelled can be offered twice).
    Deviations: the entropy is exact (RoTTA adds 1e-6 inside the log); ties go to the
    first item in storage order; when a label moves an item into a class
    already at its quota, that class's highest-scoring item is evicted (it may be the
    relabelled one). ``entropy_filter`` optionally admits only confident observations,
    as STAMP does (§4.3).

    **Detector** (§5.1, §5.2; river's ADWIN and Page-Hinkley, run by the core's ports,
    which raise the same alarms as river's on the same values — a test compares them).
    ``signal="loss"`` monitors
    the labelled loss — ``loss="zero_one"`` (default: bounded in [0, 1], what ADWIN's
    Hoeffding bound is made for, and insensitive to a single over-confident mistake) or
    ``loss="log"`` (clipped at ln 1e6; also sees calibration drift). ``signal="entropy"``
    monitors H(p)/ln C on every ``observe`` — for streams whose labels never come. ADWIN
    takes the values as they are (river's defaults: δ = 0.002, clock 32). Page-Hinkley
    takes them standardised by their running mean and standard deviation since its last
    alarm (it starts after ``standardise_warmup`` values that are not all equal), with
    δ = 0.5 and λ = 50 in standard-deviation units (river's δ = 0.005 gave 6.7 false
    alarms per 10,000 stationary events); override through ``detector_options``.

    **On a detection** the change point τ (a position in the monitored stream) is
    estimated and every item stored before the τ-th value arrived is evicted (§5.4's
    "age > len(W₁)", counted in monitored values rather than in adds, so it stays right
    when only some events get labels). τ is the most likely single change of mean (the
    CUSUM split) among the values that the detector still considers — ADWIN's window
    after its cut, or everything since Page-Hinkley's previous alarm — at most the last
    1,024. Deviation from §5.4: ADWIN's window alone is a loose bound (river's cut keeps
    the longest window consistent with one mean; measured widths 160-2,600 when the
    change was 39-103 values back); the split inside it landed within 25 values of the
    true change on 19 of 20 test streams (61 on the last).
    ``drift_count`` increments and ``last_drift_step`` records the position of the
    alarm in the monitored stream. ``on_drift()`` (an alarm broadcast by the pipeline)
    evicts items stored before the last change point this memory found itself: it is
    idempotent, so broadcasting this memory's own alarm back to it is harmless; an
    external alarm carries no change point and leaves the items to the age term, which
    replaces a whole memory within about two capacities of events (tests).

    **Evidence** (``drift_evidence.py``). A detector alarm is a *candidate*: it counts as
    a drift (``drift_count``, eviction, the pipeline's reaction) only once a one-sided
    sequential test on the same monitored values has evidence at significance
    ``significance`` that their mean rose by at least ``evidence_margin`` over its
    baseline (a Shiryaev-Roberts e-detector: under the null the mean time between its
    alarms is at least 1/α values, whatever the loss's distribution). The candidate waits
    for that evidence for up to 1,024 monitored values (``_HISTORY``), then lapses
    (``unconfirmed_count``); an alarm on a *falling* loss never confirms. Measured: 0/1
    error 0.1 -> 0.4 evidenced 17-95 values after the rise (ten seeds), one evidence
    alarm in 3 x 10^6 stationary 0/1 values at error rates 0.01, 0.1, 0.3. On
    confirmation the evidence starts afresh (a new concept, a new baseline: no
    confirmation for the next 700 values).

    **Snapshots of the detector keep river 0.26.1's layout**: ADWIN's window as the bytes
    river's ``AdaptiveWindowing.__getstate__`` writes and Page-Hinkley's six running sums
    as floats, tagged ``river_version = "0.26.1"`` (the layout, whichever river is
    installed), so snapshots written when this adapter ran river 0.26.1's detectors load
    unchanged. A snapshot from another river version is refused with a message saying so
    (replay from the snapshot's offsets instead). Nothing is unpickled, and the bytes are
    checked field by field, so a tampered snapshot is refused, never executed.

    Parameters
    ----------
    capacity
        Number of items kept (RoTTA: 64). Quotas are ``capacity / C``.
    n_classes
        Number of classes C (>= 2).
    detector
        ``"adwin"`` (default), ``"page_hinkley"`` or ``None`` (memory only).
    signal
        ``"loss"`` (default) or ``"entropy"``, see above. ``update_loss`` feeds the
        detector whatever this says.
    loss
        ``"zero_one"`` (default) or ``"log"``: what ``learn`` feeds when monitoring losses.
    detector_options
        Keyword arguments of river's detector class (``ADWIN`` / ``PageHinkley``, same
        names and meaning), over the defaults above.
    timeliness_weight, uncertainty_weight
        λ_t and λ_u of the score (RoTTA: 1 and 1).
    entropy_filter
        ``None`` (default): ``observe`` offers every input to the memory. A number in
        (0, 1]: only inputs with H(p)/ln C below it (STAMP's α = 0.5); the others neither
        enter nor age the memory. Labelled items are never filtered.
    standardise_warmup
        Page-Hinkley only: values used to start the standardisation (30, river's own
        ``min_instances``).
    significance
        α of the evidence a detector alarm needs before it counts as a drift (default
        1e-5: while the loss's mean stays under its baseline, at most one drift per
        10^5 monitored values on average); ``None`` counts every detector alarm, as
        before. See "Evidence" above.
    evidence_margin
        Relative rise of the monitored loss over its baseline that counts (0.2).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> memory = DriftMemory(capacity=8, n_classes=2)
    >>> errors = np.concatenate([rng.random(2000) < 0.1, rng.random(500) < 0.5])
    >>> alarms = [step for step, error in enumerate(errors) if memory.update_loss(float(error))]
    >>> 2000 <= alarms[0] < 2200, memory.drift_count
    (True, 1)

    References
    ----------
    Yuan, Xie, Li (2023), "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR
    (category-balanced memory with timeliness and uncertainty).
    Yu, Sheng, He, Liang (2024), "Unified Entropy Optimization for Open-Set Test-Time
    Adaptation" / STAMP, ECCV (low-entropy admission).
    Bifet, Gavaldà (2007), "Learning from time-changing data with adaptive windowing",
    SDM (ADWIN). Page (1954), "Continuous inspection schemes", Biometrika (Page-Hinkley).
    """

    def __init__(self, capacity: int, n_classes: int, detector: str | None = "adwin", *,
                 signal: str = "loss", loss: str = "zero_one",
                 detector_options: dict[str, Any] | None = None,
                 timeliness_weight: float = 1.0, uncertainty_weight: float = 1.0,
                 entropy_filter: float | None = None, standardise_warmup: int = 30,
                 significance: float | None = 1e-5, evidence_margin: float = 0.1) -> None:
        self.capacity = check_count(capacity, "capacity")
        # Timeliness 1 / (1 + exp(-age / capacity)) looked up instead of recomputed on
        # every offer; past 40 x capacity it is 1.0 to double precision.
        ages = np.arange(40 * self.capacity + 1, dtype=np.float64)
        self._timeliness = 1.0 / (1.0 + np.exp(ages / -self.capacity))
        self.n_classes = check_count(n_classes, "n_classes", minimum=2)
        if detector is not None and detector not in _DETECTORS:
            raise ValueError(f"detector: must be one of {_DETECTORS} or None, got {detector!r}")
        if signal not in _SIGNALS:
            raise ValueError(f"signal: must be one of {_SIGNALS}, got {signal!r}")
        if loss not in _LOSSES:
            raise ValueError(f"loss: must be one of {_LOSSES}, got {loss!r}")
        self.detector = detector
        self.signal = signal
        self.loss = loss
        self.detector_options = _check_options(detector_options)
        self.timeliness_weight = check_in_range(timeliness_weight, "timeliness_weight",
                                                0.0, math.inf, low_open=False)
        self.uncertainty_weight = check_in_range(uncertainty_weight, "uncertainty_weight",
                                                 0.0, math.inf, low_open=False)
        self.entropy_filter = None if entropy_filter is None else check_in_range(
            entropy_filter, "entropy_filter", 0.0, 1.0, high_open=False)
        self.standardise_warmup = check_count(standardise_warmup, "standardise_warmup",
                                              minimum=2)
        self._quota = self.capacity / self.n_classes
        self._log_classes = math.log(self.n_classes)
        self._uncertainty_scale = self.uncertainty_weight / self._log_classes
        # Checked by RiseEvidence (with these names in its messages).
        self.significance = significance
        self.evidence_margin = evidence_margin
        self._evidence = self._new_evidence()
        self._monitor = None if detector is None else _Monitor(
            detector, self.detector_options, self.standardise_warmup)
        self._clear()

    # -- pipeline-facing views -------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def class_counts(self) -> np.ndarray:
        """Number of stored items per class, shape ``(C,)``."""
        return self._counts.copy()

    def items(self) -> list[tuple[np.ndarray, int, int, float]]:
        """Stored ``(item, label, age, score)`` in storage order; items are read-only."""
        n = self._size
        scores = self._scores().tolist()
        ages = (self._adds - self._births[:n]).tolist()
        return [(self._items[i], int(self._labels[i]), ages[i], scores[i]) for i in range(n)]

    @property
    def drift_count(self) -> int:
        """Drifts detected by this memory's own detector."""
        return self._drift_count

    @property
    def last_drift_step(self) -> int | None:
        """Position (1-based) in the monitored stream of the last alarm; None before one."""
        return self._last_drift_step

    @property
    def change_point(self) -> int | None:
        """Estimated position of the last change: values after it are the new concept."""
        return self._change_point

    @property
    def unconfirmed_count(self) -> int:
        """Detector alarms that lapsed without evidence of a rise (no drift, no eviction)."""
        return self._unconfirmed_count

    @property
    def evidence(self) -> float | None:
        """The current evidence of a rise (e-value scale; 1/significance confirms)."""
        return None if self._evidence is None else self._evidence.statistic

    @property
    def signals_seen(self) -> int:
        """Values fed to the detector so far (the clock of ``last_drift_step``)."""
        return self._signals

    # -- chain verbs -----------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        return np.array(check_probability_vector(x, "x", self.n_classes))

    def predict_many(self, xs: Any) -> np.ndarray:
        return self._check_rows(xs, "xs")

    def observe(self, x: Any) -> None:
        p = np.array(check_probability_vector(x, "x", self.n_classes))
        self._observe_unchecked(p, int(p.argmax()), _entropy(p))

    def observe_many(self, xs: Any) -> None:
        p = self._check_rows(xs, "xs")
        classes = p.argmax(axis=1).tolist()
        entropies = _entropies(p).tolist()
        for row, label, entropy in zip(p, classes, entropies, strict=True):
            self._observe_unchecked(row, label, entropy)

    def learn(self, x: Any, y: Any) -> None:
        p = np.array(check_probability_vector(x, "x", self.n_classes))
        label = check_class_label(y, "y", self.n_classes)
        self._learn_unchecked(p, label, int(p.argmax()), _entropy(p))

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        p = self._check_rows(xs, "xs")
        labels = [check_class_label(y, f"ys[{i}]", self.n_classes) for i, y in enumerate(ys)]
        classes = p.argmax(axis=1).tolist()
        entropies = _entropies(p).tolist()
        for row, label, predicted, entropy in zip(p, labels, classes, entropies, strict=True):
            self._learn_unchecked(row, label, predicted, entropy)

    def on_drift(self) -> None:
        """Evict items stored before the last change point this memory found (idempotent)."""
        if self._change_point is not None:
            self._evict_before(self._change_point)

    # -- generic verbs ---------------------------------------------------------------
    def add(self, item: Any, label: Any, uncertainty: Any) -> bool:
        """Offer ``item`` (a numeric array of any shape) of class ``label`` with the given
        uncertainty (>= 0; entropy-like, it is divided by ln C in the score). Returns
        whether it was stored."""
        array = _check_item(item)
        label = check_class_label(label, "label", self.n_classes)
        value = float(as_finite_array(uncertainty, "uncertainty", ()))
        if value < 0.0:
            raise ValueError(f"uncertainty: must be >= 0, got {value!r}")
        return self._add(array, label, value, pseudo=False)

    def update_loss(self, loss: Any) -> bool:
        """Feed one value to the detector; return whether it detected a drift."""
        value = float(as_finite_array(loss, "loss", ()))
        return self._feed(value)

    # -- inner functions (shared by single and batch verbs) -----------------------------
    def _observe_unchecked(self, p: np.ndarray, label: int, entropy: float) -> None:
        normalised = entropy / self._log_classes
        if self.entropy_filter is None or normalised < self.entropy_filter:
            self._add(p, label, entropy, pseudo=True)
        if self.signal == "entropy":
            self._feed(normalised)

    def _learn_unchecked(self, p: np.ndarray, label: int, predicted: int,
                         entropy: float) -> None:
        if not self._relabel(p, predicted, entropy, label):
            self._add(p, label, 0.0, pseudo=False)
        if self.signal == "loss":
            if self.loss == "zero_one":
                value = 0.0 if predicted == label else 1.0
            else:
                value = -math.log(max(float(p[label]), _LOG_LOSS_CLIP))
            self._feed(value)

    def _feed(self, value: float) -> bool:
        self._signals += 1
        if self._monitor is None:
            return False
        run_length = self._monitor.update(value, self._signals)
        change_point = None if run_length is None else self._signals - run_length
        if self._evidence is not None:
            change_point = self._confirmed(value, change_point)
        if change_point is None:
            return False
        self._drift_count += 1
        self._last_drift_step = self._signals
        self._change_point = change_point
        self._evict_before(self._change_point)
        return True

    def _confirmed(self, value: float, change_point: int | None) -> int | None:
        """The change point of a detector alarm once the evidence confirms it, else None.

        A new alarm replaces a waiting one (its change point is the newer estimate); a
        waiting alarm lapses after ``_HISTORY`` values without evidence."""
        # A loss is >= 0; rounding (p a hair above 1) or a signed value fed through
        # update_loss counts as 0 here, which keeps every e-value non-negative.
        evident = self._evidence.update(max(value, 0.0))
        if change_point is not None:
            self._candidate = (change_point, self._signals)
        if self._candidate is None:
            return None
        if evident:
            change_point = self._candidate[0]
            self._candidate = None
            self._evidence.reset()
            return change_point
        if self._signals - self._candidate[1] >= _HISTORY:
            self._candidate = None
            self._unconfirmed_count += 1
        return None

    def _new_evidence(self) -> RiseEvidence | None:
        """The evidence test (validating both settings), None without one or a detector."""
        if self.significance is None:
            check_in_range(self.evidence_margin, "evidence_margin", 0.0, math.inf,
                           low_open=False)
            return None
        try:
            evidence = RiseEvidence(self.significance, self.evidence_margin)
        except ValueError as error:
            raise ValueError(str(error).replace("margin:", "evidence_margin:", 1)) from None
        return None if self.detector is None else evidence

    # -- memory ------------------------------------------------------------------------
    # Ages are not stored but derived, age = adds − birth, so one add does not have to
    # touch every item; the score's uncertainty part is precomputed per item.
    def _scores(self) -> np.ndarray:
        """Score of every stored item: high = old or uncertain = first to go."""
        n = self._size
        ages = np.minimum(self._adds - self._births[:n], len(self._timeliness) - 1)
        return self.timeliness_weight * self._timeliness[ages] + self._uncertainty_scores[:n]

    def _highest(self, candidates: np.ndarray, above: float) -> int:
        """Index of the highest-scoring item where ``candidates`` is True if its score
        exceeds ``above`` (first index on ties), else -1."""
        scores = np.where(candidates, self._scores(), -np.inf)
        index = int(scores.argmax())
        return index if scores[index] > above else -1

    def _add(self, item: np.ndarray, label: int, uncertainty: float, *, pseudo: bool) -> bool:
        n = self._size
        counts = self._counts
        uncertainty_score = self._uncertainty_scale * uncertainty
        new_score = 0.5 * self.timeliness_weight + uncertainty_score
        if counts[label] < self._quota:
            if n < self.capacity:
                slot = n
            else:
                stored = counts[self._labels[:n]]
                slot = self._highest(stored == stored.max(), new_score)
        else:
            slot = self._highest(self._labels[:n] == label, new_score)
        if slot >= 0:
            stored_item = item.copy()
            stored_item.flags.writeable = False
            if slot == n:
                self._size = n + 1
                self._items.append(stored_item)
            else:
                counts[self._labels[slot]] -= 1
                self._items[slot] = stored_item
            counts[label] += 1
            self._labels[slot] = label
            self._uncertainties[slot] = uncertainty
            self._uncertainty_scores[slot] = uncertainty_score
            self._births[slot] = self._adds
            self._stamps[slot] = self._signals
            self._pseudo[slot] = pseudo
        self._adds += 1
        return slot >= 0

    def _relabel(self, p: np.ndarray, predicted: int, entropy: float, label: int) -> bool:
        """Give the stored pseudo-labelled copy of ``p`` (youngest first) its true label."""
        n = self._size
        candidates = np.flatnonzero(self._pseudo[:n] & (self._labels[:n] == predicted)
                                    & (self._uncertainties[:n] == entropy))
        if not len(candidates):
            return False
        key = p.tobytes()
        youngest_first = candidates[np.argsort(-self._births[candidates], kind="stable")]
        for index in youngest_first.tolist():
            if self._items[index].tobytes() == key:
                break
        else:
            return False
        self._pseudo[index] = False
        self._uncertainties[index] = 0.0
        self._uncertainty_scores[index] = 0.0
        if label != predicted:
            was_full = self._counts[label] >= self._quota
            self._counts[predicted] -= 1
            self._counts[label] += 1
            self._labels[index] = label
            if was_full:
                victim = self._highest(self._labels[:n] == label, -np.inf)
                self._keep(np.arange(n) != victim)
        return True

    def _evict_before(self, change_point: int) -> None:
        keep = self._stamps[:self._size] >= change_point
        if not keep.all():
            self._keep(keep)

    def _keep(self, keep: np.ndarray) -> None:
        n = self._size
        kept = int(keep.sum())
        self._items = [item for item, flag in zip(self._items, keep.tolist(), strict=True)
                       if flag]
        for array in (self._labels, self._uncertainties, self._uncertainty_scores,
                      self._births, self._stamps, self._pseudo):
            array[:kept] = array[:n][keep]
        self._size = kept
        self._counts = np.bincount(self._labels[:kept], minlength=self.n_classes)

    def _clear(self) -> None:
        self._items: list[np.ndarray] = []
        self._labels = np.zeros(self.capacity, dtype=np.int64)
        self._uncertainties = np.zeros(self.capacity, dtype=np.float64)
        self._uncertainty_scores = np.zeros(self.capacity, dtype=np.float64)
        self._births = np.zeros(self.capacity, dtype=np.int64)
        self._stamps = np.zeros(self.capacity, dtype=np.int64)
        self._pseudo = np.zeros(self.capacity, dtype=bool)
        self._counts = np.zeros(self.n_classes, dtype=np.int64)
        self._size = 0
        self._adds = 0
        self._signals = 0
        self._drift_count = 0
        self._last_drift_step: int | None = None
        self._change_point: int | None = None
        self._candidate: tuple[int, int] | None = None  # (change point, alarm step)
        self._unconfirmed_count = 0
        if self._evidence is not None:
            self._evidence.reset()

    def _check_rows(self, xs: Any, name: str) -> np.ndarray:
        return check_probability_batch(xs, name, self.n_classes)

    # -- state -----------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "n_classes": self.n_classes,
                "detector": self.detector, "signal": self.signal, "loss": self.loss,
                "detector_options": dict(self.detector_options),
                "timeliness_weight": self.timeliness_weight,
                "uncertainty_weight": self.uncertainty_weight,
                "entropy_filter": self.entropy_filter,
                "standardise_warmup": self.standardise_warmup,
                "significance": self.significance, "evidence_margin": self.evidence_margin}

    def upgrade_snapshot(self, state_dict: Any) -> Any:
        """A snapshot from before the evidence test (no ``significance`` in its config)
        loads with this adapter's evidence settings; its evidence starts afresh."""
        config = state_dict.get("config") if isinstance(state_dict, dict) else None
        if isinstance(config, dict) and "significance" not in config:
            state_dict = {**state_dict, "config": {
                **config, "significance": self.significance,
                "evidence_margin": self.evidence_margin}}
        return state_dict

    def _get_state(self) -> dict[str, Any]:
        n = self._size
        rows = bool(self._items) and all(
            item.dtype == np.float64 and item.ndim == 1 and len(item) == len(self._items[0])
            for item in self._items)
        return {
            # Rows of one width as one (items, width) array; otherwise flattened, with the
            # shapes aside: the JSON codec's contiguity step would turn a 0-d item into
            # shape (1,).
            "items": (np.stack(self._items) if rows
                      else [item.reshape(-1).copy() for item in self._items]),
            "item_shapes": None if rows else [list(item.shape) for item in self._items],
            "labels": self._labels[:n].copy(),
            "uncertainties": self._uncertainties[:n].copy(),
            "ages": self._adds - self._births[:n],
            "stamps": self._stamps[:n].copy(),
            "pseudo": self._pseudo[:n].copy(),
            "signals": self._signals,
            "drift_count": self._drift_count,
            "last_drift_step": self._last_drift_step,
            "change_point": self._change_point,
            "detector": None if self._monitor is None else self._monitor.get_state(),
            "evidence": None if self._evidence is None else self._evidence.get_state(),
            "candidate": None if self._candidate is None else list(self._candidate),
            "unconfirmed_count": self._unconfirmed_count,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        monitor = None
        if self.detector is not None:
            monitor = _Monitor(self.detector, self.detector_options, self.standardise_warmup)
            monitor.set_state(state["detector"])
        self._clear()
        self._monitor = monitor
        if state["item_shapes"] is None:  # rows of one width, as one array
            items = list(np.array(state["items"], dtype=np.float64))
        else:
            items = [np.array(item).reshape(shape)
                     for item, shape in zip(state["items"], state["item_shapes"], strict=True)]
        n = len(items)
        for item in items:
            item.flags.writeable = False
        self._items = items
        self._labels[:n] = state["labels"]
        self._uncertainties[:n] = state["uncertainties"]
        self._uncertainty_scores[:n] = self._uncertainty_scale * self._uncertainties[:n]
        self._births[:n] = -np.asarray(state["ages"], dtype=np.int64)  # with adds = 0
        self._stamps[:n] = state["stamps"]
        self._pseudo[:n] = state["pseudo"]
        self._size = n
        self._counts = np.bincount(self._labels[:n], minlength=self.n_classes)
        self._signals = int(state["signals"])
        self._drift_count = int(state["drift_count"])
        self._last_drift_step = _optional_int(state["last_drift_step"])
        self._change_point = _optional_int(state["change_point"])
        # Absent from snapshots written before the evidence test: it starts afresh.
        if self._evidence is not None and state.get("evidence") is not None:
            self._evidence.set_state(state["evidence"])
        candidate = state.get("candidate")
        self._candidate = None if candidate is None else (int(candidate[0]), int(candidate[1]))
        self._unconfirmed_count = int(state.get("unconfirmed_count", 0))


class _Monitor:
    """A drift detector plus what the memory needs around it: the standardisation of its
    input (Page-Hinkley), a change-point estimate on an alarm, and a plain-value state."""

    def __init__(self, kind: str, options: dict[str, Any], warmup: int) -> None:
        self.kind = kind
        self.warmup = warmup
        arguments = dict(_PAGE_HINKLEY_DEFAULTS) if kind == "page_hinkley" else {}
        arguments.update(options)
        factory = _native.Adwin if kind == "adwin" else _native.PageHinkley
        try:
            self.detector = factory(**arguments)
        except (TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"detector_options: {factory.__name__} (river's parameters) "
                             f"rejected {arguments}: {error}") from None
        # The last _HISTORY monitored values (ring buffer) and how many arrived since the
        # last alarm; Page-Hinkley's standardisation moments since its last alarm.
        self._history = np.zeros(_HISTORY, dtype=np.float64)
        self._since_alarm = 0
        self._count = 0
        self._mean = 0.0
        self._squares = 0.0

    def update(self, value: float, position: int) -> int | None:
        """Feed the ``position``-th value; on an alarm return how many of the newest values
        are estimated to belong to the new concept, else None."""
        self._history[position % _HISTORY] = value
        self._since_alarm += 1
        if self.kind == "adwin":
            self.detector.update(value)
            if not self.detector.drift_detected:
                return None
            window = int(self.detector.width)
        else:
            if not self._update_page_hinkley(value):
                return None
            window = self._since_alarm
        searched = min(window, self._since_alarm, _HISTORY)
        self._since_alarm = 0
        return _run_length(self._recent(position, searched))

    def _update_page_hinkley(self, value: float) -> bool:
        count = self._count
        standardised = None
        if count >= self.warmup and self._squares > 0.0:
            standardised = (value - self._mean) / math.sqrt(self._squares / (count - 1))
        count += 1
        delta = value - self._mean
        self._mean += delta / count
        self._squares += delta * (value - self._mean)
        self._count = count
        if standardised is None:
            return False
        self.detector.update(standardised)
        if not self.detector.drift_detected:
            return False
        # The new concept's moments start afresh (the old mean and deviation no longer apply).
        self._count, self._mean, self._squares = 0, 0.0, 0.0
        return True

    def _recent(self, position: int, length: int) -> np.ndarray:
        """The ``length`` newest values, oldest first, ending with the ``position``-th."""
        end = position % _HISTORY + 1
        if length <= end:
            return self._history[end - length:end]
        return np.concatenate([self._history[_HISTORY - (length - end):], self._history[:end]])

    def get_state(self) -> dict[str, Any]:
        detector = self.detector
        state: dict[str, Any] = {"river_version": _RIVER_STATE_LAYOUT, "kind": self.kind,
                                 "drift_detected": bool(detector.drift_detected),
                                 "history": self._history.copy(),
                                 "since_alarm": self._since_alarm}
        if self.kind == "adwin":
            state["window"] = np.frombuffer(detector.window_state(), dtype=np.uint8).copy()
        else:
            state["sums"] = np.array(detector.sums(), dtype=np.float64)
            state["moments"] = np.array([self._count, self._mean, self._squares],
                                        dtype=np.float64)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        version = state.get("river_version")
        if version != _RIVER_STATE_LAYOUT:
            raise ValueError(
                f"state.detector: written with river {version}; drift-detector snapshots "
                f"load when written by river {_RIVER_STATE_LAYOUT} or by this release (the "
                "same river version's state layout), as river has no stable state format. "
                "Start the adapter fresh and replay the stream from the snapshot's offsets")
        if state.get("kind") != self.kind:
            raise ValueError(f"state.detector: snapshot holds a {state.get('kind')!r} "
                             f"detector, this adapter uses {self.kind!r}")
        detector = self.detector
        drift_detected = bool(state["drift_detected"])
        field = "window" if self.kind == "adwin" else "sums"
        try:
            if self.kind == "adwin":
                detector.load_window_state(
                    np.asarray(state["window"], dtype=np.uint8).tobytes(), drift_detected)
            else:
                detector.load_sums(np.asarray(state["sums"], dtype=np.float64).tolist(),
                                   drift_detected)
        except ValueError as error:
            raise ValueError(f"state.detector.{field}: {error}; the snapshot is damaged or "
                             "was not written by this adapter: start it fresh and replay "
                             "the stream from the snapshot's offsets") from None
        if self.kind == "page_hinkley":
            count, self._mean, self._squares = np.asarray(state["moments"], np.float64).tolist()
            self._count = int(count)
        self._history = np.array(state["history"], dtype=np.float64)
        self._since_alarm = int(state["since_alarm"])


def _run_length(values: np.ndarray) -> int:
    """Number of newest values after the most likely single change of mean in ``values``.

    The split k maximises |S_k − (k/m)·S_m| / sqrt(k·(m − k)/m), the likelihood-ratio
    statistic of one mean shift in Gaussian noise (the CUSUM change-point estimate)."""
    m = len(values)
    if m < 2:
        return m
    k = np.arange(1, m, dtype=np.float64)
    cumulative = np.cumsum(values)
    statistic = np.abs(cumulative[:-1] - k / m * cumulative[-1]) / np.sqrt(k * (m - k) / m)
    return m - (int(statistic.argmax()) + 1)


def _check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"detector_options: must be a dict with string keys, got {options!r}")
    for key, value in options.items():
        if not isinstance(value, bool | numbers.Real | str):
            raise ValueError(f"detector_options.{key}: must be a number or a string, "
                             f"got {value!r}")
    return dict(options)


def _check_item(item: Any) -> np.ndarray:
    try:
        array = np.asarray(item)
    except (TypeError, ValueError) as error:
        raise ValueError(f"item: not numeric ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"item: not numeric (dtype {array.dtype})")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"item: contains {'NaN' if np.isnan(array).any() else 'inf'}")
    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C")


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(np.maximum(p, 1e-300))).sum())


def _entropies(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
