"""The embedded default source: a drifting stream replayed through deployed models.

A scenario takes a standard drift generator from ``river.datasets.synth`` (or the
user's own labelled CSV file), trains K deployed models of different families on an
initial window and freezes them, as deployed models are, then emits for every later
event a prediction record (the frozen models' probabilities) and, after a random
delay in event time, its label record. Records come out merged in event-time order
with a fixed tie rule (predictions before labels at equal times, then by event
index), so a replay is the same sequence every time for the same seed.

Generation is lazy (one event at a time), so memory stays flat however long the
replay, and a restart skips ahead deterministically to the saved position.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
from river import compose, naive_bayes, preprocessing, tree
from river import linear_model as river_linear
from river.datasets import synth

from streamweights.config import SourceConfig

#: The deployed models every scenario trains: three model families with different
#: inductive biases, so that which one is best changes as the concept drifts.
MODEL_NAMES = ("logistic_regression", "naive_bayes", "hoeffding_tree")


@dataclass(frozen=True)
class Scenario:
    """A named drifting stream."""

    name: str
    description: str
    make_stream: Callable[[int], Iterator[tuple[dict, object]]]
    train_window: int = 3_000
    seconds_between_events: float = 0.1
    mean_label_delay_seconds: float = 20.0
    #: Fraction of labels that never arrive (their predictions expire from the join).
    missing_label_rate: float = 0.005


def _scheduled(concepts: list[Iterator[tuple[dict, object]]], period: int, width: int,
               seed: int) -> Iterator[tuple[dict, object]]:
    """Concepts taking turns (cycling) every ``period`` events, each change spread over
    ``width`` events with the sigmoid schedule of river's ``ConceptDriftStream``: around a
    change at ``c``, an event comes from the next concept with probability
    ``1 / (1 + exp(-4 (t - c) / width))``. Lazy, so a replay of any length is flat in
    memory."""
    chooser = random.Random(seed)
    n = len(concepts)
    for t in itertools.count():
        segment, offset = divmod(t, period)
        if offset >= period // 2:  # nearer the next change
            change, before, after = (segment + 1) * period, segment, segment + 1
        else:  # nearer the previous change
            change, before, after = segment * period, segment - 1, segment
        z = -4.0 * (t - change) / width
        probability_after = 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
        chosen = after if chooser.random() < probability_after else before
        yield next(concepts[chosen % n])


def _agrawal_recurring(seed: int) -> Iterator[tuple[dict, object]]:
    """Agrawal loan-approval concepts 0 and 1 taking turns every 15,000 events."""
    concepts = [iter(synth.Agrawal(classification_function=f, seed=seed + f, perturbation=0.05))
                for f in (0, 1)]
    return _scheduled(concepts, period=15_000, width=1_000, seed=seed)


def _sea_abrupt(seed: int) -> Iterator[tuple[dict, object]]:
    """SEA threshold concepts switching abruptly every 12,000 events (variants 0, 3, 1, 2)."""
    concepts = [iter(synth.SEA(variant=v, seed=seed + v, noise=0.05)) for v in (0, 3, 1, 2)]
    return _scheduled(concepts, period=12_000, width=1, seed=seed)


def _hyperplane_gradual(seed: int) -> Iterator[tuple[dict, object]]:
    """A rotating hyperplane: the decision boundary turns slowly all the time."""
    return iter(synth.Hyperplane(seed=seed, n_features=10, n_drift_features=4,
                                 mag_change=0.002, noise_percentage=0.05, sigma=0.1))


SCENARIOS = {
    scenario.name: scenario for scenario in (
        Scenario("agrawal-recurring", "Agrawal loan concepts 0 and 1 recurring every 15,000 "
                 "events (river.datasets.synth.Agrawal)", _agrawal_recurring),
        Scenario("sea-abrupt", "SEA threshold concepts switching abruptly every 12,000 events "
                 "(river.datasets.synth.SEA)", _sea_abrupt),
        Scenario("hyperplane-gradual", "Rotating hyperplane, gradual drift all the time "
                 "(river.datasets.synth.Hyperplane)", _hyperplane_gradual),
    )
}


def deployed_models() -> dict[str, object]:
    """Fresh instances of the three deployed model families."""
    return {
        "logistic_regression": compose.Pipeline(preprocessing.StandardScaler(),
                                                river_linear.LogisticRegression()),
        "naive_bayes": naive_bayes.GaussianNB(),
        "hoeffding_tree": tree.HoeffdingTreeClassifier(grace_period=50),
    }


class ReplayStream:
    """Event-time ordered prediction and label records of one scenario.

    ``records(start)`` yields ``(position, raw_bytes)`` from ``start`` on; position ``p``
    is the p-th record of the merged sequence.
    """

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        if config.kind == "csv":
            self.scenario = Scenario(f"csv:{config.path}", f"labelled CSV file {config.path}",
                                     lambda seed: iter(()))
        elif config.scenario not in SCENARIOS:
            raise ValueError(f"source.scenario: unknown scenario {config.scenario!r}; known: "
                             f"{', '.join(SCENARIOS)}")
        else:
            self.scenario = SCENARIOS[config.scenario]
        self.stream = config.stream
        self.models = MODEL_NAMES
        self.classes: list[object] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 2

    def _examples(self) -> Iterator[tuple[dict, object]]:
        if self.config.kind == "csv":
            return _csv_examples(self.config)
        return self.scenario.make_stream(self.config.seed)

    def records(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(position, raw record)`` from ``start`` (earlier ones are regenerated
        and skipped, which is what makes a restart deterministic)."""
        return itertools.islice(self._generate(), start, None)

    def _generate(self) -> Iterator[tuple[int, bytes]]:
        scenario, config = self.scenario, self.config
        examples = self._examples()
        window = list(itertools.islice(examples, scenario.train_window))
        if len(window) < scenario.train_window:
            raise ValueError(f"source: only {len(window)} examples; the deployed models need "
                             f"{scenario.train_window} to train on before the replay starts")
        classes = sorted({y for _, y in window}, key=repr)
        if len(classes) < 2:
            raise ValueError("source: the training window holds a single class")
        self.classes = classes
        class_index = {c: i for i, c in enumerate(classes)}
        models = deployed_models()
        for x, y in window:
            for model in models.values():
                model.learn_one(x, y)
        delays = random.Random(config.seed * 7919 + 17)
        pending: list[tuple[float, int, bytes]] = []
        position = 0
        t0 = 1_750_000_000.0
        for index, (x, y) in enumerate(itertools.islice(examples, config.events)):
            ts = round(t0 + index * scenario.seconds_between_events, 3)
            while pending and pending[0][0] < ts:
                yield position, heapq.heappop(pending)[2]
                position += 1
            event_id = f"{self.stream}-{index}"
            outputs = {}
            for name, model in models.items():
                proba = model.predict_proba_one(x)
                row = [float(proba.get(c, 0.0)) for c in classes]
                total = math.fsum(row)
                outputs[name] = [v / total for v in row] if total > 0 else [
                    1.0 / len(classes)] * len(classes)
            yield position, orjson.dumps({"schema": 1, "stream": self.stream, "id": event_id,
                                          "ts": ts, "outputs": outputs})
            position += 1
            delay = delays.expovariate(1.0 / scenario.mean_label_delay_seconds)
            if delays.random() >= scenario.missing_label_rate and y in class_index:
                label_ts = round(ts + delay, 3)
                heapq.heappush(pending, (label_ts, index, orjson.dumps(
                    {"schema": 1, "stream": self.stream, "id": event_id, "ts": label_ts,
                     "label": class_index[y]})))
        while pending:
            yield position, heapq.heappop(pending)[2]
            position += 1


