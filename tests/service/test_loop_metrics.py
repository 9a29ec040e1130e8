"""The loop's per-record metrics (records, joined labels, update latency) are lock-free
single-writer series (``metrics.LoopCounter`` / ``LoopHistogram``): /metrics must read
exactly as prometheus_client's own Counter and Histogram would with the same increments."""

from __future__ import annotations

import random
import threading

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamweights.config import load_config
from streamweights.runtime.metrics import _LATENCY_BUCKETS, ServiceMetrics
from streamweights.runtime.service import Service


def _text(source: ServiceMetrics | CollectorRegistry, still: bool = True) -> str:
    """/metrics: for the service's metrics, what it serves (``exposition()``), checked
    byte for byte against prometheus_client's ``generate_latest`` of its registry when
    nothing writes to them meanwhile (``still``)."""
    if not isinstance(source, ServiceMetrics):
        return generate_latest(source).decode()
    served = source.exposition()
    if still:
        assert served == generate_latest(source.registry)
    return served.decode()


def _series(source: ServiceMetrics | CollectorRegistry, names: set[str]) -> dict:
    """Samples of the named families, ``_created`` (a wall-clock time) left out."""
    found = {}
    for family in text_string_to_metric_families(_text(source)):
        if family.name in names:
            found[family.name] = (family.type, family.documentation, sorted(
                (sample.name, tuple(sorted(sample.labels.items())), sample.value)
                for sample in family.samples if not sample.name.endswith("_created")))
    return found


def test_loop_series_read_as_prometheus_client_series():
    """Scenario: the same random increments and latencies (bucket edges, tiny, huge) go
    to the service's metrics and to prometheus_client's Counter and Histogram of the same
    names. We expect: identical exposition (type, help, every bucket, count, sum, total),
    and a ``_created`` series per child as prometheus_client gives."""
    metrics, reference = ServiceMetrics(), CollectorRegistry()
    events = Counter("streamweights_events", "Records processed.", ["stream", "kind"],
                     registry=reference)
    joined = Counter("streamweights_labels_joined", "Labels joined to a prediction.",
                     ["stream"], registry=reference)
    latency = Histogram("streamweights_update_latency_seconds", "Time to process one record "
                        "through the pipeline.", ["kind"], buckets=_LATENCY_BUCKETS,
                        registry=reference)
    generator = random.Random(5)
    values = [*_LATENCY_BUCKETS, 0.0, 1e-9, 3.3e-5, 0.07, 12.0]
    for _ in range(20_000):
        stream, kind = generator.choice("ab"), generator.choice(("prediction", "label"))
        seconds = generator.choice(values)
        metrics.events.labels(stream, kind).inc()
        events.labels(stream, kind).inc()
        metrics.update_latency.labels(kind).observe(seconds)
        latency.labels(kind).observe(seconds)
        if kind == "label" and generator.random() < 0.7:
            metrics.joined.labels(stream).inc()
            joined.labels(stream).inc()
    names = {"streamweights_events", "streamweights_labels_joined",
             "streamweights_update_latency_seconds"}
    ours = _series(metrics, names)
    assert ours == _series(reference, names) and set(ours) == names
    created = [line for line in _text(metrics).splitlines()
               if line.startswith("streamweights_update_latency_seconds_created{")]
    assert len(created) == 2


def test_per_stream_series_read_as_prometheus_client_series():
    """Scenario: the per-stream gauges (weights, scores, conformal, estimates) and the
    per-stream counters (expired predictions, drift alarms) are set and incremented at
    random, in the same order, on the service's metrics and on prometheus_client's Gauge
    and Counter of the same names, help and labels. We expect: identical exposition, value
    for value (the last value set wins; a series set once stays), and the same family
    order and types, so dashboards and promtool rules read them unchanged."""
    metrics, reference = ServiceMetrics(), CollectorRegistry()
    gauges = {name: getattr(metrics, name) for name in (
        "pending", "ensemble_weight", "portfolio_weight", "log_loss", "ece",
        "weights_version", "conformal_coverage", "conformal_target", "conformal_size",
        "performance")}
    counters = {name: getattr(metrics, name) for name in ("expired", "drift")}
    twins = {name: Gauge(family.name, family.documentation, family.labelnames,
                         registry=reference) for name, family in gauges.items()}
    twins.update({name: Counter(family.name, family.documentation, family.labelnames,
                                registry=reference) for name, family in counters.items()})
    generator = random.Random(11)
    for _ in range(5_000):
        name = generator.choice([*gauges, *counters])
        ours = gauges.get(name) or counters[name]
        values = [generator.choice(("s0", "s1", "segment-00042", "0.1", "raw:nb"))
                  for _ in ours.labelnames]
        if name in gauges:
            value = generator.choice((0.0, -0.0, 1.5, 1e-300, 7, generator.random()))
            ours.labels(*values).set(value)
            twins[name].labels(*values).set(value)
        else:
            amount = generator.choice((1, 2, 5))
            ours.labels(*values).inc(amount)
            twins[name].labels(*values).inc(amount)
    names = {family.name for family in (*gauges.values(), *counters.values())}
    ours = _series(metrics, names)
    assert ours == _series(reference, names) and set(ours) == names
    assert {ours[family.name][0] for family in gauges.values()} == {"gauge"}
    with pytest.raises(ValueError, match="labels"):
        metrics.pending.labels("s0", "extra")


