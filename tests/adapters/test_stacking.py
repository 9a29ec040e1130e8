"""OnlineStacking: unconstrained, drifting linear combinations of deployed models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import OnlineStacking


def _extrapolating_regression_stream(seed, n_events=6000):
    """Two correlated models; the label is 1.6·f1 − 0.6·f2 + noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n_events)
    first = signal + 0.5 * rng.normal(size=n_events)
    second = signal + 0.5 * rng.normal(size=n_events)
    outputs = np.column_stack([first, second])
    labels = 1.6 * first - 0.6 * second + 0.3 * rng.normal(size=n_events)
    return outputs, labels


def _switching_classification_stream(seed, n_events=12_000, period=2000):
    """Three models of a binary outcome: the good one and a useless one swap roles every
    ``period`` events; the third is mediocre throughout."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(scale=2.5, size=n_events)
    labels = (rng.random(n_events) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    good = 1.0 / (1.0 + np.exp(-(logit + 0.3 * rng.normal(size=n_events))))
    useless = 1.0 / (1.0 + np.exp(-1.5 * rng.normal(size=n_events)))
    mediocre = 1.0 / (1.0 + np.exp(-(0.4 * logit + 0.8 * rng.normal(size=n_events))))
    first_good = (np.arange(n_events) // period) % 2 == 0
    positive = np.column_stack([np.where(first_good, good, useless),
                                np.where(first_good, useless, good), mediocre])
    outputs = np.stack([1.0 - positive, positive], axis=2)  # (n, K, C)
    return outputs, labels, first_good


def test_regression_learns_negative_weight_and_beats_every_convex_choice():
    """Scenario: y = 1.6·f1 − 0.6·f2 + noise over 6,000 events from two correlated
    models; the best combination has a negative weight, which no convex mixture (Hedge,
    Fixed-Share) can reach. We expect: OnlineStacking's prequential MSE is at least 30%
    below the best single model's and the uniform average's, and its weights end near
    (1.6, −0.6)."""
    outputs, labels = _extrapolating_regression_stream(seed=1)
    stacking = OnlineStacking(n_models=2)
    errors = np.empty(len(labels))
    for index in range(len(labels)):
        errors[index] = (float(stacking.predict(outputs[index])) - labels[index]) ** 2
        stacking.learn(outputs[index], labels[index])
    best_single = min(np.mean((outputs[:, k] - labels) ** 2) for k in range(2))
    uniform = np.mean((outputs.mean(axis=1) - labels) ** 2)
    assert errors.mean() <= 0.7 * best_single, (errors.mean(), best_single)
    assert errors.mean() <= 0.7 * uniform, (errors.mean(), uniform)
    np.testing.assert_allclose(stacking.weights_, [1.6, -0.6], atol=0.15)
    assert stacking.weights_.shape == (2,)


def test_regression_weights_summing_past_one_with_intercept():
    """Scenario: both models under-predict by a factor 4 and miss an offset of 1:
    y = 2·f1 + 2·f2 + 1 + noise, so the best weights sum to 4, with an intercept.
    We expect: the weight sum and the intercept are recovered and the prequential MSE is
    below a third of the uniform average's."""
    rng = np.random.default_rng(2)
    signal = rng.normal(size=4000)
    outputs = np.column_stack([signal + 0.2 * rng.normal(size=4000),
                               signal + 0.2 * rng.normal(size=4000)]) / 2.0
    labels = outputs.sum(axis=1) * 2.0 + 1.0 + 0.1 * rng.normal(size=4000)
    stacking = OnlineStacking(n_models=2, fit_intercept=True)
    predictions = np.empty(len(labels))
    for index in range(len(labels)):
        predictions[index] = stacking.predict(outputs[index])
        stacking.learn(outputs[index], labels[index])
    uniform = np.mean((outputs.mean(axis=1) - labels) ** 2)
    assert np.mean((predictions - labels) ** 2) < uniform / 3.0
    assert stacking.weights_.sum() == pytest.approx(4.0, abs=0.1)
    assert stacking.intercept_ == pytest.approx(1.0, abs=0.1)


