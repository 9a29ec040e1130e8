"""FeatureCorrection: learns what the frozen models miss from the features, costs next to
nothing where the features carry nothing, stays bounded, and rides a chain and the
pipeline with the features each prediction carries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import (
    Chain,
    FeatureCorrection,
    FixedShare,
    OnlinePlatt,
    dumps_state,
)
from streamweights.config import ConfigError, parse_config
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline


def _stream(n, seed, informative=True, scale=1.0):
    """Three models that see only the first feature; the label also depends on the
    second (``informative``) — the part a re-weighting of frozen models cannot learn."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 3))
    truth_logit = 2.0 * features[:, 0] + (3.0 * features[:, 1] if informative else 0.0)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-truth_logit))).astype(int)
    model_p1 = 1.0 / (1.0 + np.exp(-np.outer(2.0 * features[:, 0], [1.0, 0.5, 1.5])))
    outputs = np.stack([1.0 - model_p1, model_p1], axis=2)  # (n, K, C)
    features = features * np.array([scale, 1.0, 1.0])
    return outputs, features, labels


def _run(stage, outputs, features, labels):
    """Mean log-loss of the stage and of its input (the models' average), prequentially."""
    ours = base = 0.0
    for rows, x, y in zip(outputs, features, labels, strict=True):
        p = rows.mean(axis=0)
        packed = FeatureCorrection.pack(p, rows, x)
        ours -= math.log(stage.predict(packed)[y])
        base -= math.log(p[y])
        stage.learn(packed, int(y))
    return ours / len(labels), base / len(labels)


def test_learns_what_the_models_miss_from_the_features():
    """Scenario: the label depends on a feature no deployed model looks at. We expect:
    the corrected log-loss at least 25 % below the models' average."""
    outputs, features, labels = _stream(4_000, seed=0)
    ours, base = _run(FeatureCorrection(n_classes=2, n_models=3, n_features=3),
                      outputs, features, labels)
    assert ours < 0.75 * base, (ours, base)


def test_guard_bounds_the_cost_when_the_features_carry_nothing():
    """Scenario: the models already know everything the features say. We expect: the
    stage's cumulative log-loss within the guard's bound of its input's: ln 2 plus the
    fixed share's cost ``T ln(1 / (1 - α))`` — and well inside it in practice."""
    outputs, features, labels = _stream(3_000, seed=1, informative=False)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    ours, base = _run(stage, outputs, features, labels)
    n = len(labels)
    bound = (math.log(2.0) + n * -math.log(1.0 - stage.guard_share)) / n
    assert ours <= base + bound, (ours, base, bound)
    assert ours <= base + 0.005, (ours, base)


def test_features_are_standardised_online():
    """Scenario: one feature comes in units a million times larger. We expect: the same
    predictions (the standardiser absorbs the scale), not a head that diverges."""
    outputs, features, labels = _stream(1_500, seed=2)
    _, big, _ = _stream(1_500, seed=2, scale=1e6)
    small_stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    big_stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    _run(small_stage, outputs, features, labels)
    _run(big_stage, outputs, big, labels)
    probe = FeatureCorrection.pack([0.5, 0.5], outputs[0], features[0])
    probe_big = FeatureCorrection.pack([0.5, 0.5], outputs[0], big[0])
    np.testing.assert_allclose(big_stage.predict(probe_big), small_stage.predict(probe),
                               atol=1e-6)


def test_memory_is_bounded_and_covariance_never_exceeds_the_prior():
    outputs, features, labels = _stream(2_000, seed=3)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3, prior_variance=0.7)
    sizes = []
    for cut in (500, 2_000):
        _run(stage, outputs[:cut], features[:cut], labels[:cut])
        sizes.append(len(dumps_state(stage.state_dict())))
        assert np.linalg.eigvalsh(stage.covariance_).max() <= 0.7 * (1 + 1e-12)
    assert abs(sizes[1] - sizes[0]) < 0.05 * sizes[0]  # same arrays, only digits differ


def test_on_drift_moves_covariance_back_toward_the_prior():
    outputs, features, labels = _stream(1_000, seed=4)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    _run(stage, outputs, features, labels)
    trace_before = np.trace(stage.covariance_)
    weights_before = np.abs(stage.head_weights_).sum()
    stage.on_drift()
    assert np.trace(stage.covariance_) > trace_before
    assert np.abs(stage.head_weights_).sum() == pytest.approx(0.7 * weights_before)


# -- chain -------------------------------------------------------------------------------
def _chain(n_features=3):
    return Chain([FixedShare(n_models=3, n_classes=2), OnlinePlatt(),
                  FeatureCorrection(n_classes=2, n_models=3, n_features=n_features)])