def test_a_scrape_during_the_loop_is_consistent():
    """Scenario: a scrape thread reads /metrics while the loop's thread observes. We
    expect: in every scrape each histogram's count equals its +Inf bucket and buckets
    never decrease (a torn read would break Prometheus' histogram rules)."""
    metrics = ServiceMetrics()
    child = metrics.update_latency.labels("prediction")
    done = threading.Event()

    def observe() -> None:
        for index in range(200_000):
            child.observe((index % 97) * 1e-5)
        done.set()

    worker = threading.Thread(target=observe)
    worker.start()
    scrapes = 0
    while not done.is_set() or scrapes == 0:
        for family in text_string_to_metric_families(_text(metrics, still=False)):
            if family.name != "streamweights_update_latency_seconds":
                continue
            buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
            count = [s.value for s in family.samples if s.name.endswith("_count")]
            assert buckets == sorted(buckets) and count == [buckets[-1]]
        scrapes += 1
    worker.join()
    assert scrapes > 1


@pytest.mark.parametrize("adapted", [True, False])
def test_records_the_lane_counts_read_as_the_python_path(config_factory, adapted):
    """Scenario: the demo replayed twice, once through the core's record lane (which
    counts the records it applies with nothing to route itself; the service adds those
    counts at scrape time) and once with every record on the general path (the lane off:
    ``Pipeline.process`` wrapped), with and without an adapted sink (with one, every
    prediction has a record to route and is counted in Python).
    We expect: the same event and joined series, and the same number of records per
    kind in the latency histogram (the lane times the records it applies itself); the
    lane counted most labels itself."""
    names = {"streamweights_events", "streamweights_labels_joined"}
    latency_name = "streamweights_update_latency_seconds"

    def latency_counts(service: Service) -> dict:
        found = _series(service.metrics, {latency_name})[latency_name][2]
        return {labels: value for name, labels, value in found
                if name == latency_name + "_count"}

    def run(name: str, lane: bool) -> tuple[dict, list]:
        path = config_factory(name, events=1500)
        document = yaml.safe_load(path.read_text())
        if not adapted:
            document["outputs"]["adapted"] = None
        path.write_text(yaml.safe_dump(document))
        service = Service(load_config(path))
        try:
            if not lane:
                service.pipeline.process = service.pipeline.process  # wrapped: no lane
            service.run()
            lanes = service.pipeline.record_lane()
            return ({**_series(service.metrics, names),
                     "latency": latency_counts(service)},
                    lanes.done_counts() if lanes is not None else [])
        finally:
            service.close()

    laned, counts = run("lane", True)
    general, none = run("general", False)
    assert laned == general and none == []
    samples = dict(((name, labels), value) for name, labels, value
                   in general["streamweights_events"][2])
    labels = samples["streamweights_events_total", (("kind", "label"), ("stream", "demo"))]
    for kind in ("prediction", "label"):  # every record timed once, under its kind
        assert laned["latency"][(("kind", kind),)] == samples[
            "streamweights_events_total", (("kind", kind), ("stream", "demo"))] > 1000
    [(stream, predictions, lane_labels, joined)] = counts
    assert stream == "demo" and lane_labels == joined and lane_labels > 0.9 * labels
    assert (predictions == 0) == adapted


