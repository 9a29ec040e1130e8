"""Run the suite: every contender on every stream, scored prequentially, with block
bootstrap intervals, paired verdicts and the tables the results page shows.

Per stream: build the episode (deployed models trained and frozen, labels delayed),
run each contender over it, score the labelled events, pick the best raw model in
hindsight (lowest mean primary loss: log-loss, or MSE for regression), bootstrap every
contender's mean loss with one shared set of blocks (so differences are paired), and
give each of our contenders a verdict against each reference. Streams are independent;
``jobs > 1`` runs them in separate processes.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamweights.evaluation.bootstrap import (
    LEVEL,
    REPLICATES,
    Comparison,
    block_bootstrap_means,
    default_block_length,
)
from streamweights.evaluation.conformal import conformal_summary, evaluate_conformal
from streamweights.evaluation.contenders import PipelineContender, contenders_for
from streamweights.evaluation.episode import START_TS, build_episode
from streamweights.evaluation.metrics import PRIMARY, losses_for, summary_for
from streamweights.evaluation.streams import SuiteStream, suite_streams
from streamweights.evaluation.trace import TraceRecorder

BEST_RAW = "best raw (hindsight)"
BEST_RIVER = "best river (hindsight)"
DEFAULT_CHAIN = "default chain"
RIVER_MIXTURE = "river EWA"
#: What our contenders are judged against, in table order.
REFERENCES = (BEST_RAW, "uniform average", RIVER_MIXTURE, "river bandit", "river stacking",
              "river ADWIN retrain", BEST_RIVER)

Progress = Callable[[str], None]


@dataclass
class ContenderResult:
    name: str
    family: str
    description: str
    metrics: dict[str, float]
    low: float  # bootstrap interval of the mean primary loss
    high: float
    events_per_second: float | None


@dataclass
class StreamResult:
    """Everything the results page says about one stream."""

    name: str
    kind: str
    task: str
    drift: str
    description: str
    n_events: int
    n_labelled: int
    train_window: int
    n_classes: int | None
    models: list[str]
    primary: str
    best_raw: str
    best_river: str | None
    contenders: dict[str, ContenderResult]
    comparisons: dict[str, dict[str, Comparison]]  # ours -> reference -> verdict
    drift_alarms: int
    change_points: int
    block_length: int
    seconds: float
    build_seconds: float
    #: Online conformal layers on the default chain's output (``conformal_summary``).
    conformal: dict[str, Any] | None = None

    def loss(self, name: str) -> float:
        return self.contenders[name].metrics[self.primary]


@dataclass
class SuiteResult:
    streams: list[StreamResult]
    seconds: float
    seed: int
    jobs: int
    settings: dict[str, Any] = field(default_factory=dict)


def evaluate_stream(stream: SuiteStream, seed: int = 7, replicates: int = REPLICATES,
                    record_dir: str | pathlib.Path | None = None,
                    progress: Progress | None = None) -> StreamResult:
    """Run every applicable contender on one stream and score them."""
    started = time.perf_counter()
    episode = build_episode(
        stream.make_examples(seed), task=stream.task, train_window=stream.train_window,
        events=stream.events, seed=seed, seconds_between_events=stream.seconds_between_events,
        mean_label_delay_seconds=stream.mean_label_delay_seconds,
        missing_label_rate=stream.missing_label_rate, name=stream.name)
    build_seconds = time.perf_counter() - started
    primary = PRIMARY[stream.task]
    labelled = episode.labelled
    targets = episode.targets[labelled]
    n_labelled = int(labelled.sum())
    contenders = contenders_for(episode, seed)
    series: dict[str, np.ndarray] = {}
    summaries: dict[str, dict[str, float]] = {}
    speeds: dict[str, float | None] = {}
    drift_alarms = 0
    conformal = None
    for number, contender in enumerate(contenders, start=1):
        if progress is not None:
            progress(f"{stream.name}: {contender.name} ({number}/{len(contenders)})")
        run = contender.run(episode)
        losses = losses_for(stream.task, run.predictions[labelled], targets)
        series[contender.name] = losses[primary]
        summaries[contender.name] = summary_for(stream.task, losses)
        speeds[contender.name] = None if not run.seconds else \
            (episode.n_events + n_labelled) / run.seconds
        if contender.name == DEFAULT_CHAIN:
            conformal = conformal_summary(evaluate_conformal(episode, run.predictions,
                                                             stream.change_points))
        if contender.name == DEFAULT_CHAIN and run.pipeline is not None:
            drift_alarms = next(iter(run.pipeline.streams.values())).drift_total
            if record_dir is not None:
                _record(contender, episode, stream, record_dir)
    raw = [c.name for c in contenders if c.family == "raw"]
    best_raw = min(raw, key=lambda name: summaries[name][primary])
    river = [c.name for c in contenders if c.family == "river"]
    best_river = min(river, key=lambda name: summaries[name][primary]) if river else None
    families = {c.name: (c.family, c.description) for c in contenders}
    aliases = {BEST_RAW: best_raw, **({BEST_RIVER: best_river} if best_river else {})}
    for alias, source in aliases.items():
        series[alias] = series[source]
        summaries[alias] = summaries[source]
        speeds[alias] = speeds[source]
        families[alias] = (families[source][0], f"{source}, chosen in hindsight")

    names = list(series)
    block = default_block_length(n_labelled)
    means = block_bootstrap_means(np.vstack([series[n] for n in names]), block, replicates, seed)
    row = {name: i for i, name in enumerate(names)}
    tail = (1.0 - LEVEL) / 2.0
    results = {}
    for name in names:
        low, high = np.quantile(means[row[name]], [tail, 1.0 - tail])
        results[name] = ContenderResult(name, families[name][0], families[name][1],
                                        summaries[name], float(low), float(high), speeds[name])
    comparisons: dict[str, dict[str, Comparison]] = {}
    for ours in (c.name for c in contenders if c.family == "ours"):
        comparisons[ours] = {}
        for reference in REFERENCES:
            if reference not in row:
                continue
            difference = means[row[ours]] - means[row[reference]]
            low, high = np.quantile(difference, [tail, 1.0 - tail])
            point = float(series[ours].mean() - series[reference].mean())
            verdict = "win" if high < 0 else "loss" if low > 0 else "tie"
            comparisons[ours][reference] = Comparison(point, float(low), float(high), verdict)
    return StreamResult(
        name=stream.name, kind=stream.kind, task=stream.task, drift=stream.drift,
        description=stream.description, n_events=episode.n_events, n_labelled=n_labelled,
        train_window=stream.train_window, n_classes=episode.n_classes,
        models=list(episode.model_names), primary=primary, best_raw=best_raw,
        best_river=best_river, contenders=results, comparisons=comparisons,
        drift_alarms=drift_alarms, change_points=len(stream.change_points), block_length=block,
        seconds=time.perf_counter() - started, build_seconds=build_seconds,
        conformal=conformal)


def _record(contender: Any, episode: Any, stream: SuiteStream,
            record_dir: str | pathlib.Path) -> int:
    """Run the default chain again with a trace recorder and save the trace."""
    assert isinstance(contender, PipelineContender)
    pipeline = contender.pipeline(episode)
    recorder = TraceRecorder(pipeline)
    contender.run(episode, recorder.process)
    change_ts = [START_TS + p * stream.seconds_between_events for p in stream.change_points]
    recorder.save(pathlib.Path(record_dir) / stream.name,
                  meta={"source": f"evaluation stream {stream.name}: {stream.description}",
                        "contender": f"default chain ({contender.description})"},
                  change_points_ts={stream.name: change_ts})
    return next(iter(pipeline.streams.values())).drift_total


def _evaluate_named(name: str, events: int | None, train_window: int | None, seed: int,
                    replicates: int, record_dir: str | None) -> StreamResult:
    (stream,) = suite_streams([name], events=events, train_window=train_window)
    return evaluate_stream(stream, seed, replicates, record_dir)


def run_suite(names: list[str] | None = None, *, events: int | None = None,
              train_window: int | None = None, seed: int = 7, jobs: int = 1,
              replicates: int = REPLICATES, record_dir: str | pathlib.Path | None = None,
              progress: Any = None) -> SuiteResult:
    """Evaluate the suite (or the ``names`` streams, each cut to ``events``).

    ``progress`` is a :class:`~streamweights.evaluation.progress.ProgressBar`-like object
    with ``start(total)``, ``update(text)`` and ``advance(text)``; ``None`` is silent.
    """
    streams = suite_streams(names, events=events, train_window=train_window)
    jobs = max(1, min(jobs, len(streams), os.cpu_count() or 1))
    started = time.perf_counter()
    if progress is not None:
        progress.start(len(streams))
    results: dict[str, StreamResult] = {}
    record = None if record_dir is None else str(record_dir)
    if jobs == 1:
        for stream in streams:
            results[stream.name] = evaluate_stream(
                stream, seed, replicates, record,
                None if progress is None else progress.update)
            if progress is not None:
                progress.advance(f"{stream.name} done")
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_evaluate_named, s.name, events, train_window, seed,
                                   replicates, record): s.name for s in streams}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress.advance(f"{futures[future]} done")
    if progress is not None:
        progress.finish()
    ordered = [results[s.name] for s in streams]
    return SuiteResult(ordered, time.perf_counter() - started, seed, jobs,
                       {"events": events, "train_window": train_window,
                        "replicates": replicates})


# -- tables -------------------------------------------------------------------------------
#: Columns of :func:`results_table`, documented on the results page.
RESULT_COLUMNS = ("stream", "kind", "drift", "labelled", "metric", "best raw",
                  "best raw loss", "uniform average", "river EWA", "river bandit",
                  "river stacking", "river ADWIN retrain", "best adapter alone",
                  "default chain", "default chain CI", "vs best raw", "vs river EWA",
                  "vs best river")


def results_table(suite: SuiteResult) -> list[dict[str, Any]]:
    """One row per stream with ``RESULT_COLUMNS`` (losses are the primary metric;
    ``None`` where a contender does not apply)."""
    rows = []
    for result in suite.streams:
        def loss(name: str, result: StreamResult = result) -> float | None:
            return result.loss(name) if name in result.contenders else None

        alone = [n for n, c in result.contenders.items()
                 if c.family == "ours" and n != DEFAULT_CHAIN]
        best_alone = min(alone, key=result.loss)
        chain = result.contenders[DEFAULT_CHAIN]
        verdicts = result.comparisons[DEFAULT_CHAIN]
        rows.append({
            "stream": result.name, "kind": result.kind, "drift": result.drift,
            "labelled": result.n_labelled, "metric": result.primary,
            "best raw": result.best_raw, "best raw loss": loss(BEST_RAW),
            "uniform average": loss("uniform average"), "river EWA": loss("river EWA"),
            "river bandit": loss("river bandit"), "river stacking": loss("river stacking"),
            "river ADWIN retrain": loss("river ADWIN retrain"),
            "best adapter alone": f"{best_alone} {result.loss(best_alone):.4g}",
            "default chain": loss(DEFAULT_CHAIN), "default chain CI": (chain.low, chain.high),
            "vs best raw": verdicts[BEST_RAW].verdict,
            "vs river EWA": verdicts[RIVER_MIXTURE].verdict if RIVER_MIXTURE in verdicts
            else None,
            "vs best river": verdicts[BEST_RIVER].verdict if BEST_RIVER in verdicts else None,
        })
    return rows


def wins_ties_losses(suite: SuiteResult) -> list[dict[str, Any]]:
    """For each of our contenders and each reference: streams won, tied, lost."""
    ours_names: list[str] = []
    for result in suite.streams:
        for name in result.comparisons:
            if name not in ours_names:
                ours_names.append(name)
    ours_names.sort(key=lambda n: (n != DEFAULT_CHAIN, n))
    rows = []
    for ours in ours_names:
        for reference in REFERENCES:
            counts = {"win": 0, "tie": 0, "loss": 0}
            for result in suite.streams:
                verdict = result.comparisons.get(ours, {}).get(reference)
                if verdict is not None:
                    counts[verdict.verdict] += 1
            total = sum(counts.values())
            if total:
                rows.append({"ours": ours, "reference": reference, **counts, "streams": total})
    return rows


def headline(suite: SuiteResult) -> dict[str, Any]:
    """The must-hold numbers: default chain no worse than the best raw model (win or
    tie) on what share of streams, and better than river's mixture on how many."""
    n = len(suite.streams)
    versus = {reference: {"win": 0, "tie": 0, "loss": 0, "streams": 0}
              for reference in (BEST_RAW, RIVER_MIXTURE, BEST_RIVER)}
    better_point = {RIVER_MIXTURE: 0, BEST_RIVER: 0}
    for result in suite.streams:
        verdicts = result.comparisons[DEFAULT_CHAIN]
        for reference, counts in versus.items():
            if reference in verdicts:
                counts[verdicts[reference].verdict] += 1
                counts["streams"] += 1
        for reference in better_point:
            if reference in verdicts and verdicts[reference].difference < 0:
                better_point[reference] += 1
    raw = versus[BEST_RAW]
    return {"streams": n, "no_worse_than_best_raw": raw["win"] + raw["tie"],
            "share_no_worse_than_best_raw": (raw["win"] + raw["tie"]) / n if n else math.nan,
            "versus": versus, "lower_mean_loss_than": better_point,
            "seconds": suite.seconds}