def test_chain_hands_the_stage_its_input_the_models_outputs_and_the_features():
    outputs, features, labels = _stream(300, seed=5)
    chain = _chain()
    alone = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    for rows, x, y in zip(outputs, features, labels, strict=True):
        served, trace = chain.observe_predict_trace(rows, features=list(x))
        calibrated = chain.stages[1].predict(trace[1])  # the stage before it
        expected = FeatureCorrection.pack(calibrated, rows, x)
        assert trace[2].tobytes() == expected.tobytes()
        assert served.tobytes() == alone.predict(expected).tobytes()
        chain.learn_trace(trace, int(y))
        alone.learn(expected, int(y))
    assert dumps_state(chain.stages[2].state_dict()) == dumps_state(alone.state_dict())


def test_chain_refuses_missing_or_malformed_features_before_any_change():
    outputs, _, _ = _stream(5, seed=6)
    chain = _chain()
    before = dumps_state(chain.state_dict())
    for bad, word in ((None, "send them"), ([1.0, 2.0], "expected 3"),
                      ([1.0, math.nan, 0.0], "NaN"), ("abc", "not a list")):
        with pytest.raises(ValueError, match="features") as error:
            chain.observe_predict_trace(outputs[0], features=bad)
        assert word in str(error.value)
    with pytest.raises(ValueError, match="features"):
        chain.predict(outputs[0])
    with pytest.raises(ValueError, match="features"):
        chain.observe(outputs[0])
    assert dumps_state(chain.state_dict()) == before
    with pytest.raises(ValueError, match="n_features"):
        Chain([FixedShare(n_models=3, n_classes=2),
               FeatureCorrection(n_classes=2, n_models=3, n_features=3),
               FeatureCorrection(n_classes=2, n_models=3, n_features=4)])


# -- config and pipeline -------------------------------------------------------------------
def _config(**stage):
    (config,) = parse_config({"streams": [{
        "name": "s", "classes": 2, "models": ["a", "b", "c"],
        "adapters": [{"type": "FixedShare"}, {"type": "OnlinePlatt"},
                     {"type": "FeatureCorrection", **stage},
                     {"type": "DriftMemory", "capacity": 16}],
        "publish": {"every_labels": 200, "every_seconds": 1e9}}]}).streams
    return config


def test_config_needs_n_features_and_takes_the_rest_from_the_stream():
    with pytest.raises(ConfigError, match=r"adapters\[2\]\.n_features: required"):
        _config()
    with pytest.raises(ConfigError, match=r"n_models: set by the stream"):
        _config(n_features=3, n_models=2)
    with pytest.raises(ConfigError, match=r"adapters\[2\]\.forgetting"):
        _config(n_features=3, forgetting=1.5)
    stage = _config(n_features=3, guard_share=0.05).build_chain().stages[2]
    assert (stage.n_models, stage.n_classes, stage.guard_share) == (3, 2, 0.05)


def _records(n, seed):
    outputs, features, labels = _stream(n, seed)
    records = []
    for i in range(n):
        rows = {m: outputs[i, k].tolist() for k, m in enumerate("abc")}
        records.append(Prediction("s", f"e{i}", float(i), rows, features[i].tolist()))
        if i >= 20:  # labels arrive 20 events late
            records.append(Label("s", f"e{i - 20}", i + 0.5, int(labels[i - 20])))
    return records


def test_pipeline_passes_features_and_restores_bit_exact_mid_stream():
    """Scenario: a stream whose chain has a FeatureCorrection stage is snapshotted mid
    stream and restored into a fresh pipeline. We expect: the same served bytes and the
    same final state as a run that never stopped."""
    config = _config(n_features=3)
    records = _records(1_500, seed=7)
    straight = Pipeline([config])
    served = [straight.process(r) for r in records]
    first = Pipeline([config])
    for record in records[:1_111]:
        first.process(record)
    second = Pipeline([config])
    second.load_state_dict(first.state_dict())
    resumed = [second.process(r) for r in records[1_111:]]
    for a, b in zip(served[1_111:], resumed, strict=True):
        assert (a.adapted is None) == (b.adapted is None)
        if a.adapted is not None:
            assert a.adapted.proba == b.adapted.proba
    assert dumps_state(second.state_dict()) == dumps_state(straight.state_dict())
    assert straight.invalid == {}
    published = straight.streams["s"].latest_weights.calibration["2:FeatureCorrection"]
    assert set(published) == {"guard_weight"}  # the last version's, published every 200
    assert published["guard_weight"] > 0.9  # the features help here: the head is trusted


