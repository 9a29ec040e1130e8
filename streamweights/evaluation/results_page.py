"""The results page (``docs/results.md``): the suite's tables as markdown.

Everything on the page is computed from a :class:`~streamweights.evaluation.suite.SuiteResult`
except the per-stream notes on *why* the default chain lost somewhere, which a person
writes after reading the numbers and passes in (``notes``); a losing stream without one
gets a generated diagnosis only, and the page says so.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from streamweights.evaluation.conformal import conformal_rows
from streamweights.evaluation.suite import (
    BEST_RAW,
    BEST_RIVER,
    DEFAULT_CHAIN,
    REFERENCES,
    RESULT_COLUMNS,
    RIVER_MIXTURE,
    StreamResult,
    SuiteResult,
    headline,
    results_table,
    wins_ties_losses,
)

COLUMN_MEANINGS = {
    "stream": "suite stream (see the list below)",
    "kind": "real (bundled in river) or synthetic (river.datasets.synth)",
    "drift": "the kind of drift the stream has (known for synthetic streams)",
    "labelled": "events scored (labels that arrived)",
    "metric": "primary loss: log-loss (classification) or MSE (regression); lower is better",
    "best raw": "the deployed model with the lowest loss over the whole stream (hindsight)",
    "best raw loss": "its mean loss",
    "uniform average": "mean of the K models' outputs",
    "river EWA": "river.ensemble.EWARegressor over the models' class-1 probabilities / "
                 "values (one per class for >2 classes)",
    "river bandit": "river.model_selection.Bandit* (ε-greedy) selecting one model",
    "river stacking": "river.ensemble.StackingClassifier, logistic meta-model (classification)",
    "river ADWIN retrain": "river Hoeffding tree on the features, learning online, reset on "
                           "ADWIN drift",
    "best adapter alone": "our best single adapter on this stream (ensembles on the K "
                          "models, other stages on the uniform average, or one of the "
                          "portfolio's candidates alone)",
    "default chain": "the chain of configs/demo.yaml (Portfolio of candidate chains → "
                     "DriftMemory: binary four plus a FeatureCorrection one, more classes "
                     "five plus a FeatureCorrection one, since every suite stream's "
                     "predictions carry features; for regression a Portfolio of "
                     "FixedShare, Hedge and OnlineStacking)",
    "default chain CI": "95% circular block-bootstrap interval of its mean loss",
    "vs best raw": "paired verdict of default chain against best raw: win / tie / loss",
    "vs river EWA": "same against river EWA",
    "vs best river": "same against the best river contender on this stream (hindsight)",
}


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return f"[{value[0]:.4g}, {value[1]:.4g}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _verdict(value: str | None) -> str:
    return {"win": "**win**", "loss": "loss", "tie": "tie", None: "—"}[value]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _diagnosis(result: StreamResult) -> str:
    """Facts that usually explain a loss, read off the numbers."""
    facts = [f"{result.n_labelled:,} labelled events"]
    raw = sorted((c for c in result.contenders.values() if c.family == "raw"
                  and c.name.startswith("raw:")), key=lambda c: c.metrics[result.primary])
    if len(raw) > 1:
        facts.append(f"best raw {raw[0].name[4:]} {raw[0].metrics[result.primary]:.4g} vs "
                     f"next {raw[1].metrics[result.primary]:.4g}")
    first_stage = "FixedShare"
    if first_stage in result.contenders:
        facts.append(f"FixedShare alone {result.loss(first_stage):.4g}")
    alone = {n: c for n, c in result.contenders.items()
             if c.family == "ours" and n != DEFAULT_CHAIN}
    best = min(alone, key=result.loss)
    facts.append(f"best adapter alone {best} {result.loss(best):.4g} "
                 f"({result.comparisons[best][BEST_RAW].verdict} vs best raw)")
    facts.append(f"{result.drift_alarms} drift alarm(s) for {result.change_points} known "
                 "change point(s)" if result.kind == "synthetic" else
                 f"{result.drift_alarms} drift alarm(s)")
    return "; ".join(facts)


#: The default portfolio's candidates on a regression stream, which also run alone.
REGRESSION_CANDIDATES = ("FixedShare", "Hedge", "OnlineStacking")


def portfolio_candidates(result: StreamResult) -> list[str]:
    """The contenders that are the default portfolio's candidates run alone."""
    if result.task == "classification":
        return [n for n in result.contenders if n.startswith("candidate: ")]
    return [n for n in REGRESSION_CANDIDATES if n in result.contenders]


