"""The pipeline's conformal layer and label-free estimates: the wire form of sets and
intervals, the set served is the one scored, bit-exact restore, and records of streams
without the blocks stay byte-identical."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamweights import events
from streamweights.adapters import dumps_state
from streamweights.config import ConfigError, parse_config
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline
from tests.test_pipeline import _demo_stream, _published, _replay, _restored, _run

CONFORMAL = {"alpha": [0.1, 0.05], "method": "dtaci"}


def _plain():
    """The demo stream without its conformal and performance_estimate blocks."""
    return dataclasses.replace(_demo_stream(), conformal=None, performance_estimate=None)


def _with_blocks(method: str = "dtaci"):
    return dataclasses.replace(_demo_stream(), conformal={"alpha": [0.1, 0.05],
                                                          "method": method},
                               performance_estimate={"window": 300})


@pytest.mark.parametrize("method", ["dtaci", "aci", "pid"])
def test_adapted_records_carry_sets_per_level_and_weights_the_thresholds(method):
    stream = _with_blocks(method)
    pipeline = Pipeline([stream])
    outcomes = _run(pipeline, _replay())
    adapted = [o.adapted for o in outcomes if o.adapted is not None]
    record = events.encode(adapted[-1])
    decoded = __import__("json").loads(record)
    assert set(decoded["sets"]) == {"0.1", "0.05"}
    assert list(decoded) == ["schema", "stream", "id", "ts", "proba", "sets", "weights_version"]
    sizes = [len(a.sets["0.05"]) - len(a.sets["0.1"]) for a in adapted[1_000:]]
    assert np.mean(sizes) > 0  # the stricter level serves larger sets on average
    weights = [w for o in outcomes for w in o.weights]
    assert weights[-1].to_json()["conformal"]["method"] == method
    assert set(weights[-1].to_json()["conformal"]["thresholds"]) == {"0.1", "0.05"}
    summary = pipeline.summary()["streams"]["demo"]
    coverage = summary["coverage"]["adapted"]["0.1"]
    assert coverage["labels"] > 2_900 and abs(coverage["coverage"] - 0.9) < 0.03
    assert set(summary["coverage"]) == {"adapted", "raw:logistic_regression",
                                        "raw:naive_bayes", "raw:hoeffding_tree"}
    assert 0.5 < summary["estimates"]["adapted"]["estimated_accuracy"] < 1.0


def test_the_set_served_at_prediction_time_is_the_one_scored():
    """Scenario: labels arrive late, and the layer's thresholds move in between. We
    expect: the coverage monitor's count equals the number of labels whose class is in
    the set that was *published* for them."""
    stream = _with_blocks()
    pipeline = Pipeline([stream])
    records = _replay()
    served_sets = {}
    hits = 0
    for record in records:
        outcome = pipeline.process(record)
        if isinstance(record, Prediction):
            served_sets[record.id] = outcome.adapted.sets["0.1"]
        elif outcome.learned:
            hits += record.label in served_sets[record.id]
    monitor = pipeline.streams["demo"].uncertainty.monitors[0]
    assert monitor.covered[0] == hits


@pytest.mark.parametrize("cut", [1, 2_345, 5_000])
def test_snapshot_restore_with_conformal_state_is_bit_exact(cut):
    stream = _with_blocks()
    records = _replay()
    uninterrupted = Pipeline([stream])
    expected = _run(uninterrupted, records)
    first = Pipeline([stream])
    _run(first, records[:cut])
    resumed = _restored(first, [stream])
    continued = _run(resumed, records[cut:])
    assert _published(continued) == _published(expected[cut:])
    assert dumps_state(resumed.state_dict()) == dumps_state(uninterrupted.state_dict())
    assert resumed.summary() == uninterrupted.summary()


def test_snapshot_without_conformal_state_is_refused_with_a_hint():
    plain = Pipeline([_plain()])
    _run(plain, _replay()[:50])
    with_blocks = Pipeline([_with_blocks()])
    with pytest.raises(ValueError, match="conformal"):
        with_blocks.load_state_dict(plain.state_dict())


def test_streams_without_the_blocks_publish_what_they_did_before():
    records = _replay()[:400]
    outcomes = _run(Pipeline([_plain()]), records)
    for outcome in outcomes:
        if outcome.adapted is not None:
            assert b'"sets"' not in events.encode(outcome.adapted)
        for weights in outcome.weights:
            assert b'"conformal"' not in events.encode(weights)
    assert "uncertainty" not in Pipeline([_plain()]).streams["demo"].state_dict()


def test_regression_stream_publishes_intervals():
    (config,) = parse_config({"streams": [{
        "name": "load", "task": "regression", "models": ["good", "bad"],
        "adapters": [{"type": "Hedge"}], "conformal": {"alpha": 0.1, "method": "aci",
                                                       "step": 0.02}}]}).streams
    rng = np.random.default_rng(6)
    pipeline = Pipeline([config])
    hits = 0
    for i in range(1_500):
        y = float(rng.normal())
        outcome = pipeline.process(Prediction("load", f"r{i}", float(i), {
            "good": y + 0.1 * float(rng.normal()), "bad": y + float(rng.normal())}))
        lo, hi = outcome.adapted.intervals["0.1"]
        if i >= 500:
            hits += (lo is None or lo <= y) and (hi is None or y <= hi)
        pipeline.process(Label("load", f"r{i}", i + 0.5, y))
    assert abs(hits / 1_000 - 0.9) < 0.03
    record = events.encode(outcome.adapted)
    assert b'"intervals":{"0.1":[' in record


@pytest.mark.parametrize(("block", "message"), [
    ({"method": "split"}, "conformal.method: must be one of aci, pid, dtaci"),
    ({"alpha": [0.1, 1.5]}, "conformal.alpha[1]: must be in (0, 1)"),
    ({"alpha": 0.1, "score": "aps", "method": "aci"}, "conformal.score"),
    ({"method": "aci", "gamma": 0.1}, "conformal: "),
])
def test_bad_conformal_block_is_a_config_error_naming_the_key(block, message):
    with pytest.raises(ConfigError) as error:
        parse_config({"streams": [{"name": "s", "task": "regression", "models": ["m"],
                                   "adapters": [{"type": "Hedge"}], "conformal": block}]})
    assert message in str(error.value)


def test_performance_estimate_needs_a_classification_stream():
    with pytest.raises(ConfigError, match="performance_estimate"):
        parse_config({"streams": [{"name": "s", "task": "regression", "models": ["m"],
                                   "adapters": [{"type": "Hedge"}],
                                   "performance_estimate": {"window": 100}}]})


def test_compare_raw_false_runs_the_adapted_layer_only():
    stream = dataclasses.replace(_demo_stream(), conformal={
        "alpha": [0.1], "method": "aci", "compare_raw": False})
    both = dataclasses.replace(_demo_stream(), conformal={"alpha": [0.1], "method": "aci"})
    records = _replay()[:2_000]
    alone, compared = Pipeline([stream]), Pipeline([both])
    out_alone, out_compared = _run(alone, records), _run(compared, records)
    assert _published(out_alone) == _published(out_compared)  # same served sets
    assert set(alone.summary()["streams"]["demo"]["coverage"]) == {"adapted"}
    assert len(alone.streams["demo"].uncertainty.layers) == 1