def test_classification_tracks_which_model_is_good():
    """Scenario: three models of a binary outcome; the good and a useless model swap
    every 2,000 events over 12,000. We expect: the stacking's prequential log-loss is at
    least 10% below the uniform average's, and at the end of every period the model
    that was good during it carries the largest weight."""
    outputs, labels, first_good = _switching_classification_stream(seed=0)
    stacking = OnlineStacking(n_models=3, n_classes=2)
    losses = np.empty(len(labels))
    leaders = []
    for index in range(len(labels)):
        prediction = stacking.predict(outputs[index])
        losses[index] = -math.log(prediction[labels[index]])
        stacking.learn(outputs[index], labels[index])
        if index % 2000 == 1999:
            leaders.append((int(np.argmax(stacking.weights_)), 0 if first_good[index] else 1))
    uniform = outputs.mean(axis=1)[np.arange(len(labels)), labels]
    uniform_loss = -np.mean(np.log(uniform))
    assert losses.mean() <= 0.9 * uniform_loss, (losses.mean(), uniform_loss)
    assert all(leader == expected for leader, expected in leaders), leaders


def test_starts_at_the_uniform_average_and_drift_shrinks_toward_it():
    """Scenario: a fresh stacking predicts, then learns a stream favouring one model and
    gets a drift alarm. We expect: the first predictions equal the uniform average of the
    models (regression and classification); after ``on_drift`` every weight's distance
    from 1/K shrinks by the drift factor 0.7."""
    regression = OnlineStacking(n_models=4)
    values = np.array([1.0, 2.0, -3.0, 0.5])
    assert float(regression.predict(values)) == pytest.approx(values.mean(), rel=1e-12)
    assert regression.predict(values).shape == ()
    classification = OnlineStacking(n_models=3, n_classes=3)
    probabilities = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(classification.predict(probabilities),
                               probabilities.mean(axis=0), rtol=1e-12)
    rng = np.random.default_rng(4)
    outputs = rng.normal(size=(500, 4))
    regression.learn_many(outputs, 2.0 * outputs[:, 0] + 0.1 * rng.normal(size=500))
    before = regression.weights_
    regression.on_drift()
    np.testing.assert_allclose(regression.weights_ - 0.25, 0.7 * (before - 0.25),
                               rtol=1e-12, atol=1e-15)


def test_classification_predictions_stay_on_the_simplex_when_weights_go_negative():
    """Scenario: one of three models is anti-informative (it flips the outcome), so its
    weight goes negative and raw combinations can leave [0, 1]. We expect: a negative
    weight on it, and every prediction a probability vector with entries at least the
    floor that sums to 1."""
    rng = np.random.default_rng(3)
    n_events = 4000
    logit = rng.normal(scale=2.0, size=n_events)
    labels = (rng.random(n_events) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    positive = 1.0 / (1.0 + np.exp(-np.column_stack([
        0.6 * logit + rng.normal(size=n_events), -logit + 0.5 * rng.normal(size=n_events),
        rng.normal(size=n_events)])))
    outputs = np.stack([1.0 - positive, positive], axis=2)
    stacking = OnlineStacking(n_models=3, n_classes=2)
    stacking.learn_many(outputs, labels)
    assert stacking.weights_[1] < -0.1
    predictions = stacking.predict_many(outputs)
    assert np.all(predictions >= stacking.probability_floor / 2.0)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_models=0), "n_models"),
    (dict(n_models=2, n_classes=1), "n_classes"),
    (dict(n_models=2, forgetting=2.0), "forgetting"),
    (dict(n_models=2, noise_variance=-1.0), "noise_variance"),
    (dict(n_models=2, prior_variance=0.0), "prior_variance"),
    (dict(n_models=2, fit_intercept="yes"), "fit_intercept"),
    (dict(n_models=2, n_classes=2, probability_floor=0.6), "probability_floor"),
    (dict(n_models=2, max_forgetting=0.5), "forgetting"),
])
def test_bad_hyper_parameters_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        OnlineStacking(**kwargs)
