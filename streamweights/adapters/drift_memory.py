"""A small class-balanced memory of recent, informative examples, with a drift detector.

Replay needs examples that are recent (the stream drifts), confident (uncertain ones are
often wrong) and spread over the classes (a class-correlated stream would otherwise fill
the memory with one class). RoTTA's category-balanced memory scores each item by age and
uncertainty and evicts the worst; a river drift detector on the loss stream (ADWIN or
Page-Hinkley) says when the concept changed, and the memory then drops what came before.

The memory and the per-event path of ``predict`` / ``observe`` / ``learn`` (input check,
argmax, entropy, accept/evict, relabel, the loss, feeding the detector and the evidence,
the change point, the eviction) run in the native core (``native/src/drift_memory.rs``),
one call per verb; this class keeps the API, the validation and the snapshots. The numpy
version it replaced is the oracle in ``tests/reference/drift_memory.py``
(tests/adapters/test_native_drift_memory_core.py).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter
from streamweights.adapters.drift_evidence import RiseEvidence
from streamweights.adapters.validation import (
    as_finite_array,
    check_class_label,
    check_class_labels,
    check_count,
    check_in_range,
    check_probability_batch,
    check_probability_vector,
)

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


class DriftMemory(Adapter):
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
    confirmation for the next 700 values). Losses that depend on each other (errors in
    runs, an error rate that wanders) are measured as such and tested on block means
    (``drift_evidence.py``, "Dependent losses"): stationary ones no longer confirm, and a
    real rise on them confirms later (0/1 error 0.1 -> 0.4 through the pipeline, three
    seeds: lag-1 correlation 0.6, 180-660 labels after it; 0.9, 690-1,250; independent,
    40-72).

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

    fresh_state = True  # _get_state reads the core anew on every call (see Adapter.fresh_state)

    def __init__(self, capacity: int, n_classes: int, detector: str | None = "adwin", *,
                 signal: str = "loss", loss: str = "zero_one",
                 detector_options: dict[str, Any] | None = None,
                 timeliness_weight: float = 1.0, uncertainty_weight: float = 1.0,
                 entropy_filter: float | None = None, standardise_warmup: int = 30,
                 significance: float | None = 1e-5, evidence_margin: float = 0.1) -> None:
        self.capacity = check_count(capacity, "capacity")
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
        # Checked by RiseEvidence (with these names in its messages).
        self.significance = significance
        self.evidence_margin = evidence_margin
        self._evidence = self._new_evidence()
        self._monitor = None if detector is None else _Monitor(
            detector, self.detector_options, self.standardise_warmup)
        # The table is numpy's (its exp), handed over so scores stay the reference's bits.
        # The core feeds the detector and the evidence (objects shared with Python, which
        # writes their snapshots) itself: one call per verb.
        self._core = _native.DriftMemoryCore(
            self.capacity, self.n_classes, _timeliness_table(self.capacity),
            self.timeliness_weight,
            self.uncertainty_weight, self.entropy_filter, signal == "entropy", loss == "log",
            None if self._monitor is None else self._monitor.detector,
            None if self._evidence is None else self._evidence._core,
            self.standardise_warmup)

    # -- pipeline-facing views -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._core)

    def class_counts(self) -> np.ndarray:
        """Number of stored items per class, shape ``(C,)``."""
        return np.array(self._core.class_counts(), dtype=np.int64)

    def items(self) -> list[tuple[np.ndarray, int, int, float]]:
        """Stored ``(item, label, age, score)`` in storage order; items are read-only."""
        return [(_as_item(item), label, age, score)
                for item, label, age, score, *_ in self._core.items()]

    @property
    def drift_count(self) -> int:
        """Drifts detected by this memory's own detector."""
        return self._core.drift_count

    @property
    def last_drift_step(self) -> int | None:
        """Position (1-based) in the monitored stream of the last alarm; None before one."""
        return self._core.counters()[2]

    @property
    def change_point(self) -> int | None:
        """Estimated position of the last change: values after it are the new concept."""
        return self._core.change_point

    @property
    def unconfirmed_count(self) -> int:
        """Detector alarms that lapsed without evidence of a rise (no drift, no eviction)."""
        return self._core.counters()[5]

    @property
    def evidence(self) -> float | None:
        """The current evidence of a rise (e-value scale; 1/significance confirms)."""
        return None if self._evidence is None else self._evidence.statistic

    @property
    def signals_seen(self) -> int:
        """Values fed to the detector so far (the clock of ``last_drift_step``)."""
        return self._core.signals

    # -- chain verbs -----------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        out = self._core.predict(x)
        if out is None:
            return np.array(check_probability_vector(x, "x", self.n_classes))
        return out  # a new float64 array, made by the core

    def predict_many(self, xs: Any) -> np.ndarray:
        return self._check_rows(xs, "xs")

    # The core's verbs return False when the input does not clear its fast check: then
    # Python's full check runs (and raises with the usual message, or accepts with the
    # same numbers) and the checked verb runs.
    def observe(self, x: Any) -> None:
        if not self._core.observe(x):
            self._core.observe_checked(check_probability_vector(x, "x", self.n_classes))

    def observe_many(self, xs: Any) -> None:
        self._core.observe_many(self._check_rows(xs, "xs"))

    def learn(self, x: Any, y: Any) -> None:
        if not self._core.learn(x, y):
            label = check_class_label(y, "y", self.n_classes)
            self._core.learn_checked(
                check_probability_vector(x, "x", self.n_classes), label)

    def learn_many(self, xs: Any, ys: Any) -> None:
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        rows = self._check_rows(xs, "xs")
        labels = check_class_labels(ys, "ys", self.n_classes).tolist()
        self._core.learn_many(rows, labels)

    def on_drift(self) -> None:
        """Evict items stored before the last change point this memory found (idempotent)."""
        change_point = self._core.change_point
        if change_point is not None:
            self._core.evict_before(change_point)

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
        if array.dtype == np.float64 and array.ndim == 1:
            return self._core.add_item(array.tolist(), None, label, value)
        array.flags.writeable = False
        return self._core.add_item([], array, label, value)

    def update_loss(self, loss: Any) -> bool:
        """Feed one value to the detector; return whether it detected a drift."""
        value = float(as_finite_array(loss, "loss", ()))
        return self._core.feed(value)

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
        items, shapes, labels, uncertainties, ages, stamps, pseudo = \
            self._core.snapshot_items()
        # Rows of one width come as one (items, width) array with no shapes; otherwise a
        # list of items, each flattened with its shape aside.
        for index, shape in enumerate(shapes or ()):
            if shape is None:  # an item added as an array of another kind
                item = _as_item(items[index])
                items[index], shapes[index] = item.reshape(-1).copy(), list(item.shape)
        signals, drift_count, last_drift_step, change_point, candidate, unconfirmed = \
            self._core.counters()
        return {
            # One array of rows, or flattened items with the shapes aside: the JSON
            # codec's contiguity step would turn a 0-d item into shape (1,).
            "items": items,
            "item_shapes": shapes,
            "labels": labels,
            "uncertainties": uncertainties,
            "ages": ages,
            "stamps": stamps,
            "pseudo": pseudo,
            "signals": signals,
            "drift_count": drift_count,
            "last_drift_step": last_drift_step,
            "change_point": change_point,
            "detector": None if self._monitor is None else self._monitor.get_state(
                *self._core.monitor_state()),
            "evidence": None if self._evidence is None else self._evidence.get_state(),
            "candidate": None if candidate is None else list(candidate),
            "unconfirmed_count": unconfirmed,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        monitor = monitor_values = None
        if self.detector is not None:
            monitor = _Monitor(self.detector, self.detector_options, self.standardise_warmup)
            monitor_values = monitor.set_state(state["detector"])
        shapes = state["item_shapes"]
        if shapes is None:  # rows of one width, as one array
            rows, objects = _rows_of_matrix(state["items"])
        else:
            rows, objects = _rows_of_items(state["items"], shapes)
        columns = (np.asarray(state["labels"], np.int64).tolist(),
                   np.asarray(state["uncertainties"], np.float64).tolist(),
                   np.asarray(state["ages"], np.int64).tolist(),  # relative to adds = 0
                   np.asarray(state["stamps"], np.int64).tolist(),
                   np.asarray(state["pseudo"], bool).tolist())
        candidate = state.get("candidate")
        counters = (int(state["signals"]), int(state["drift_count"]),
                    _optional_int(state["last_drift_step"]),
                    _optional_int(state["change_point"]),
                    None if candidate is None else (int(candidate[0]), int(candidate[1])),
                    int(state.get("unconfirmed_count", 0)))
        self._core.load(rows, objects, *columns)  # checks all, then replaces the memory
        if monitor is not None:
            self._core.set_monitor(monitor.detector, *monitor_values)
        self._monitor = monitor
        self._core.set_counters(*counters)
        if self._evidence is not None:
            # Absent from snapshots written before the evidence test: it starts afresh.
            if state.get("evidence") is not None:
                self._evidence.set_state(state["evidence"])
            else:
                self._evidence.reset()


def _rows_of_matrix(items: Any) -> tuple[list[Any], list[Any]]:
    """``(rows, objects)`` for the core from a memory stored as one ``(items, width)``
    float64 array (how ``_get_state`` writes rows of one width)."""
    matrix = np.asarray(items, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError("state.items: expected an array of rows (item_shapes is null), "
                         f"got shape {matrix.shape}")
    rows = matrix.tolist()
    return rows, [None] * len(rows)


def _rows_of_items(items: Any, shapes: Any) -> tuple[list[Any], list[Any]]:
    """``(rows, objects)`` for the core from a memory stored as a list of flattened items
    with their shapes aside: a float64 row goes to ``rows``, any other item (kept as
    given to ``add``) to ``objects``, read-only."""
    rows: list[list[float] | None] = []
    objects: list[np.ndarray | None] = []
    for item, shape in zip(items, shapes, strict=True):
        if _is_float_row(item, shape):  # (what the array below would make a row of)
            rows.append(item)
            objects.append(None)
            continue
        if _is_row_array(item, shape):  # (the same, as the snapshot codec gives it)
            rows.append(item.tolist())
            objects.append(None)
            continue
        item = np.array(item).reshape(shape)
        is_row = item.dtype == np.float64 and item.ndim == 1
        item.flags.writeable = False
        rows.append(item.tolist() if is_row else None)
        objects.append(None if is_row else item)
    return rows, objects


def _is_float_row(item: Any, shape: Any) -> bool:
    """Whether a stored memory item is a flat list of Python floats of its 1-D ``shape``:
    ``np.array(item).reshape(shape)`` is then a float64 row whose ``tolist()`` is the list
    itself, so the list is taken as it is (a mature stream's 64 items went through an
    array and back, ~2.5 µs each, at every restore)."""
    return (type(item) is list and type(shape) is list and len(shape) == 1
            and shape[0] == len(item) and all(type(value) is float for value in item))


def _is_row_array(item: Any, shape: Any) -> bool:
    """Whether a stored memory item is a 1-D float64 array (native byte order) of its
    ``shape``: ``np.array(item).reshape(shape)`` is then a copy of it, a row whose
    ``tolist()`` is the item's (a packed snapshot gives a mature stream's 64 items so;
    copying and reshaping each took ~1 µs at every restore)."""
    return (type(item) is np.ndarray and item.dtype == np.float64 and item.ndim == 1
            and type(shape) is list and len(shape) == 1 and shape[0] == item.shape[0])


class _Monitor:
    """The drift detector (a core object, shared with the memory's core, which feeds it)
    and its snapshot in river 0.26.1's layout, with the values the core keeps around it:
    the last ``_HISTORY`` monitored values (to locate a change point), how many arrived
    since the last alarm, Page-Hinkley's standardisation moments."""

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

    def get_state(self, history: np.ndarray, since_alarm: int,
                  moments: tuple[int, float, float]) -> dict[str, Any]:
        detector = self.detector
        state: dict[str, Any] = {"river_version": _RIVER_STATE_LAYOUT, "kind": self.kind,
                                 "drift_detected": bool(detector.drift_detected),
                                 "history": np.asarray(history, dtype=np.float64),
                                 "since_alarm": since_alarm}
        if self.kind == "adwin":
            state["window"] = np.frombuffer(detector.window_state(), dtype=np.uint8).copy()
        else:
            state["sums"] = np.array(detector.sums(), dtype=np.float64)
            state["moments"] = np.array(moments, dtype=np.float64)
        return state

    def set_state(self, state: dict[str, Any]) -> tuple[np.ndarray, int,
                                                        tuple[int, float, float]]:
        """Load the detector's part into this (new) detector; return the core's part
        ``(history, since_alarm, moments)``, checked."""
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
        history = np.ascontiguousarray(np.asarray(state["history"], dtype=np.float64)
                                       .reshape(-1))
        if history.size != _HISTORY:
            raise ValueError(f"state.detector.history: expected {_HISTORY} values, "
                             f"got {history.size}")
        since_alarm = int(state["since_alarm"])
        moments = (0, 0.0, 0.0)
        if self.kind == "page_hinkley":
            count, mean, squares = np.asarray(state["moments"], np.float64).tolist()
            moments = (int(count), mean, squares)
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
        return history, since_alarm, moments


@functools.lru_cache(maxsize=16)
def _timeliness_table(capacity: int) -> tuple[float, ...]:
    """Timeliness ``1 / (1 + exp(-age / capacity))`` for ages 0 .. 40 x capacity (past that
    it is 1.0 to double precision), looked up instead of recomputed on every offer.
    numpy's exp, so scores keep the reference's bits. The same for every memory of a
    capacity: computed once here, and the core keeps one copy per distinct table."""
    ages = np.arange(40 * capacity + 1, dtype=np.float64)
    return tuple((1.0 / (1.0 + np.exp(ages / -capacity))).tolist())


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


def _as_item(item: Any) -> np.ndarray:
    """A stored item as a read-only array (the core keeps rows as lists of floats)."""
    if isinstance(item, np.ndarray):
        return item
    array = np.array(item, dtype=np.float64)
    array.flags.writeable = False
    return array


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
