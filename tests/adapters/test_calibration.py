"""Scenario and unit tests for the calibrators (Online Platt / beta scaling, calibeating,
online temperature scaling).

Calibration is measured with the binned ECE of Gupta & Ramdas (2023): 15 equal-width
bins of the forecast, ``sum_b n_b / T * |mean(forecast in b) - mean(reference in b)|``.
Where the simulation knows each event's *true* probability, that is the reference: it
measures mis-calibration without the Bernoulli noise of the outcomes. The ordinary
outcome-based ECE is checked as well, against a bound widened by that noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from streamweights.adapters import (
    Calibeating,
    Chain,
    OnlineBetaScaling,
    OnlinePlatt,
    OnlineTemperature,
    adapter_spec,
    build_adapter,
)
from streamweights.adapters.base import rng_from_state, rng_state, rng_state_checked
from streamweights.adapters.calibration._newton import NewtonStep, project_onto_ball

N_ECE_BINS = 15


# -- helpers ----------------------------------------------------------------------------
def expected_calibration_error(forecasts, reference, n_bins=N_ECE_BINS):
    """Binned l1 ECE: ``sum_b n_b / T * |mean(forecasts in b) - mean(reference in b)|``.

    ``reference`` is the true event probability (noise-free miscalibration) or the 0/1
    outcome (the usual, noisy estimate).
    """
    forecasts = np.asarray(forecasts, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    bins = np.minimum((forecasts * n_bins).astype(int), n_bins - 1)
    forecast_sums = np.bincount(bins, forecasts, n_bins)
    reference_sums = np.bincount(bins, reference, n_bins)
    return float(np.abs(forecast_sums - reference_sums).sum() / len(forecasts))


def outcome_noise(forecasts, true_probability, n_bins=N_ECE_BINS):
    """Scale of the outcome-based ECE's sampling noise: the bins' standard errors,
    ``sum_b n_b / T * sqrt(mean(p (1 - p) in b) / n_b)``. A perfectly calibrated forecast
    scores about 0.8 times this on the outcomes; the tests allow twice it."""
    bins = np.minimum((np.asarray(forecasts) * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    variance = np.bincount(bins, true_probability * (1 - true_probability), n_bins)
    filled = counts > 0
    return float(np.sum(np.sqrt(variance[filled])) / len(forecasts))


def top_label_ece(forecasts, true_probabilities, n_bins=N_ECE_BINS):
    """ECE of the top-label confidence against the true probability of that label."""
    top = forecasts.argmax(axis=1)
    confidence = forecasts[np.arange(len(top)), top]
    return expected_calibration_error(confidence, true_probabilities[np.arange(len(top)), top],
                                      n_bins)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    weights = np.exp(z - z.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def binary_rows(f):
    return np.stack([1.0 - f, f], axis=1)


def serve(calibrator, inputs, labels, column=1):
    """Predict each event (what would be served), then learn its label; return forecasts."""
    served = np.empty(len(labels)) if column is not None else []
    for index, (x, y) in enumerate(zip(inputs, labels, strict=True)):
        output = calibrator.predict(x)
        if column is None:
            served.append(output)
        else:
            served[index] = output[column]
        calibrator.learn(x, y)
    return np.asarray(served)


# -- Online Platt scaling ---------------------------------------------------------------
def _platt_drift_stream(seed=11, n_before=30_000, n_after=3_000):
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 1.5, size=n_before + n_after)
    truth = np.concatenate([sigmoid(2.0 * logit[:n_before] - 1.0),
                            sigmoid(0.5 * logit[n_before:] + 1.0)])
    labels = (rng.random(truth.size) < truth).astype(int)
    return sigmoid(logit), truth, labels


def test_platt_fixes_a_distortion_and_recovers_after_it_changes():
    """Scenario: the model's true probability is sigmoid(2 logit f - 1) for 30,000 events,
    then abruptly sigmoid(0.5 logit f + 1) for 3,000 more.
    We expect: raw ECE > 0.1; OPS (default discount) ECE < 0.02 on the last 5,000 events
    before the change; the change hurts (> 0.03 on the 500 events after it); 3,000 events
    after it the ECE is back below 0.03 (measured on events 2,000-3,000 after the change).
    The paper's undiscounted ONS, whose steps have shrunk like 1/t, is still above 0.03
    there: that is what the discount is for."""
    scores, truth, labels = _platt_drift_stream()
    change = 30_000
    before = slice(change - 5_000, change)
    recovered = slice(change + 2_000, change + 3_000)
    raw = expected_calibration_error(scores[before], truth[before])
    served = serve(OnlinePlatt(), binary_rows(scores), labels)
    fitted = expected_calibration_error(served[before], truth[before])
    fitted_outcomes = expected_calibration_error(served[before], labels[before])
    hurt = expected_calibration_error(served[change:change + 500], truth[change:change + 500])
    after = expected_calibration_error(served[recovered], truth[recovered])
    after_outcomes = expected_calibration_error(served[recovered], labels[recovered])
    paper = serve(OnlinePlatt(discount=1.0), binary_rows(scores), labels)
    paper_after = expected_calibration_error(paper[recovered], truth[recovered])
    print(f"raw {raw:.4f} OPS {fitted:.4f} (outcomes {fitted_outcomes:.4f}) hurt {hurt:.4f} "
          f"after {after:.4f} (outcomes {after_outcomes:.4f}) paper-after {paper_after:.4f}")
    assert raw > 0.1
    assert fitted < 0.02
    assert fitted_outcomes < 0.02 + 2 * outcome_noise(served[before], truth[before])
    assert hurt > 0.03
    assert after < 0.03
    assert after_outcomes < 0.03 + 2 * outcome_noise(served[recovered], truth[recovered])
    assert paper_after > 0.03


def _platt_after_calibrated_stream(seed, discount, shrink, n=5_000):
    """Fit OPS on ``n`` events of a calibrated model whose logit is shown divided by
    ``shrink``; return ``(a, b)``."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 1.5, size=n)
    labels = rng.random(n) < sigmoid(logit)
    calibrator = OnlinePlatt(discount=discount)
    calibrator.learn_many(binary_rows(sigmoid(logit / shrink)), labels)
    return calibrator.coefficients_


