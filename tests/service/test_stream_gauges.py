"""A weights version's gauges, set by position from a list made once per stream
(``runtime/stream_gauges.py``), must read exactly as when each series was looked up in
its family and set one by one: the same series, values and order in /metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys

import pytest
import yaml

from streamweights.config import load_config
from streamweights.events import Prediction
from streamweights.runtime.metrics import LoopGauge, ServiceMetrics
from streamweights.runtime.service import Service
from streamweights.runtime.stream_gauges import StreamGauges

MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")


def reference_publish(metrics: ServiceMetrics, stream) -> None:
    """How a version's gauges were set before: each series found by its label values,
    from the stream's summaries (the service's code until this change)."""
    name = stream.name
    metrics.weights_version.labels(name).set(stream.weights_version)
    metrics.pending.labels(name).set(len(stream.join))
    for model, weight in stream.ensemble_weights().items():
        metrics.ensemble_weight.labels(name, model).set(weight)
    for candidate, weight in stream.portfolio_weights().items():
        metrics.portfolio_weight.labels(name, candidate).set(weight)
    scores = stream.scores.summary()
    primary = "log_loss" if stream.classification else "mse"
    forecasters = {"adapted": scores["adapted"]}
    if scores["raw_best"] is not None:
        forecasters["raw_best"] = scores["raw_best"]
    forecasters.update({f"raw:{m}": s for m, s in scores["models"].items()})
    for label, values in forecasters.items():
        metrics.log_loss.labels(name, label).set(values[primary])
        if stream.classification:
            metrics.ece.labels(name, label).set(values["ece"])
    if stream.uncertainty is None:
        return
    summary = stream.uncertainty.summary()
    for forecaster, levels in summary.get("coverage", {}).items():
        for alpha, values in levels.items():
            metrics.conformal_target.labels(name, alpha).set(values["target"])
            for window, key in (("run", "coverage"), ("rolling", "rolling_coverage")):
                if values[key] is not None:
                    metrics.conformal_coverage.labels(name, forecaster, alpha,
                                                      window).set(values[key])
            if values["mean_size"] is not None:
                metrics.conformal_size.labels(name, forecaster, alpha).set(
                    values["mean_size"])
    for forecaster, values in summary.get("estimates", {}).items():
        for field, value in values.items():
            if value is not None:
                source, metric = (sys.intern(part) for part in field.split("_", 1))
                metrics.performance.labels(name, forecaster, metric, source).set(value)


def _gauge_text(metrics: ServiceMetrics) -> bytes:
    out: list[bytes] = []
    for family in metrics.registry.in_order:
        if isinstance(family, LoopGauge):
            family.render(out)
    return b"".join(out)


def _input(path, rounds: int = 900) -> None:
    """Three streams: the demo's (classification), a plain classification one and a
    regression one; labels 5 s after their predictions, some never."""
    rng = random.Random(3)
    records = []
    for i in range(rounds):
        ts = 1_750_000_000 + i
        y = rng.random() < 0.35
        outputs = {}
        for k, model in enumerate(MODELS):
            p1 = round(min(0.99, max(0.01, (0.7 if y else 0.3) + rng.gauss(0, 0.2 + k / 10))), 6)
            outputs[model] = [round(1 - p1, 6), p1]
        for stream in ("demo", "plain"):
            records.append((ts, {"schema": 1, "stream": stream, "id": f"{stream}{i}",
                                 "ts": ts, "outputs": outputs}))
            if rng.random() < 0.9:
                records.append((ts + 5, {"schema": 1, "stream": stream, "id": f"{stream}{i}",
                                         "ts": ts + 5, "label": int(y)}))
        value = rng.gauss(0, 1)
        records.append((ts, {"schema": 1, "stream": "load", "id": f"load{i}", "ts": ts,
                             "outputs": {"good": value + rng.gauss(0, 0.1),
                                         "bad": value + rng.gauss(0, 1)}}))
        records.append((ts + 5, {"schema": 1, "stream": "load", "id": f"load{i}",
                                 "ts": ts + 5, "label": value}))
    records.sort(key=lambda record: record[0])
    path.write_text("".join(json.dumps(record) + "\n" for _, record in records))


@pytest.mark.parametrize("every_labels", [7, 60])
def test_versions_set_the_gauges_as_one_lookup_per_series_did(config_factory, tmp_path,
                                                               every_labels):
    """Scenario: three streams (the demo's portfolio with conformal sets on every
    forecaster and performance estimates; a Hedge stream whose sets cover the adapted
    output alone; a regression stream with intervals) publish a version every
    ``every_labels`` labels, from the first label on, so series appear while values
    become known (coverage after the first label, mean size once a set is bounded,
    estimates once their windows hold something). Beside every version the service
    publishes, the earlier code sets a second ``ServiceMetrics`` from the same stream.
    We expect: the gauge families of both read byte for byte alike after the run, with
    every kind of series present."""
    demo = yaml.safe_load(config_factory().read_text())["streams"][0]
    publish = {"every_labels": every_labels, "every_seconds": 10_000}
    streams = [
        {**demo, "publish": publish},
        {"name": "plain", "task": "classification", "models": list(MODELS),
         "adapters": [{"type": "Hedge"}], "publish": publish,
         "conformal": {"alpha": [0.2], "method": "aci", "compare_raw": False}},
        {"name": "load", "task": "regression", "models": ["good", "bad"],
         "adapters": [{"type": "Hedge"}], "publish": publish,
         "conformal": {"alpha": 0.1, "method": "aci", "step": 0.02}},
    ]
    input_path = tmp_path / "input.jsonl"
    _input(input_path)
    path = config_factory("gauges", streams=streams,
                          source={"kind": "jsonl", "path": str(input_path)})
    service = Service(load_config(path))
    reference = ServiceMetrics()
    publish_metrics = service._publish_metrics
    versions = []

    def both(name: str) -> None:
        publish_metrics(name)
        reference_publish(reference, service.pipeline.streams[name])
        versions.append(name)

    service._publish_metrics = both
    try:
        service.run()
    finally:
        service.close()
    assert {"demo", "plain", "load"} <= set(versions) and len(versions) > 3 * 800 // every_labels
    ours = _gauge_text(service.metrics)
    assert ours == _gauge_text(reference)
    text = ours.decode()
    for family in ("weights_version", "pending_labels", "ensemble_weight", "portfolio_weight",
                   "log_loss", "ece", "conformal_coverage", "conformal_target_coverage",
                   "conformal_mean_size", "performance"):
        assert f"\nstreamweights_{family}{{" in text, family
    # (an exposition's labels are sorted by name)
    assert 'streamweights_log_loss{forecaster="raw:good",stream="load"}' in text
    assert 'streamweights_ece{forecaster="adapted",stream="load"}' not in text
    plain = 'streamweights_conformal_coverage{alpha="0.2",forecaster="%s",stream="plain"'
    assert plain % "adapted" in text and plain % "raw:naive_bayes" not in text


def test_a_series_appears_with_its_first_value():
    """Scenario: two series, one value unknown (``None``) at the first set and known at
    the second. We expect: it is made only then, after the other, with the value, a
    plain float in its family's dict; a list of the wrong length is refused, and so is a
    series with the wrong number of label values."""
    metrics = ServiceMetrics()
    gauges = StreamGauges([(metrics.log_loss, ("s", "adapted")),
                           (metrics.log_loss, ("s", "raw_best"))])
    gauges.set_all([None, 0.5])
    assert list(metrics.log_loss._children) == [("s", "raw_best")]
    gauges.set_all([0.25, 0.75])
    assert list(metrics.log_loss._children) == [("s", "raw_best"), ("s", "adapted")]
    assert list(metrics.log_loss._children.values()) == [0.75, 0.25]
    with pytest.raises(ValueError, match="1 gauge values for 2 series"):
        gauges.set_all([1.0])
    with pytest.raises(ValueError, match=r"streamweights_log_loss: labels \['stream', "
                                         r"'forecaster'\], got \('s',\)"):
        StreamGauges([(metrics.log_loss, ("s",))])


def _many_streams(config_factory, tmp_path, count: int, active: int) -> Service:
    """``count`` streams of the demo's config; the first ``active`` take 40 rounds of a
    prediction and its label (publishing no version: every 1,000 labels)."""
    demo = yaml.safe_load(config_factory().read_text())["streams"][0]
    names = [f"s{i:02d}" for i in range(count)]
    rng = random.Random(8)
    lines = []
    for i in range(40):
        for name in names[:active]:
            ts = 1_750_000_000 + i
            p1 = round(rng.random(), 6)
            lines.append(json.dumps({"schema": 1, "stream": name, "id": f"{name}-{i}",
                                     "ts": ts, "outputs": {m: [round(1 - p1, 6), p1]
                                                           for m in MODELS}}))
            if i % 4:  # some wait
                lines.append(json.dumps({"schema": 1, "stream": name, "id": f"{name}-{i}",
                                         "ts": ts + 0.5, "label": int(p1 > 0.5)}))
    input_path = tmp_path / "many.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    path = config_factory("many", streams=[{**demo, "name": name} for name in names],
                          source={"kind": "jsonl", "path": str(input_path)})
    return Service(load_config(path))


def test_progress_refreshes_the_streams_that_moved_within_its_budget(config_factory,
                                                                     tmp_path, caplog):
    """Scenario: 25 streams, 6 of them take records; no weights version is published
    during the input (the final ones left out). Then refreshes with no time budget (one
    stream each), a progress line, a prediction on two streams, an unbounded refresh.
    We expect: each refresh with no budget sets one stream's gauges, in turn, every
    stream once (a stream never set is set once, moved or not); the progress line sums
    the streams up (more than 20), naming none, and sets nothing (nothing moved); after
    the two predictions the refresh sets exactly those two streams; the gauges then read
    exactly as publishing every stream's metrics makes them."""
    service = _many_streams(config_factory, tmp_path, 25, 6)
    service.config = dataclasses.replace(service.config, progress_every_seconds=3600.0)
    service._finish = lambda: None  # (the final versions would set every stream's gauges)
    published: list[str] = []
    publish = service._publish_metrics

    def counted(name: str) -> None:
        published.append(name)
        publish(name)

    service._publish_metrics = counted
    try:
        service.run()
        assert published == []  # no version during the input
        names = list(service.pipeline.streams)
        for count in range(1, 26):
            service._refresh_streams(0.0)
            assert published == names[:count]
        with caplog.at_level("INFO", logger="streamweights"):
            service._progress(10, 1.0, 100, 10.0)
        line = [r.getMessage() for r in caplog.records if " records (" in r.getMessage()][-1]
        assert "25 streams: 60 predictions waiting for labels, 0 drift alarms" in line
        assert "s00" not in line and len(published) == 25
        for name in ("s07", "s03"):
            service.pipeline.process(Prediction(name, "late", 1_750_000_100.0, {
                model: [0.25, 0.75] for model in MODELS}))
        service._refresh_streams(math.inf)
        assert published[25:] == ["s03", "s07"]
        refreshed = _gauge_text(service.metrics)
        for name in names:
            publish(name)
        assert _gauge_text(service.metrics) == refreshed
    finally:
        service.close()


def test_few_streams_are_named_in_progress_lines(config_factory, tmp_path, caplog):
    """Scenario: 3 streams, 2 active; a progress line. We expect: each stream named with
    its pending count and scores, as before."""
    service = _many_streams(config_factory, tmp_path, 3, 2)
    try:
        service.run()
        with caplog.at_level("INFO", logger="streamweights"):
            service._progress(10, 1.0, 100, 10.0)
    finally:
        service.close()
    line = [r.getMessage() for r in caplog.records if " records (" in r.getMessage()][-1]
    assert all(f"s0{i}: pending " in line for i in range(3)) and "raw-best log_loss" in line
