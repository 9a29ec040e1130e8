"""Events/s of the whole in-process pipeline, side by side with the closest pure-river one.

Stream: the default scenario (``configs/demo.yaml``: Agrawal concepts recurring, three
frozen deployed models, labels ~20 s later in event time), replayed by
``streamweights.runtime.replay.ReplayStream``. Its raw JSON records are generated once,
before any timing: generation runs the river models that play the deployed models, and
that is the world's work, not the pipeline's. Both contenders then consume the *same
bytes*, which carry the deployed models' precomputed outputs; neither calls a model. The
records are copied into objects allocated one after another before any timing, the
layout a Kafka fetch buffer or a file read gives the service (as generated, each record
sits among the models' garbage and costs both sides a cache miss).
An *event* is one input record, a prediction or a label (what
``streamweights_events_total`` counts); predictions/s is printed too.

ours — exactly what the service does per record, minus I/O and metrics: the core's
record lane (``Pipeline.record_lane``: one core call from the raw bytes to the stream's
updated state and the adapted record's bytes, for a classification stream whose chain
the core drives whole, its conformal layers and estimates included) for every record it
takes, else ``events.decode`` (orjson + strict validation) → ``Pipeline.process`` (join,
the chain, prequential scores of the deployed models and the served output, drift
reaction, weights versions) → ``events.encode`` of the adapted record and of every
weights version. Both write an adapted record per prediction, as river's side does.
``ours, general path only`` runs every record the second way (the code before the lane),
for comparison. ``ours, river's work`` is the record lane over the chain that does what
river's like-for-like pipeline does (FixedShare -> OnlinePlatt -> DriftMemory with ADWIN,
``configs/kafka.yaml``'s chain; the same join, scores and weights versions), without the
default's portfolio of four candidate chains, its four conformal layers (the served
output's and, ``compare_raw``, one per deployed model; DtACI, eight experts per level) and
its label-free estimates: the default does several times river's work per record, this
one the same work, and both ratios are printed. ``--service-loop`` also times the service's
own loop (``Service._loop`` over the records in memory: the same plus Prometheus counters,
the latency histogram, routing to sinks, here none, and the loop's per-record checks; no
checkpoints). ``ours, batch entry point`` is the same work
through ``Pipeline.process_many`` in runs of 16 records (the same outputs; today a Python
loop over the per-record path, so it times what a run saves in dispatch alone).

river — the closest pure-river pipeline, built to be fast and fair:

* decode: ``orjson.loads`` (the same library ours uses), no validation at all;
* join: a plain ``dict`` id → (model outputs, served probability), unbounded, no TTL;
* mixture: ``river.ensemble.EWARegressor`` over the three deployed models' class-1
  probabilities (each model is a frozen river ``Regressor`` that returns its
  precomputed output), squared loss, learning rate 0.5. Why this one: river has no
  classifier that mixes experts by exponential weights. EWARegressor is river's own
  exponentially-weighted-average forecaster, the algorithm family FixedShare belongs to
  (Hedge plus a share step), and its output is the same linear pool of probabilities;
  squared loss on the class-1 probability is half the binary Brier score, a proper
  scoring rule. river's log loss (``optim.losses.Log``) takes margins, not
  probabilities, so it would turn the mixture into a pool of logits; the
  ``model_selection`` bandits pick one model instead of mixing, and
  ``ensemble.StackingClassifier`` learns a meta-model rather than expert weights.
* score: ``river.metrics.LogLoss`` of the served probability, before learning;
* drift: ``river.drift.ADWIN`` on the zero-one loss of the served probability (what
  ours' DriftMemory monitors by default); on a detection the mixture's weights are reset
  to uniform;
* encode: ``orjson.dumps`` of the adapted record and, every 1,000 labels or 60 s of
  event time (the demo's publishing rule), of a weights record.

The river side therefore does strictly less work than ours: no input validation, no
bounded join, no calibration stage, no replay memory, one score instead of four scores
for four forecasters. The comparison is conservative for ours.

Timing: fresh state per round, rounds alternate ours / river so machine noise hits both
alike, best round of each is reported. ``--one-core`` pins the process to one CPU first
(``os.sched_setaffinity``); ``--profile`` runs ours once under cProfile and prints the
top 15 functions by own time; ``--split`` prints the per-record split (decode, process
with its native core calls by name, encode).

Run: ``python bench/service.py [--rounds 5] [--events 60000] [--one-core] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import itertools
import json
import logging
import math
import os
import platform
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from the repo root without installing the package
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import river  # noqa: E402
from river import base as river_base  # noqa: E402
from river import drift as river_drift  # noqa: E402
from river import ensemble as river_ensemble  # noqa: E402
from river import linear_model as river_linear  # noqa: E402
from river import metrics as river_metrics  # noqa: E402
from river import optim as river_optim  # noqa: E402

import streamweights  # noqa: E402
from streamweights import events  # noqa: E402
from streamweights.config import ServiceConfig, load_config  # noqa: E402
from streamweights.pipeline import Pipeline  # noqa: E402
from streamweights.runtime.replay import ReplayStream  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"


# -- the stream ---------------------------------------------------------------------------
def generate_records(config: ServiceConfig, n_events: int | None) -> list[bytes]:
    """The replay's raw records, all of them, generated before any timing."""
    source = config.source if n_events is None else dataclasses.replace(config.source,
                                                                        events=n_events)
    started = time.perf_counter()
    records = []
    for _, raw in ReplayStream(source).records():
        records.append(raw)
        if len(records) % 50_000 == 0:
            print(f"  generated {len(records):,} records ...", flush=True)
    seconds = time.perf_counter() - started
    print(f"generated {len(records):,} records of scenario {source.scenario!r} "
          f"({'the default number of' if source.events is None else f'{source.events:,}'} "
          f"events, seed {source.seed}) in {seconds:.1f}s "
          f"({len(records) / seconds:,.0f} records/s, not timed)", flush=True)
    return consecutive(records)


