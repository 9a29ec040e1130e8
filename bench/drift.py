"""Per-update cost of the core's drift detectors, side by side with river's (issue 11 item 3).

Every contender sees the same values in the same process, timed in alternating rounds so
machine noise hits them alike; the best round of each is reported.

* ours, per update: ``streamweights._native.Adwin.update`` / ``PageHinkley.update``
  called once per value from Python, as DriftMemory calls it (the headline).
* ours, batch: ``update_many`` on the whole list (one call; no service path uses it yet).
* river, per update: ``drift.ADWIN.update`` / ``drift.PageHinkley.update``.
* DriftMemory's per-event verbs (``observe`` + ``learn``) on its default ADWIN, with the
  core's detector and with river's (``tests/reference/drift_monitor.py``): how much of the
  adapter's cost the detector was.

Values: a Bernoulli loss stream whose rate goes 0.1 -> 0.4 -> 0.2 (ADWIN's window grows,
is cut, grows again), and Gaussian noise with a mean shift for Page-Hinkley.

Run: ``python bench/drift.py [--events 100000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from river import drift as river_drift

from streamweights import _native
from streamweights.adapters import DriftMemory
from tests.reference.drift_monitor import river_memory


def _per_update(factory: Callable[[], object], values: list[float]) -> Callable[[], float]:
    def run() -> float:
        detector = factory()
        update = detector.update
        start = time.perf_counter()
        for value in values:
            update(value)
        return time.perf_counter() - start

    return run


def _batch(factory: Callable[[], object], values: list[float]) -> Callable[[], float]:
    def run() -> float:
        detector = factory()
        start = time.perf_counter()
        detector.update_many(values)
        return time.perf_counter() - start

    return run


def _memory(factory: Callable[[], DriftMemory], rows: np.ndarray,
            labels: list[int]) -> Callable[[], float]:
    def run() -> float:
        memory = factory()
        start = time.perf_counter()
        for row, label in zip(rows, labels, strict=True):
            memory.observe(row)
            memory.learn(row, label)
        return time.perf_counter() - start

    return run


def _streams(n: int) -> tuple[list[float], list[float], np.ndarray, list[int]]:
    rng = np.random.default_rng(0)
    index = np.arange(n)
    rate = np.where(index < n // 2, 0.1, np.where(index < 3 * n // 4, 0.4, 0.2))
    losses = (rng.random(n) < rate).astype(np.float64).tolist()
    gaussian = (rng.normal(size=n) + np.where(index < n // 2, 0.0, 0.5)).tolist()
    logits = rng.normal(scale=2.0, size=(n, 2))
    rows = np.exp(logits - logits.max(axis=1, keepdims=True))
    rows /= rows.sum(axis=1, keepdims=True)
    labels = np.where(rng.random(n) < rate, 1 - rows.argmax(axis=1), rows.argmax(axis=1))
    return losses, gaussian, rows, labels.tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="values per timed round")
    parser.add_argument("--memory-events", type=int, default=20_000,
                        help="events per timed round for the DriftMemory pair")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args(argv)
    losses, gaussian, rows, labels = _streams(max(args.events, args.memory_events))
    losses, gaussian = losses[:args.events], gaussian[:args.events]
    rows, labels = rows[:args.memory_events], labels[:args.memory_events]
    groups = [
        ("ADWIN (defaults, clock 32), Bernoulli losses", args.events, [
            ("ours per update", _per_update(_native.Adwin, losses)),
            ("ours batch", _batch(_native.Adwin, losses)),
            ("river per update", _per_update(river_drift.ADWIN, losses))]),
        ("ADWIN (clock 1), Bernoulli losses", args.events, [
            ("ours per update", _per_update(lambda: _native.Adwin(clock=1), losses)),
            ("ours batch", _batch(lambda: _native.Adwin(clock=1), losses)),
            ("river per update", _per_update(lambda: river_drift.ADWIN(clock=1), losses))]),
        ("PageHinkley (defaults), Gaussian mean shift", args.events, [
            ("ours per update", _per_update(_native.PageHinkley, gaussian)),
            ("ours batch", _batch(_native.PageHinkley, gaussian)),
            ("river per update", _per_update(river_drift.PageHinkley, gaussian))]),
        ("DriftMemory(64, 2, adwin) observe+learn", args.memory_events, [
            ("core detector", _memory(lambda: DriftMemory(64, 2), rows, labels)),
            ("river detector", _memory(lambda: river_memory(capacity=64, n_classes=2),
                                       rows, labels))]),
    ]
    print(f"{args.events} values ({args.memory_events} events for DriftMemory) x "
          f"{args.rounds} alternating rounds, best round", flush=True)
    for title, n, contenders in groups:
        best = [math.inf] * len(contenders)
        for _ in range(args.rounds):
            for index, (_, run) in enumerate(contenders):
                best[index] = min(best[index], run())
        reference = best[-1]
        print(title)
        for (name, _), seconds in zip(contenders, best, strict=True):
            print(f"  {name:<18} {seconds / n * 1e9:>8.0f} ns/value  {n / seconds:>12,.0f}/s  "
                  f"x{reference / seconds:.2f} of river", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
