"""Prometheus metrics of the service (``streamweights_`` prefix, base units).

Stable names (dashboards and alerts rely on them):

================================================  =========  =============================
name                                              type       labels
================================================  =========  =============================
streamweights_events_total                        counter    stream, kind (prediction|label)
streamweights_labels_joined_total                 counter    stream
streamweights_predictions_expired_total           counter    stream, cause (ttl|capacity)
streamweights_pending_labels                      gauge      stream
streamweights_ensemble_weight                     gauge      stream, model
streamweights_portfolio_weight                    gauge      stream, candidate
streamweights_log_loss                            gauge      stream, forecaster
streamweights_ece                                 gauge      stream, forecaster
streamweights_drift_events_total                  counter    stream
streamweights_weights_version                     gauge      stream
streamweights_invalid_records_total               counter    reason
streamweights_checkpoint_duration_seconds         histogram  —
streamweights_snapshot_bytes                      gauge      —
streamweights_update_latency_seconds              histogram  kind
streamweights_ready                               gauge      —
streamweights_kafka_transactions_total            counter    outcome (commit|abort)
streamweights_kafka_rebalances_total              counter    —
streamweights_kafka_restore_seconds               histogram  —
streamweights_kafka_replayed_records_total        counter    —
streamweights_kafka_commit_seconds                histogram  step (offsets|commit)
streamweights_kafka_consumer_lag                  gauge      topic, partition
streamweights_conformal_coverage                  gauge      stream, forecaster, alpha, window
streamweights_conformal_target_coverage           gauge      stream, alpha
streamweights_conformal_mean_size                 gauge      stream, forecaster, alpha
streamweights_performance                         gauge      stream, forecaster, metric, source
================================================  =========  =============================

Conformal gauges exist for streams with a ``conformal:`` block: ``window`` is ``run``
(long-run coverage) or ``rolling`` (the last 500 labels); ``alpha`` is the level as in
the adapted records (``"0.1"``); ``mean_size`` is classes per set or interval width.
``streamweights_performance`` (streams with ``performance_estimate:``) holds ``metric``
``accuracy``, ``brier`` or ``log_loss`` with ``source`` ``estimated`` (label-free, over
the last window of served predictions) or ``realised`` (over the last window of labels).

``candidate`` names a portfolio's candidate chain by its stage types
(``FixedShare->OnlinePlatt``); a portfolio stream's ensemble weights are its candidates'
ensemble weights (Hedge / FixedShare first stages) averaged under the portfolio's weights.

``forecaster`` is ``adapted``, ``raw_best`` or ``raw:<model>``. Loss and ECE gauges are
prequential means over the whole run (for regression streams, ``log_loss`` holds MSE).

``/metrics`` is :meth:`ServiceMetrics.exposition`: ``generate_latest``'s bytes, the
per-stream families written by the core (~75 series a default stream; 0.3 s a scrape
at 10,000 streams instead of 7 s).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from streamweights.runtime.prometheus_text import family_header, sample_lines

_LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
_CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _init_family(family: Any, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry) -> None:
    """The fields every loop-written family has (no children yet), then registered."""
    family.name, family.documentation, family.labelnames = name, documentation, labelnames
    family._children = {}
    registry.register(family)


def check_label_values(family: Any, values: tuple[str, ...]) -> None:
    """ValueError unless ``values`` has one value per label name of ``family``."""
    if len(values) != len(family.labelnames):
        raise ValueError(f"{family.name}: labels {family.labelnames}, got {values}")


def _child(family: Any, values: tuple[str, ...], make: Callable[[], Any]) -> Any:
    """``family``'s series of these label values, made by ``make`` on first use."""
    child = family._children.get(values)
    if child is None:
        check_label_values(family, values)
        child = family._children[values] = make()
    return child


class _CounterChild:
    """One labelled series of a :class:`LoopCounter`: a plain float."""

    __slots__ = ("created", "value")

    def __init__(self, created: float | None = None) -> None:
        self.value = 0.0
        self.created = time.time() if created is None else created

    def inc(self, amount: float = 1) -> None:
        self.value += amount


#: ``() -> {label values: count}``: counts kept outside a :class:`LoopCounter`.
CountSource = Callable[[], dict[tuple[str, ...], float]]


