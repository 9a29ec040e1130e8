"""The report's plots: one function per plot, each returning the PNG and what it drew.

Every function takes one stream of a saved trace
(:class:`~streamweights.evaluation.trace.StreamData`) and returns a :class:`Plot`: the
PNG bytes plus a ``drawn`` dict counting what is on it (lines, drift markers, panels),
so a test can check that a plot matches the run it came from — e.g. that the number of
drift markers equals the drift alarms the run counted.
Figures are built with matplotlib's object API (no pyplot global state), so plotting is
safe in any process and needs no display.

The x axis is event time since the first prediction (minutes, or hours for long runs);
detected drift alarms are red vertical lines, known change points of a synthetic stream
grey dashed ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from streamweights.evaluation.metrics import (
    classification_losses,
    expected_calibration_error,
    reliability_bins,
)
from streamweights.evaluation.trace import StreamData

DRIFT_COLOR = "#d62728"
CHANGE_COLOR = "#7f7f7f"
WIDTH, HEIGHT, DPI = 9.0, 3.4, 100


@dataclass
class Plot:
    """A rendered plot: a file-name-safe key, a title, PNG bytes and what was drawn."""

    key: str
    title: str
    png: bytes
    drawn: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class _Clock:
    """Event time → minutes or hours since the stream's first prediction."""

    def __init__(self, data: StreamData) -> None:
        starts = [a[0] for a in (data.arrays["prediction_ts"], data.arrays["label_ts"]) if len(a)]
        self.origin = float(min(starts)) if starts else 0.0
        ends = [a.max() for a in (data.arrays["label_ts"],) if len(a)]
        span = (float(max(ends)) - self.origin) if ends else 0.0
        self.scale, self.unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes")

    def __call__(self, ts: Any) -> np.ndarray:
        return (np.asarray(ts, dtype=np.float64) - self.origin) / self.scale

    @property
    def label(self) -> str:
        return f"event time ({self.unit} since the first prediction)"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight",
                   metadata={"Software": None})
    return buffer.getvalue()


def _mark_drift(axes: Axes, data: StreamData, clock: _Clock) -> tuple[int, int]:
    """Draw known change points and detected drift alarms; return how many of each."""
    changes = data.meta.get("change_points_ts", [])
    for index, ts in enumerate(changes):
        axes.axvline(float(clock(ts)), color=CHANGE_COLOR, linestyle="--", linewidth=1.0,
                     label="known change point" if index == 0 else None)
    alarms = data.meta.get("drift_events", [])
    for index, event in enumerate(alarms):
        axes.axvline(float(clock(event["ts"])), color=DRIFT_COLOR, linewidth=1.0, alpha=0.8,
                     label="drift alarm" if index == 0 else None)
    return len(alarms), len(changes)


