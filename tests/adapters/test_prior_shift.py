"""PriorShift: online EM re-estimation of the class mix (algorithms.md §4.1)."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import PriorShift
from streamweights.adapters.state_codec import dumps_state

#: Class means at ±2 (unit variance): the exact Bayes posterior under a 50/50 source mix is
#: sigmoid(4x), so the "deployed model" below is perfectly calibrated on the source.
MEAN = 2.0


def _binary_stream(rng, n, share_of_class_1, logit_offset=0.0):
    """Events of two Gaussian classes and the source-calibrated posterior for each.

    ``logit_offset`` != 0 makes the model miscalibrated (biased toward class 1)."""
    labels = (rng.random(n) < share_of_class_1).astype(int)
    x = rng.normal(np.where(labels == 1, MEAN, -MEAN), 1.0)
    p1 = 1.0 / (1.0 + np.exp(-(2.0 * MEAN * x + logit_offset)))
    return np.stack([1.0 - p1, p1], axis=1), labels


def _ten_class_stream(rng, n, prior, separation=3.0):
    """C-dimensional Gaussians N(separation·e_k, I); the posterior under a uniform source
    mix is softmax(separation·x), exactly."""
    n_classes = len(prior)
    labels = rng.choice(n_classes, size=n, p=prior)
    x = rng.normal(size=(n, n_classes))
    x[np.arange(n), labels] += separation
    logits = separation * x
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), labels


def _batch_em(p, source, iterations=1000):
    """Saerens et al.'s EM run to convergence on the whole sample (the offline reference)."""
    prior = source.copy()
    for _ in range(iterations):
        r = p * (prior / source)
        r /= r.sum(axis=1, keepdims=True)
        new = r.mean(axis=0)
        if np.abs(new - prior).sum() < 1e-12:
            return new
        prior = new
    return prior


def _log_loss(p, labels):
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def test_tracks_a_shift_from_50_50_to_90_10_without_labels():
    """Scenario: a model calibrated under a 50/50 mix serves 5,000 events at 50/50, then the
    mix moves to 90/10; no labels arrive. Each event is predicted, then observed.
    We expect, on each of three seeds: 5,000 events after the shift the estimate is within
    0.02 of 0.9, and the corrected posteriors have a lower log-loss over the post-shift
    events than the raw ones."""
    for seed in (11, 12, 13):
        rng = np.random.default_rng(seed)
        before, _ = _binary_stream(rng, 5000, 0.5)
        after, labels_after = _binary_stream(rng, 5000, 0.1)
        corrector = PriorShift(n_classes=2)
        corrector.observe_many(before)
        corrected = np.empty_like(after)
        for i, p in enumerate(after):
            corrected[i] = corrector.predict(p)
            corrector.observe(p)
        assert abs(corrector.prior_[0] - 0.9) < 0.02
        assert _log_loss(corrected, labels_after) < _log_loss(after, labels_after)


def test_recovers_ten_class_priors_like_batch_em():
    """Scenario: a 10-class model calibrated under a uniform mix sees 10,000 events from a
    skewed mix (0.30 ... 0.02) from the first event, so the source mix is given (a source
    learned from this stream would be the shifted mix). With min_step=1e-4 the step never
    floors before the end, so the stream is averaged as a whole.
    We expect: L1 distance to the true mix below 0.05, and no worse than the offline EM on
    the same sample by more than 0.01 (the sampling error itself is about 0.02)."""
    target = np.array([0.30, 0.20, 0.12, 0.10, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02])
    rng = np.random.default_rng(5)
    p, _ = _ten_class_stream(rng, 10_000, target)
    corrector = PriorShift(n_classes=10, source_prior=np.full(10, 0.1), min_step=1e-4)
    corrector.observe_many(p)
    streaming_l1 = np.abs(corrector.prior_ - target).sum()
    batch_l1 = np.abs(_batch_em(p, np.full(10, 0.1)) - target).sum()
    assert streaming_l1 < 0.05
    assert streaming_l1 < batch_l1 + 0.01


