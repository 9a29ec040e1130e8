"""Feature-aware correction vs the default chain and river's ADWIN-retrained tree.

Runs, on the evaluation suite's classification streams (every one carries features),
the default chain, the default chain with a :class:`FeatureCorrection` stage before its
drift memory (predictions carry the event's features), river's ADWIN-retrained Hoeffding
tree on the features, and the best raw model in hindsight; prints the prequential
log-loss and ECE of each, and the feature chain's loss ÷ each reference.

Run: ``.venv/bin/python bench/features.py --streams sea-abrupt,phishing --events 5000``
(all classification streams at full length take several minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from the repo root without installing
    sys.path.insert(0, str(ROOT))

from streamweights.evaluation.contenders import (  # noqa: E402
    PipelineContender,
    RawModel,
    RiverContender,
    default_chain,
    feature_chain,
)
from streamweights.evaluation.episode import build_episode  # noqa: E402
from streamweights.evaluation.metrics import (  # noqa: E402
    expected_calibration_error,
    losses_for,
)
from streamweights.evaluation.streams import suite_streams  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", help="comma-separated names (default: every "
                        "classification stream of the suite)")
    parser.add_argument("--events", type=int, help="at most this many events per stream")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--forgetting", type=float, default=None)
    args = parser.parse_args(argv)
    names = args.streams.split(",") if args.streams else None
    streams = [s for s in suite_streams(names, events=args.events)
               if s.task == "classification"]
    options = {} if args.forgetting is None else {"forgetting": args.forgetting}
    print(f"{'stream':22} {'contender':22} {'log-loss':>9} {'ECE':>7} {'sec':>6}")
    for stream in streams:
        episode = build_episode(
            stream.make_examples(args.seed), task=stream.task,
            train_window=stream.train_window, events=stream.events, seed=args.seed,
            seconds_between_events=stream.seconds_between_events,
            mean_label_delay_seconds=stream.mean_label_delay_seconds,
            missing_label_rate=stream.missing_label_rate, name=stream.name)
        n_features = len(episode.train_features[0])
        contenders = [RawModel(f"raw:{n}", "raw", "", index=i)
                      for i, n in enumerate(episode.model_names)]
        contenders += [
            RiverContender("river ADWIN retrain", "river", "", kind="retrain", seed=args.seed),
            PipelineContender("default chain", "ours", "",
                              adapters=default_chain(stream.task, episode.n_classes)),
            PipelineContender("feature chain", "ours", "", with_features=True,
                              adapters=feature_chain(episode.n_classes, n_features, **options)),
        ]
        labelled = episode.labelled
        targets = episode.targets[labelled]
        scores = {}
        for contender in contenders:
            started = time.perf_counter()
            run = contender.run(episode)
            proba = run.predictions[labelled]
            loss = float(losses_for(stream.task, proba, targets)["log_loss"].mean())
            correct = (proba.argmax(axis=1) == targets).astype(float)
            ece = float(expected_calibration_error(proba.max(axis=1), correct))
            scores[contender.name] = (loss, ece, time.perf_counter() - started)
        best_raw = min((n for n in scores if n.startswith("raw:")), key=lambda n: scores[n][0])
        for name in (best_raw, "river ADWIN retrain", "default chain", "feature chain"):
            loss, ece, seconds = scores[name]
            print(f"{stream.name:22} {name:22} {loss:9.4f} {ece:7.4f} {seconds:6.1f}")
        ours = scores["feature chain"][0]
        print(f"{stream.name:22} feature/default {ours / scores['default chain'][0]:.3f}  "
              f"feature/river {ours / scores['river ADWIN retrain'][0]:.3f}  "
              f"feature/best-raw {ours / scores[best_raw][0]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