def _which_candidate_section(suite: SuiteResult) -> list[str]:
    """Which of the default portfolio's candidates did best alone on each stream, and
    what the portfolio made of it (the measurements behind README's "which chain when")."""
    rows = []
    for result in suite.streams:
        candidates = portfolio_candidates(result)
        if not candidates:
            continue
        ranked = sorted(candidates, key=result.loss)
        best, worst = ranked[0], ranked[-1]
        rows.append([result.name, best.removeprefix("candidate: "), _number(result.loss(best)),
                     worst.removeprefix("candidate: "), _number(result.loss(worst)),
                     _number(result.loss(DEFAULT_CHAIN)),
                     f"{result.loss(DEFAULT_CHAIN) / result.loss(best):.3f}"])
    if not rows:
        return []
    return ["", "## Which candidate when", "",
            "Each of the default portfolio's candidates run alone (with the default's drift "
            "watch; regression: the three ensembles), the best and the worst of them, and "
            "the portfolio, which mixes them online.", "",
            *_table(["stream", "best candidate alone", "loss", "worst candidate alone", "loss",
                     "portfolio", "portfolio ÷ best"], rows)]


def _portfolio_headline(suite: SuiteResult) -> list[str]:
    """Issue 14's must-hold 1: the default (a portfolio) against its best candidate
    alone, and its ECE against the best raw model's."""
    within, compared, ratios, calibrated, classification = 0, 0, [], 0, 0
    above_floor, failing = 0, []
    for result in suite.streams:
        candidates = portfolio_candidates(result)
        if not candidates:
            continue
        ratio = result.loss(DEFAULT_CHAIN) / min(result.loss(c) for c in candidates)
        compared += 1
        within += ratio <= 1.02
        ratios.append((ratio, result.name))
        if result.task == "classification":
            classification += 1
            ours, raw = (result.contenders[name].metrics for name in (DEFAULT_CHAIN, BEST_RAW))
            calibrated += ours["ece"] <= raw["ece"] + 0.005
            if ours["ece"] > raw["ece"] + 0.005:
                failing.append(f"{result.name} {ours['ece']:.4f} vs {raw['ece']:.4f}, "
                               f"sampling floors {ours.get('ece_floor', math.nan):.4f} vs "
                               f"{raw.get('ece_floor', math.nan):.4f}")
            above_floor += (ours["ece"] - ours.get("ece_floor", 0.0)
                            <= raw["ece"] - raw.get("ece_floor", 0.0) + 0.005)
    if not compared:
        return []
    worst = ", ".join(f"{name} {ratio:.3f}" for ratio, name in sorted(ratios)[::-1][:3])
    return [f"* **Default (a portfolio) within 2% of, or better than, its best candidate "
            f"alone in hindsight** on **{within} of {compared} streams** (loss ratio; the "
            f"highest: {worst}). Target: at least 20 of 22.",
            f"* Default's ECE at most 0.005 above the best raw model's on {calibrated} of "
            f"{classification} classification streams"
            + (f" (above it: {'; '.join(failing)})" if failing else "") + ". Each ECE "
            f"less its sampling floor (what a perfectly calibrated forecaster with the same "
            f"confidences shows on average on as many labels): {above_floor} of "
            f"{classification}."]