class LoopCounter:
    """A labelled counter that only the service loop's thread increments, once per record.

    prometheus_client's ``Counter`` takes a lock per increment (~0.5 us, 3-4 increments a
    record); here an increment is a float addition (~0.05 us) and the scrape, on the HTTP
    thread, reads the floats as they are. With one writer that reads exactly what the
    locked counter would at that moment (no batching, no delay: a scrape never sees a
    processed record uncounted for longer than the record takes). Exposed as
    prometheus_client exposes a ``Counter`` (``<name>_total`` and ``<name>_created``).

    Counts kept elsewhere may be added (:meth:`count_also`): the core's record lane
    counts the records it applies itself, and a scrape adds them to the series."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry) -> None:
        self._sources: list[CountSource] = []
        self._sources_since: float | None = None
        _init_family(self, name, documentation, labelnames, registry)

    def labels(self, *values: str) -> _CounterChild:
        """The series of these label values (created at 0 on first use)."""
        return _child(self, values, lambda: _CounterChild(self._sources_since))

    def count_also(self, source: CountSource) -> None:
        """Add ``source()`` (label values -> a count that only grows) to these series at
        every scrape. Series are then created as of this call, so a series first counted
        by a source and later incremented here keeps one creation time."""
        if self._sources_since is None:
            self._sources_since = time.time()
        self._sources.append(source)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def _rows(self) -> list[tuple[tuple[str, ...], float, float | None]]:
        """(label values, count, created) of every series, in exposition order: this
        family's own series first, then those only a source has counted so far."""
        extra: dict[tuple[str, ...], float] = {}
        for source in self._sources:
            for values, count in source().items():
                extra[values] = extra.get(values, 0) + count
        rows = [(values, child.value + float(extra.pop(values, 0)), child.created)
                for values, child in list(self._children.items())]  # one atomic copy
        rows.extend((values, float(count), self._sources_since)
                    for values, count in extra.items() if count)
        return rows

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count, created in self._rows():
            family.add_metric(values, count, created=created)
        yield family

    def render(self, out: list[bytes]) -> None:
        """Append this family's exposition text (as ``generate_latest`` writes it)."""
        rows = self._rows()
        out.append(family_header(self.name + "_total", self.documentation, "counter"))
        out.append(sample_lines(self.name + "_total", self.labelnames, rows, value_at=1))
        if rows:
            out.append(family_header(self.name + "_created", self.documentation, "gauge"))
            out.append(sample_lines(self.name + "_created", self.labelnames, rows, value_at=2))


class _HistogramChild:
    """One labelled series of a :class:`LoopHistogram`: counts per bucket (not
    cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...], created: float | None = None) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time() if created is None else created

    def observe(self, amount: float) -> None:
        # bucket i counts amount <= bounds[i] (Prometheus' "le"), the last one the rest
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


#: ``() -> {label values: (counts per bucket, sum)}``: observations kept outside a
#: :class:`LoopHistogram`, counts as :class:`_HistogramChild` keeps them.
ObservationSource = Callable[[], dict[tuple[str, ...], tuple[list[int], float]]]


class LoopHistogram:
    """A labelled histogram observed once per record by the service loop's thread only:
    :class:`LoopCounter`'s reasoning (no lock, ~0.2 us an observation instead of ~1.2 us,
    read as it is at scrape time; the bucket counts are copied at once, so the count is
    their total, and the sum is at most the observation in flight behind, as with
    prometheus_client's per-value locks). Exposed as a prometheus_client ``Histogram``.

    Observations kept elsewhere with the same bounds may be added (:meth:`observe_also`):
    the core's record lane times the records it applies itself."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.bounds = tuple(float(bound) for bound in buckets)
        self._sources: list[ObservationSource] = []
        self._sources_since: float | None = None
        _init_family(self, name, documentation, labelnames, registry)

    def labels(self, *values: str) -> _HistogramChild:
        """The series of these label values (created empty on first use)."""
        return _child(self, values, lambda: _HistogramChild(self.bounds, self._sources_since))

    def observe_also(self, source: ObservationSource) -> None:
        """Add ``source()`` (label values -> bucket counts and sum, which only grow) to
        these series at every scrape; as :meth:`LoopCounter.count_also`, series are then
        created as of this call."""
        if self._sources_since is None:
            self._sources_since = time.time()
        self._sources.append(source)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def _rows(self) -> list[tuple[tuple[str, ...], list[int], float, float | None]]:
        """(label values, counts per bucket, sum, created) of every series with an
        observation or a child, in exposition order (this family's own first)."""
        series: dict[tuple[str, ...], tuple[list[int], float, float | None]] = {
            values: (list(child.counts), child.sum, child.created)
            for values, child in list(self._children.items())}  # one atomic copy
        for source in self._sources:
            for values, (counts, total) in source().items():
                if len(counts) != len(self.bounds) + 1:
                    raise ValueError(f"{self.name}: {len(counts)} bucket counts for "
                                     f"{len(self.bounds)} bounds")
                seen = series.get(values)
                if seen is None:
                    if not any(counts):
                        continue  # nothing observed in this series yet
                    seen = ([0] * len(counts), 0.0, self._sources_since)
                series[values] = ([a + b for a, b in zip(seen[0], counts, strict=True)],
                                  seen[1] + total, seen[2])
        return [(values, counts, total, created)
                for values, (counts, total, created) in series.items()]

    def _cumulative(self, counts: list[int]) -> list[tuple[str, int]]:
        """Prometheus' buckets: (``le`` as written, observations <= it)."""
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append((floatToGoString(bound), running))
        return buckets

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, counts, total, created in self._rows():
            family.add_metric(list(values), self._cumulative(counts), total)
            family.samples.append(Sample(self.name + "_created",
                                         dict(zip(self.labelnames, values, strict=True)),
                                         created))
        yield family

    def render(self, out: list[bytes]) -> None:
        """Append this family's exposition text (as ``generate_latest`` writes it)."""
        rows = self._rows()
        names = self.labelnames
        out.append(family_header(self.name, self.documentation, "histogram"))
        for values, counts, total, _ in rows:
            buckets = self._cumulative(counts)
            out.append(sample_lines(self.name + "_bucket", (*names, "le"),
                                    [((*values, le), running) for le, running in buckets]))
            out.append(sample_lines(self.name + "_count", names, [(values, buckets[-1][1])]))
            out.append(sample_lines(self.name + "_sum", names, [(values, total)]))
        if rows:
            out.append(family_header(self.name + "_created", self.documentation, "gauge"))
            out.append(sample_lines(self.name + "_created", names, rows, value_at=3))