@pytest.mark.parametrize("discount", [1.0, OnlinePlatt().discount], ids=["paper", "default"])
def test_platt_leaves_a_calibrated_model_alone(discount):
    """Scenario: 16 independent streams of 5,000 events from a perfectly calibrated model
    (y ~ Bernoulli(f)); OPS starts at the identity (1, 0).
    We expect: no systematic move: the mean of the 16 fitted (a, b) is within 0.1 of
    (1, 0) (algorithms.md §7, item 2). A single stream jitters: ONS steps are
    A^-1 g / 0.1, about 5 times noisier than the maximum-likelihood fit, ~0.08 per
    coordinate after 5,000 events (over 300 streams, 35 % end beyond 0.1, none beyond
    0.31), so each stream is only held within 0.4."""
    fits = np.array([_platt_after_calibrated_stream(seed, discount, 1.0)
                     for seed in range(100, 116)])
    distances = np.hypot(fits[:, 0] - 1.0, fits[:, 1])
    mean_distance = math.hypot(fits[:, 0].mean() - 1.0, fits[:, 1].mean())
    print(f"mean fit {fits.mean(axis=0).round(4)}, distance {mean_distance:.4f}, "
          f"worst stream {distances.max():.4f}")
    assert mean_distance < 0.1
    assert distances.max() < 0.4


@pytest.mark.parametrize("discount", [1.0, OnlinePlatt().discount], ids=["paper", "default"])
def test_platt_sharpens_an_under_confident_model(discount):
    """Scenario: the same calibrated model, but the score shown to OPS is under-confident,
    logit(f') = logit(f) / 3 (16 streams of 5,000 events).
    We expect: a is driven to about 3 (mean over streams within 0.15, every stream
    within 0.75) and b stays about 0 (mean within 0.1)."""
    fits = np.array([_platt_after_calibrated_stream(seed, discount, 3.0)
                     for seed in range(200, 216)])
    print(f"mean fit {fits.mean(axis=0).round(4)}, a range "
          f"[{fits[:, 0].min():.3f}, {fits[:, 0].max():.3f}]")
    assert abs(fits[:, 0].mean() - 3.0) < 0.15
    assert np.abs(fits[:, 0] - 3.0).max() < 0.75
    assert abs(fits[:, 1].mean()) < 0.1


def test_platt_on_drift_resets_curvature_and_keeps_the_map():
    calibrator = OnlinePlatt()
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.05, 0.95, size=500)
    calibrator.learn_many(binary_rows(scores), rng.random(500) < scores**2)
    coefficients = calibrator.coefficients_
    assert calibrator.state_dict()["state"]["curvature"][0, 0] > 150.0
    calibrator.on_drift()
    state = calibrator.state_dict()["state"]
    assert calibrator.coefficients_ == coefficients
    np.testing.assert_array_equal(state["curvature"], 100.0 * np.eye(2))
    np.testing.assert_array_equal(state["inverse"], np.eye(2) / 100.0)