def test_stays_near_the_source_prior_without_shift():
    """Scenario: the target mix equals the source mix (50/50) for 10,000 events.
    We expect: over the second half the estimate stays within 0.05 of 0.5 and is within 0.02
    on average, so the served probabilities barely differ from the model's."""
    rng = np.random.default_rng(3)
    p, _ = _binary_stream(rng, 10_000, 0.5)
    corrector = PriorShift(n_classes=2)
    trace = np.empty(len(p))
    for i, row in enumerate(p):
        corrector.observe(row)
        trace[i] = corrector.prior_[0]
    deviation = np.abs(trace[5000:] - 0.5)
    assert deviation.max() < 0.05
    assert deviation.mean() < 0.02
    assert np.abs(corrector.predict_many(p[-1000:]) - p[-1000:]).mean() < 0.02


def test_labels_anchor_the_estimate_when_the_model_is_miscalibrated():
    """Scenario: the model's logits are biased by +3 toward class 1 (miscalibrated), the
    true mix is 70/30 from the start, the source mix (50/50) is given; unlabelled EM then
    over-estimates class 1.
    We expect: the label-free estimate is biased (> 0.04 off), labels alone recover the mix
    within 0.02, and observing every event and learning its label lands in between."""
    rng = np.random.default_rng(8)
    p, labels = _binary_stream(rng, 10_000, 0.3, logit_offset=3.0)
    unlabelled = PriorShift(n_classes=2, source_prior=[0.5, 0.5])
    unlabelled.observe_many(p)
    labelled_only = PriorShift(n_classes=2, source_prior=[0.5, 0.5])
    labelled_only.learn_many(p, labels)
    both = PriorShift(n_classes=2, source_prior=[0.5, 0.5])
    for row, label in zip(p, labels, strict=True):
        both.observe(row)
        both.learn(row, label)
    error_unlabelled = abs(unlabelled.prior_[1] - 0.3)
    assert error_unlabelled > 0.04
    assert abs(labelled_only.prior_[1] - 0.3) < 0.02
    assert abs(both.prior_[1] - 0.3) < error_unlabelled


def test_on_drift_resets_to_source_and_reconverges():
    """Scenario: the mix moves 50/50 -> 90/10; an alarm arrives 100 events after the shift.
    We expect: on_drift puts the estimate back to the source prior and restarts the step
    schedule; 900 events later the estimate is within 0.05 of 0.9. Without reset the step
    restarts but the estimate is kept."""
    rng = np.random.default_rng(2)
    before, _ = _binary_stream(rng, 5000, 0.5)
    after, _ = _binary_stream(rng, 1000, 0.1)
    corrector = PriorShift(n_classes=2)
    corrector.observe_many(before)
    corrector.observe_many(after[:100])
    corrector.on_drift()
    assert corrector.steps == 0
    np.testing.assert_array_equal(corrector.prior_, corrector.source_prior)
    corrector.observe_many(after[100:])
    assert abs(corrector.prior_[0] - 0.9) < 0.05

    keeping = PriorShift(n_classes=2, reset_on_drift=False)
    keeping.observe_many(after[:300])
    estimate = keeping.prior_
    keeping.on_drift()
    assert keeping.steps == 0
    np.testing.assert_array_equal(keeping.prior_, estimate)


def test_ratio_is_clipped_and_prior_floored():
    """Scenario: the source prior gives class 0 only 1%, and the stream is all class 0.
    We expect: π̂_0 / π_s,0 would be ~100, the served ratio is clipped at 20; class 1 is
    floored at 1e-4 (up to the renormalisation), never zero."""
    corrector = PriorShift(n_classes=2, source_prior=[0.01, 0.99])
    confident_zero = np.tile([0.999, 0.001], (3000, 1))
    corrector.observe_many(confident_zero)
    prior = corrector.prior_
    assert prior[0] / 0.01 > 20
    assert prior[1] >= 1e-4 / (1 + 2 * 1e-4)
    p = np.array([0.3, 0.7])
    ratio = np.minimum(prior / np.array([0.01, 0.99]), 20.0)
    expected = ratio * p / (ratio * p).sum()
    np.testing.assert_allclose(corrector.predict(p), expected, rtol=1e-12)


