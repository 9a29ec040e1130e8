"""Per-record cost of the default chain (the portfolio) against the old default.

The pipeline's path for one record: ``Chain.observe_predict_trace(outputs)`` when the
prediction arrives, ``Chain.learn_trace(trace, y)`` when its label does (here the label
follows ``--delay`` records later). Chains, timed in alternating rounds on the same
events (K deployed models, binary by default) so machine noise hits them alike; the best
round of each is reported.

* ``old default``: FixedShare(0.01) → OnlinePlatt → DriftMemory (``configs/demo.yaml``
  before the portfolio);
* ``portfolio``: Portfolio (four candidate chains) → DriftMemory, the default now;
* each candidate alone → DriftMemory, to see where the time goes.

Run: ``python bench/portfolio.py [--events 3000] [--rounds 3] [--classes 2]``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from streamweights.adapters import Chain
from streamweights.adapters.portfolio import candidate_name, default_candidates
from streamweights.config import DEFAULT_CLASSIFICATION_ADAPTERS, StreamConfig

OLD_DEFAULT = [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
               {"type": "DriftMemory", "capacity": 64, "detector": "adwin"}]


def _chain(adapters: list[dict], n_models: int, n_classes: int) -> Callable[[], Chain]:
    config = StreamConfig(name="bench", task="classification", n_classes=n_classes,
                          models=tuple(f"m{i}" for i in range(n_models)),
                          adapters=tuple(adapters))
    return config.build_chain


def _events(n: int, n_models: int, n_classes: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, n_models, n_classes))
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return list(p), [int(v) for v in rng.integers(0, n_classes, size=n)]


def _run(factory: Callable[[], Chain], xs: list, ys: list, delay: int) -> float:
    chain = factory()
    pending = []
    started = time.perf_counter()
    for x, y in zip(xs, ys, strict=True):
        pending.append((chain.observe_predict_trace(x)[1], y))
        if len(pending) > delay:
            chain.learn_trace(*pending.pop(0))
    for trace, y in pending:
        chain.learn_trace(trace, y)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--delay", type=int, default=20)
    args = parser.parse_args(argv)
    k, c = args.models, args.classes
    tail = list(DEFAULT_CLASSIFICATION_ADAPTERS[1:])
    old = OLD_DEFAULT if c == 2 else [OLD_DEFAULT[0], {"type": "OnlineTemperature"},
                                      OLD_DEFAULT[2]]
    contenders = {"old default": _chain(old, k, c),
                  "portfolio (default)": _chain(list(DEFAULT_CLASSIFICATION_ADAPTERS), k, c)}
    for candidate in default_candidates(c):
        contenders[f"  candidate {candidate_name(candidate)}"] = _chain([*candidate, *tail],
                                                                          k, c)
    xs, ys = _events(args.events, k, c)
    best = {name: float("inf") for name in contenders}
    for _ in range(args.rounds):
        for name, factory in contenders.items():
            best[name] = min(best[name], _run(factory, xs, ys, args.delay))
    base = best["old default"]
    print(f"K={k} C={c}, {args.events} records (prediction + label each), best of "
          f"{args.rounds} rounds")
    for name, seconds in best.items():
        per_record = seconds / args.events * 1e6
        print(f"{name:<48} {per_record:9.1f} µs/record  {seconds / base:5.2f}x old default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