def test_counts_kept_elsewhere_add_to_the_series():
    """Scenario: a loop counter with an outside source of counts (as the lane's), some
    series counted by the source alone, some here alone, some by both.
    We expect: each series reads the sum; a source-only series appears once its count is
    positive; a series keeps the creation time it was first exposed with."""
    metrics = ServiceMetrics()
    outside = {("a", "label"): 0, ("b", "label"): 3}
    metrics.events.count_also(lambda: dict(outside))
    metrics.events.labels("b", "label").inc(2)
    metrics.events.labels("c", "prediction").inc()

    def read() -> dict:
        text = _text(metrics)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                if family.name.startswith("streamweights_events") for sample in family.samples}

    first = read()
    total = "streamweights_events_total"
    assert first[total, (("kind", "label"), ("stream", "b"))] == 5.0
    assert first[total, (("kind", "prediction"), ("stream", "c"))] == 1.0
    assert (total, (("kind", "label"), ("stream", "a"))) not in first
    outside[("a", "label")] = 4
    second = read()
    assert second[total, (("kind", "label"), ("stream", "a"))] == 4.0
    created = "streamweights_events_created"
    metrics.events.labels("a", "label").inc()
    third = read()
    assert third[total, (("kind", "label"), ("stream", "a"))] == 5.0
    assert third[created, (("kind", "label"), ("stream", "a"))] \
        == second[created, (("kind", "label"), ("stream", "a"))]


def test_observations_kept_elsewhere_add_to_the_histogram():
    """Scenario: the latency histogram with an outside source of observations (as the
    lane's timing: counts per bucket, not cumulative, and a sum), series observed by the
    source alone, here alone and by both; then a source with the wrong number of buckets.
    We expect: each series' buckets, count and sum are the totals of both; a
    source-only series appears once it has an observation; a wrong source is an error,
    not a wrong exposition."""
    metrics = ServiceMetrics()
    histogram = metrics.update_latency
    width = len(histogram.bounds) + 1
    outside = {("label",): ([0] * width, 0.0), ("prediction",): ([2] + [0] * (width - 2) + [1],
                                                               3.5)}
    histogram.observe_also(lambda: dict(outside))
    histogram.labels("prediction").observe(histogram.bounds[1])
    histogram.labels("invalid").observe(1.0)

    def read() -> dict:
        text = _text(metrics)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "streamweights_update_latency_seconds"
                for sample in family.samples}

    name = "streamweights_update_latency_seconds"
    first = read()
    prediction = (("kind", "prediction"),)
    assert first[name + "_count", prediction] == 4.0
    assert first[name + "_sum", prediction] == 3.5 + histogram.bounds[1]
    assert first[name + "_bucket", (("kind", "prediction"), ("le", "1e-05"))] == 2.0
    assert first[name + "_bucket", (("kind", "prediction"), ("le", "2.5e-05"))] == 3.0
    assert first[name + "_bucket", (("kind", "prediction"), ("le", "+Inf"))] == 4.0
    assert first[name + "_count", (("kind", "invalid"),)] == 1.0
    assert (name + "_count", (("kind", "label"),)) not in first
    outside[("label",)] = ([0, 5] + [0] * (width - 2), 1e-4)
    second = read()
    assert second[name + "_count", (("kind", "label"),)] == 5.0
    assert second[name + "_bucket", (("kind", "label"), ("le", "1e-05"))] == 0.0
    outside[("label",)] = ([1], 0.0)
    with pytest.raises(ValueError, match="bucket counts"):
        read()


def test_the_lane_times_what_it_applies():
    """Scenario: the demo's records through the core's lane with timing on
    (``time_records``, as the service asks), then asked again with the same and with
    other bounds, and with bounds out of order.
    We expect: every record the lane applied counted once under its kind, each in one
    bucket, with a positive sum; the same bounds again keep the counts; other bounds
    and unordered ones are refused."""
    from streamweights.pipeline import Pipeline
    from tests.test_pipeline_batch import _replay, _streams  # (the demo's records)

    pipeline = Pipeline(_streams("demo.yaml"))
    lane = pipeline.record_lane()
    bounds = [1e-5, 1e-3, 1.0]
    assert lane.latency_counts() == []
    lane.time_records(bounds)
    applied = {"prediction": 0, "label": 0}
    for raw in _replay(400):
        done = lane.process(raw, True)
        if done is not None:
            applied[done[0][1]] += 1
    counts = {kind: (buckets, seconds) for kind, buckets, seconds in lane.latency_counts()}
    assert set(counts) == {"prediction", "label"}
    for kind, (buckets, seconds) in counts.items():
        assert len(buckets) == len(bounds) + 1 and sum(buckets) == applied[kind] > 100
        assert 0 < seconds < 10
    lane.time_records(bounds)
    assert {kind: (b, s) for kind, b, s in lane.latency_counts()} == counts
    with pytest.raises(ValueError, match="already times"):
        lane.time_records([1e-5, 1e-3])
    with pytest.raises(ValueError, match="ascending"):
        lane.time_records([1e-3, 1e-5])