def test_source_prior_is_validated():
    assert not PriorShift(n_classes=4).source_learned
    assert PriorShift(n_classes=3, source_prior=[0.2, 0.3, 0.5]).source_learned
    np.testing.assert_allclose(PriorShift(3, [0.2, 0.3, 0.5]).source_prior, [0.2, 0.3, 0.5])
    bad = [([0.5, 0.5], "shape"), ([0.0, 0.5, 0.5], "positive"), ([0.2, 0.2, 0.2], "sum"),
           ([np.nan, 0.5, 0.5], "NaN"), ("abc", "numeric")]
    for value, word in bad:
        with pytest.raises(ValueError, match="source_prior") as error:
            PriorShift(3, value)
        assert word in str(error.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"n_classes": 1}, "n_classes"), ({"min_step": 0.0}, "min_step"),
    ({"min_step": 1.5}, "min_step"), ({"step_offset": -1.0}, "step_offset"),
    ({"label_weight": 0.0}, "label_weight"), ({"prior_floor": 0.6}, "prior_floor"),
    ({"max_ratio": 0.5}, "max_ratio"), ({"reset_on_drift": "yes"}, "reset_on_drift"),
])
def test_hyper_parameters_are_validated(kwargs, field):
    arguments = {"n_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        PriorShift(**arguments)


def test_batch_verbs_match_the_loop_for_ten_classes():
    rng = np.random.default_rng(4)
    p, labels = _ten_class_stream(rng, 300, np.full(10, 0.1))
    sequential, batched = PriorShift(10), PriorShift(10)
    for start in range(0, 300, 64):
        for row in p[start:start + 64]:
            sequential.observe(row)
        for row, label in zip(p[start:start + 64], labels[start:start + 64], strict=True):
            sequential.learn(row, label)
    for start in range(0, 300, 64):
        batched.observe_many(p[start:start + 64])
        batched.learn_many(p[start:start + 64], labels[start:start + 64])
    assert sequential.prior_.tobytes() != PriorShift(10).prior_.tobytes()
    assert batched.state_dict()["state"]["prior"].tobytes() == \
        sequential.state_dict()["state"]["prior"].tobytes()
    assert batched.predict_many(np.empty((0, 10))).shape == (0, 10)


def _imbalanced_stream(rng, n, share_of_class_1, overconfidence=1.0, source_share=0.31,
                       mean=1.0):
    """Two overlapping Gaussian classes at ±``mean``; the model's posterior is Bayes under
    a ``source_share`` mix, its logit scaled by ``overconfidence`` (1: calibrated)."""
    labels = (rng.random(n) < share_of_class_1).astype(int)
    x = rng.normal(np.where(labels == 1, mean, -mean), 1.0)
    logit = 2.0 * mean * x + np.log(source_share / (1.0 - source_share))
    p1 = 1.0 / (1.0 + np.exp(-overconfidence * logit))
    return np.stack([1.0 - p1, p1], axis=1), labels


def _prequential(corrector, p, labels, learn):
    served = np.empty_like(p)
    for i, (row, label) in enumerate(zip(p, labels, strict=True)):
        served[i] = corrector.predict(row)
        corrector.observe(row)
        if learn:
            corrector.learn(row, label)
    return served


@pytest.mark.parametrize("learn", [False, True], ids=["unlabelled", "labelled"])
@pytest.mark.parametrize("overconfidence", [1.0, 2.0], ids=["calibrated", "overconfident"])
def test_never_raises_log_loss_on_an_imbalanced_stationary_stream(overconfidence, learn):
    """Scenario (issue 14): a 69/31 class mix that never moves, 8,000 events, three seeds;
    the deployed model is calibrated on it, or overconfident (logits doubled); each event
    is predicted, observed and (``labelled``) learned. With the old default — a uniform
    source prior — EM "finds" the 69/31 mix as a shift and applies it a second time.
    We expect: with the default (learned source prior, evidence gate) the served log-loss
    is never above the model's own on any seed; the old default raised it by more than 3%
    on every seed."""
    for seed in (21, 22, 23):
        rng = np.random.default_rng(seed)
        p, labels = _imbalanced_stream(rng, 8000, 0.31, overconfidence)
        raw = _log_loss(p, labels)
        served = _prequential(PriorShift(n_classes=2), p, labels, learn)
        assert _log_loss(served, labels) <= raw + 1e-12, (seed, _log_loss(served, labels), raw)
        old_default = PriorShift(n_classes=2, source_prior=[0.5, 0.5], evidence_threshold=0.0)
        old = _log_loss(_prequential(old_default, p, labels, learn), labels)
        assert old > 1.03 * raw, (seed, old, raw)


def test_learned_source_still_corrects_a_real_shift():
    """Scenario: 20,000 events at the 69/31 mix the model was calibrated on, then the mix
    moves to 90/10 (class-conditional inputs unchanged); no labels.
    We expect: the source prior was learned near 0.69 / 0.31, the correction is switched on
    within 2,000 events of the shift, and over the 20,000 events after the shift it cuts the
    log-loss by more than 10 %, with the estimate within 0.03 of 0.9."""
    for seed in (31, 32):
        rng = np.random.default_rng(seed)
        before, _ = _imbalanced_stream(rng, 20_000, 0.31)
        after, labels_after = _imbalanced_stream(rng, 20_000, 0.10)
        corrector = PriorShift(n_classes=2)
        corrector.observe_many(before)
        assert abs(corrector.source_prior[1] - 0.31) < 0.01
        assert not corrector.correcting
        switched_on = None
        served = np.empty_like(after)
        for i, row in enumerate(after):
            served[i] = corrector.predict(row)
            corrector.observe(row)
            if switched_on is None and corrector.correcting:
                switched_on = i
        assert switched_on is not None and switched_on < 2000, switched_on
        assert _log_loss(served, labels_after) < 0.9 * _log_loss(after, labels_after)
        assert abs(corrector.prior_[0] - 0.9) < 0.03


def test_source_prior_is_learned_in_a_warm_up_that_serves_the_model_unchanged():
    """Scenario: source_window=50; 50 outputs arrive through learn (no observe).
    We expect: during the warm-up predict returns its input and prior_ follows the running
    mean of the outputs; after it the source prior is the mean of those 50 outputs."""
    rng = np.random.default_rng(6)
    p, labels = _imbalanced_stream(rng, 60, 0.31)
    corrector = PriorShift(n_classes=2, source_window=50)
    for row, label in zip(p[:49], labels[:49], strict=True):
        np.testing.assert_array_equal(corrector.predict(row), row / row.sum())
        corrector.learn(row, label)
    assert not corrector.source_learned
    np.testing.assert_allclose(corrector.prior_, p[:49].mean(axis=0), rtol=1e-12)
    corrector.learn(p[49], labels[49])
    assert corrector.source_learned
    np.testing.assert_allclose(corrector.source_prior, p[:50].mean(axis=0), rtol=1e-12)


def test_snapshot_from_before_the_learned_source_prior_continues_as_it_was():
    """Scenario: a state dict written before ``source_window`` and ``evidence_threshold``
    existed (uniform source by default, state with ``prior`` and ``steps`` only).
    We expect: it loads into a default PriorShift, keeps the uniform source it was
    estimated against and its estimate and step count (the evidence gate starts at zero,
    so the correction is served again once the stream gives evidence for it); a foreign
    config is still refused."""
    old = {"adapter": "PriorShift", "version": 1,
           "config": {"n_classes": 2, "source_prior": None, "step_offset": 10.0,
                      "min_step": 0.001, "label_weight": 1.0, "reset_on_drift": True,
                      "prior_floor": 1e-4, "max_ratio": 20.0},
           "state": {"prior": np.array([0.8, 0.2]), "steps": 1234}}
    restored = PriorShift(n_classes=2)
    restored.load_state_dict(old)
    np.testing.assert_array_equal(restored.source_prior, [0.5, 0.5])
    np.testing.assert_array_equal(restored.prior_, [0.8, 0.2])
    assert restored.steps == 1234 and restored.source_learned
    again = PriorShift(n_classes=2)
    again.load_state_dict(restored.state_dict())
    assert again.state_dict()["state"]["source"].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="another configuration"):
        PriorShift(n_classes=2, min_step=0.01).load_state_dict(old)