@pytest.mark.parametrize("discount", [1.0, 0.99])
def test_newton_inverse_tracks_the_curvature(discount):
    """Sherman-Morrison (and, with a discount, the re-inversion) keeps A^-1 the inverse
    of A, and a discount keeps A above A_0."""
    newton = NewtonStep((0.5, -0.2, 0.1), 25.0, 0.1, 100.0, discount)
    rng = np.random.default_rng(4)
    for gradient in rng.normal(scale=2.0, size=(3_000, 3)):
        newton.step(gradient.tolist())
    curvature = np.array(newton.curvature).reshape(3, 3)
    inverse = np.array(newton.inverse).reshape(3, 3)
    np.testing.assert_allclose(inverse @ curvature, np.eye(3), atol=1e-9)
    assert np.linalg.eigvalsh(curvature - 25.0 * np.eye(3)).min() > -1e-9


def test_projection_is_the_curvature_norm_minimiser():
    """The generalised projection equals a generic solver's argmin of (x - t)^T A (x - t)
    over the ball, and the ONS keeps the map inside its radius."""
    rng = np.random.default_rng(5)
    for _ in range(5):
        root = rng.normal(size=(2, 2))
        curvature = root @ root.T + 0.3 * np.eye(2)
        theta = rng.normal(scale=5.0, size=2)
        projected = np.array(project_onto_ball(theta.tolist(), curvature.ravel().tolist(),
                                                2, 1.0))
        solved = minimize(lambda x, t=theta, a=curvature: (x - t) @ a @ (x - t),
                          theta / np.linalg.norm(theta), method="SLSQP",
                          constraints=[{"type": "ineq", "fun": lambda x: 1.0 - x @ x}],
                          options={"ftol": 1e-14, "maxiter": 500}).x
        np.testing.assert_allclose(projected, solved, atol=1e-5)
        assert np.linalg.norm(projected) <= 1.0 + 1e-12
    calibrator = OnlinePlatt(radius=1.5)
    scores = rng.uniform(0.05, 0.95, size=2_000)
    calibrator.learn_many(binary_rows(scores), rng.random(2_000) < scores**4)
    assert math.hypot(*calibrator.coefficients_) <= 1.5 + 1e-12


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"discount": 0.0}, "discount"), ({"discount": 1.5}, "discount"),
    ({"exp_concavity": -1.0}, "exp_concavity"), ({"initial_curvature": 0.0},
                                                 "initial_curvature"),
    ({"radius": float("inf")}, "radius")])
def test_newton_calibrators_reject_bad_settings(kwargs, word):
    for cls in (OnlinePlatt, OnlineBetaScaling):
        with pytest.raises(ValueError, match=word):
            cls(**kwargs)


# -- beta scaling -----------------------------------------------------------------------
def test_beta_scaling_fixes_an_asymmetric_distortion_platt_cannot():
    """Scenario: the true probability is sigmoid(1.5 ln f + 0 ln(1 - f)): only the model's
    evidence for class 1 counts, and more than it says; a Platt map weighs ln f and
    ln(1 - f) alike (b = -a) and cannot undo that; 12,000 events, last 6,000 measured.
    We expect: beta scaling ECE < 0.02 and below half of Platt's, which stays > 0.03."""
    rng = np.random.default_rng(21)
    scores = rng.uniform(0.01, 0.99, size=12_000)
    truth = sigmoid(1.5 * np.log(scores))
    labels = (rng.random(scores.size) < truth).astype(int)
    rows = binary_rows(scores)
    last = slice(6_000, None)
    platt = serve(OnlinePlatt(), rows, labels)
    beta = serve(OnlineBetaScaling(), rows, labels)
    platt_ece = expected_calibration_error(platt[last], truth[last])
    beta_ece = expected_calibration_error(beta[last], truth[last])
    raw_ece = expected_calibration_error(scores[last], truth[last])
    print(f"raw {raw_ece:.4f} platt {platt_ece:.4f} beta {beta_ece:.4f}")
    assert platt_ece > 0.03
    assert beta_ece < 0.02
    assert beta_ece < platt_ece / 2