def _csv_examples(config: SourceConfig) -> Iterator[tuple[dict, object]]:
    """Rows of a labelled CSV file as (features, label), ordered by the timestamp column
    if one is configured. Feature columns default to every numeric column but the label
    and timestamp."""
    path = config.path
    assert path is not None
    if path.endswith(".parquet"):
        raise ValueError("source.path: Parquet input is not supported yet; export the "
                         "table as CSV")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"source.path: cannot read {path} ({error.strerror})") from None
    if not rows:
        raise ValueError(f"source.path: {path} has no data rows")
    columns = list(rows[0])
    label = config.label_column
    if label not in columns:
        raise ValueError(f"source.label_column: column {label!r} not in {path} "
                         f"(columns: {', '.join(columns)})")
    if config.timestamp_column:
        if config.timestamp_column not in columns:
            raise ValueError(f"source.timestamp_column: column {config.timestamp_column!r} "
                             f"not in {path}")
        rows.sort(key=lambda r: _number(r[config.timestamp_column], config.timestamp_column))
    excluded = {label, config.timestamp_column}
    features = list(config.feature_columns or [c for c in columns if c not in excluded
                                               and _is_numeric(rows, c)])
    for column in features:
        if column not in columns:
            raise ValueError(f"source.feature_columns: column {column!r} not in {path}")
    for row in rows:
        yield {c: _number(row[c], c) for c in features}, row[label]


def _is_numeric(rows: list[dict[str, str]], column: str) -> bool:
    try:
        for row in rows[:100]:
            float(row[column])
    except ValueError:
        return False
    return True


def _number(text: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"source: column {column!r} holds {text!r}, not a number") from None
