"""The portfolio's feature-aware candidate and its multi-class averaging candidate: the
chain forwards each prediction's features, every candidate learns on what it served when
labels come late, snapshots round-trip, and a stream that declares features but sends
none gets a dead letter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import Chain, Portfolio, dumps_state
from streamweights.adapters.portfolio import default_candidates
from streamweights.config import ConfigError, StreamConfig, _build_stage, parse_config
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline

DELAY = 20


def informative_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three deployed models that see only the first feature; the label also depends on
    the second, which only a feature-aware stage can learn."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 3))
    truth = 1.0 / (1.0 + np.exp(-(2.0 * features[:, 0] + 3.0 * features[:, 1])))
    labels = (rng.random(n) < truth).astype(int)
    p1 = 1.0 / (1.0 + np.exp(-np.outer(2.0 * features[:, 0], [1.0, 0.5, 1.5])))
    return np.stack([1.0 - p1, p1], axis=2), features, labels


def drive(chain: Chain, outputs: np.ndarray, features: np.ndarray | None,
          labels: np.ndarray, delay: int = DELAY) -> np.ndarray:
    """Served log-loss per label, labels ``delay`` events late, learned from the trace
    kept at prediction time."""
    pending, losses = [], []
    for i, (rows, y) in enumerate(zip(outputs, labels, strict=True)):
        given = None if features is None else features[i]
        served, trace = chain.observe_predict_trace(rows, given)
        pending.append((trace, int(y), served))
        if len(pending) > delay:
            trace, label, out = pending.pop(0)
            chain.learn_trace(trace, label)
            losses.append(-math.log(out[label]))
    return np.array(losses)


def test_defaults_add_the_feature_candidate_only_with_features_and_the_averaging_one():
    assert len(default_candidates(2)) == 4
    binary = Portfolio(n_models=3, n_classes=2, n_features=5)
    assert binary.names[-1] == "FixedShare->OnlinePlatt->FeatureCorrection->Calibeating"
    assert binary.n_features == 5 and len(binary.names) == 5
    multi = Portfolio(n_models=3, n_classes=4, n_features=2)
    assert multi.names[-2:] == ["Hedge->OnlineTemperature",
                                "FixedShare->OnlineTemperature->FeatureCorrection"]
    assert Portfolio(n_models=3, n_classes=4).names[-1] == "Hedge->OnlineTemperature"
    regression = Portfolio(n_models=2, n_classes=None, n_features=5)
    assert regression.n_features is None  # no feature candidate: it needs no features
    assert regression.names == ["FixedShare", "Hedge", "OnlineStacking"]
    # a given FeatureCorrection stage takes the portfolio's n_features
    given = Portfolio(n_models=3, n_classes=2, n_features=4, candidates=[
        [{"type": "FixedShare"}, {"type": "FeatureCorrection"}]])
    assert given.chains[0].stages[1].n_features == 4
    with pytest.raises(ValueError, match="n_features: must be an integer"):
        Portfolio(n_models=3, n_classes=2, n_features=0)


def test_the_stream_declares_features_and_the_default_portfolio_uses_them():
    (config,) = parse_config({"streams": [{"name": "s", "models": ["a", "b", "c"],
                                           "features": 3}]}).streams
    assert config.n_features == 3
    portfolio = config.build_chain().stages[0]
    assert isinstance(portfolio, Portfolio) and portfolio.n_features == 3
    assert config.build_chain().n_features == 3  # the chain asks for them
    (plain,) = parse_config({"streams": [{"name": "s", "models": ["a"]}]}).streams
    assert plain.n_features is None and plain.build_chain().n_features is None
    for bad in (0, 5_000, "3", 2.5):
        with pytest.raises(ConfigError, match=r"streams\[0\]\.features"):
            parse_config({"streams": [{"name": "s", "models": ["a"], "features": bad}]})
    stream = StreamConfig(name="s", task="classification", n_classes=2, models=("a",),
                          adapters=(), n_features=2)
    with pytest.raises(ConfigError, match="n_features: set by the stream"):
        _build_stage({"type": "Portfolio", "n_features": 2}, stream, "streams[s].adapters[0]")


def test_feature_candidate_learns_on_what_it_served_with_late_labels():
    """Scenario: labels arrive 20 events late. We expect each candidate, the feature one
    included, in the state of the same chain driven alone with the same features from
    its own traces; learning on a trace re-computed at label time would differ."""
    outputs, features, labels = informative_stream(800, seed=4)
    portfolio = Portfolio(n_models=3, n_classes=2, n_features=3)
    drive(Chain([portfolio]), outputs, features, labels)
    for spec, inside in zip(portfolio.candidates, portfolio.chains, strict=True):
        alone = Chain([Portfolio(n_models=3, n_classes=2, n_features=3)._build_stage(
            stage, "alone") for stage in spec])  # the same stage, built fresh
        drive(alone, outputs, features if alone.n_features else None, labels)
        assert dumps_state(inside.state_dict()) == dumps_state(alone.state_dict())
    # the same portfolio learning on traces re-computed at label time: other numbers
    late = Portfolio(n_models=3, n_classes=2, n_features=3)
    pending = []
    for rows, x, y in zip(outputs, features, labels, strict=True):
        late.observe_predict_traced(rows, features=x)
        pending.append((rows, x, int(y)))
        if len(pending) > DELAY:
            rows_, x_, y_ = pending.pop(0)
            late.learn_traced(rows_, late.predict_traced(rows_, features=x_)[1], y_)
    assert dumps_state(late.state_dict()) != dumps_state(portfolio.state_dict())


def test_features_help_and_without_them_nothing_changes():
    """Scenario: the label depends on a feature no deployed model sees. We expect the
    default portfolio with the feature candidate at least 10% below the one without, the
    weight on the feature candidate, and a call without features refused unchanged."""
    outputs, features, labels = informative_stream(3_000, seed=5)
    with_features = Portfolio(n_models=3, n_classes=2, n_features=3)
    ours = drive(Chain([with_features]), outputs, features, labels)[-1_500:].mean()
    plain = drive(Chain([Portfolio(n_models=3, n_classes=2)]), outputs, None,
                  labels)[-1_500:].mean()
    assert ours < 0.9 * plain
    assert max(with_features.candidate_weights().items(), key=lambda kv: kv[1])[0] \
        == "FixedShare->OnlinePlatt->FeatureCorrection->Calibeating"
    before = dumps_state(with_features.state_dict())
    with pytest.raises(ValueError, match=r"features: .*3 numbers"):
        with_features.observe_predict_traced(outputs[0])
    with pytest.raises(ValueError, match=r"features: expected 3 numbers, got shape \(2,\)"):
        Chain([with_features]).observe_predict_trace(outputs[0], [1.0, 2.0])
    _, trace = with_features.predict_traced(outputs[0], features=features[0])
    with pytest.raises(ValueError, match="trace: expected"):
        with_features.learn_traced(outputs[0], trace[:-1], 1)  # the feature row cut off
    assert dumps_state(with_features.state_dict()) == before


def test_trace_keeps_features_over_whole_rows():
    """Five features on a three-class stream take two rows of three, zero-padded; the
    feature candidate's trace row is its own input, not the packed vector."""
    rng = np.random.default_rng(0)
    portfolio = Portfolio(n_models=2, n_classes=3, n_features=5)
    rows = rng.dirichlet(np.ones(3), size=2)
    x = np.arange(1.0, 6.0)
    served, trace = portfolio.predict_traced(rows, features=x)
    assert trace.shape[1] == 3
    np.testing.assert_array_equal(trace[-2:].ravel(), [1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    assert served.shape == (3,) and math.isclose(float(served.sum()), 1.0)
    portfolio.learn_traced(rows, trace, 2)  # learns from it


def records(n: int, seed: int, features: bool = True) -> list:
    outputs, xs, labels = informative_stream(n, seed)
    out: list = []
    for i in range(n):
        rows = {m: outputs[i, k].tolist() for k, m in enumerate("abc")}
        out.append(Prediction("s", f"e{i}", float(i), rows,
                              xs[i].tolist() if features else None))
        if i >= DELAY:
            out.append(Label("s", f"e{i - DELAY}", i + 0.5, int(labels[i - DELAY])))
    return out


def stream_config(**extra: object) -> StreamConfig:
    (config,) = parse_config({"streams": [{
        "name": "s", "models": ["a", "b", "c"], "features": 3,
        "publish": {"every_labels": 200, "every_seconds": 1e9}, **extra}]}).streams
    return config


def test_pipeline_default_with_features_restores_bit_exact_mid_stream():
    """Scenario: a stream that declares features, default adapters (the portfolio with
    its feature candidate, then DriftMemory), snapshotted mid stream with labels pending
    and restored into a fresh pipeline. We expect the same served bytes and final state
    as a run that never stopped."""
    config = stream_config()
    stream = records(1_200, seed=7)
    straight = Pipeline([config])
    served = [straight.process(r) for r in stream]
    first = Pipeline([config])
    for record in stream[:1_001]:
        first.process(record)
    second = Pipeline([config])
    second.load_state_dict(first.state_dict())
    resumed = [second.process(r) for r in stream[1_001:]]
    for a, b in zip(served[1_001:], resumed, strict=True):
        assert (a.adapted is None) == (b.adapted is None)
        if a.adapted is not None:
            assert a.adapted.proba == b.adapted.proba
    assert dumps_state(second.state_dict()) == dumps_state(straight.state_dict())
    assert straight.invalid == {}
    weights = straight.streams["s"].chain.stages[0].candidate_weights()
    assert weights["FixedShare->OnlinePlatt->FeatureCorrection->Calibeating"] > 0.5


def test_missing_or_bad_features_are_dead_letters_that_change_nothing():
    pipeline = Pipeline([stream_config()])
    for record in records(300, seed=8):
        pipeline.process(record)
    before = dumps_state(pipeline.state_dict())
    good = {m: [0.5, 0.5] for m in "abc"}
    cases = [(Prediction("s", "x1", 400.0, good), "missing_features"),
             (Prediction("s", "x2", 400.0, good, [1.0, 2.0]), "invalid_features"),
             (Prediction("s", "x3", 400.0, good, [1.0, float("nan"), 2.0]),
              "invalid_features")]
    for record, reason in cases:
        outcome = pipeline.process(record)
        assert [letter.reason for letter in outcome.dead_letters] == [reason]
        assert "features" in outcome.dead_letters[0].error
    assert pipeline.invalid == {"missing_features": 1, "invalid_features": 2}
    pipeline.invalid = {}
    assert dumps_state(pipeline.state_dict()) == before


def test_a_snapshot_without_features_still_loads():
    """A portfolio snapshot written before ``n_features`` existed has no such config key;
    a portfolio without features writes none either, so it loads as before."""
    portfolio = Portfolio(n_models=3, n_classes=2)
    outputs, _, labels = informative_stream(200, seed=2)
    drive(Chain([portfolio]), outputs, None, labels)
    snapshot = portfolio.state_dict()
    assert "n_features" not in snapshot["config"]
    fresh = Portfolio(n_models=3, n_classes=2)
    fresh.load_state_dict(snapshot)
    assert dumps_state(fresh.state_dict()) == dumps_state(snapshot)
    featured = Portfolio(n_models=3, n_classes=2, n_features=3)
    with pytest.raises(ValueError, match="differs in: n_features"):
        featured.load_state_dict(snapshot)


def test_averaging_candidate_carries_models_wrong_in_different_ways():
    """Scenario: three classes, three models each confident on the right class 60% of the
    time and otherwise on a wrong class of its own: their average beats each of them, and
    nothing but an average gets there. We expect the default multi-class portfolio to be
    below the best model and the default without its averaging candidate."""
    rng = np.random.default_rng(11)
    n, c = 3_000, 3
    labels = rng.integers(c, size=n)
    outputs = np.empty((n, 3, c))
    for i, y in enumerate(labels):
        for k in range(3):
            chosen = y if rng.random() < 0.6 else (y + 1 + rng.integers(c - 1)) % c
            outputs[i, k] = 0.05
            outputs[i, k, chosen] = 0.9
    default = Portfolio(n_models=3, n_classes=c)
    without = Portfolio(n_models=3, n_classes=c,
                        candidates=default_candidates(c)[:-1])
    ours = drive(Chain([default]), outputs, None, labels).mean()
    theirs = drive(Chain([without]), outputs, None, labels).mean()
    scored = np.arange(n - DELAY)  # the labels learned
    best_model = min(-np.log(outputs[scored, k, labels[scored]]).mean() for k in range(3))
    assert ours < best_model - 0.05
    assert ours < theirs - 0.02
