"""Throughput of a default stream whose predictions carry features, as the service runs it.

The stream declares ``features`` and keeps the default adapters (the portfolio with its
feature candidate, then the drift memory); each record is decoded, processed and its
outputs encoded, as ``bench/service.py``'s "ours" does. Runs it twice: with the portfolio
core driving the candidates (what the service does) and with the core unbound (the Python
loop over the candidate chains, what such a stream ran before the core drove feature
candidates). Prints events/s (one event: a prediction and its label) of each.

Run: ``.venv/bin/python bench/portfolio_features.py --events 20000`` (about a minute on
a 2-core machine; the loop is the slow part).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time
from collections.abc import Iterator

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from the repo root without installing
    sys.path.insert(0, str(ROOT))

from streamweights import events  # noqa: E402
from streamweights.adapters import portfolio as portfolio_module  # noqa: E402
from streamweights.config import StreamConfig, parse_config  # noqa: E402
from streamweights.pipeline import Pipeline  # noqa: E402

MODELS = ("a", "b", "c")


def stream_config(n_classes: int, n_features: int) -> StreamConfig:
    """A stream with the default adapters that declares ``n_features`` features."""
    spec: dict = {"name": "s", "models": list(MODELS), "features": n_features}
    if n_classes != 2:
        spec["classes"] = n_classes
    (config,) = parse_config({"streams": [spec]}).streams
    return config


def raw_records(n: int, n_classes: int, n_features: int, delay: int,
                seed: int) -> list[bytes]:
    """Predictions with features and their labels ``delay`` events late, encoded."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, n_features))
    labels = rng.integers(n_classes, size=n)
    out = []
    for i in range(n):
        logits = rng.normal(size=(len(MODELS), n_classes))
        logits[:, labels[i]] += 1.0 + features[i, 0]
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        outputs = {m: proba[k].tolist() for k, m in enumerate(MODELS)}
        out.append(events.encode(events.Prediction("s", f"e{i}", float(i), outputs,
                                                   features[i].tolist())))
        if i >= delay:
            out.append(events.encode(events.Label("s", f"e{i - delay}", i + 0.5,
                                                  int(labels[i - delay]))))
    return out


@contextlib.contextmanager
def python_loop() -> Iterator[None]:
    """Portfolios built inside run their candidates in the Python loop."""
    saved = portfolio_module.native_stage_specs
    portfolio_module.native_stage_specs = lambda *_, **__: None
    try:
        yield
    finally:
        portfolio_module.native_stage_specs = saved


def run(config: StreamConfig, records: list[bytes], loop: bool) -> tuple[float, bool]:
    """Seconds to decode, process and encode every record; whether the core drove."""
    with python_loop() if loop else contextlib.nullcontext():
        pipeline = Pipeline([config])
    native = pipeline.streams["s"].chain.stages[0].native
    decode, encode = events.decode, events.encode
    started = time.perf_counter()
    for raw in records:
        outcome = pipeline.process(decode(raw))
        if outcome.adapted is not None:
            encode(outcome.adapted)
        for weights in outcome.weights:
            encode(weights)
    seconds = time.perf_counter() - started
    if pipeline.invalid:
        raise SystemExit(f"records refused: {pipeline.invalid}")
    return seconds, native


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--delay", type=int, default=20, help="labels this many events late")
    args = parser.parse_args(argv)
    config = stream_config(args.classes, args.features)
    records = raw_records(args.events, args.classes, args.features, args.delay, seed=0)
    print(f"{args.events:,} events, {args.classes} classes, {args.features} features, "
          f"labels {args.delay} events late; default adapters")
    for loop in (True, False):
        seconds, native = run(config, records, loop)
        print(f"  {'python loop' if loop else 'native core'} (portfolio native: {native}): "
              f"{args.events / seconds:,.0f} events/s ({seconds:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
