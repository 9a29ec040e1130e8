"""The suite's streams: every real labelled stream river ships inside its package, and
the standard drift generators of ``river.datasets.synth`` with abrupt, gradual,
incremental, recurring and prior-shift drift.

A :class:`SuiteStream` says how to draw its ``(features, target)`` examples, how many
of them train the deployed models before they are frozen, how many are then replayed,
and how late labels arrive. The synthetic streams reuse the replay's scenario mechanism
(:mod:`streamweights.runtime.replay`): its three named scenarios as they are, and more
schedules built with the same sigmoid switching between concepts.

Real streams are read from the files inside the river wheel (river's ``FileDataset``
opens them from its own folder; nothing is downloaded). Datasets river *downloads*
(Elec2, Insects, CreditCard, Bikes, Taxis, ...) are not in the suite: they cannot be
fetched here. Two bundled datasets are multi-output; the suite takes one target of each
and says which. Univariate time series get lag features (the deployed forecasters need
something to go on).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from river import datasets
from river.datasets import synth

from streamweights.runtime.replay import SCENARIOS, _scheduled

Example = tuple[dict[str, Any], Any]


@dataclass(frozen=True)
class SuiteStream:
    """One stream of the suite.

    ``events`` is the number of replayed events after the ``train_window`` examples that
    train the deployed models (``None``: the rest of a finite dataset). ``change_points``
    are the known drift positions, counted in replayed events (synthetic streams only);
    the report draws them beside the detector's alarms.
    """

    name: str
    task: str
    kind: str  # "real" or "synthetic"
    drift: str
    description: str
    make_examples: Callable[[int], Iterator[Example]]
    train_window: int
    events: int | None
    seconds_between_events: float = 0.1
    mean_label_delay_seconds: float = 20.0
    missing_label_rate: float = 0.005
    change_points: tuple[int, ...] = ()


# -- real streams (files bundled in the river wheel) -------------------------------------
def _dataset(factory: Callable[[], Any], target: str | None = None,
             one_hot: bool = False) -> Callable[[int], Iterator[Example]]:
    """Examples of a bundled dataset; ``target`` picks one output of a multi-output one,
    ``one_hot`` turns categorical (string) features into 0/1 indicators."""

    def examples(seed: int) -> Iterator[Example]:
        del seed  # a real stream has one order
        for x, y in factory():
            if one_hot:
                x = {(f"{k}={v}" if isinstance(v, str) else k):
                     (1.0 if isinstance(v, str) else float(v)) for k, v in x.items()}
            if target is not None:
                y = y[target]
                if not isinstance(y, bool):
                    y = float(y)
            yield x, y
    return examples


def _lagged(factory: Callable[[], Any], lags: int,
            calendar: Callable[[Any], dict[str, float]]) -> Callable[[int], Iterator[Example]]:
    """A univariate series as (previous ``lags`` values + calendar features, value)."""

    def examples(seed: int) -> Iterator[Example]:
        del seed
        history: list[float] = []
        for x, y in factory():
            value = float(y)
            if len(history) >= lags:
                features = {f"lag_{i}": history[-i] for i in range(1, lags + 1)}
                features.update(calendar(next(iter(x.values()))))
                yield features, value
            history.append(value)
    return examples


def _float_targets(
        examples: Callable[[int], Iterator[Example]]) -> Callable[[int], Iterator[Example]]:
    def floats(seed: int) -> Iterator[Example]:
        return ((x, float(y)) for x, y in examples(seed))
    return floats


def _real(name: str, task: str, description: str, examples: Callable[[int], Iterator[Example]],
          size: int) -> SuiteStream:
    """Deployed models train on the first 20% (at least 50, at most 3,000 examples); one
    event a second, labels ~10 s (≈ 10 events) late: these streams are short, and a
    delay of hundreds of events would leave little to learn from."""
    window = min(3_000, max(50, round(0.2 * size)))
    if task == "regression":
        examples = _float_targets(examples)
    return SuiteStream(name, task, "real", "unknown (real data)", description, examples,
                       train_window=window, events=None, seconds_between_events=1.0,
                       mean_label_delay_seconds=10.0)


def _real_streams() -> list[SuiteStream]:
    return [
        _real("phishing", "classification", "Phishing web pages, 9 features "
              "(river.datasets.Phishing)", _dataset(datasets.Phishing), 1_250),
        _real("bananas", "classification", "Two-moon-like 2-D banana shapes "
              "(river.datasets.Bananas)", _dataset(datasets.Bananas), 5_300),
        _real("shuttle", "classification", "NASA shuttle sensors, rare anomaly class "
              "(river.datasets.Shuttle)", _dataset(datasets.Shuttle), 49_097),
        _real("segment", "classification", "Image segments, 7 classes "
              "(river.datasets.ImageSegments)", _dataset(datasets.ImageSegments), 2_310),
        _real("yeast", "classification", "Yeast genes, label Class2 of 14 (the most "
              "balanced; river.datasets.Yeast is multi-output)",
              _dataset(datasets.Yeast, target="Class2"), 2_417),
        _real("sp500", "regression", "S&P 500 daily returns (river.datasets.SP500Stocks)",
              _dataset(datasets.SP500Stocks), 1_257),
        _real("trump-approval", "regression", "Trump approval rating from polls "
              "(river.datasets.TrumpApproval)", _dataset(datasets.TrumpApproval), 1_001),
        _real("chick-weights", "regression", "Chick weights by age and diet "
              "(river.datasets.ChickWeights)", _dataset(datasets.ChickWeights), 578),
        _real("solar-flare", "regression", "Solar flares, target c-class-flares of 3 "
              "(river.datasets.SolarFlare is multi-output), categorical features one-hot",
              _dataset(datasets.SolarFlare, target="c-class-flares", one_hot=True), 1_066),
        _real("water-flow", "regression", "Hourly water flow, 3 lags + hour of day "
              "(river.datasets.WaterFlow)",
              _lagged(datasets.WaterFlow, 3, lambda t: {"hour": float(t.hour)}), 1_265),
        _real("airline-passengers", "regression", "Monthly airline passengers, 3 lags + "
              "month (river.datasets.AirlinePassengers)",
              _lagged(datasets.AirlinePassengers, 3, lambda t: {"month": float(t.month)}), 141),
    ]


# -- synthetic streams --------------------------------------------------------------------
SYNTHETIC_TRAIN_WINDOW = 3_000  # the replay's Scenario default
SYNTHETIC_EVENTS = 30_000


def _stagger_recurring(seed: int) -> Iterator[Example]:
    concepts = [iter(synth.STAGGER(classification_function=f, seed=seed + f,
                                   balance_classes=True)) for f in (0, 1, 2)]
    return _scheduled(concepts, period=6_000, width=1, seed=seed)


def _sine_abrupt(seed: int) -> Iterator[Example]:
    """SINE1, SINE2 and their reversals in turn: after a reversal every deployed model is
    confidently wrong, the hardest case for a mixture (only a stage that can flip the
    sign of a model's evidence recovers)."""
    concepts = [iter(synth.Sine(classification_function=f, seed=seed + f, has_noise=True))
                for f in (0, 1, 2, 3)]
    return _scheduled(concepts, period=8_000, width=1, seed=seed)


def _sea_gradual(seed: int) -> Iterator[Example]:
    return iter(synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=seed, noise=0.05),
        drift_stream=synth.SEA(variant=2, seed=seed + 1, noise=0.05),
        position=15_000, width=6_000, seed=seed))