@pytest.mark.parametrize(("cls", "identity"), [(OnlinePlatt, (1.0, 0.0)),
                                               (OnlineBetaScaling, (1.0, -1.0, 0.0))])
def test_binary_calibrators_start_at_the_identity(cls, identity):
    """Do no harm: before any label the model's probabilities are served unchanged."""
    scores = np.array([1e-9, 0.01, 0.3, 0.5, 0.77, 0.999])
    served = cls().predict_many(binary_rows(scores))
    np.testing.assert_allclose(served[:, 1], np.clip(scores, 1e-5, 1 - 1e-5), rtol=1e-9)
    np.testing.assert_allclose(cls().predict(binary_rows(scores)[2]), [0.7, 0.3], rtol=1e-12)
    assert cls().coefficients_ == identity


# -- calibeating ------------------------------------------------------------------------
def test_calibeating_fixes_what_platt_cannot():
    """Scenario: a non-monotone distortion, truth = 0.5 + 0.4 sin(2 pi f), f uniform:
    no monotone 2-parameter logistic map fixes it, so OPS stays mis-calibrated; 12,000
    events, measured on the last 6,000.
    We expect: OPS ECE > 0.1; tracking < 0.03 and hedging < 0.05 (its forecasts are bin
    midpoints, 0.05 from the truth at worst), each below a third of OPS's; hedging also
    on the outcomes (its guarantee), within the outcomes' sampling noise."""
    rng = np.random.default_rng(31)
    scores = rng.uniform(0.0, 1.0, size=12_000)
    truth = 0.5 + 0.4 * np.sin(2.0 * np.pi * scores)
    labels = (rng.random(scores.size) < truth).astype(int)
    rows = binary_rows(scores)
    last = slice(6_000, None)

    tracking = Calibeating(OnlinePlatt(), mode="tracking")
    platt_served, tracking_served = np.empty(scores.size), np.empty(scores.size)
    for index, (x, y) in enumerate(zip(rows, labels, strict=True)):
        platt_served[index] = tracking.base.predict(x)[1]   # what OPS alone would serve
        tracking_served[index] = tracking.predict(x)[1]
        tracking.learn(x, y)
    # the hedging seed must not be the data's: the same stream would correlate them
    hedging_served = serve(Calibeating(OnlinePlatt(), mode="hedging", seed=2023), rows,
                           labels)

    platt_ece = expected_calibration_error(platt_served[last], truth[last])
    tracking_ece = expected_calibration_error(tracking_served[last], truth[last])
    hedging_ece = expected_calibration_error(hedging_served[last], truth[last])
    hedging_outcomes = expected_calibration_error(hedging_served[last], labels[last])
    print(f"OPS {platt_ece:.4f} tracking {tracking_ece:.4f} hedging {hedging_ece:.4f} "
          f"(outcomes {hedging_outcomes:.4f})")
    assert platt_ece > 0.1
    assert tracking_ece < 0.03
    assert hedging_ece < 0.05
    assert max(tracking_ece, hedging_ece) < platt_ece / 3
    assert hedging_outcomes < 0.05 + 2 * outcome_noise(hedging_served[last], truth[last])
    assert set(np.round(hedging_served, 12)) <= {round((i + 0.5) / 10, 12) for i in range(10)}


def test_hedging_predict_is_pure_and_learn_updates_the_interval_it_played():
    """The hedged choice is random, but predict draws nothing: repeated predicts agree and
    leave the state as it was; learn records the outcome on the interval predict played."""
    calibrator = Calibeating(OnlinePlatt(), mode="hedging", seed=5)
    rng = np.random.default_rng(6)
    for f in rng.uniform(0.0, 1.0, size=400):
        x = [1.0 - f, f]
        before = calibrator.state_dict()["state"]
        first, second = calibrator.predict(x), calibrator.predict(x)
        assert first.tobytes() == second.tobytes()
        after = calibrator.state_dict()["state"]
        assert after["uniform"] == before["uniform"]
        np.testing.assert_array_equal(after["counts"], before["counts"])
        base_bin = min(int(calibrator.base.predict(x)[1] * 10), 9)
        played = round(first[1] * 10 - 0.5)
        y = int(rng.random() < 0.9)   # the outcomes disagree with most forecasts
        calibrator.learn(x, y)
        counts = calibrator.state_dict()["state"]["counts"]
        assert counts[base_bin, played] == before["counts"][base_bin, played] + 1
        assert counts.sum() == before["counts"].sum() + 1


