"""Conformal coverage on an episode: the online layers (and split conformal, the naive
alternative) driven over a contender's served outputs with the episode's delayed labels.

Each layer is driven exactly as the pipeline drives it: at a prediction it serves a set
(or interval) and the thresholds it used are kept; when that prediction's label arrives
— in the episode's event-time order, hundreds of events later on the synthetic streams
— the layer learns on what it served. Split conformal calibrates once on the first
``calibration`` labels and then keeps its threshold fixed: valid while the data are
exchangeable, and what drift breaks.

``evaluate_conformal`` gives, per method and level, the long-run coverage, the mean set
size (classes) or interval width, and the worst recovery after a known change point
(events until the rolling-``ROLLING_LABELS`` coverage is back within 2 points of target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamweights.adapters.conformal import AdaptiveConformal, DtACI
from streamweights.adapters.conformal._layer import _ConformalLayer
from streamweights.adapters.conformal.dtaci import DEFAULT_STEPS
from streamweights.adapters.conformal.pid import ConformalPID
from streamweights.adapters.conformal.scores import class_set, empirical_quantile, score
from streamweights.coverage import ROLLING_LABELS
from streamweights.evaluation.episode import LABEL, PREDICTION, Episode

ALPHAS = (0.1, 0.05)
#: Labels split conformal calibrates on before freezing its threshold (at most; a short
#: stream gives it a fifth of its labels).
SPLIT_CALIBRATION = 1_000
#: Must-hold windows: rolling coverage back within this of target ...
RECOVERY_TOLERANCE = 0.02
#: ... within this many events of a change.
RECOVERY_EVENTS = 1_000


@dataclass
class MethodRun:
    """One method on one episode: per level, 0/1 coverage of each labelled event (in
    event order) and the size served for every event (``inf``: unbounded)."""

    name: str
    covered: np.ndarray  # (L, n_labelled)
    sizes: np.ndarray  # (L, n_events)
    labelled_index: np.ndarray  # event index of each column of ``covered``

    def coverage(self) -> list[float]:
        return [float(row.mean()) if row.size else math.nan for row in self.covered]

    def mean_size(self) -> list[float]:
        found = []
        for row in self.sizes:
            finite = row[np.isfinite(row)]
            found.append(float(finite.mean()) if finite.size else math.inf)
        return found

    def capped_mean_size(self, caps: list[float]) -> list[float]:
        """Mean size with every unbounded interval counted at ``caps[level]`` (the widest
        finite width any method served on the stream): an infinite interval is no free
        pass when comparing efficiency."""
        return [float(np.where(np.isinf(row), cap, row).mean())
                for row, cap in zip(self.sizes, caps, strict=True)]

    def unbounded(self) -> list[float]:
        return [float(np.isinf(row).mean()) for row in self.sizes]


@dataclass
class ConformalResult:
    """The table row material for one stream."""

    n_labelled: int
    alphas: tuple[float, ...]
    runs: dict[str, MethodRun] = field(default_factory=dict)
    #: method -> per level: worst events-to-recover over the change points (None: never).
    recovery: dict[str, list[int | None]] = field(default_factory=dict)
    best_aci: str | None = None
    #: Per level: the width an unbounded interval counts as (see ``capped_mean_size``).
    caps: list[float] = field(default_factory=list)

    def row(self, method: str) -> dict[str, Any]:
        run = self.runs[method]
        return {"coverage": run.coverage(), "mean_size": run.capped_mean_size(self.caps),
                "unbounded": run.unbounded(), "recovery": self.recovery.get(method)}


def _size(classification: bool, kind: str, value: Any, q: float) -> float:
    if classification:
        return float(len(class_set(kind, value, q)))
    if math.isinf(q):
        return math.inf
    return 2.0 * max(q, 0.0)


def drive_layer(layer: _ConformalLayer, episode: Episode, served: np.ndarray,
                name: str) -> MethodRun:
    """Serve and learn along the episode's schedule (prediction: serve and keep the
    thresholds; label: learn on them)."""
    classification = episode.classification
    values = served.tolist()
    targets = episode.targets.tolist()
    n_levels = len(layer.alphas)
    kept: dict[int, list[float]] = {}
    sizes = np.empty((n_levels, episode.n_events))
    covered: dict[int, list[int]] = {}
    for kind, i in episode.schedule.tolist():
        if kind == PREDICTION:
            thresholds = layer._served_state()
            kept[i] = thresholds
            for row, q in enumerate(thresholds[:n_levels]):
                sizes[row, i] = _size(classification, layer.score, values[i], q)
        elif kind == LABEL:
            thresholds = kept.pop(i)
            s = score(layer.score, layer._input(values[i]), layer._label(targets[i]))
            covered[i] = [0 if s > q else 1 for q in thresholds[:n_levels]]
            layer.learn_served(values[i], thresholds, targets[i])
    order = np.array(sorted(covered), dtype=np.int64)
    matrix = np.array([covered[i] for i in order], dtype=np.float64).T.reshape(n_levels, -1)
    return MethodRun(name, matrix, sizes, order)


def split_conformal(episode: Episode, served: np.ndarray, alphas: tuple[float, ...],
                    kind: str, calibration: int = SPLIT_CALIBRATION) -> MethodRun:
    """Calibrate on the first ``calibration`` labels to arrive, then freeze the
    thresholds (before that, serve everything)."""
    classification = episode.classification
    values = served.tolist()
    targets = episode.targets.tolist()
    scores: list[float] = []
    thresholds = [math.inf] * len(alphas)
    sizes = np.empty((len(alphas), episode.n_events))
    kept: dict[int, list[float]] = {}
    covered: dict[int, list[int]] = {}
    for step, i in episode.schedule.tolist():
        if step == PREDICTION:
            kept[i] = list(thresholds)
            for row, q in enumerate(thresholds):
                sizes[row, i] = _size(classification, kind, values[i], q)
        elif step == LABEL:
            used = kept.pop(i)
            s = score(kind, values[i], targets[i])
            covered[i] = [0 if s > q else 1 for q in used]
            if len(scores) < calibration:
                scores.append(s)
                if len(scores) == calibration:
                    ordered = sorted(scores)
                    thresholds = [empirical_quantile(ordered, 1.0 - a) for a in alphas]
    order = np.array(sorted(covered), dtype=np.int64)
    matrix = np.array([covered[i] for i in order], dtype=np.float64).T.reshape(len(alphas), -1)
    return MethodRun("split", matrix, sizes, order)


def rolling_coverage(run: MethodRun, level: int, window: int = ROLLING_LABELS) -> np.ndarray:
    """Coverage over the last ``window`` labelled events, at each labelled event."""
    flags = run.covered[level]
    sums = np.cumsum(flags)
    rolled = np.empty_like(flags)
    rolled[:window] = sums[:window] / np.arange(1, min(window, len(flags)) + 1)
    rolled[window:] = (sums[window:] - sums[:-window]) / window
    return rolled


def recovery_events(run: MethodRun, level: int, alpha: float, change: int,
                    window: int = ROLLING_LABELS,
                    tolerance: float = RECOVERY_TOLERANCE) -> int | None:
    """Events after ``change`` until the coverage over the last ``window`` labelled
    events — all of them predicted after the change — is within ``tolerance`` of
    ``1 - alpha`` (``None``: never, in the episode). A window that still holds
    pre-change events does not count: it would hide the dip."""
    rolled = rolling_coverage(run, level, window)
    index = run.labelled_index
    first = int(np.searchsorted(index, change))
    for position in range(first + window - 1, len(index)):
        if abs(rolled[position] - (1.0 - alpha)) <= tolerance:
            return int(index[position] - change)
    return None


def evaluate_conformal(episode: Episode, served: np.ndarray,
                       change_points: tuple[int, ...] = (), alphas: tuple[float, ...] = ALPHAS,
                       aci_steps: tuple[float, ...] = DEFAULT_STEPS) -> ConformalResult:
    """DtACI, conformal PID, ACI at every step of the DtACI grid, and split conformal on
    ``served`` (a contender's outputs, ``(n, C)`` or ``(n,)``)."""
    n_classes = episode.n_classes
    result = ConformalResult(int(episode.labelled.sum()), tuple(alphas))
    layers: dict[str, _ConformalLayer] = {
        "dtaci": DtACI(alphas=list(alphas), n_classes=n_classes),
        "pid": ConformalPID(alphas=list(alphas), n_classes=n_classes),
    }
    for step in aci_steps:
        layers[f"aci:{step:g}"] = AdaptiveConformal(alphas=list(alphas), n_classes=n_classes,
                                                     step=step)
    for name, layer in layers.items():
        result.runs[name] = drive_layer(layer, episode, served, name)
    kind = "probability" if episode.classification else "absolute"
    calibration = min(SPLIT_CALIBRATION, max(20, result.n_labelled // 5))
    result.runs["split"] = split_conformal(episode, served, tuple(alphas), kind, calibration)
    aci = [n for n in result.runs if n.startswith("aci:")]
    valid = [n for n in aci if all(abs(c - (1 - a)) <= 0.01 for c, a in
                                   zip(result.runs[n].coverage(), alphas, strict=True))]
    pool = valid or aci
    result.caps = [max((s for run in result.runs.values() for s in run.sizes[level]
                        if math.isfinite(s)), default=0.0) for level in range(len(alphas))]
    result.best_aci = min(pool, key=lambda n: result.runs[n].capped_mean_size(result.caps)[0])
    for name, run in result.runs.items():
        if not change_points:
            continue
        worst: list[int | None] = []
        for level, alpha in enumerate(alphas):
            times = [recovery_events(run, level, alpha, c) for c in change_points]
            worst.append(None if any(t is None for t in times) else max(times, default=0))
        result.recovery[name] = worst
    return result


def conformal_summary(result: ConformalResult) -> dict[str, Any]:
    """The plain numbers a results page keeps (picklable, no per-event arrays)."""
    return {"n_labelled": result.n_labelled, "alphas": list(result.alphas),
            "best_aci": result.best_aci,
            "methods": {name: result.row(name) for name in result.runs}}


#: Streams with fewer labels are reported, not held to the ±1 point target.
ASSERTED_LABELS = 1_000
#: The long-run coverage target's half-width.
COVERAGE_TOLERANCE = 0.01


def conformal_rows(summaries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per stream: DtACI's coverage and size per level against the best fixed
    ACI step in hindsight, conformal PID's and split conformal's coverage, and the worst
    recovery after a change (DtACI and split)."""
    rows = []
    for name, summary in summaries:
        methods = summary["methods"]
        alphas = summary["alphas"]
        dtaci, best = methods["dtaci"], methods[summary["best_aci"]]
        asserted = summary["n_labelled"] >= ASSERTED_LABELS
        within = all(abs(c - (1 - a)) <= COVERAGE_TOLERANCE
                     for c, a in zip(dtaci["coverage"], alphas, strict=True))
        row = {"stream": name, "labels": summary["n_labelled"],
               "held": ("yes" if within else "NO") if asserted else
               ("(yes)" if within else "(no)")}
        for level, alpha in enumerate(alphas):
            key = f"{alpha:g}"
            row[f"DtACI cov {key}"] = dtaci["coverage"][level]
            row[f"DtACI size {key}"] = dtaci["mean_size"][level]
            row[f"best ACI size {key}"] = best["mean_size"][level]
            row[f"PID cov {key}"] = methods["pid"]["coverage"][level]
            row[f"split cov {key}"] = methods["split"]["coverage"][level]
        row["best ACI step"] = summary["best_aci"].split(":")[1]
        row["DtACI recovery"] = _worst(dtaci["recovery"])
        row["split recovery"] = _worst(methods["split"]["recovery"])
        rows.append(row)
    return rows


def _worst(recovery: list[int | None] | None) -> str:
    if not recovery:
        return "—"
    if any(r is None for r in recovery):
        return "never"
    return f"{max(recovery):,}"
