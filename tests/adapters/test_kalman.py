"""KalmanWeights: exactness, learned forgetting, covariance invariants, classification."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from streamweights.adapters import KalmanWeights


def _bayesian_linear_regression(features, targets, prior_mean, prior_variance, noise_variance):
    """Closed-form posterior of w ~ N(μ0, σ_w² I), y = Xw + N(0, σ² I)."""
    precision = np.eye(features.shape[1]) / prior_variance + features.T @ features / noise_variance
    covariance = np.linalg.inv(precision)
    mean = covariance @ (prior_mean / prior_variance + features.T @ targets / noise_variance)
    return mean, covariance


def _relative_error(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _piecewise_stream(seed, n_events, n_features=5, segment=2000, noise=1.0):
    """True weights redrawn from N(0, I) every ``segment`` events."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_events, n_features))
    segments = rng.normal(size=(-(-n_events // segment), n_features))
    weights = np.repeat(segments, segment, axis=0)[:n_events]
    targets = np.einsum("nd,nd->n", features, weights) + noise * rng.normal(size=n_events)
    return features, targets


def _prequential_squared_error(head, features, targets):
    errors = np.empty(len(targets))
    for index in range(len(targets)):
        errors[index] = (head.predict(features[index])[0] - targets[index]) ** 2
        head.learn(features[index], targets[index])
    return errors


@pytest.mark.parametrize("n_outputs, with_prior_mean", [(1, False), (2, True)])
def test_no_forgetting_equals_closed_form_bayesian_linear_regression(n_outputs,
                                                                      with_prior_mean):
    """Scenario: γ fixed at 1 over 1,000 noisy linear events (one or two outputs, zero or
    non-zero prior mean). We expect: the filter's mean and covariance equal the batch
    Bayesian linear-regression posterior to 1e-8 relative, event by event or in
    micro-batches through ``learn_rows``."""
    rng = np.random.default_rng(11)
    n_events, n_features = 1000, 4
    features = rng.normal(size=(n_events, n_features))
    targets = features @ rng.normal(size=(n_features, n_outputs)) + 0.5 * rng.normal(
        size=(n_events, n_outputs))
    prior_mean = rng.normal(size=(n_features, n_outputs)) if with_prior_mean else np.zeros(
        (n_features, n_outputs))
    mean, covariance = _bayesian_linear_regression(features, targets, prior_mean, 2.0, 0.3)
    config = dict(n_features=n_features, n_outputs=n_outputs, forgetting=1.0,
                  prior_variance=2.0, noise_variance=0.3,
                  prior_mean=prior_mean if with_prior_mean else None)

    sequential = KalmanWeights(**config)
    for x, y in zip(features, targets, strict=True):
        sequential.learn(x, y if n_outputs > 1 else float(y[0]))
    assert _relative_error(sequential.mean_, mean) < 1e-8
    assert _relative_error(sequential.covariance_, covariance) < 1e-8

    batched = KalmanWeights(**config)
    for start in range(0, n_events, 37):
        batched.learn_rows(features[start:start + 37], targets[start:start + 37])
    assert _relative_error(batched.mean_, mean) < 1e-8
    assert _relative_error(batched.covariance_, covariance) < 1e-8
    assert batched.n_updates_ == sequential.n_updates_ == n_events


def test_learned_forgetting_cuts_error_on_jumping_weights():
    """Scenario: 20,000 events whose true weights jump every 2,000 events (d = 5, unit
    noise). We expect: the learned γ settles clearly below 1 (well under its ceiling),
    the prequential MSE is at least 30% below that of γ = 1, and within 5% of the best
    fixed γ of a grid chosen in hindsight."""
    features, targets = _piecewise_stream(seed=3, n_events=20_000)
    remembering = _prequential_squared_error(KalmanWeights(5, forgetting=1.0),
                                             features, targets).mean()
    learned_head = KalmanWeights(5)
    forgetting_trace = []
    errors = np.empty(len(targets))
    for index in range(len(targets)):
        errors[index] = (learned_head.predict(features[index])[0] - targets[index]) ** 2
        learned_head.learn(features[index], targets[index])
        forgetting_trace.append(learned_head.forgetting_)
    learned = errors.mean()
    best_fixed = min(
        _prequential_squared_error(KalmanWeights(5, forgetting=gamma), features, targets).mean()
        for gamma in (0.99, 0.998, 0.999, 0.9995, 0.9999))
    settled = np.asarray(forgetting_trace[len(targets) // 2:])
    assert np.all(settled < 1.0 - 1e-4)
    assert np.all(settled >= learned_head.min_forgetting)
    assert learned <= 0.7 * remembering, (learned, remembering)
    assert learned <= 1.05 * best_fixed, (learned, best_fixed)


def test_learned_noise_variance_recovers_the_noise_level():
    """Scenario: a stationary linear stream with noise standard deviation 0.5 and the
    filter told nothing about it (``noise_variance="learn"``, starting at 1). We expect:
    the learned noise variance ends within 30% of the true 0.25."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(5000, 3))
    targets = features @ np.array([1.0, -1.0, 0.5]) + 0.5 * rng.normal(size=5000)
    head = KalmanWeights(3, noise_variance="learn")
    head.learn_many(features, targets)
    assert abs(head.noise_variance_ - 0.25) < 0.3 * 0.25, head.noise_variance_


def test_covariance_stays_symmetric_positive_definite_and_below_prior():
    """Scenario: 10^5 updates with learned forgetting and learned noise on jumping
    weights, one feature almost never excited. We expect: after every 1,000 updates the
    covariance is exactly symmetric, positive definite, and A ⪯ σ_w² I (the invariant of
    algorithms.md §1.1): the rarely excited direction never winds up past the prior."""
    features, targets = _piecewise_stream(seed=8, n_events=100_000, n_features=4)
    rare = np.random.default_rng(9).random(100_000) < 0.001
    features[:, 3] = np.where(rare, 1.0, 0.0)
    prior_variance = 2.0
    head = KalmanWeights(4, prior_variance=prior_variance, noise_variance="learn")
    smallest_seen = math.inf
    for start in range(0, len(targets), 1000):
        head.learn_many(features[start:start + 1000], targets[start:start + 1000])
        covariance = head.covariance_
        assert np.array_equal(covariance, covariance.T)
        eigenvalues = np.linalg.eigvalsh(covariance)
        smallest_seen = min(smallest_seen, eigenvalues[0])
        assert eigenvalues[0] > 0.0
        assert eigenvalues[-1] <= prior_variance * (1.0 + 1e-12)
    assert head.n_updates_ == 100_000
    assert smallest_seen > 0.0


def _drifting_classification_stream(seed, n_events=20_000):
    """Two classes; the true logistic weights rotate by a full turn over the stream."""
    rng = np.random.default_rng(seed)
    features = np.column_stack([rng.normal(size=(n_events, 3)), np.ones(n_events)])
    angle = np.linspace(0.0, 2.0 * np.pi, n_events)
    weights = np.column_stack([3.0 * np.cos(angle), 3.0 * np.sin(angle),
                               np.full(n_events, 1.0), np.full(n_events, 0.5)])
    probability = 1.0 / (1.0 + np.exp(-np.einsum("nd,nd->n", features, weights)))
    labels = (rng.random(n_events) < probability).astype(int)
    return features, labels, probability


def _static_logistic_regression(features, labels, l2=1e-3):
    def loss(w):
        z = features @ w
        return np.mean(np.logaddexp(0.0, z) - labels * z) + 0.5 * l2 * w @ w

    def gradient(w):
        z = features @ w
        return features.T @ (1.0 / (1.0 + np.exp(-z)) - labels) / len(labels) + l2 * w

    result = minimize(loss, np.zeros(features.shape[1]), jac=gradient, method="BFGS",
                      options={"gtol": 1e-8})
    assert result.success
    return result.x


def _prequential_log_loss(head, features, labels):
    losses = np.empty(len(labels))
    for index in range(len(labels)):
        losses[index] = -math.log(head.predict(features[index])[labels[index]])
        head.learn(features[index], labels[index])
    return losses


def test_classification_beats_static_logistic_regression_under_drift():
    """Scenario: a 2-class stream whose true decision boundary rotates a full turn over
    20,000 events; a static logistic regression fitted (BFGS, small L2) on the first
    10% serves the rest. We expect: the Kalman head's prequential log-loss on the last
    90% is below the static model's and within 0.1 nats of the true probabilities'; its
    learned calibration β beats a fixed β = 1."""
    features, labels, probability = _drifting_classification_stream(seed=4)
    warm_up = len(labels) // 10
    static_weights = _static_logistic_regression(features[:warm_up], labels[:warm_up])
    logits = features[warm_up:] @ static_weights
    static = np.mean(np.logaddexp(0.0, logits) - labels[warm_up:] * logits)
    oracle = -np.mean(np.where(labels, np.log(probability), np.log1p(-probability))[warm_up:])

    kalman = _prequential_log_loss(KalmanWeights(4, 2, task="classification"),
                                   features, labels)[warm_up:].mean()
    uncalibrated = _prequential_log_loss(
        KalmanWeights(4, 2, task="classification", calibration=1.0),
        features, labels)[warm_up:].mean()
    assert kalman < static, (kalman, static)
    assert kalman < oracle + 0.1, (kalman, oracle)
    assert kalman < uncalibrated, (kalman, uncalibrated)


def test_on_drift_moves_covariance_toward_prior_and_mean_toward_prior_mean():
    """Scenario: a trained head receives a drift alarm. We expect: exactly the one-off
    transition with γ = drift_forgetting: mean deviation from the prior mean times 0.7,
    covariance 0.49 A + 0.51 σ_w² I (so its trace grows but stays ⪯ σ_w² I)."""
    rng = np.random.default_rng(2)
    prior_mean = np.array([0.5, -0.5, 0.0])
    head = KalmanWeights(3, prior_variance=1.5, prior_mean=prior_mean, forgetting=0.999)
    features = rng.normal(size=(500, 3))
    head.learn_many(features, features @ np.array([2.0, 1.0, -1.0]) + 0.1 * rng.normal(size=500))
    mean, covariance = head.mean_, head.covariance_
    head.on_drift()
    np.testing.assert_allclose(head.mean_ - prior_mean[:, None],
                               0.7 * (mean - prior_mean[:, None]), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(head.covariance_, 0.49 * covariance + 0.51 * 1.5 * np.eye(3),
                               rtol=1e-12, atol=1e-15)
    assert np.trace(head.covariance_) > np.trace(covariance)
    assert np.linalg.eigvalsh(head.covariance_)[-1] <= 1.5 * (1 + 1e-12)


@pytest.mark.parametrize("probabilities", ["probit", "monte_carlo"])
def test_fixed_forgetting_classification_gives_valid_probabilities(probabilities):
    """Scenario: a 4-class head with fixed γ learns a stream, then predicts on ordinary
    and on huge feature vectors. We expect: every prediction is a finite probability
    vector of length 4 summing to 1, including on inputs 1e6 times larger."""
    rng = np.random.default_rng(6)
    head = KalmanWeights(3, 4, task="classification", forgetting=0.99,
                         probabilities=probabilities, n_samples=32)
    assert head.n_classes == 4
    features = rng.normal(size=(600, 3))
    labels = np.argmax(features @ rng.normal(size=(3, 4)), axis=1)
    head.learn_many(features, labels)
    probes = np.concatenate([rng.normal(size=(50, 3)), 1e6 * rng.normal(size=(50, 3))])
    predictions = head.predict_many(probes)
    assert predictions.shape == (100, 4)
    assert np.all(np.isfinite(predictions))
    assert np.all((predictions >= 0.0) & (predictions <= 1.0))
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-12)
    accuracy = np.mean(np.argmax(head.predict_many(features), axis=1) == labels)
    assert accuracy > 0.6  # chance is 0.25


def _integrated_softmax(head, probes, n_draws=200_000, seed=99):
    """E[softmax(β f)], f ~ N(μ, s I), by brute force from the head's public views."""
    gamma, beta = head.forgetting_, head.calibration_
    mean = gamma * head.mean_
    covariance = gamma ** 2 * head.covariance_ + (1 - gamma ** 2) * head.prior_variance * np.eye(
        head.n_features)
    draws = np.random.default_rng(seed).standard_normal((n_draws, head.n_classes))
    rows = []
    for x in probes:
        logits = beta * (x @ mean + math.sqrt(x @ covariance @ x) * draws)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        rows.append((weights / weights.sum(axis=1, keepdims=True)).mean(axis=0))
    return np.array(rows)


def test_predictive_probabilities_integrate_over_the_weight_uncertainty():
    """Scenario: a trained 3-class head predicts with 20,000 fixed Monte-Carlo draws and
    with the probit approximation. We expect: Monte-Carlo matches a brute-force
    integral of softmax(β f), f ~ N(μ, s I), over 200,000 independent draws within 0.01
    (at β = 3, where the uncertainty matters); the probit approximation is within 0.03
    of it at β = 1 (it is over-confident for large β² s, see the class docstring)."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(300, 3))
    labels = np.argmax(features @ rng.normal(size=(3, 3)), axis=1)
    probes = rng.normal(size=(10, 3)) * 3.0
    sampled = KalmanWeights(3, 3, task="classification", forgetting=0.99, calibration=3.0,
                            probabilities="monte_carlo", n_samples=20_000)
    sampled.learn_many(features, labels)
    np.testing.assert_allclose(sampled.predict_many(probes),
                               _integrated_softmax(sampled, probes), atol=0.01)
    probit = KalmanWeights(3, 3, task="classification", forgetting=0.99, calibration=1.0)
    probit.learn_many(features, labels)
    np.testing.assert_allclose(probit.predict_many(probes),
                               _integrated_softmax(probit, probes), atol=0.03)


def _joint_log_likelihood(head, rows, targets, rho):
    """log p(targets | rows, γ = sigmoid(rho)) through the predict step, from the public
    views of ``head`` (its mean and covariance before the update)."""
    gamma = 1.0 / (1.0 + math.exp(-rho))
    prior_mean = head._prior_mean
    mean = prior_mean + gamma * (head.mean_ - prior_mean)
    covariance = gamma ** 2 * head.covariance_ + (1 - gamma ** 2) * head.prior_variance * np.eye(
        head.n_features)
    innovation = rows @ covariance @ rows.T + head.noise_variance_ * np.eye(len(rows))
    predicted = rows @ mean
    return sum(multivariate_normal(predicted[:, k], innovation).logpdf(targets[:, k])
               for k in range(targets.shape[1]))


@pytest.mark.parametrize("batch", [1, 3])
def test_forgetting_steps_follow_the_predictive_likelihood_gradient(batch):
    """Scenario: from a trained two-output head with a prior mean, take two learned-γ
    steps on fresh batches (one row, through ``learn``, or three rows through
    ``learn_rows``). We expect: ρ = logit(γ) moves exactly as Adam does on the gradient
    of the joint one-step predictive log-likelihood, computed here by finite differences
    with scipy (the first Adam step is the sign, the second depends on the gradients'
    ratio)."""
    rng = np.random.default_rng(10)
    head = KalmanWeights(3, 2, prior_mean=[0.3, -0.2, 0.1], noise_variance=0.5,
                         forgetting_learning_rate=0.05, initial_forgetting=0.95)
    warm = KalmanWeights(3, 2, prior_mean=[0.3, -0.2, 0.1], noise_variance=0.5,
                         forgetting=0.95)
    features = rng.normal(size=(40, 3))
    warm_targets = features @ rng.normal(size=(3, 2)) + 0.7 * rng.normal(size=(40, 2))
    warm.learn_many(features, warm_targets)
    state = warm.state_dict()["state"]
    state["rho"] = math.log(0.95 / 0.05)
    head.load_state_dict({**head.state_dict(), "state": state})

    rho = math.log(0.95 / 0.05)
    moments = [0.0, 0.0]
    for step in (1, 2):
        rows = rng.normal(size=(batch, 3))
        targets = rows @ rng.normal(size=(3, 2)) * 2.0 + rng.normal(size=(batch, 2))
        h = 1e-5
        gradient = (_joint_log_likelihood(head, rows, targets, rho + h)
                    - _joint_log_likelihood(head, rows, targets, rho - h)) / (2 * h)
        moments = [0.9 * moments[0] + 0.1 * gradient,
                   0.999 * moments[1] + 0.001 * gradient ** 2]
        rho += 0.05 * (moments[0] / (1 - 0.9 ** step)) / math.sqrt(
            moments[1] / (1 - 0.999 ** step))
        if batch == 1:
            head.learn(rows[0], targets[0])
        else:
            head.learn_rows(rows, targets)
        assert head.forgetting_ == pytest.approx(1.0 / (1.0 + math.exp(-rho)), rel=1e-7)


def test_single_row_batch_equals_learn_with_learned_forgetting_and_noise():
    """Scenario: the same 300 events go through ``learn`` and through ``learn_rows`` one
    row at a time, learning γ and σ². We expect: the two paths agree to 1e-10."""
    rng = np.random.default_rng(12)
    features = rng.normal(size=(300, 4))
    targets = features @ rng.normal(size=(4, 2)) + 0.3 * rng.normal(size=(300, 2))
    config = dict(n_features=4, n_outputs=2, noise_variance="learn", prior_mean=np.ones(4))
    one, rows = KalmanWeights(**config), KalmanWeights(**config)
    one.learn_many(features, targets)
    for index in range(300):
        rows.learn_rows(features[index:index + 1], targets[index:index + 1])
    assert one.forgetting_ == pytest.approx(rows.forgetting_, rel=1e-10)
    assert one.noise_variance_ == pytest.approx(rows.noise_variance_, rel=1e-10)
    np.testing.assert_allclose(one.mean_, rows.mean_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one.covariance_, rows.covariance_, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_features=0), "n_features"),
    (dict(n_features=3, task="ranking"), "task"),
    (dict(n_features=3, task="classification", n_outputs=1), "n_outputs"),
    (dict(n_features=3, forgetting=1.5), "forgetting"),
    (dict(n_features=3, forgetting=0.0), "forgetting"),
    (dict(n_features=3, forgetting="sometimes"), "forgetting"),
    (dict(n_features=3, prior_variance=-1.0), "prior_variance"),
    (dict(n_features=3, noise_variance=0.0), "noise_variance"),
    (dict(n_features=3, noise_variance="guess"), "noise_variance"),
    (dict(n_features=3, min_forgetting=0.999, initial_forgetting=0.99), "initial_forgetting"),
    (dict(n_features=3, max_forgetting=1.0), "max_forgetting"),
    (dict(n_features=3, min_forgetting=0.99, max_forgetting=0.95), "min_forgetting"),
    (dict(n_features=3, forgetting_learning_rate=0.0), "forgetting_learning_rate"),
    (dict(n_features=3, drift_forgetting=1.0), "drift_forgetting"),
    (dict(n_features=3, prior_mean=[1.0, 2.0]), "prior_mean"),
    (dict(n_features=3, prior_mean=[np.nan, 0.0, 0.0]), "prior_mean"),
    (dict(n_features=3, task="classification", n_outputs=2, calibration=-2.0), "calibration"),
    (dict(n_features=3, probabilities="exact"), "probabilities"),
    (dict(n_features=3, n_samples=0), "n_samples"),
    (dict(n_features=3, seed=-1), "seed"),
])
def test_bad_hyper_parameters_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        KalmanWeights(**kwargs)


def test_learn_rows_rejects_bad_batches_without_changing_state():
    head = KalmanWeights(3, 2, task="classification")
    before = head.state_dict()
    for rows, targets, word in [
        (np.zeros((2, 3)), [0, 5], "unknown class"),
        (np.zeros((2, 3)), [0], "shape"),
        (np.zeros((2, 4)), [0, 1], "shape"),
        (np.full((2, 3), np.nan), [0, 1], "NaN"),
    ]:
        with pytest.raises(ValueError, match=word):
            head.learn_rows(rows, targets)
    assert head.state_dict()["state"]["n_updates"] == before["state"]["n_updates"] == 0
    np.testing.assert_array_equal(head.covariance_, np.eye(3))