def render_results(suite: SuiteResult, command: str, notes: dict[str, str] | None = None,
                   best_river_note: str | None = None) -> str:
    """The whole page as markdown. ``notes``: why the default chain loses on a stream
    (by stream name); ``best_river_note``: why it loses where it does to the best river
    contender chosen in hindsight."""
    notes = notes or {}
    top = headline(suite)
    raw, ewa, best_river = (top["versus"][r] for r in (BEST_RAW, RIVER_MIXTURE, BEST_RIVER))
    minutes = suite.seconds / 60.0
    lines = [
        "# Evaluation results",
        "",
        f"Generated by `{command}` — {top['streams']} streams, {minutes:.1f} min on this "
        f"machine ({suite.jobs} process{'es' if suite.jobs > 1 else ''}, seed {suite.seed}). "
        "Do not edit by hand: rerun the command (`--record DIR` also writes a visual "
        "report per stream, `streamweights report DIR/STREAM`).",
        "",
        "## Headline",
        "",
        f"* **Default chain no worse than the best raw model in hindsight** (win or tie) on "
        f"**{top['no_worse_than_best_raw']} of {top['streams']} streams "
        f"({100 * top['share_no_worse_than_best_raw']:.0f}%)**: {raw['win']} wins, "
        f"{raw['tie']} ties, {raw['loss']} losses. Target: at least 80%.",
        f"* **Against river's mixture** (`river EWA`): {ewa['win']} wins, {ewa['tie']} ties, "
        f"{ewa['loss']} losses on {ewa['streams']} streams; lower mean loss on "
        f"{top['lower_mean_loss_than'][RIVER_MIXTURE]} of {ewa['streams']}.",
        f"* Against the best river contender *chosen per stream in hindsight*: "
        f"{best_river['win']} wins, {best_river['tie']} ties, {best_river['loss']} losses; "
        f"lower mean loss on {top['lower_mean_loss_than'][BEST_RIVER]} of "
        f"{best_river['streams']}.",
        *_portfolio_headline(suite),
        "",
        "A verdict compares per-event losses of two contenders on the same events: the 95% "
        "circular block-bootstrap interval (1,000 replicates, blocks of ⌈√n⌉ events) of the "
        "mean difference below zero is a win, above zero a loss, otherwise a tie.",
        "",
        "## Set-up",
        "",
        "Each stream: three deployed models of different families (classification: "
        "logistic regression, Gaussian naive Bayes, Hoeffding tree — the replay's "
        "`deployed_models`; regression: linear regression, 5-nearest neighbours, Hoeffding "
        "tree) are trained on an initial window and frozen. Every later event is a "
        "prediction; its label arrives after an exponential delay (synthetic: mean 200 "
        "events, 0.5% never arrive; real: mean 10 events) and every contender learns it "
        "then, in the service's event-time order. Ours run through the service's own "
        "pipeline (bounded join, drift reaction). Scores are prequential (test, then "
        "train). events/s counts predictions + labels per second of a contender's own "
        "work (the deployed models' outputs are precomputed for everyone).",
        "",
        "## Per stream",
        "",
        "Losses are the primary metric (lower is better); — where a contender does not "
        "apply.",
        "",
    ]
    rows = results_table(suite)
    lines += _table(list(RESULT_COLUMNS), [
        [_verdict(row[c]) if c.startswith("vs ") else _number(row[c]) for c in RESULT_COLUMNS]
        for row in rows])
    lines += ["", "<details><summary>Columns</summary>", ""]
    lines += [f"* `{c}` — {COLUMN_MEANINGS[c]}" for c in RESULT_COLUMNS]
    lines += ["", "</details>", "", "## Default chain against the best raw model, every metric",
              ""]
    metric_rows = []
    for result in suite.streams:
        best = result.contenders[BEST_RAW].metrics
        chain = result.contenders[DEFAULT_CHAIN].metrics
        names = ("log_loss", "brier", "accuracy", "ece") if result.task == "classification" \
            else ("mse", "mae")
        metric_rows.append([result.name, ", ".join(
            f"{m} {best[m]:.4g} → {chain[m]:.4g}" for m in names)])
    lines += _table(["stream", "best raw → default chain"], metric_rows)
    lines += ["", "## Wins / ties / losses across streams", "",
              "Each cell: wins / ties / losses of the row's contender against the column's, "
              "over the streams where both apply.", ""]
    tally = wins_ties_losses(suite)
    ours_names = list(dict.fromkeys(row["ours"] for row in tally))
    references = [r for r in REFERENCES if any(row["reference"] == r for row in tally)]
    cells = {(row["ours"], row["reference"]): f"{row['win']}/{row['tie']}/{row['loss']}"
             for row in tally}
    lines += _table(["ours", *references], [
        [f"**{o}**" if o == DEFAULT_CHAIN else o] + [cells.get((o, r), "—") for r in references]
        for o in ours_names])
    lines += ["", "## Speed", "", "events/s (predictions + labels) per contender, median "
              "and range over the streams where it ran. Not like for like: ours are timed "
              "through the whole service pipeline per record (input checks, bounded join, "
              "four prequential scorers for the raw models and the output, drift reaction, "
              "weights versions), river's as the bare estimator calls on an in-memory "
              "event index. `bench/service.py` and `bench/adapters.py` compare the two "
              "like for like.", ""]
    speeds: dict[str, list[float]] = {}
    for result in suite.streams:
        for name, contender in result.contenders.items():
            if contender.events_per_second and "hindsight" not in name:
                speeds.setdefault(name, []).append(contender.events_per_second)
    lines += _table(["contender", "median events/s", "min", "max"], [
        [name, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}", f"{max(v):,.0f}"]
        for name, v in speeds.items()])
    lines += ["", "## Where the default chain loses, and why", ""]
    losers = [r for r in suite.streams
              if r.comparisons[DEFAULT_CHAIN][BEST_RAW].verdict == "loss"
              or (RIVER_MIXTURE in r.comparisons[DEFAULT_CHAIN]
                  and r.comparisons[DEFAULT_CHAIN][RIVER_MIXTURE].verdict == "loss")]
    if not losers:
        lines.append("Nowhere: no loss against the best raw model or river's mixture.")
    for result in losers:
        against = [ref for ref in (BEST_RAW, RIVER_MIXTURE)
                   if result.comparisons[DEFAULT_CHAIN].get(ref) is not None
                   and result.comparisons[DEFAULT_CHAIN][ref].verdict == "loss"]
        lines.append(f"* **{result.name}** — loses to {' and '.join(against)} "
                     f"({result.loss(DEFAULT_CHAIN):.4g} vs "
                     f"{', '.join(f'{result.loss(a):.4g}' for a in against)}). "
                     f"Numbers: {_diagnosis(result)}.")
        note = notes.get(result.name)
        lines.append(f"  Why: {note}" if note else
                     "  Why: no note written yet for this stream.")
    beaten = [r for r in suite.streams
              if BEST_RIVER in r.comparisons[DEFAULT_CHAIN]
              and r.comparisons[DEFAULT_CHAIN][BEST_RIVER].verdict == "loss"]
    if beaten:
        lines += ["", "Against the best river contender chosen per stream in hindsight, the "
                  "default chain loses on " + ", ".join(
                      f"{r.name} ({r.best_river} {r.loss(BEST_RIVER):.4g} vs "
                      f"{r.loss(DEFAULT_CHAIN):.4g})" for r in beaten) + "."]
        lines += ["", f"Why: {best_river_note}" if best_river_note else
                  "Why: no note written yet."]
    lines += _which_candidate_section(suite)
    lines += _conformal_section(suite)
    lines += ["", "## Streams", ""]
    lines += _table(["stream", "kind", "task", "events", "train window", "description"], [
        [r.name, r.kind, r.task + (f" ({r.n_classes} classes)" if r.n_classes else ""),
         f"{r.n_events:,}", f"{r.train_window:,}", r.description] for r in suite.streams])
    lines.append("")
    return "\n".join(lines)