def _empty(key: str, title: str, message: str) -> Plot:
    figure = Figure(figsize=(WIDTH, 1.2))
    figure.text(0.5, 0.5, message, ha="center", va="center")
    return Plot(key, title, _png(figure), {"empty": True}, note=message)


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` events along axis 0 (shorter at the start)."""
    cumulative = np.cumsum(np.concatenate([np.zeros((1, *values.shape[1:])), values]), axis=0)
    upper = np.arange(1, len(values) + 1)
    lower = np.maximum(upper - window, 0)
    counts = (upper - lower).reshape(-1, *([1] * (values.ndim - 1)))
    return (cumulative[upper] - cumulative[lower]) / counts


def _window(n: int) -> int:
    return int(min(2_000, max(25, n // 60)))


def weights_plot(data: StreamData) -> Plot:
    """Ensemble weights of each deployed model over time, drift marked."""
    title = "Ensemble weights over time"
    weights = data.arrays["weights"]
    if len(weights) == 0:
        return _empty("weights", title, "No ensemble weights were recorded (the chain's first "
                      "stage publishes none, or no label arrived).")
    clock = _Clock(data)
    figure = Figure(figsize=(WIDTH, HEIGHT))
    axes = figure.add_subplot()
    x = clock(data.arrays["weights_ts"])
    for index, model in enumerate(data.meta["models"]):
        axes.plot(x, weights[:, index], linewidth=1.4, label=model)
    alarms, changes = _mark_drift(axes, data, clock)
    axes.set_xlabel(clock.label)
    axes.set_ylabel("weight")
    axes.set_title(f"{data.name}: ensemble weights ({data.meta['chain'][0]['type']})")
    axes.legend(loc="upper left", fontsize=8, ncol=2)
    return Plot("weights", title, _png(figure), {"lines": weights.shape[1],
                                                "drift_markers": alarms,
                                                "change_markers": changes,
                                                "points": len(x)})


def portfolio_plot(data: StreamData) -> Plot:
    """A portfolio's weight on each candidate chain over time, drift marked."""
    title = "Portfolio weights over time"
    weights = data.arrays.get("portfolio", np.zeros((0, 0)))
    if len(weights) == 0:
        return _empty("portfolio", title, "No portfolio: the chain's first stage is a single "
                      "ensemble (or no label arrived).")
    clock = _Clock(data)
    figure = Figure(figsize=(WIDTH, HEIGHT))
    axes = figure.add_subplot()
    x = clock(data.arrays["portfolio_ts"])
    for index, candidate in enumerate(data.meta.get("candidates", [])):
        axes.plot(x, weights[:, index], linewidth=1.4, label=candidate)
    alarms, changes = _mark_drift(axes, data, clock)
    axes.set_xlabel(clock.label)
    axes.set_ylabel("weight")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"{data.name}: portfolio weights (Fixed-Share over candidate chains)")
    axes.legend(loc="upper left", fontsize=8)
    return Plot("portfolio", title, _png(figure), {"lines": weights.shape[1],
                                                  "drift_markers": alarms,
                                                  "change_markers": changes,
                                                  "points": len(x)})


def _losses(data: StreamData) -> tuple[dict[str, np.ndarray], str]:
    """Per-event primary loss of each raw model, the ensemble output and the served one."""
    arrays = data.arrays
    labels = arrays["labels"]
    series: dict[str, np.ndarray] = {}
    if data.meta["task"] == "classification":
        targets = labels.astype(np.int64)
        for index, model in enumerate(data.meta["models"]):
            series[f"raw {model}"] = classification_losses(arrays["raw"][:, index],
                                                           targets)["log_loss"]
        if len(arrays["before"]) and data.meta.get("has_calibrator"):
            series["ensemble (before calibration)"] = classification_losses(
                arrays["before"], targets)["log_loss"]
        series["adapted (served)"] = classification_losses(arrays["served"],
                                                           targets)["log_loss"]
        return series, "log-loss"
    for index, model in enumerate(data.meta["models"]):
        series[f"raw {model}"] = (arrays["raw"][:, index] - labels) ** 2
    series["adapted (served)"] = (arrays["served"] - labels) ** 2
    return series, "squared error"


def rolling_loss_plot(data: StreamData) -> Plot:
    """Rolling loss of every raw model and of the adapted output, drift marked."""
    title = "Rolling loss: raw models vs adapted"
    n = len(data.arrays["labels"])
    if n == 0:
        return _empty("rolling_loss", title, "No labelled events were recorded.")
    clock = _Clock(data)
    series, unit = _losses(data)
    window = _window(n)
    figure = Figure(figsize=(WIDTH, HEIGHT))
    axes = figure.add_subplot()
    x = clock(data.arrays["label_ts"])
    for name, values in series.items():
        adapted = name.startswith("adapted")
        axes.plot(x, _rolling(values, window), linewidth=2.0 if adapted else 1.0,
                  color="black" if adapted else None, label=f"{name} ({values.mean():.4g})")
    alarms, changes = _mark_drift(axes, data, clock)
    axes.set_xlabel(clock.label)
    axes.set_ylabel(f"{unit}, trailing mean of {window} labels")
    axes.set_title(f"{data.name}: rolling {unit} (stream mean in the legend)")
    axes.legend(loc="upper left", fontsize=8, ncol=2)
    return Plot("rolling_loss", title, _png(figure), {"lines": len(series), "window": window,
                                                     "drift_markers": alarms,
                                                     "change_markers": changes})


def reliability_plot(data: StreamData) -> Plot:
    """Reliability diagrams (top-label) before calibration (the ensemble's output) and
    after (the served output), with the best raw model for reference."""
    title = "Reliability before and after calibration"
    arrays = data.arrays
    if data.meta["task"] != "classification":
        return _empty("reliability", title, "Regression stream: no probabilities to "
                      "calibrate.")
    if len(arrays["labels"]) == 0:
        return _empty("reliability", title, "No labelled events were recorded.")
    targets = arrays["labels"].astype(np.int64)
    summary = data.meta.get("summary", {}).get("scores", {})
    best_model = (summary.get("raw_best") or {}).get("model")
    best_index = data.meta["models"].index(best_model) if best_model in data.meta["models"] \
        else 0
    before = arrays["before"] if len(arrays["before"]) else arrays["served"]
    panels = [("before calibration (ensemble output)", before),
              ("after calibration (served)", arrays["served"])]
    note = "" if data.meta.get("has_calibrator") else (
        "This chain has no calibration stage: before and after differ only by the other "
        "stages.")
    figure = Figure(figsize=(WIDTH, HEIGHT + 0.6))
    eces = []
    for index, (name, proba) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for label, values, style in (
                (name, proba, "o-"),
                (f"raw {data.meta['models'][best_index]}", arrays["raw"][:, best_index], "s:")):
            losses = classification_losses(values, targets)
            confidence, accuracy, counts = reliability_bins(losses["confidence"],
                                                            losses["correct"])
            ece = expected_calibration_error(losses["confidence"], losses["correct"])
            keep = counts > 0
            axes.plot(confidence[keep], accuracy[keep], style, markersize=3,
                      label=f"{label} (ECE {ece:.3f})")
            if values is proba:
                eces.append(ece)
        axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top class)")
        axes.set_ylabel("accuracy")
        axes.set_title(name, fontsize=10)
        axes.legend(loc="upper left", fontsize=7)
    figure.suptitle(f"{data.name}: reliability diagrams")
    figure.subplots_adjust(wspace=0.3)
    return Plot("reliability", title, _png(figure), {"panels": 2, "ece_before": eces[0],
                                                    "ece_after": eces[1]}, note=note)


def class_mix_plot(data: StreamData) -> Plot:
    """True class mix (rolling label frequency) against the chain's estimate: the
    PriorShift stage's prior when the chain has one, and the mean served probability."""
    title = "Estimated class mix vs true"
    arrays = data.arrays
    if data.meta["task"] != "classification":
        return _empty("class_mix", title, "Regression stream: there is no class mix.")
    n = len(arrays["labels"])
    if n == 0:
        return _empty("class_mix", title, "No labelled events were recorded.")
    clock = _Clock(data)
    n_classes = int(data.meta["n_classes"])
    window = _window(n)
    truth = np.eye(n_classes)[arrays["labels"].astype(np.int64)]
    served = arrays["served"]
    shown = [1] if n_classes == 2 else list(range(n_classes))
    figure = Figure(figsize=(WIDTH, HEIGHT))
    axes = figure.add_subplot()
    x = clock(arrays["label_ts"])
    colors = [f"C{i % 10}" for i in range(n_classes)]
    lines = 0
    for c in shown:
        axes.plot(x, _rolling(truth[:, c], window), color=colors[c], linewidth=1.8,
                  label=f"class {c}: true share")
        axes.plot(x, _rolling(served[:, c], window), color=colors[c], linestyle=":",
                  linewidth=1.2, label=f"class {c}: mean served probability")
        lines += 2
    has_prior = bool(data.meta.get("has_prior_shift")) and len(arrays["prior"]) > 0
    if has_prior:
        px = clock(arrays["prior_ts"])
        for c in shown:
            axes.plot(px, arrays["prior"][:, c], color=colors[c], linestyle="--",
                      linewidth=1.4, label=f"class {c}: PriorShift estimate")
            lines += 1
    alarms, changes = _mark_drift(axes, data, clock)
    axes.set_xlabel(clock.label)
    axes.set_ylabel(f"share (trailing {window} labels)")
    axes.set_ylim(0, 1)
    axes.set_title(f"{data.name}: class mix")
    axes.legend(loc="upper left", fontsize=7, ncol=2)
    note = "" if has_prior else ("This chain has no PriorShift stage, so there is no prior "
                                 "estimate to show; the dotted lines are the mean served "
                                 "probability, the class mix the chain implies.")
    return Plot("class_mix", title, _png(figure), {"lines": lines, "prior_shift": has_prior,
                                                  "drift_markers": alarms,
                                                  "change_markers": changes}, note=note)


def pending_throughput_plot(data: StreamData, samples: dict[str, list]) -> Plot:
    """Pending labels (waiting predictions in the join) and records/s over the run."""
    title = "Pending labels and throughput"
    records = np.asarray(samples.get("records", []), dtype=np.float64)
    if len(records) < 2:
        return _empty("pending_throughput", title, "Too few samples were recorded "
                      "(a sample is taken every 256 records).")
    seconds = np.asarray(samples["seconds"], dtype=np.float64)
    pending = np.asarray(samples.get(f"pending:{data.name}", []), dtype=np.float64)
    figure = Figure(figsize=(WIDTH, HEIGHT))
    left = figure.add_subplot(1, 2, 1)
    left.plot(records, pending, color="C0")
    left.set_xlabel("records processed")
    left.set_ylabel("pending labels")
    left.set_title("pending labels (join size)", fontsize=10)
    right = figure.add_subplot(1, 2, 2)
    rate = np.diff(records) / np.maximum(np.diff(seconds), 1e-9)
    right.plot(seconds[1:], rate, color="C2")
    right.set_xlabel("wall-clock seconds")
    right.set_ylabel("records / s")
    right.set_ylim(bottom=0)
    overall = records[-1] / max(seconds[-1], 1e-9)
    right.set_title(f"throughput (all streams; overall {overall:,.0f}/s)", fontsize=10)
    figure.suptitle(f"{data.name}: pending labels and throughput")
    figure.subplots_adjust(wspace=0.35)
    return Plot("pending_throughput", title, _png(figure), {"panels": 2,
                                                           "samples": len(records),
                                                           "max_pending": float(pending.max())
                                                           if len(pending) else 0.0})


#: Labels in the rolling coverage window (as the service's rolling coverage gauge).
COVERAGE_WINDOW = 500


def coverage_plot(data: StreamData) -> Plot:
    """Rolling coverage of the served conformal sets / intervals per level against its
    target, and their rolling mean size (classes) or width."""
    title = "Conformal coverage and set size"
    covered = data.arrays.get("covered")
    levels = data.meta.get("conformal_levels") or []
    if covered is None or covered.size == 0 or not levels:
        return _empty("coverage", title, "No conformal layer on this stream (add a "
                      "conformal: block to its config).")
    clock = _Clock(data)
    x = clock(data.arrays["label_ts"])
    window = min(COVERAGE_WINDOW, len(covered))
    sizes = data.arrays["set_size"]
    figure = Figure(figsize=(WIDTH, HEIGHT))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    lines = 0
    for index, level in enumerate(levels):
        target = 1.0 - float(level)
        line, = left.plot(x, _rolling(covered[:, index], window), linewidth=1.2,
                          label=f"alpha {level} ({covered[:, index].mean():.3f})")
        left.axhline(target, color=line.get_color(), linestyle=":", linewidth=1.0)
        finite = np.where(np.isfinite(sizes[:, index]), sizes[:, index], np.nan)
        right.plot(x, _rolling(np.nan_to_num(finite, nan=np.nanmax(finite)
                                             if np.isfinite(finite).any() else 0.0), window),
                   color=line.get_color(), linewidth=1.2, label=f"alpha {level}")
        lines += 1
    alarms, changes = _mark_drift(left, data, clock)
    _mark_drift(right, data, clock)
    left.set_title(f"{data.name}: coverage over the last {window} labels (target dotted)",
                   fontsize=9)
    left.set_xlabel(clock.label, fontsize=8)
    left.legend(loc="lower left", fontsize=7)
    unit = "classes per set" if data.meta.get("task") == "classification" else \
        "interval width"
    right.set_title(f"mean {unit}, trailing {window} labels", fontsize=9)
    right.set_xlabel(clock.label, fontsize=8)
    figure.subplots_adjust(wspace=0.3)
    return Plot("coverage", title, _png(figure), {"lines": lines, "window": window,
                                                 "drift_markers": alarms,
                                                 "change_markers": changes,
                                                 "coverage": covered.mean(axis=0).tolist()})


def estimate_plot(data: StreamData) -> Plot:
    """Label-free estimated accuracy (mean top probability of the served predictions,
    by prediction time) against the realised accuracy (by label arrival time)."""
    title = "Estimated (label-free) vs realised accuracy"
    n = len(data.arrays["labels"])
    if data.meta.get("task") != "classification" or n == 0:
        return _empty("estimate", title, "Label-free estimates need classification "
                      "probabilities and at least one label.")
    clock = _Clock(data)
    served = data.arrays["served"]
    labels = data.arrays["labels"].astype(np.int64)
    order = np.argsort(data.arrays["prediction_ts"], kind="stable")
    window = _window(n)
    estimated = _rolling(served.max(axis=1)[order], window)
    realised = _rolling((served.argmax(axis=1) == labels).astype(np.float64), window)
    figure = Figure(figsize=(WIDTH, HEIGHT))
    axes = figure.add_subplot()
    axes.plot(clock(data.arrays["prediction_ts"][order]), estimated, linewidth=1.5,
              label=f"estimated, at prediction time ({estimated.mean():.3f})")
    axes.plot(clock(data.arrays["label_ts"]), realised, linewidth=1.5, color="black",
              label=f"realised, as labels arrive ({realised.mean():.3f})")
    alarms, changes = _mark_drift(axes, data, clock)
    axes.set_xlabel(clock.label)
    axes.set_ylabel(f"accuracy, trailing {window} events")
    axes.set_title(f"{data.name}: accuracy estimated without labels vs realised")
    axes.legend(loc="lower left", fontsize=8)
    return Plot("estimate", title, _png(figure), {"lines": 2, "window": window,
                                                 "drift_markers": alarms,
                                                 "change_markers": changes})


def stream_plots(data: StreamData, samples: dict[str, list]) -> list[Plot]:
    """Every plot of one stream, in page order."""
    return [weights_plot(data), portfolio_plot(data), rolling_loss_plot(data),
            reliability_plot(data), class_mix_plot(data), coverage_plot(data), estimate_plot(data),
            pending_throughput_plot(data, samples)]