def _rbf_incremental(seed: int) -> Iterator[Example]:
    return iter(synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, n_classes=2,
                                     n_features=10, n_centroids=50, change_speed=0.0005,
                                     n_drift_centroids=50))


def _led_abrupt(seed: int) -> Iterator[Example]:
    """LED digits, then LEDDrift with 7 segments swapped, switching abruptly every
    15,000 events. (River's ``ConceptDriftStream`` cannot do an abrupt switch far into a
    stream: its sigmoid ``exp(-4 (t - position) / width)`` overflows for a small width.)"""
    concepts = [iter(synth.LED(seed=seed, noise_percentage=0.1, irrelevant_features=True)),
                iter(synth.LEDDrift(seed=seed + 1, noise_percentage=0.1,
                                    irrelevant_features=True, n_drift_features=7))]
    return _scheduled(concepts, period=15_000, width=1, seed=seed)


#: Share of class 1 in each stretch of the prior-shift stream (the concept stays put).
PRIOR_SCHEDULE = ((9_000, 0.5), (17_000, 0.15), (25_000, 0.5), (None, 0.85))


def _agrawal_prior_shift(seed: int) -> Iterator[Example]:
    """Label shift: the class is drawn from a class mix that moves (``PRIOR_SCHEDULE``),
    then features from the Agrawal concept given that class, so p(x | y) never changes."""
    source = iter(synth.Agrawal(classification_function=2, seed=seed, perturbation=0.05))
    chooser = random.Random(seed + 101)
    waiting: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for t in itertools.count():
        share = next(s for end, s in PRIOR_SCHEDULE if end is None or t < end)
        label = 1 if chooser.random() < share else 0
        while not waiting[label]:
            x, y = next(source)
            waiting[y].append(x)
        yield waiting[label].pop(0), label


def _friedman(drift_type: str) -> Callable[[int], Iterator[Example]]:
    def examples(seed: int) -> Iterator[Example]:
        return iter(synth.FriedmanDrift(drift_type=drift_type, position=(13_000, 21_000),
                                        transition_window=3_000, seed=seed))
    return examples