def test_calibeating_nests_its_base_in_config_and_state():
    calibrator = Calibeating({"adapter": "OnlineBetaScaling", "config": {"discount": 0.999}},
                             mode="hedging", n_bins=8, seed=3)
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=300)
    calibrator.learn_many(binary_rows(scores), rng.random(300) < scores)
    assert calibrator.get_config()["base"] == adapter_spec(calibrator.base)
    assert calibrator.get_config()["base"]["config"]["discount"] == 0.999
    snapshot = calibrator.state_dict()
    np.testing.assert_array_equal(snapshot["state"]["base"]["state"]["theta"],
                                  np.array(calibrator.base.coefficients_))
    rebuilt = build_adapter(snapshot)
    rebuilt.load_state_dict(snapshot)
    probe = binary_rows(np.linspace(0.01, 0.99, 25))
    np.testing.assert_array_equal(rebuilt.predict_many(probe), calibrator.predict_many(probe))


def test_calibeating_on_drift_clears_bins_and_forwards_to_the_base():
    calibrator = Calibeating(OnlinePlatt())
    rng = np.random.default_rng(8)
    scores = rng.uniform(size=300)
    calibrator.learn_many(binary_rows(scores), rng.random(300) < 0.5)
    calibrator.on_drift()
    state = calibrator.state_dict()["state"]
    assert state["counts"].sum() == 0
    np.testing.assert_array_equal(state["base"]["state"]["curvature"], 100.0 * np.eye(2))


def test_calibrators_chain_with_a_consistent_class_count():
    chain = Chain([OnlineTemperature(n_classes=2), Calibeating(OnlinePlatt())])
    proba, trace = chain.predict_trace(np.array([0.9, 0.1]))
    assert proba.shape == (2,)
    chain.learn_trace(trace, 1)
    with pytest.raises(ValueError, match="disagree"):
        Chain([OnlineTemperature(n_classes=3), Calibeating(OnlinePlatt())])


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"base": OnlinePlatt(), "mode": "greedy"}, "mode"),
    ({"base": OnlinePlatt(), "n_bins": 1}, "n_bins"),
    ({"base": OnlinePlatt(), "seed": -1}, "seed"),
    ({"base": {"adapter": "NoSuchAdapter"}}, "base"),
    ({"base": OnlineTemperature(n_classes=3)}, "base"),
    ({"base": "OnlinePlatt"}, "base")])
def test_calibeating_rejects_bad_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Calibeating(**kwargs)


# -- temperature scaling ----------------------------------------------------------------
def _over_confident_stream(seed, n, n_classes, true_temperature, class_shift=None):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, n_classes))
    true_logits = logits / true_temperature
    if class_shift is not None:
        true_logits = true_logits + np.asarray(class_shift)
    truth = softmax(true_logits)
    labels = (rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1)
    return softmax(logits), truth, np.minimum(labels, n_classes - 1)


def _expected_log_loss(forecasts, truth):
    """Cross-entropy against the true distribution (log-loss without outcome noise)."""
    return float(-(truth * np.log(np.maximum(forecasts, 1e-300))).sum(axis=1).mean())


def test_temperature_softens_an_over_confident_model():
    """Scenario: a 5-class model whose true logits are its own logits / 2.5 (over-confident);
    10,000 events, measured on the last 5,000.
    We expect: the temperature ends within 0.2 of 2.5; the log-loss (against the true
    probabilities) loses more than 95 % of its excess over the truth's own entropy (the
    least any forecast can score); top-label ECE falls from > 0.1 to < 0.02."""
    model, truth, labels = _over_confident_stream(41, 10_000, 5, 2.5)
    calibrator = OnlineTemperature(n_classes=5)
    served = serve(calibrator, model, labels, column=None)
    last = slice(5_000, None)
    entropy = _expected_log_loss(truth[last], truth[last])
    raw_loss = _expected_log_loss(model[last], truth[last])
    loss = _expected_log_loss(served[last], truth[last])
    raw_ece = top_label_ece(model[last], truth[last])
    ece = top_label_ece(served[last], truth[last])
    print(f"T {calibrator.temperature_:.3f} log-loss {raw_loss:.4f} -> {loss:.4f} (entropy "
          f"{entropy:.4f}) top-label ECE {raw_ece:.4f} -> {ece:.4f}")
    assert abs(calibrator.temperature_ - 2.5) < 0.2
    assert loss - entropy < 0.05 * (raw_loss - entropy)
    assert raw_ece > 0.1
    assert ece < 0.02


