"""Prequential scores: running sums that equal a direct computation over the whole stream."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import dumps_state, loads_state
from streamweights.scoring import (
    ECE_BINS,
    PROBABILITY_FLOOR,
    ClassificationScore,
    RegressionScore,
    StreamScores,
)


def _probabilities(rng, n, n_classes, sharpness=1.0):
    logits = sharpness * rng.normal(size=(n, n_classes))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _direct(proba, labels):
    """Log-loss, Brier, accuracy and 15-bin top-label ECE in one vectorised pass."""
    n, n_classes = proba.shape
    chance = proba[np.arange(n), labels]
    onehot = np.eye(n_classes)[labels]
    top = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    hit = (top == labels).astype(float)
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    ece = 0.0
    for b in range(ECE_BINS):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(hit[members].mean() - confidence[members].mean())
    return {"log_loss": float(np.mean(-np.log(np.maximum(chance, PROBABILITY_FLOOR)))),
            "brier": float(np.mean(((proba - onehot) ** 2).sum(axis=1))),
            "accuracy": float(hit.mean()), "ece": ece}


@pytest.mark.parametrize(("n_classes", "sharpness"), [(2, 1.0), (3, 3.0), (7, 0.5)])
def test_classification_scores_match_a_direct_computation(n_classes, sharpness):
    rng = np.random.default_rng(n_classes)
    proba = _probabilities(rng, 4_000, n_classes, sharpness)
    # labels drawn from a distorted version of the forecasts: miscalibrated on purpose
    labels = np.array([rng.choice(n_classes, p=p) for p in _probabilities(rng, 4_000,
                                                                           n_classes)])
    score = ClassificationScore()
    losses = [score.update(p, int(y)) for p, y in zip(proba, labels, strict=True)]
    summary = score.summary()
    expected = _direct(proba, labels)
    assert summary["count"] == 4_000
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    chance = proba[np.arange(4_000), labels]
    assert np.allclose(losses, -np.log(np.maximum(chance, PROBABILITY_FLOOR)), rtol=1e-12)
    assert summary["ece"] > 0.01  # the test data really is miscalibrated


def test_log_loss_is_floored_for_a_confident_miss():
    score = ClassificationScore()
    loss = score.update(np.array([1.0, 0.0]), 1)
    assert loss == pytest.approx(-np.log(PROBABILITY_FLOOR))
    summary = score.summary()
    assert np.isfinite(summary["log_loss"])
    assert summary["brier"] == pytest.approx(2.0)
    assert summary["accuracy"] == 0.0
    assert summary["ece"] == pytest.approx(1.0)  # confidence 1, accuracy 0


def test_confidence_one_lands_in_the_last_bin():
    score = ClassificationScore()
    score.update(np.array([0.0, 1.0]), 1)
    counts = [count for count, _, _ in score.state_dict()["bins"]]
    assert counts[-1] == 1 and sum(counts) == 1
    assert score.summary()["ece"] == 0.0


def test_a_perfectly_calibrated_bin_has_no_calibration_error():
    score = ClassificationScore()
    for label in (0, 0, 0, 1):  # confidence 0.75 on class 0, right three times in four
        score.update(np.array([0.75, 0.25]), label)
    assert score.summary()["ece"] == pytest.approx(0.0, abs=1e-15)
    assert score.summary()["accuracy"] == 0.75


def test_empty_score_summary_is_finite():
    summary = ClassificationScore().summary()
    assert summary["count"] == 0
    assert all(np.isfinite(v) for v in summary.values())
    assert RegressionScore().summary() == {"count": 0, "mse": 0.0, "mae": 0.0}


def test_regression_scores_match_a_direct_computation():
    rng = np.random.default_rng(11)
    targets = rng.normal(size=3_000) * 5
    values = targets + rng.standard_t(3, size=3_000)
    score = RegressionScore()
    squared = [score.update(v, t) for v, t in zip(values, targets, strict=True)]
    summary = score.summary()
    assert summary["count"] == 3_000
    assert summary["mse"] == pytest.approx(np.mean((values - targets) ** 2), rel=1e-10)
    assert summary["mae"] == pytest.approx(np.mean(np.abs(values - targets)), rel=1e-10)
    assert np.allclose(squared, (values - targets) ** 2, rtol=1e-12)


def _feed_classification(scores, rng, n, quality):
    """Models whose forecasts put ``quality[k]`` on the true class (plus noise)."""
    labels = rng.integers(0, 2, size=n)
    for y in labels:
        raw = []
        for q in quality:
            p1 = float(np.clip(q if y == 1 else 1 - q, 0.01, 0.99) + rng.normal(0, 0.05))
            p1 = min(max(p1, 0.01), 0.99)
            raw.append([1 - p1, p1])
        raw = np.array(raw)
        scores.update(raw, raw.mean(axis=0), int(y))
    return labels


def test_raw_best_is_the_model_with_the_lowest_log_loss():
    rng = np.random.default_rng(2)
    scores = StreamScores(["weak", "strong", "medium"], classification=True)
    _feed_classification(scores, rng, 2_000, quality=(0.55, 0.85, 0.7))
    summary = scores.summary()
    losses = {name: s["log_loss"] for name, s in summary["models"].items()}
    assert summary["raw_best"]["model"] == min(losses, key=losses.get) == "strong"
    assert summary["raw_best"] == {"model": "strong", **summary["models"]["strong"]}
    assert summary["adapted"]["count"] == 2_000


def test_raw_best_follows_log_loss_not_accuracy():
    """Scenario: model "sharp" is right more often but overconfident when wrong, model
    "soft" is right less often but never confident. We expect: raw best is the one with
    the lower log-loss ("soft"), even though "sharp" has the higher accuracy."""
    scores = StreamScores(["sharp", "soft"], classification=True)
    for i in range(100):
        y = i % 2
        sharp_right = i % 10 != 0  # 90 % accuracy, 1e-9 on the truth when wrong
        sharp = [1e-9, 1 - 1e-9] if (y == 1) == sharp_right else [1 - 1e-9, 1e-9]
        soft_right = i % 10 < 8  # 80 % accuracy at confidence 0.6
        soft = [0.4, 0.6] if (y == 1) == soft_right else [0.6, 0.4]
        raw = np.array([sharp, soft])
        scores.update(raw, raw[1], y)
    summary = scores.summary()
    assert summary["models"]["sharp"]["accuracy"] > summary["models"]["soft"]["accuracy"]
    assert summary["models"]["sharp"]["log_loss"] > summary["models"]["soft"]["log_loss"]
    assert summary["raw_best"]["model"] == "soft"


def test_regression_raw_best_is_the_model_with_the_lowest_mse():
    rng = np.random.default_rng(4)
    scores = StreamScores(["a", "b", "c"], classification=False)
    for _ in range(500):
        y = rng.normal()
        raw = np.array([y + rng.normal(0, 1.0), y + rng.normal(0, 0.2), y + rng.normal(0, 2.0)])
        scores.update(raw, float(raw.mean()), y)
    summary = scores.summary()
    mses = {name: s["mse"] for name, s in summary["models"].items()}
    assert summary["raw_best"]["model"] == min(mses, key=mses.get) == "b"


def test_state_round_trip_is_bit_exact_and_continues_identically():
    """Scenario: scores are snapshotted through the JSON state codec half-way and a
    fresh StreamScores is loaded from it. We expect: the same state text, and after
    both see the same second half, the same summary bit for bit."""
    rng = np.random.default_rng(9)
    original = StreamScores(["a", "b", "c"], classification=True)
    _feed_classification(original, rng, 400, quality=(0.6, 0.8, 0.7))
    text = dumps_state(original.state_dict())
    restored = StreamScores(["a", "b", "c"], classification=True)
    restored.load_state_dict(loads_state(text))
    assert dumps_state(restored.state_dict()) == text
    assert restored.summary() == original.summary()
    seed = int(rng.integers(1 << 30))
    _feed_classification(original, np.random.default_rng(seed), 400, quality=(0.6, 0.8, 0.7))
    _feed_classification(restored, np.random.default_rng(seed), 400, quality=(0.6, 0.8, 0.7))
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())
    assert restored.summary() == original.summary()


def test_regression_state_round_trip():
    scores = StreamScores(["a", "b"], classification=False)
    for i in range(50):
        scores.update(np.array([i * 0.1, i * 0.3]), i * 0.2, i * 0.15)
    restored = StreamScores(["a", "b"], classification=False)
    restored.load_state_dict(loads_state(dumps_state(scores.state_dict())))
    assert restored.summary() == scores.summary()


def test_state_dict_is_a_snapshot_not_a_view():
    score = ClassificationScore()
    score.update(np.array([0.3, 0.7]), 1)
    state = score.state_dict()
    score.update(np.array([0.3, 0.7]), 1)
    assert state["count"] == 1 and sum(b[0] for b in state["bins"]) == 1
