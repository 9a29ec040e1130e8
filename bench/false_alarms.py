"""Drift reactions on streams with no change: the false-alarm rate (issue 14, must-hold 3).

Goal: at most 1 drift reaction per 100,000 events on stationary streams, while an abrupt
0/1 error rise 0.1 -> 0.4 is still reacted to within 500 events (tests cover both).

Every stream runs through the service's pipeline with the evaluation's default chain
(``FixedShare(0.01) -> OnlinePlatt -> DriftMemory(64, adwin)``; ``OnlineTemperature``
for more than two classes) twice: **before** (``significance: null``: every detector alarm
is a reaction, the behaviour before the evidence test) and **after** (the default:
an alarm needs evidence of a rise at α = 1e-5). An *event* here is one labelled
prediction; reactions are counted per 100,000 of them.

Streams (none has a change):

* ``iid``: three synthetic models see the true logits plus noise (sd 0.3, 0.8, 1.5);
  ``calibrated`` outputs their softmax, ``overconfident`` the softmax of 3 x the noisy
  logits; ``+constant`` adds a fourth model that always says uniform (the replay bug of
  issue 14's first-hour report). Labels arrive 10 events late.
* ``wandering``: as ``iid overconfident``, but the logits' scale follows a stationary
  AR(1) (φ = 0.995, so the error rate wanders over hundreds of events): stationary, not
  independent — the case where ADWIN's independence assumption breaks.
* ``runs rho``: three models that are right or wrong together, their correctness a
  stationary binary AR(1) (accuracy 0.85, lag-1 correlation ρ = 0.6 or 0.9: errors come
  in runs): dependent 0/1 losses with a constant marginal rate (as
  ``tests/test_pipeline_false_alarms.py``).
* ``shuttle-shuffled``: the real Shuttle stream (river's bundled file, the evaluation's
  episode: deployed models trained on its first 3,000 rows) with the replayed rows shuffled
  (seeded), so its order carries no change at all.

Regression streams have no drift reaction to measure: the service's regression chain is a
single ensemble stage and ``DriftMemory`` is a classification stage.

Measured (three seeds x 100,000 labelled events per stream, reactions in all three;
"no evidence" is the bench's *before* column, "evidence" its *after* column before the
dependence measure of issue 14 item 3, "now" with it):

=============================  ===========  ========  ===
stream                         no evidence  evidence  now
=============================  ===========  ========  ===
iid calibrated                           0         0    0
iid overconfident +constant              7         2    0
iid 3-class overconfident                0         0    0
wandering overconfident                 90        16    0
runs rho=0.6                            94        84    0
runs rho=0.9                           923       314    0
shuttle-shuffled (45,866 each)           0         0    0
=============================  ===========  ========  ===

Run: ``python bench/false_alarms.py [--events 100000] [--seeds 3] [--skip-real] [--only TEXT]``
(~10 s per 100,000 synthetic events and chain on one core; both chains run per stream).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamweights.config import StreamConfig
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline

BEFORE = {"significance": None}
AFTER: dict[str, Any] = {}


def default_chain(n_classes: int, memory: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    calibrator = {"type": "OnlinePlatt"} if n_classes == 2 else {"type": "OnlineTemperature"}
    return ({"type": "FixedShare", "share": 0.01}, calibrator,
            {"type": "DriftMemory", "capacity": 64, "detector": "adwin", **memory})


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def synthetic(seed: int, n: int, n_classes: int, sharpness: float, constant: bool = False,
              wandering: bool = False, delay: int = 10) -> tuple[list[str], Iterator[Any]]:
    """Model names and records of a stationary synthetic stream (see the module doc)."""
    rng = np.random.default_rng(seed)
    scale = np.full(n, 1.5)
    if wandering:  # stationary AR(1) in log-scale, unit variance
        phi, a = 0.995, np.empty(n)
        a[0] = rng.normal()
        shocks = rng.normal(scale=np.sqrt(1 - phi ** 2), size=n)
        for t in range(1, n):
            a[t] = phi * a[t - 1] + shocks[t]
        scale = 1.5 * np.exp(0.4 * a)
    z = rng.normal(size=(n, n_classes)) * scale[:, None]
    truth = _softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    outputs = [_softmax(sharpness * (z + rng.normal(scale=noise, size=z.shape)))
               for noise in (0.3, 0.8, 1.5)]
    if constant:
        outputs.append(np.full((n, n_classes), 1.0 / n_classes))
    names = [f"m{k}" for k in range(len(outputs))]

    def records() -> Iterator[Any]:
        for i in range(n + delay):
            if i < n:
                yield Prediction("s", f"e{i}", float(i),
                                 {name: out[i].tolist() for name, out in zip(names, outputs,
                                                                             strict=True)})
            if i >= delay:
                j = i - delay
                yield Label("s", f"e{j}", i + 0.5, int(labels[j]))
    return names, records()


def runs(seed: int, n: int, rho: float, delay: int = 10) -> tuple[list[str], Iterator[Any]]:
    """Model names and records of the ``runs`` stream (see the module doc)."""
    rng = np.random.default_rng(seed)
    fresh = rng.random(n) < 0.85
    keep = rng.random(n) < rho
    right = fresh.copy()
    for t in range(1, n):
        if keep[t]:
            right[t] = right[t - 1]
    labels = (rng.random(n) < 0.5).astype(int)
    said = np.where(right, labels, 1 - labels)
    confidence = rng.uniform(0.55, 0.95, size=(n, 3))
    names = ["m0", "m1", "m2"]

    def records() -> Iterator[Any]:
        for i in range(n + delay):
            if i < n:
                outputs = {}
                for k, name in enumerate(names):
                    p = float(confidence[i, k])
                    outputs[name] = [p, 1.0 - p] if said[i] == 0 else [1.0 - p, p]
                yield Prediction("s", f"e{i}", float(i), outputs)
            if i >= delay:
                yield Label("s", f"e{i - delay}", i + 0.5, int(labels[i - delay]))
    return names, records()


def reactions(names: list[str], n_classes: int, records: Iterator[Any],
              memory: dict[str, Any]) -> tuple[int, int, list[int]]:
    """Labels learned, drift reactions, and the label counts at the first few."""
    config = StreamConfig(name="s", task="classification", n_classes=n_classes,
                          models=tuple(names), adapters=default_chain(n_classes, memory))
    pipeline = Pipeline([config])
    at = []
    for record in records:
        outcome = pipeline.process(record)
        if outcome.drift is not None:
            at.append(outcome.drift["label_count"])
    state = pipeline.streams["s"]
    return state.labels, state.drift_total, at[:5]


def shuttle_shuffled(seed: int) -> tuple[list[str], int, Iterator[Any], int]:
    from streamweights.evaluation.contenders import service_records
    from streamweights.evaluation.episode import PREDICTION, build_episode
    from streamweights.evaluation.streams import suite_streams

    (stream,) = suite_streams(["shuttle"])
    examples = list(stream.make_examples(7))
    head, tail = examples[:stream.train_window], examples[stream.train_window:]
    random.Random(seed).shuffle(tail)
    episode = build_episode(head + tail, task=stream.task, train_window=stream.train_window,
                            events=stream.events, seed=7,
                            seconds_between_events=stream.seconds_between_events,
                            mean_label_delay_seconds=stream.mean_label_delay_seconds,
                            missing_label_rate=stream.missing_label_rate, name="s")
    predictions, labels = service_records(episode, False)

    def records() -> Iterator[Any]:
        for kind, i in episode.schedule.tolist():
            yield predictions[i] if kind == PREDICTION else labels[i]
    return list(episode.model_names), episode.n_classes, records(), episode.n_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--only", default="", help="run only the streams whose name "
                        "contains this text")
    args = parser.parse_args()
    cases = [("iid calibrated", 2, 1.0, False, False),
             ("iid overconfident +constant", 2, 3.0, True, False),
             ("iid 3-class overconfident", 3, 3.0, False, False),
             ("wandering overconfident", 2, 3.0, False, True),
             ("runs rho=0.6", 2, 0.6, False, False), ("runs rho=0.9", 2, 0.9, False, False)]
    totals: dict[str, list[int]] = {"before": [0, 0], "after": [0, 0]}
    print(f"{'stream':32} {'seed':>4} {'labels':>7} {'before':>7} {'after':>6}  first reactions "
          "before / after")
    for name, n_classes, sharpness, constant, wandering in cases:
        if args.only not in name:
            continue
        for seed in range(args.seeds):
            counts = {}
            for label, memory in (("before", BEFORE), ("after", AFTER)):
                if name.startswith("runs"):  # ``sharpness`` is rho here
                    names, records = runs(seed, args.events, sharpness)
                else:
                    names, records = synthetic(seed, args.events, n_classes, sharpness,
                                               constant, wandering)
                counts[label] = reactions(names, n_classes, records, memory)
                totals[label][0] += counts[label][0]
                totals[label][1] += counts[label][1]
            labels = counts["before"][0]
            print(f"{name:32} {seed:4d} {labels:7d} {counts['before'][1]:7d} "
                  f"{counts['after'][1]:6d}  {counts['before'][2]} / {counts['after'][2]}",
                  flush=True)
    if not args.skip_real and args.only in "shuttle-shuffled":
        for seed in range(args.seeds):
            counts = {}
            for label, memory in (("before", BEFORE), ("after", AFTER)):
                names, n_classes, records, _ = shuttle_shuffled(seed)
                counts[label] = reactions(names, n_classes, records, memory)
                totals[label][0] += counts[label][0]
                totals[label][1] += counts[label][1]
            print(f"{'shuttle-shuffled':32} {seed:4d} {counts['before'][0]:7d} "
                  f"{counts['before'][1]:7d} {counts['after'][1]:6d}  {counts['before'][2]} / "
                  f"{counts['after'][2]}", flush=True)
    for label, (labels, count) in totals.items():
        print(f"{label}: {count} reaction(s) in {labels:,} labelled events = "
              f"{1e5 * count / max(labels, 1):.2f} per 100,000")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"{time.perf_counter() - started:.0f} s")