def test_prediction_without_or_with_bad_features_is_a_dead_letter_that_changes_nothing():
    config = _config(n_features=3)
    pipeline = Pipeline([config])
    for record in _records(300, seed=8):
        pipeline.process(record)
    before = dumps_state(pipeline.state_dict())
    good = {m: [0.5, 0.5] for m in "abc"}
    cases = [(Prediction("s", "x1", 400.0, good), "missing_features"),
             (Prediction("s", "x2", 400.0, good, [1.0, 2.0]), "invalid_features")]
    for record, reason in cases:
        outcome = pipeline.process(record)
        assert [letter.reason for letter in outcome.dead_letters] == [reason]
        assert "features" in outcome.dead_letters[0].error
    assert pipeline.invalid == {"missing_features": 1, "invalid_features": 1}
    pipeline.invalid = {}
    assert dumps_state(pipeline.state_dict()) == before


def test_a_non_finite_update_is_refused_and_a_bad_input_is_a_plain_value_error():
    """Scenario: a feature so large its square overflows, then a malformed input. We
    expect: NonFiniteUpdate (the pipeline's ``non_finite_state``) for the first, a plain
    ValueError naming the field for the second, and no change either time."""
    from streamweights.adapters.validation import NonFiniteUpdate

    outputs, features, labels = _stream(200, seed=9)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    _run(stage, outputs, features, labels)
    before = dumps_state(stage.state_dict())
    huge = FeatureCorrection.pack([0.5, 0.5], outputs[0], [1e200, 0.0, 0.0])
    with pytest.raises(NonFiniteUpdate, match="not finite"):
        stage.learn(huge, 1)
    with pytest.raises(NonFiniteUpdate):
        stage.learn_many([FeatureCorrection.pack([0.5, 0.5], outputs[0], features[0]), huge],
                         [0, 1])
    stage.load_state_dict(json_round_trip(before))  # learn_many kept the first event
    off_simplex = FeatureCorrection.pack([0.5, 0.7], outputs[0], features[0])
    with pytest.raises(ValueError, match=r"x\.proba") as error:
        stage.learn(off_simplex, 1)
    assert not isinstance(error.value, NonFiniteUpdate)
    assert dumps_state(stage.state_dict()) == before


def json_round_trip(text):
    from streamweights.adapters import loads_state

    return loads_state(text)


def test_labels_take_the_same_step_in_any_integral_form_and_bad_ones_change_nothing():
    """Scenario: the same event learned with the label as a plain int, a numpy int, a bool
    and a float with an integral value, then with an unknown class and a non-integral
    one. We expect: the same state bit for bit the first four ways (the core takes plain
    ints itself, Python converts the rest), a ValueError naming ``y`` and no change the
    last two."""
    outputs, features, labels = _stream(300, seed=4)
    stages = [FeatureCorrection(n_classes=2, n_models=3, n_features=3) for _ in range(4)]
    for stage in stages:
        _run(stage, outputs[:200], features[:200], labels[:200])
    packed = FeatureCorrection.pack(outputs[200].mean(axis=0), outputs[200], features[200])
    for stage, label in zip(stages, (1, np.int64(1), True, 1.0), strict=True):
        stage.learn(packed, label)
    states = {dumps_state(stage.state_dict()) for stage in stages}
    assert len(states) == 1
    before = states.pop()
    for bad, message in ((2, "unknown class 2"), (0.5, "must be an integer")):
        with pytest.raises(ValueError, match=rf"^y: .*{message}"):
            stages[0].learn(packed, bad)
    assert dumps_state(stages[0].state_dict()) == before


def test_a_state_whose_covariance_is_not_symmetric_is_refused():
    """Scenario: a saved state with one off-diagonal covariance entry edited (its mirror
    left alone). We expect: a ValueError that names ``state.covariance`` and says it must
    be symmetric (every covariance the head writes is, and its arithmetic reads one
    triangle for the other); the stage keeps its state. The unedited state loads."""
    from streamweights.adapters import loads_state

    outputs, features, labels = _stream(300, seed=5)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    _run(stage, outputs, features, labels)
    saved = dumps_state(stage.state_dict())
    covariance = stage.state_dict()["state"]["covariance"]
    assert np.array_equal(covariance, covariance.T) and covariance[1, 4] != 0.0
    edited = loads_state(saved)
    matrix = np.array(edited["state"]["covariance"], dtype=float)
    matrix[1, 4] = np.nextafter(matrix[1, 4], 1.0)
    edited["state"]["covariance"] = matrix
    fresh = FeatureCorrection(n_classes=2, n_models=3, n_features=3)
    untouched = dumps_state(fresh.state_dict())
    with pytest.raises(ValueError, match=r"state\.covariance: must be symmetric"):
        fresh.load_state_dict(edited)
    assert dumps_state(fresh.state_dict()) == untouched
    fresh.load_state_dict(loads_state(saved))
    assert dumps_state(fresh.state_dict()) == saved