def _conformal_section(suite: SuiteResult) -> list[str]:
    """Online conformal sets / intervals on the default chain's output."""
    rows = conformal_rows([(r.name, r.conformal) for r in suite.streams if r.conformal])
    if not rows:
        return []
    lines = ["", "## Conformal prediction sets and intervals under drift", "",
             "The online conformal layer (`conformal:` in a stream's config) on the default "
             "chain's output, with the same delayed labels: DtACI (the default), conformal "
             "PID, ACI at each step of DtACI's grid (the best chosen in hindsight: the "
             "smallest mean size among steps within ±1 point at α = 0.1), and split "
             "conformal calibrated once on the first 1,000 labels (a fifth of them on short "
             "streams). Coverage is long-run (all labels); size is the mean number of "
             "classes in a set, or interval width (an unbounded interval counts as the "
             "widest finite one served on the stream). `held`: DtACI within ±1 point of "
             "1 − α at both levels (in brackets where the stream has fewer than 1,000 labels: "
             "reported, not a target). Recovery: after each known change point, events "
             "until coverage over 500 labelled events, all predicted after the change, is "
             "within 2 points of 0.9 (worst change; `never`: not in the stream).", ""]
    columns = ["stream", "labels", "held", "DtACI cov 0.1", "DtACI cov 0.05",
               "DtACI size 0.1", "best ACI size 0.1", "DtACI size 0.05",
               "best ACI size 0.05", "best ACI step", "PID cov 0.1", "PID cov 0.05",
               "split cov 0.1", "split cov 0.05", "DtACI recovery", "split recovery"]
    lines += _table(columns, [[_cell(row[c]) for c in columns] for row in rows])
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
