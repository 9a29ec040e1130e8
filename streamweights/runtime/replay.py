"""The embedded default source: a drifting stream replayed through deployed models.

A scenario takes a standard drift generator from ``river.datasets.synth`` (or the
user's own labelled CSV or Parquet file, read by :mod:`streamweights.runtime.tabular`),
trains K deployed models of different families on an initial window and freezes them,
as deployed models are, then emits for every later event a prediction record (the
frozen models' probabilities) and, after a random delay in event time, its label
record. Records come out merged in event-time order with a fixed tie rule (predictions
before labels at equal times, then by event index), so a replay is the same sequence
every time for the same seed.

Generation is lazy (one event at a time), so memory stays flat however long the
replay, and a restart skips ahead deterministically to the saved position.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
from river import compose, multiclass, naive_bayes, preprocessing, tree
from river import linear_model as river_linear
from river.datasets import synth

from streamweights.config import TABLE_KINDS, SourceConfig
from streamweights.runtime.tabular import BadRow, Table

log = logging.getLogger("streamweights.source")

#: Prediction events a built-in scenario replays when ``source.events`` is not set
#: (scenarios are endless; this is four to five of their concept changes).
DEFAULT_SCENARIO_EVENTS = 60_000

#: The deployed models every scenario trains: three model families with different
#: inductive biases, so that which one is best changes as the concept drifts.
MODEL_NAMES = ("logistic_regression", "naive_bayes", "hoeffding_tree")


#: A label waiting for its arrival time: (arrival ts, event index: the tie rule, event id,
#: class index). Its record is encoded when it is due.
PendingLabel = tuple[float, int, str, int]


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


@dataclass(frozen=True, slots=True)
class Rejected:
    """A source row that cannot become a record: the service dead-letters it (same sink,
    same ``streamweights_invalid_records_total{reason}`` counter as a bad record)."""

    reason: str
    error: str
    raw: bytes
    stream: str
    id: str | None = None


def table_models(n_classes: int) -> dict[str, object]:
    """The deployed model families for a table with ``n_classes`` classes, learning on
    class indexes. river's logistic regression is binary (it reads a label as a bool),
    so with more than two classes it runs one-vs-rest."""
    models = deployed_models()
    if n_classes > 2:
        models["logistic_regression"] = multiclass.OneVsRestClassifier(
            models["logistic_regression"])
    return models


class ReplayStream:
    """Event-time ordered prediction and label records of one scenario.

    ``records(start)`` yields ``(position, raw_bytes)`` from ``start`` on; position ``p``
    is the p-th record of the merged sequence. A table source also yields
    ``(position, Rejected)`` for a row that cannot be used.
    """

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.table: Table | None = None
        self.classes: list[object] | None = None
        if config.kind in TABLE_KINDS:
            self.table = Table(config)
            self.classes = list(self.table.classes)
            log.info("source: %s", self.table.describe())
            self.scenario = Scenario(f"{config.kind}:{config.path}",
                                     f"labelled {config.kind} file {config.path}",
                                     lambda seed: iter(()), train_window=config.train_rows)
        elif config.scenario not in SCENARIOS:
            raise ValueError(f"source.scenario: unknown scenario {config.scenario!r}; known: "
                             f"{', '.join(SCENARIOS)}")
        else:
            self.scenario = SCENARIOS[config.scenario]
        self.stream = config.stream
        self.models = MODEL_NAMES

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 2

    def records(self, start: int = 0) -> Iterator[tuple[int, bytes | Rejected]]:
        """Yield ``(position, raw record)`` from ``start`` (earlier ones are regenerated
        and skipped, which is what makes a restart deterministic)."""
        generate = self._generate_table if self.table is not None else self._generate
        return itertools.islice(generate(), start, None)

    def _generate(self) -> Iterator[tuple[int, bytes]]:
        scenario, config = self.scenario, self.config
        examples = scenario.make_stream(config.seed)
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
        pending: list[PendingLabel] = []
        position = 0
        t0 = 1_750_000_000.0
        events = DEFAULT_SCENARIO_EVENTS if config.events is None else config.events
        for index, (x, y) in enumerate(itertools.islice(examples, events)):
            ts = round(t0 + index * scenario.seconds_between_events, 3)
            while pending and pending[0][0] < ts:
                yield position, self._label_record(heapq.heappop(pending))
                position += 1
            event_id = f"{self.stream}-{index}"
            outputs = _outputs(models, classes, x)
            yield position, orjson.dumps({"schema": 1, "stream": self.stream, "id": event_id,
                                          "ts": ts, "outputs": outputs})
            position += 1
            delay = delays.expovariate(1.0 / scenario.mean_label_delay_seconds)
            if delays.random() >= scenario.missing_label_rate and y in class_index:
                label_ts = round(ts + delay, 3)
                heapq.heappush(pending, (label_ts, index, event_id, class_index[y]))
        while pending:
            yield position, self._label_record(heapq.heappop(pending))
            position += 1

    def _generate_table(self) -> Iterator[tuple[int, bytes | Rejected]]:
        """A table's rows: the first ``train_rows`` usable ones train the deployed models,
        every later one is a prediction (event time from the timestamp column, or
        ``seconds_between_events`` apart) and a label (its delay fixed, exponential or
        from the label-time column). Bad rows come out as :class:`Rejected` in file order.
        Nothing is held but the labels not yet due, so memory stays flat."""
        table, config, scenario = self.table, self.config, self.scenario
        assert table is not None
        classes = list(range(len(table.classes)))
        models = table_models(len(classes))
        delays = random.Random(config.seed * 7919 + 17)
        pending: list[PendingLabel] = []
        position = 0
        trained = 0
        events = 0
        t0 = 1_750_000_000.0
        for row in table.rows():
            if isinstance(row, BadRow):
                yield position, Rejected(row.reason, row.error, row.raw, self.stream,
                                         self._event_id(row.number, row.id))
                position += 1
                continue
            if trained < scenario.train_window:
                for model in models.values():
                    model.learn_one(row.features, row.label)
                trained += 1
                continue
            if config.events is not None and events >= config.events:
                log.info("source.events: stopped after %d events (row %d of %d)", events,
                         row.number, table.rows_total)
                break
            ts = row.ts if row.ts is not None else t0 + events * scenario.seconds_between_events
            ts = round(ts, 3)
            while pending and pending[0][0] < ts:
                yield position, self._label_record(heapq.heappop(pending))
                position += 1
            event_id = self._event_id(row.number, row.id)
            # The row's features ride along (table column order), so a FeatureCorrection
            # stage can learn from them; other stages ignore them.
            yield position, orjson.dumps({"schema": 1, "stream": self.stream, "id": event_id,
                                          "ts": ts, "outputs": _outputs(models, classes,
                                                                        row.features),
                                          "features": [row.features[c]
                                                       for c in table.features]})
            position += 1
            if config.label_delay == "column":
                assert row.label_ts is not None  # the table requires the column
                label_ts = round(row.label_ts, 3)
            elif config.label_delay == "fixed":
                label_ts = round(ts + config.label_delay_seconds, 3)
            else:
                mean = config.label_delay_seconds
                label_ts = round(ts + (delays.expovariate(1.0 / mean) if mean > 0 else 0.0), 3)
            heapq.heappush(pending, (label_ts, events, event_id, row.label))
            events += 1
        if trained < scenario.train_window:
            log.warning("source: only %d usable rows, all used to train the deployed models "
                        "(source.train_rows %d); nothing left to replay", trained,
                        scenario.train_window)
        while pending:
            yield position, self._label_record(heapq.heappop(pending))
            position += 1

    def _label_record(self, label: PendingLabel) -> bytes:
        """A due label's record, encoded only now: a label waits as its few fields, not as
        its bytes (orjson's output kept ~4 KiB of heap per record while held, so a table
        whose labels all come after its last row held ~4 KiB per row, ~0.5 GB at 100,000)."""
        label_ts, _, event_id, label_value = label
        return orjson.dumps({"schema": 1, "stream": self.stream, "id": event_id,
                             "ts": label_ts, "label": label_value})

    def _event_id(self, number: int, row_id: str | None) -> str:
        return row_id if row_id is not None else f"{self.stream}-row{number}"


def _outputs(models: dict[str, object], classes: list[object], x: dict) -> dict[str, list]:
    """Each deployed model's probabilities over ``classes``; a model with no answer yet
    (all zeros) says uniform."""
    outputs = {}
    for name, model in models.items():
        proba = model.predict_proba_one(x)
        row = [float(proba.get(c, 0.0)) for c in classes]
        total = math.fsum(row)
        outputs[name] = [v / total for v in row] if total > 0 else [
            1.0 / len(classes)] * len(classes)
    return outputs
