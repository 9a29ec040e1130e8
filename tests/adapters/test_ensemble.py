"""Hedge and Fixed-Share: regret against the best model, tracking a switching best model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import FixedShare, Hedge


def _run_losses(mixer, loss_rows):
    """Feed arbitrary loss vectors in [0, 1] through the public API.

    With ``loss="absolute"``, regression outputs f_i = loss_i and label 0 make every
    model's loss exactly ``loss_i`` and the mixture's loss exactly ``w . loss``.
    Returns the mixture's cumulative loss.
    """
    total = 0.0
    for losses in loss_rows:
        total += float(mixer.predict(losses))
        mixer.learn(losses, 0.0)
    return total


@pytest.mark.parametrize("sequence", ["random", "shifting-means", "adversarial"])
def test_hedge_auto_rate_regret_within_bound(sequence):
    """Scenario: T = 10^4 rounds, K = 10 models, losses in [0, 1] from three kinds of
    sequence, the last chosen online against the mixer (the model it trusts most loses).
    We expect: regret against the best model within 2 sqrt(T ln K)."""
    T, K = 10_000, 10
    rng = np.random.default_rng(42)
    hedge = Hedge(n_models=K, loss="absolute", learning_rate="auto")
    if sequence == "adversarial":
        mixture_loss, model_losses = 0.0, np.zeros(K)
        for _ in range(T):
            losses = np.zeros(K)
            losses[int(np.argmax(hedge.weights_ + 1e-12 * np.arange(K)))] = 1.0
            mixture_loss += float(hedge.predict(losses))
            hedge.learn(losses, 0.0)
            model_losses += losses
    else:
        if sequence == "random":
            losses = rng.random((T, K))
        else:
            means = np.linspace(0.3, 0.6, K)
            means = np.where(np.arange(T)[:, None] < T // 2, means, means[::-1])
            losses = (rng.random((T, K)) < means).astype(float)
        mixture_loss = _run_losses(hedge, losses)
        model_losses = losses.sum(axis=0)
    regret = mixture_loss - model_losses.min()
    bound = 2 * math.sqrt(T * math.log(K))
    assert regret <= bound, (sequence, regret, bound)


def test_hedge_log_loss_is_the_bayes_mixture():
    """Scenario: log-loss with the auto rate. We expect: the mixture's regret to the best
    model is at most ln K on every prefix (the Bayesian mixture's guarantee)."""
    rng = np.random.default_rng(3)
    K, T = 5, 3000
    hedge = Hedge(n_models=K, n_classes=2)
    mixture, models = 0.0, np.zeros(K)
    for _ in range(T):
        p1 = rng.uniform(0.05, 0.95, size=K)
        outputs = np.stack([1 - p1, p1], axis=1)
        y = int(rng.random() < 0.7)
        mixture += -math.log(hedge.predict(outputs)[y])
        hedge.learn(outputs, y)
        models += -np.log(outputs[:, y])
        assert mixture - models.min() <= math.log(K) + 1e-9


def _switching_stream(seed, n_models=5, period=1000, n_periods=10):
    """One model at a time predicts the true probability; the others are confidently
    wrong-ish (a shuffled, sharpened probability). The good model changes every period."""
    rng = np.random.default_rng(seed)
    T = period * n_periods
    truth = rng.uniform(0.02, 0.98, size=T)
    y = (rng.random(T) < truth).astype(int)
    p1 = np.clip(rng.permutation(truth)[:, None] * 0 + rng.uniform(0.05, 0.95, (T, n_models)),
                 0.01, 0.99)
    best = (np.arange(T) // period) % n_models
    p1[np.arange(T), best] = truth
    outputs = np.stack([1 - p1, p1], axis=2)
    return outputs, y


def test_fixed_share_tracks_switching_best_model():
    """Scenario: the best of 5 models switches every 1,000 events over 10,000 events.
    We expect: Fixed-Share's cumulative log-loss is at most 0.8 of Hedge's."""
    outputs, y = _switching_stream(seed=7)
    hedge, fixed = Hedge(n_models=5, n_classes=2), FixedShare(n_models=5, n_classes=2)
    loss_hedge = loss_fixed = 0.0
    for x, label in zip(outputs, y, strict=True):
        loss_hedge -= math.log(hedge.predict(x)[label])
        loss_fixed -= math.log(fixed.predict(x)[label])
        hedge.learn(x, label)
        fixed.learn(x, label)
    assert loss_fixed <= 0.8 * loss_hedge, (loss_fixed, loss_hedge)


def test_fixed_share_with_vanishing_share_equals_hedge():
    """Fixed-Share with share -> 0 is Hedge (same rate): weights agree to 1e-9."""
    outputs, y = _switching_stream(seed=8, period=200, n_periods=3)
    hedge = Hedge(n_models=5, n_classes=2, learning_rate=0.3)
    fixed = FixedShare(n_models=5, n_classes=2, learning_rate=0.3, share=1e-30)
    for x, label in zip(outputs, y, strict=True):
        hedge.learn(x, label)
        fixed.learn(x, label)
    np.testing.assert_allclose(fixed.weights_, hedge.weights_, atol=1e-9)


def test_fixed_share_weight_floor_and_switch_speed():
    """Every weight stays >= share/K; after a switch the new best model takes the lead
    within about ln(K/share)/eta rounds of evidence (here eta = 1 with log-loss)."""
    K, share = 3, 0.01
    mixer = FixedShare(n_models=K, n_classes=2, share=share)
    good, bad = np.array([0.05, 0.95]), np.array([0.95, 0.05])
    first = np.stack([good, bad, bad])
    second = np.stack([bad, good, bad])
    for _ in range(500):
        mixer.learn(first, 1)
        assert mixer.weights_.min() >= share / K * (1 - 1e-12)
    switched_after = None
    for t in range(100):
        mixer.learn(second, 1)
        if mixer.weights_[1] > 0.5:
            switched_after = t + 1
            break
    per_round_evidence = math.log(0.95 / 0.05)
    assert switched_after is not None
    assert switched_after <= math.ceil(math.log(K / share) / per_round_evidence) + 1


def test_on_drift_moves_weights_toward_uniform():
    mixer = FixedShare(n_models=3, n_classes=2)
    hedge = Hedge(n_models=3, n_classes=2)
    x = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    for _ in range(50):
        mixer.learn(x, 1)
        hedge.learn(x, 1)
    for adapter in (mixer, hedge):
        before = adapter.weights_
        adapter.on_drift()
        after = adapter.weights_
        assert after[0] < before[0]
        assert after.min() > before.min()
        assert math.isclose(after.sum(), 1.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_models": 0}, "n_models"),
    ({"n_models": 3, "loss": "hinge"}, "loss"),
    ({"n_models": 3, "loss": "log"}, "n_classes"),
    ({"n_models": 3, "learning_rate": -1.0}, "learning_rate"),
    ({"n_models": 3, "learning_rate": "fast"}, "learning_rate"),
    ({"n_models": 3, "n_classes": 1}, "n_classes"),
    # integers past float64's range (a float overflow, a repr past Python's digit limit)
    ({"n_models": 3, "learning_rate": 10**400},
     r"learning_rate: .*got 1000+\.\.\. \(401 characters\)$"),
    ({"n_models": 3, "learning_rate": -10**5000},
     "learning_rate: .*got <an integer of about 5000 digits>"),
    ({"n_models": 10**5000}, "n_models: .*got <an integer of about 5000 digits>"),
    ({"n_models": 2**63}, "n_models: must be an integer from 1 to 9223372036854775807"),
])
def test_bad_hyper_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Hedge(**kwargs)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, float("nan")])
def test_fixed_share_rejects_bad_share(share):
    with pytest.raises(ValueError, match="share"):
        FixedShare(n_models=3, n_classes=2, share=share)


def test_adahedge_gap_ignores_models_without_weight():
    """A model whose weight has underflowed to 0 but whose loss is lowest must not make
    the mixability gap overflow (it once turned into NaN and was clipped to 0)."""
    import warnings

    from tests.reference.hedge import _mixability_gap

    weights = np.array([1.0, 0.0])
    losses = np.array([5.0, -5000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gap = _mixability_gap(weights, losses, rate=1.0)
    assert gap == pytest.approx(0.0, abs=1e-12)