def test_temperature_with_bias_also_fixes_a_class_mix_error():
    """Scenario: the 3-class model is over-confident (T = 2.5) and also wrong about the
    class mix (true logits shifted by (1, 0, -1)); 10,000 events, last 5,000 measured.
    We expect: with per-class biases the log-loss ends clearly lower (> 5 % lower) than
    with the temperature alone, and the learned biases order the classes like the shift."""
    model, truth, labels = _over_confident_stream(42, 10_000, 3, 2.5, (1.0, 0.0, -1.0))
    last = slice(5_000, None)
    plain = serve(OnlineTemperature(n_classes=3), model, labels, column=None)
    biased_calibrator = OnlineTemperature(n_classes=3, bias=True)
    biased = serve(biased_calibrator, model, labels, column=None)
    plain_loss = _expected_log_loss(plain[last], truth[last])
    biased_loss = _expected_log_loss(biased[last], truth[last])
    biases = biased_calibrator.biases_
    print(f"log-loss plain {plain_loss:.4f} biased {biased_loss:.4f} biases {biases.round(3)} "
          f"T {biased_calibrator.temperature_:.3f}")
    assert biased_loss < 0.95 * plain_loss
    assert biases[0] > biases[1] > biases[2]
    assert abs(biased_calibrator.temperature_ - 2.5) < 0.3


def test_temperature_is_clipped_and_starts_at_the_identity():
    calibrator = OnlineTemperature(n_classes=3)
    x = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(calibrator.predict(x), x, rtol=1e-12)
    rng = np.random.default_rng(9)
    # a model that is sure and always wrong: the best temperature is unbounded
    for _ in range(3_000):
        calibrator.learn([0.999998, 1e-6, 1e-6], int(rng.integers(1, 3)))
    assert calibrator.temperature_ == pytest.approx(20.0, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"n_classes": 1}, "n_classes"), ({"n_classes": 3, "bias": "yes"}, "bias"),
    ({"n_classes": 3, "bias_regularization": -1.0}, "bias_regularization"),
    ({"n_classes": 3, "discount": 0.0}, "discount")])
def test_temperature_rejects_bad_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        OnlineTemperature(**kwargs)


def test_a_random_state_is_checked_as_the_generator_checks_it():
    """Scenario: Calibeating's saved random states, valid ones (edges of every range,
    strings, floats, bools as numbers) and invalid ones (out of range, negative, not a
    number, a key missing), read by ``rng_state_checked`` and by a real PCG64 generator
    built from them (what the restore did before). We expect: the same normalised state
    for every valid one; an error of the same class for every invalid one."""
    big, c_int = 1 << 128, 1 << 31
    base = {"state": "12345", "inc": "7", "has_uint32": 0, "uinteger": 0}
    generator = np.random.default_rng(8)
    changes = [{}, {"inc": "8"}, {"state": str(big - 1)}, {"inc": big - 1},
               {"has_uint32": c_int - 1}, {"has_uint32": -c_int}, {"has_uint32": 5},
               {"has_uint32": True}, {"has_uint32": "1"}, {"uinteger": (1 << 32) - 1},
               {"uinteger": 1.9}, {"state": 1.5}, {"state": str(big)}, {"inc": big + 1},
               {"state": "-1"}, {"inc": -3}, {"has_uint32": c_int}, {"has_uint32": -c_int - 1},
               {"uinteger": -1}, {"uinteger": 1 << 32}, {"uinteger": 1 << 64},
               {"state": "x"}, {"inc": None}, {"uinteger": math.nan}, {"state": math.inf}]
    changes += [{"state": str(int(generator.integers(0, 1 << 62)) << 66),
                 "inc": str(int(generator.integers(0, 1 << 62)) * 2 + 1),
                 "has_uint32": int(generator.integers(0, 2)),
                 "uinteger": int(generator.integers(0, 1 << 32))} for _ in range(50)]
    outcomes = {"valid": 0, "invalid": 0}
    for change in changes:
        state = {**base, **change}
        try:
            expected = rng_state(rng_from_state(state))
        except Exception as error:  # its class is what the check must raise
            with pytest.raises(type(error)):
                rng_state_checked(state)
            outcomes["invalid"] += 1
        else:
            assert rng_state_checked(state) == expected, change
            outcomes["valid"] += 1
    for key in base:
        missing = {name: value for name, value in base.items() if name != key}
        with pytest.raises(KeyError, match=key):
            rng_state_checked(missing)
    assert outcomes == {"valid": 62, "invalid": 13}