def _as_before_the_learned_source_prior(chain: dict, stage: int) -> None:
    """Rewrite a chain snapshot's PriorShift stage (at ``stage``) as a release before
    ``source_window`` and ``evidence_threshold`` wrote it, in the chain's config and in
    the stage's own snapshot."""
    stage_config = chain["config"]["stages"][stage]["config"]
    stage_config["source_prior"] = None  # the old default meant uniform
    for key in ("source_window", "evidence_threshold"):
        del stage_config[key]
    stage_snapshot = chain["state"]["stages"][stage]
    stage_snapshot["config"] = dict(stage_config)
    for key in ("source", "source_sum", "source_count", "evidence"):
        del stage_snapshot["state"][key]


def test_chain_snapshot_from_before_the_learned_source_prior_loads():
    """Scenario: a service restarts on this release from a chain snapshot (OnlineTemperature
    then PriorShift) written before PriorShift had ``source_window`` and
    ``evidence_threshold``; its chain config lists the stage's old config.
    We expect: the chain loads it (the stage upgrades its part), the PriorShift stage keeps
    its estimate and the uniform source, and the temperature stage its state."""
    from streamweights.adapters import Chain, OnlineTemperature

    rng = np.random.default_rng(9)
    p, labels = _imbalanced_stream(rng, 300, 0.31)
    writer = Chain([OnlineTemperature(n_classes=2), PriorShift(2, source_prior=[0.5, 0.5])])
    for row, label in zip(p, labels, strict=True):
        writer.observe(row)
        writer.learn(row, label)
    old = writer.state_dict()
    _as_before_the_learned_source_prior(old, 1)
    reader = Chain([OnlineTemperature(n_classes=2), PriorShift(2)])
    reader.load_state_dict(old)
    np.testing.assert_array_equal(reader.stages[1].prior_, writer.stages[1].prior_)
    np.testing.assert_array_equal(reader.stages[1].source_prior, [0.5, 0.5])
    assert dumps_state(reader.stages[0].state_dict()) == dumps_state(
        writer.stages[0].state_dict())