class _GaugeSeries:
    """One labelled series of a :class:`LoopGauge`, as ``labels()`` hands it out: sets
    the float its family keeps for these label values."""

    __slots__ = ("_key", "_values")

    def __init__(self, values: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
        self._values, self._key = values, key

    def set(self, value: float) -> None:
        self._values[self._key] = float(value)


class LoopGauge:
    """A labelled gauge that only the service loop's thread sets: the per-stream series.

    A replica may hold 10,000 streams with ~75 series each (weights, scores, conformal
    coverage, estimates); prometheus_client's ``Gauge`` makes each series a full metric
    object with its own lock (~0.7 KiB), ~40 KiB per stream. Here a series is a float in
    one dict per family, by its label values (``_children``), read as it is at scrape
    time (one writer: :class:`LoopCounter`'s reasoning); no object per series, so a
    stream's series cost their label tuple and their entry (an object per series, and a
    key tuple to find it, were ~12 KB of a mature demo stream's ~176 KB). Exposed as
    prometheus_client exposes a ``Gauge``."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry) -> None:
        _init_family(self, name, documentation, labelnames, registry)

    def labels(self, *values: str) -> _GaugeSeries:
        """The series of these label values (created at 0 on first use)."""
        children = self._children
        if values not in children:
            check_label_values(self, values)
            children[values] = 0.0
        return _GaugeSeries(children, values)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, value in list(self._children.items()):  # one atomic copy
            family.add_metric(values, value)
        yield family

    def render(self, out: list[bytes]) -> None:
        """Append this family's exposition text (as ``generate_latest`` writes it)."""
        out.append(family_header(self.name, self.documentation, "gauge"))
        # The values read in place, in one core call that holds the GIL: the loop cannot
        # set one meanwhile.
        out.append(sample_lines(self.name, self.labelnames, self._children))


class _OrderedRegistry(CollectorRegistry):
    """A registry that also remembers its collectors in the order they came (the
    order ``generate_latest`` writes them in)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_order: list[Any] = []

    def register(self, collector: Any) -> None:
        super().register(collector)
        self.in_order.append(collector)

    def unregister(self, collector: Any) -> None:
        super().unregister(collector)
        self.in_order.remove(collector)


class _One:
    """One collector as ``generate_latest`` takes a registry."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        return self.collector.collect()


_WRITES_ITS_OWN_TEXT = (LoopCounter, LoopHistogram, LoopGauge)


class ServiceMetrics:
    """All metrics of one service instance, in their own registry."""

    def __init__(self) -> None:
        self.registry = _OrderedRegistry()
        r = self.registry
        # per record: lock-free, single-writer (the loop's thread) series
        self.events = LoopCounter("streamweights_events", "Records processed.",
                                  ["stream", "kind"], r)
        self.joined = LoopCounter("streamweights_labels_joined",
                                  "Labels joined to a prediction.", ["stream"], r)
        self.expired = LoopCounter("streamweights_predictions_expired",
                                   "Predictions that left the join without a label.",
                                   ["stream", "cause"], r)
        # per stream: set by the loop's thread, many series per stream
        self.pending = LoopGauge("streamweights_pending_labels",
                                 "Predictions waiting for their label.", ["stream"], r)
        self.ensemble_weight = LoopGauge("streamweights_ensemble_weight",
                                         "Current ensemble weight of a deployed model.",
                                         ["stream", "model"], r)
        self.portfolio_weight = LoopGauge("streamweights_portfolio_weight",
                                          "Current mixture weight of a portfolio's candidate "
                                          "chain.", ["stream", "candidate"], r)
        self.log_loss = LoopGauge("streamweights_log_loss", "Prequential mean log-loss (MSE "
                                  "for regression).", ["stream", "forecaster"], r)
        self.ece = LoopGauge("streamweights_ece", "Prequential top-label expected calibration "
                             "error (15 bins).", ["stream", "forecaster"], r)
        self.drift = LoopCounter("streamweights_drift_events", "Drift alarms acted upon.",
                                 ["stream"], r)
        self.weights_version = LoopGauge("streamweights_weights_version",
                                         "Latest published weights version.", ["stream"], r)
        self.invalid = Counter("streamweights_invalid_records", "Records sent to the dead "
                               "letter sink.", ["reason"], registry=r)
        self.checkpoint_duration = Histogram("streamweights_checkpoint_duration_seconds",
                                             "Time to write a snapshot.",
                                             buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.snapshot_bytes = Gauge("streamweights_snapshot_bytes",
                                    "Size of the last snapshot written.", registry=r)
        self.update_latency = LoopHistogram("streamweights_update_latency_seconds",
                                            "Time to process one record through the "
                                            "pipeline.", ["kind"], _LATENCY_BUCKETS, r)
        self.transactions = Counter("streamweights_kafka_transactions", "Kafka transactions "
                                    "ended, by outcome.", ["outcome"], registry=r)
        self.rebalances = Counter("streamweights_kafka_rebalances", "Task assignments "
                                  "received (each restores the new tasks).", registry=r)
        self.restore_seconds = Histogram("streamweights_kafka_restore_seconds", "Time to "
                                         "restore newly assigned tasks from the changelog.",
                                         buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.replayed_records = Counter("streamweights_kafka_replayed_records", "Logged "
                                        "records replayed at restores into the streams "
                                        "spread commits left unwritten.", registry=r)
        self.commit_seconds = Histogram("streamweights_kafka_commit_seconds", "Time the "
                                        "broker took to answer a cycle's commit, by step: "
                                        "its offsets into the transaction, then "
                                        "commit_transaction.", ["step"],
                                        buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.consumer_lag = Gauge("streamweights_kafka_consumer_lag", "Records of an input "
                                  "partition not yet committed (at the last commit).",
                                  ["topic", "partition"], registry=r)
        self.conformal_coverage = LoopGauge(
            "streamweights_conformal_coverage", "Share of labels inside the conformal set "
            "or interval served for them.", ["stream", "forecaster", "alpha", "window"], r)
        self.conformal_target = LoopGauge("streamweights_conformal_target_coverage",
                                          "Coverage the conformal layer targets (1 - alpha).",
                                          ["stream", "alpha"], r)
        self.conformal_size = LoopGauge("streamweights_conformal_mean_size", "Mean conformal "
                                        "set size (classes) or interval width served.",
                                        ["stream", "forecaster", "alpha"], r)
        self.performance = LoopGauge("streamweights_performance", "Accuracy, Brier and "
                                     "log-loss over a recent window: estimated without "
                                     "labels, or realised.",
                                     ["stream", "forecaster", "metric", "source"], r)
        self.ready = Gauge("streamweights_ready", "1 once state is restored and the source is "
                           "open.", registry=r)

    def exposition(self) -> bytes:
        """The ``/metrics`` text: exactly ``generate_latest(self.registry)``, written
        ~20x faster at 10,000 streams: the per-stream families hand their series to the
        core (:mod:`streamweights.runtime.prometheus_text`); the few other series go
        through prometheus_client."""
        out: list[bytes] = []
        for collector in list(self.registry.in_order):
            if isinstance(collector, _WRITES_ITS_OWN_TEXT):
                collector.render(out)
            else:
                out.append(generate_latest(_One(collector)))
        return b"".join(out)