def _synthetic(name: str, task: str, drift: str, description: str,
               examples: Callable[[int], Iterator[Example]], change_points: tuple[int, ...],
               events: int = SYNTHETIC_EVENTS) -> SuiteStream:
    """Replay defaults: an event every 0.1 s, labels ~20 s (≈ 200 events) late, 0.5% of
    labels never arrive; change points are given in generator time and shifted here."""
    shifted = tuple(p - SYNTHETIC_TRAIN_WINDOW for p in change_points
                    if SYNTHETIC_TRAIN_WINDOW < p < SYNTHETIC_TRAIN_WINDOW + events)
    return SuiteStream(name, task, "synthetic", drift, description, examples,
                       train_window=SYNTHETIC_TRAIN_WINDOW, events=events,
                       change_points=shifted)


def _synthetic_streams() -> list[SuiteStream]:
    scenario = SCENARIOS
    return [
        _synthetic("agrawal-recurring", "classification", "recurring",
                   scenario["agrawal-recurring"].description,
                   scenario["agrawal-recurring"].make_stream, (15_000, 30_000)),
        _synthetic("sea-abrupt", "classification", "abrupt",
                   scenario["sea-abrupt"].description, scenario["sea-abrupt"].make_stream,
                   (12_000, 24_000)),
        _synthetic("hyperplane-gradual", "classification", "gradual (continuous)",
                   scenario["hyperplane-gradual"].description,
                   scenario["hyperplane-gradual"].make_stream, ()),
        _synthetic("stagger-recurring", "classification", "abrupt, recurring",
                   "STAGGER concepts 0, 1, 2 in turn every 6,000 events "
                   "(river.datasets.synth.STAGGER)", _stagger_recurring,
                   tuple(range(6_000, 33_000, 6_000))),
        _synthetic("sine-abrupt", "classification", "abrupt, with reversals",
                   "SINE1, SINE2, reversed SINE1, reversed SINE2 every 8,000 events "
                   "(river.datasets.synth.Sine, noisy)", _sine_abrupt,
                   (8_000, 16_000, 24_000, 32_000)),
        _synthetic("sea-gradual", "classification", "gradual",
                   "SEA variant 0 to 2 over 6,000 events "
                   "(river.datasets.synth.ConceptDriftStream)", _sea_gradual, (15_000,)),
        _synthetic("rbf-incremental", "classification", "incremental",
                   "Random RBF with every centroid moving "
                   "(river.datasets.synth.RandomRBFDrift)", _rbf_incremental, ()),
        _synthetic("led-abrupt", "classification", "abrupt, recurring, 10 classes",
                   "LED digits and LEDDrift with 7 swapped segments in turn every 15,000 "
                   "events (river.datasets.synth.LED / LEDDrift)", _led_abrupt,
                   (15_000, 30_000)),
        _synthetic("agrawal-prior-shift", "classification", "prior shift, recurring",
                   "Agrawal function 2, class-1 share 0.5 / 0.15 / 0.5 / 0.85 "
                   "(label shift by class-conditional sampling)", _agrawal_prior_shift,
                   (9_000, 17_000, 25_000)),
        _synthetic("friedman-abrupt", "regression", "abrupt, recurring",
                   "Friedman #1, global recurring abrupt drift "
                   "(river.datasets.synth.FriedmanDrift 'gra')", _friedman("gra"),
                   (13_000, 21_000), events=20_000),
        _synthetic("friedman-gradual", "regression", "gradual",
                   "Friedman #1, global slow gradual drift "
                   "(river.datasets.synth.FriedmanDrift 'gsg')", _friedman("gsg"),
                   (13_000, 21_000), events=20_000),
    ]


SUITE: tuple[SuiteStream, ...] = (*_synthetic_streams(), *_real_streams())


def suite_streams(names: list[str] | None = None, events: int | None = None,
                  train_window: int | None = None) -> list[SuiteStream]:
    """The suite's streams, optionally only ``names`` and with at most ``events`` replayed
    events and a smaller ``train_window`` each (for quick runs and tests)."""
    known = {s.name: s for s in SUITE}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"streams: unknown stream {unknown[0]!r}; known: "
                             f"{', '.join(known)}")
        chosen = [known[n] for n in names]
    else:
        chosen = list(SUITE)
    result = []
    for stream in chosen:
        changes: dict[str, Any] = {}
        window, length = stream.train_window, stream.events
        if train_window is not None and train_window < window:
            window = changes["train_window"] = train_window
        if events is not None and (length is None or events < length):
            length = changes["events"] = events
        if changes and stream.change_points:
            shift = stream.train_window - window
            changes["change_points"] = tuple(
                p + shift for p in stream.change_points if length is None or p + shift < length)
        result.append(replace(stream, **changes) if changes else stream)
    return result