def test_portfolio_snapshot_from_before_the_learned_source_prior_loads_upgrading_once(
        monkeypatch):
    """Scenario: a portfolio whose first candidate chain ends in PriorShift restarts from
    a snapshot written before PriorShift had ``source_window`` and ``evidence_threshold``.
    We expect: it loads (the stage upgrades its part, the chain's config takes the
    upgraded spec) with the stage's estimate; the stage's upgrade runs once, not once per
    nesting level (the portfolio's and the chain's upgrades already made it)."""
    from streamweights.adapters import Portfolio

    rng = np.random.default_rng(11)
    p, labels = _imbalanced_stream(rng, 300, 0.31)
    candidates = [[{"type": "FixedShare"}, {"type": "PriorShift", "source_prior": [0.5, 0.5]}],
                  [{"type": "Hedge"}]]
    writer = Portfolio(n_models=2, n_classes=2, candidates=candidates)
    for row, label in zip(p, labels, strict=True):
        outputs = np.stack([row, row[::-1]])
        writer.observe(outputs)
        writer.learn(outputs, label)
    old = writer.state_dict()
    old["config"]["candidates"][0][1] = {"type": "PriorShift"}  # as the reader's is given
    _as_before_the_learned_source_prior(old["state"]["candidates"][0], 1)

    calls = []
    upgrade = PriorShift.upgrade_snapshot

    def counted(self, state_dict):
        calls.append(1)
        return upgrade(self, state_dict)

    monkeypatch.setattr(PriorShift, "upgrade_snapshot", counted)
    reader = Portfolio(n_models=2, n_classes=2, candidates=[
        [{"type": "FixedShare"}, {"type": "PriorShift"}], [{"type": "Hedge"}]])
    reader.load_state_dict(old)
    assert len(calls) == 1
    stage, written = reader.chains[0].stages[1], writer.chains[0].stages[1]
    np.testing.assert_array_equal(stage.prior_, written.prior_)
    np.testing.assert_array_equal(stage.source_prior, [0.5, 0.5])