def consecutive(records: list[bytes]) -> list[bytes]:
    """The same records as fresh objects allocated one after another, as the service
    gets them (sliced from a Kafka fetch buffer, or read line by line from a file).
    Generation leaves each record among the garbage of the models that made it, which
    cost both contenders a cache miss per record (~9% of ours' time)."""
    blob = b"".join(records)
    out, start = [], 0
    for raw in records:
        out.append(blob[start:start + len(raw)])
        start += len(raw)
    assert out == records
    return out


# -- ours ---------------------------------------------------------------------------------
#: The chain that does the work river's like-for-like pipeline does (a mixture of the
#: deployed models, then Platt scaling, ADWIN watching the zero-one loss), as
#: ``configs/kafka.yaml`` runs it: no portfolio of candidate chains, no conformal layers,
#: no label-free estimates.
LIKE_FOR_LIKE_ADAPTERS = ({"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
                          {"type": "DriftMemory", "capacity": 64, "detector": "adwin"})


def like_for_like(config: ServiceConfig) -> ServiceConfig:
    """``config`` with its first stream running :data:`LIKE_FOR_LIKE_ADAPTERS` only (the
    join, the four prequential scores, drift reaction and weights versions unchanged)."""
    first = dataclasses.replace(config.streams[0], adapters=LIKE_FOR_LIKE_ADAPTERS,
                                conformal=None, performance_estimate=None)
    return dataclasses.replace(config, streams=(first, *config.streams[1:]))


def ours_setup(config: ServiceConfig) -> Callable[[], Pipeline]:
    return lambda: Pipeline(config.streams)


def ours_run(records: list[bytes], lane: bool = True) -> Callable[[Pipeline], object]:
    """What ``Service._loop`` does per record: the core's record lane
    (``Pipeline.record_lane``) for the records it takes, which hands back the adapted
    record's bytes or an outcome to encode, else decode -> process -> encode. With
    ``lane=False`` every record takes the general path (the code before the lane)."""
    decode, encode = events.decode, events.encode
    record_error = events.RecordError

    def run(pipeline: Pipeline) -> object:
        process, reject = pipeline.process, pipeline.reject
        record_lane = pipeline.record_lane() if lane else None
        laned = record_lane.process if record_lane is not None else None
        out = 0
        for raw in records:
            if laned is not None:
                done = laned(raw, True)
                if done is not None:
                    result = done[1]
                    if result is None:
                        continue
                    if type(result) is bytes:
                        out += len(result)
                        continue
                    if result.adapted is not None:
                        out += len(encode(result.adapted))
                    for weights in result.weights:
                        out += len(encode(weights))
                    continue
            try:
                record = decode(raw)
            except record_error as error:
                reject(error, raw)
                continue
            outcome = process(record)
            if outcome.adapted is not None:
                out += len(encode(outcome.adapted))
            for weights in outcome.weights:
                out += len(encode(weights))
        return out

    return run


def ours_many_run(records: list[bytes], run_records: int) -> Callable[[Pipeline], object]:
    """``Pipeline.process_many`` over runs of ``run_records`` records (decode, process and
    encode inside): the batch entry point, the same outputs as ``ours_run``."""
    runs = [records[start:start + run_records] for start in range(0, len(records),
                                                                   run_records)]

    def run(pipeline: Pipeline) -> object:
        process_many = pipeline.process_many
        out = 0
        for chunk in runs:
            for kind, _, encoded, _ in process_many(chunk):
                if kind != "error":
                    adapted, weights = encoded
                    if adapted is not None:
                        out += len(adapted)
                    for raw in weights:
                        out += len(raw)
        return out

    return run


def service_setup(config: ServiceConfig, state_dir: str) -> Callable[[], object]:
    from streamweights.runtime.service import Service

    # The service logs each drift detection as a warning; a handful of lines per run, but
    # not wanted between the benchmark's own lines.
    logging.getLogger("streamweights").setLevel(logging.ERROR)
    rounds = itertools.count()

    def setup() -> object:
        # A fresh state folder per round: each Service holds its folder's lock for its life.
        folder = os.path.join(state_dir, f"round-{next(rounds)}")
        # (a Kafka config's streams over the replayed records: the loop, not the broker;
        # no checkpoints, which are not per-record work)
        bare = dataclasses.replace(config, http_port=None, adapted_path=None,
                                   weights_path=None, dead_letter_path=None, state_dir=folder,
                                   source=dataclasses.replace(config.source, kind="replay"),
                                   kafka=None, checkpoint_every_records=1 << 62,
                                   checkpoint_every_seconds=math.inf)
        return Service(bare, state_dir=folder)

    return setup


def service_run(records: list[bytes]) -> Callable[[object], object]:
    from streamweights.runtime.sources import RecordsSource

    def run(service) -> object:
        # ``Service._loop`` itself over the records in memory (the lane or the general
        # path, counters, the latency histogram, position and cadence checks), ending
        # at the bound, before the end-of-input weights versions.
        service.source = RecordsSource(records)
        service.max_records = len(records)
        service._loop()
        return service.pipeline.summary()

    return run


# -- river --------------------------------------------------------------------------------
class FrozenModel(river_base.Regressor):
    """A deployed model as river sees it: returns its precomputed class-1 probability
    (from the prediction record) and learns nothing, so only the mixture's cost counts."""

    def __init__(self, name: str) -> None:
        self.name = name

    def learn_one(self, x, y):
        return None

    def predict_one(self, x):
        return x[self.name]


@dataclasses.dataclass
class RiverPipeline:
    models: tuple[str, ...]
    mixture: river_ensemble.EWARegressor
    detector: river_drift.ADWIN
    score: river_metrics.LogLoss
    pending: dict
    publish_every_labels: int
    publish_every_seconds: float


def river_setup(config: ServiceConfig) -> Callable[[], RiverPipeline]:
    stream = config.streams[0]

    def setup() -> RiverPipeline:
        return RiverPipeline(
            models=tuple(stream.models),
            mixture=river_ensemble.EWARegressor([FrozenModel(m) for m in stream.models],
                                                learning_rate=0.5),
            detector=river_drift.ADWIN(), score=river_metrics.LogLoss(), pending={},
            publish_every_labels=stream.publish_every_labels,
            publish_every_seconds=stream.publish_every_seconds)

    return setup


def river_run(records: list[bytes]) -> Callable[[RiverPipeline], object]:
    loads, dumps = orjson.loads, orjson.dumps

    def run(state: RiverPipeline) -> object:
        mixture, detector, score, pending = state.mixture, state.detector, state.score, \
            state.pending
        predict, learn, update_detector = mixture.predict_one, mixture.learn_one, \
            detector.update
        update_score = score.update
        models = state.models
        every_labels, every_seconds = state.publish_every_labels, state.publish_every_seconds
        version = labels_since = drifts = out = 0
        last_publish = None
        for raw in records:
            record = loads(raw)
            ts = record["ts"]
            if last_publish is None:
                last_publish = ts
            if "outputs" in record:
                outputs = record["outputs"]
                x = {name: outputs[name][1] for name in models}
                p1 = predict(x)
                pending[record["id"]] = (x, p1)
                out += len(dumps({"schema": 1, "stream": record["stream"], "id": record["id"],
                                  "ts": ts, "proba": [1.0 - p1, p1],
                                  "weights_version": version}))
            else:
                joined = pending.pop(record["id"], None)
                if joined is None:
                    continue
                x, p1 = joined
                y = record["label"]
                update_score(y == 1, p1)
                learn(x, float(y))
                update_detector(float((p1 >= 0.5) != (y == 1)))
                if detector.drift_detected:
                    drifts += 1
                    mixture.weights = [1.0 / len(models)] * len(models)
                labels_since += 1
            if labels_since >= every_labels or (labels_since and
                                                ts - last_publish >= every_seconds):
                version += 1
                labels_since, last_publish = 0, ts
                out += len(dumps({"schema": 1, "stream": record["stream"], "version": version,
                                  "ts": ts, "ensemble": dict(zip(models, mixture.weights,
                                                                 strict=True)),
                                  "drift": {"events": drifts}}))
        return out

    return run


def river_like_setup(config: ServiceConfig) -> Callable[[], dict]:
    stream = config.streams[0]
    forecasters = [*stream.models, "served"]

    def setup() -> dict:
        return {
            "models": tuple(stream.models),
            "mixture": river_ensemble.EWARegressor([FrozenModel(m) for m in stream.models],
                                                   learning_rate=0.5),
            "platt": river_linear.LogisticRegression(optimizer=river_optim.SGD(0.05)),
            "detector": river_drift.ADWIN(),
            "scores": [(river_metrics.LogLoss(), river_metrics.MSE(), river_metrics.Accuracy())
                       for _ in forecasters],
            "pending": {},
            "publish": (stream.publish_every_labels, stream.publish_every_seconds),
        }

    return setup


def river_like_run(records: list[bytes]) -> Callable[[dict], object]:
    """The river pipeline with ours' extra work where river has a counterpart: Platt
    scaling of the mixture (``linear_model.LogisticRegression`` on its logit, the same
    two-parameter model OnlinePlatt fits) and log-loss, Brier (``MSE`` of the class-1
    probability, half the binary Brier score) and accuracy of each raw model and of the
    served output. Still no validation, no bounded join, no memory, no ECE."""
    loads, dumps, log = orjson.loads, orjson.dumps, math.log

    def run(state: dict) -> object:
        mixture, platt, detector, pending = (state["mixture"], state["platt"],
                                             state["detector"], state["pending"])
        predict, learn, update_detector = mixture.predict_one, mixture.learn_one, \
            detector.update
        platt_proba, platt_learn = platt.predict_proba_one, platt.learn_one
        scores = state["scores"]
        models = state["models"]
        every_labels, every_seconds = state["publish"]
        version = labels_since = drifts = out = 0
        last_publish = None
        for raw in records:
            record = loads(raw)
            ts = record["ts"]
            if last_publish is None:
                last_publish = ts
            if "outputs" in record:
                outputs = record["outputs"]
                x = {name: outputs[name][1] for name in models}
                mixed = min(max(predict(x), 1e-6), 1.0 - 1e-6)
                logit = {"logit": log(mixed / (1.0 - mixed))}
                p1 = platt_proba(logit)[True]
                pending[record["id"]] = (x, logit, p1)
                out += len(dumps({"schema": 1, "stream": record["stream"], "id": record["id"],
                                  "ts": ts, "proba": [1.0 - p1, p1],
                                  "weights_version": version}))
            else:
                joined = pending.pop(record["id"], None)
                if joined is None:
                    continue
                x, logit, p1 = joined
                y = record["label"]
                truth = y == 1
                for (log_loss, brier, accuracy), p in zip(scores, [*x.values(), p1],
                                                          strict=True):
                    log_loss.update(truth, p)
                    brier.update(float(y), p)
                    accuracy.update(truth, p >= 0.5)
                learn(x, float(y))
                platt_learn(logit, truth)
                update_detector(float((p1 >= 0.5) != truth))
                if detector.drift_detected:
                    drifts += 1
                    mixture.weights = [1.0 / len(models)] * len(models)
                labels_since += 1
            if labels_since >= every_labels or (labels_since and
                                                ts - last_publish >= every_seconds):
                version += 1
                labels_since, last_publish = 0, ts
                out += len(dumps({"schema": 1, "stream": record["stream"], "version": version,
                                  "ts": ts, "ensemble": dict(zip(models, mixture.weights,
                                                                 strict=True)),
                                  "calibration": {"weights": dict(platt.weights),
                                                  "intercept": platt.intercept},
                                  "drift": {"events": drifts}}))
        return out

    return run


# -- timing -------------------------------------------------------------------------------
@dataclasses.dataclass
class Contender:
    name: str
    setup: Callable[[], object]
    run: Callable[[object], object]
    best: float = math.inf
    rounds: list[float] = dataclasses.field(default_factory=list)


def time_once(contender: Contender) -> float:
    state = contender.setup()
    gc.collect()
    started = time.perf_counter()
    contender.run(state)
    seconds = time.perf_counter() - started
    contender.rounds.append(seconds)
    contender.best = min(contender.best, seconds)
    return seconds


#: Entry points whose cumulative time says where a record's time goes (path suffix, function).
PHASES = (
    ("streamweights/events.py", "decode"), ("streamweights/pipeline.py", "outputs_array"),
    ("streamweights/adapters/chain.py", "observe_predict_trace"),
    ("streamweights/join.py", "add"), ("streamweights/join.py", "expire"),
    ("streamweights/join.py", "pop"), ("streamweights/scoring.py", "update"),
    ("streamweights/adapters/chain.py", "learn_trace"),
    ("adapters/validation.py", "check_probabilities"),
    ("streamweights/pipeline.py", "_maybe_publish"), ("streamweights/events.py", "encode"),
)


def split_ours(config: ServiceConfig, records: list[bytes], rounds: int = 3) -> str:
    """Where one record's time goes, per input record (best of ``rounds``, no profiler
    for the phases): decode alone, ``Pipeline.process`` on the decoded records, encode of
    what they produced; inside process, the native core's calls (own time under cProfile,
    which adds its per-call cost, so an upper bound) and the rest (Python glue: join,
    records, outcomes, dispatch, numpy views)."""
    def best(run: Callable[[], object]) -> float:
        fastest = math.inf
        for _ in range(rounds):
            gc.collect()
            started = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    decode, encode = events.decode, events.encode
    decoded = [decode(raw) for raw in records]

    def decode_all() -> None:
        for raw in records:
            decode(raw)

    def process_all(pipeline: Pipeline | None = None) -> Pipeline:
        pipeline = pipeline or Pipeline(config.streams)
        process = pipeline.process
        for record in decoded:
            process(record)
        return pipeline

    pipeline = Pipeline(config.streams)
    outcomes = [pipeline.process(record) for record in decoded]
    produced = [o.adapted for o in outcomes if o.adapted is not None] + \
        [w for o in outcomes for w in o.weights]
    del outcomes

    def encode_all() -> None:
        for record in produced:
            encode(record)

    full = ours_run(records)
    seconds = {"whole loop (decode -> process -> encode)":
               best(lambda: full(Pipeline(config.streams))),
               "decode": best(decode_all), "process": best(process_all),
               "encode": best(encode_all)}
    profiler = cProfile.Profile()
    fresh = Pipeline(config.streams)
    profiler.enable()
    process_all(fresh)
    profiler.disable()
    native: dict[str, float] = {}
    for (filename, _, function), row in pstats.Stats(profiler).stats.items():
        if filename == "~" and "streamweights._native" in function:
            parts = function.split("'")  # "<method 'learn' of 'streamweights._native.X' ..."
            name = f"{parts[3].rsplit('.', 1)[1]}.{parts[1]}" if len(parts) >= 4 \
                else function.rsplit(".", 1)[1].rstrip(">")
            native[name] = native.get(name, 0.0) + row[2]
    per = 1e6 / len(records)
    lines = [f"per-record split ({len(records):,} records, µs per input record):"]
    lines += [f"  {seconds[name] * per:6.2f}  {name}" for name in seconds]
    total = sum(native.values())
    lines.append(f"  {total * per:6.2f}    of process: native core calls (upper bound)")
    for name, value in sorted(native.items(), key=lambda item: -item[1]):
        if value * per >= 0.01:
            lines.append(f"  {value * per:6.2f}      {name}")
    lines.append(f"  {(seconds['process'] - total) * per:6.2f}    of process: the rest "
                 "(Python glue, numpy views, dicts)")
    return "\n".join(lines)


def profile_ours(contender: Contender, top: int) -> str:
    state = contender.setup()
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    contender.run(state)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    total = sum(row[2] for row in stats.stats.values())  # own times add up to the run
    stats.sort_stats("tottime").print_stats(top)
    lines = [f"where the time goes (cumulative, share of the profiled {total:.2f}s; "
             "nested entries overlap):"]
    for (filename, lineno, function), row in sorted(stats.stats.items(),
                                                    key=lambda item: -item[1][3]):
        adapter_verb = ("/streamweights/adapters/" in filename
                        and function in ("predict", "learn", "observe"))
        if adapter_verb or any(function == name and filename.endswith("/" + suffix)
                               for suffix, name in PHASES):
            where = "/".join(filename.split("/")[-2:])
            lines.append(f"  {100 * row[3] / total:5.1f}%  {row[1]:>8,} calls  "
                         f"{where}:{lineno}({function})")
    return "\n".join(lines) + "\n\n" + text.getvalue()


def print_summary(contender: Contender) -> None:
    """Run one of ours once on fresh state and print what its stream saw."""
    pipeline = contender.setup()
    contender.run(pipeline)
    demo = next(iter(pipeline.summary()["streams"].values()))
    print(f"{contender.name.split(':')[0]} processed {demo['predictions']:,} predictions, "
          f"{demo['labels']:,} labels, {demo['drift_events']} drift events, invalid "
          f"{pipeline.invalid or 0}; adapted log-loss "
          f"{demo['scores']['adapted']['log_loss']:.4f} vs raw best "
          f"{demo['scores']['raw_best']['log_loss']:.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Numbers from a shared machine are noisy; compare the two sides of one run.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="service config whose source and first stream are used "
                             "(default: configs/demo.yaml)")
    parser.add_argument("--events", type=int, default=None,
                        help="prediction events to replay (default: the config's, 60,000 "
                             "for the demo, i.e. ~120,000 records)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating timed rounds per contender; the best is reported")
    parser.add_argument("--one-core", action="store_true",
                        help="pin this process to one CPU (see --core) before anything runs")
    parser.add_argument("--core", type=int, default=0, help="the CPU --one-core pins to")
    parser.add_argument("--service-loop", action="store_true",
                        help="also time the service's own per-record path (Prometheus "
                             "metrics, latency histogram, routing)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one run of ours (cProfile, top 15 by own time)")
    parser.add_argument("--split", action="store_true",
                        help="print where one record's time goes: decode, process (native "
                             "core calls vs the rest), encode")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    if args.one_core:
        os.sched_setaffinity(0, {args.core})
    affinity = sorted(os.sched_getaffinity(0))
    print(f"python {platform.python_version()}, streamweights {streamweights.__version__}, "
          f"river {river.__version__}, orjson {orjson.__version__}; cpu affinity {affinity} "
          f"of {os.cpu_count()} cpus{' (pinned)' if args.one_core else ''}", flush=True)

    config = load_config(args.config)
    records = generate_records(config, args.events)
    n_records = len(records)
    n_predictions = sum(1 for raw in records if b'"outputs"' in raw)

    contenders = [
        Contender("ours: the record lane, else decode -> Pipeline.process -> encode",
                  ours_setup(config), ours_run(records)),
        Contender("river: orjson -> dict join -> EWARegressor + LogLoss + ADWIN -> orjson",
                  river_setup(config), river_run(records)),
        Contender("river like-for-like: + Platt (LogisticRegression on the logit), "
                  "log-loss/Brier/accuracy of 3 models + served",
                  river_like_setup(config), river_like_run(records)),
    ]
    same_work = like_for_like(config)
    contenders.append(Contender("ours, river's work: the record lane over FixedShare -> "
                                "OnlinePlatt -> DriftMemory(ADWIN), no conformal layers",
                                ours_setup(same_work), ours_run(records)))
    contenders.append(Contender("ours, batch entry point: Pipeline.process_many over runs of 16",
                                ours_setup(config), ours_many_run(records, 16)))
    contenders.append(Contender("ours, general path only: decode -> Pipeline.process -> encode",
                                ours_setup(config), ours_run(records, lane=False)))
    scratch = None
    if args.service_loop:
        scratch = tempfile.TemporaryDirectory(prefix="sw-bench-")
        contenders.append(Contender("ours, service loop: + Prometheus metrics and latency",
                                    service_setup(config, scratch.name),
                                    service_run(records)))

    # Sanity: both sides process the same stream to the end.
    for contender in (contenders[0], contenders[3]):
        print_summary(contender)
    river_state = contenders[1].setup()
    contenders[1].run(river_state)
    print(f"river processed {river_state.score._mean.n:,.0f} labels, log-loss "
          f"{river_state.score.get():.4f}, final weights "
          f"{[round(w, 3) for w in river_state.mixture.weights]}", flush=True)

    print(f"timing {args.rounds} alternating rounds of {n_records:,} records "
          f"({n_predictions:,} predictions) each", flush=True)
    for round_index in range(args.rounds):
        line = []
        for contender in contenders:
            seconds = time_once(contender)
            line.append(f"{contender.name.split(':')[0]} {n_records / seconds:,.0f}/s")
        print(f"  round {round_index + 1}: " + ", ".join(line), flush=True)

    results = {"records": n_records, "predictions": n_predictions, "rounds": args.rounds,
               "affinity": affinity, "one_core": args.one_core, "contenders": []}
    print("\nbest round (events = records: predictions + labels)")
    for contender in contenders:
        rate = n_records / contender.best
        print(f"  {rate:>9,.0f} events/s  {n_predictions / contender.best:>9,.0f} "
              f"predictions/s  {contender.name}")
        results["contenders"].append({"name": contender.name, "events_per_s": rate,
                                      "best_seconds": contender.best,
                                      "rounds_seconds": contender.rounds})
    ratio = contenders[1].best / contenders[0].best
    like = contenders[2].best / contenders[0].best
    same = contenders[2].best / contenders[3].best
    same_bare = contenders[1].best / contenders[3].best
    results["ours_over_river"] = ratio
    results["ours_over_river_like_for_like"] = like
    results["ours_river_work_over_river_like_for_like"] = same
    results["ours_river_work_over_river"] = same_bare
    print(f"  ours / river like-for-like = {like:.2f}x  (goal >= 3x; ours doing the default's "
          "work: four candidate chains, four conformal layers, estimates)")
    print(f"  ours, river's work / river like-for-like = {same:.2f}x  (goal >= 3x; the same "
          "work on both sides)")
    print(f"  ours / river = {ratio:.2f}x, ours, river's work / river = {same_bare:.2f}x  "
          "(river's bare pipeline: no Platt, one score; goal >= 30,000 events/s on one core)")
    print(f"  batch entry point / river like-for-like = "
          f"{contenders[2].best / contenders[4].best:.2f}x")
    print(f"  general path only / river like-for-like = "
          f"{contenders[2].best / contenders[5].best:.2f}x")
    if args.service_loop:
        print(f"  service loop / river = {contenders[1].best / contenders[6].best:.2f}x")

    if args.split:
        print("\n" + split_ours(config, records))
    if args.profile:
        print("\nprofile of ours, one run (top 15 by own time; cProfile slows it down):")
        print(profile_ours(contenders[0], 15))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
