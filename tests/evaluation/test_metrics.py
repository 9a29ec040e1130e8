"""The suite's vectorised metrics are the service's running scores."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.evaluation.metrics import (
    classification_losses,
    classification_summary,
    ece_sampling_floor,
    expected_calibration_error,
    regression_losses,
    regression_summary,
    reliability_bins,
)
from streamweights.scoring import ClassificationScore, RegressionScore


@pytest.mark.parametrize("n_classes", [2, 5])
def test_classification_summary_equals_the_service_score(n_classes):
    rng = np.random.default_rng(n_classes)
    proba = rng.dirichlet(np.full(n_classes, 0.7), size=2_000)
    proba[:5] = np.eye(n_classes)[0]  # confident rows hit the floor and the top bin
    labels = rng.integers(0, n_classes, size=2_000)
    score = ClassificationScore()
    for p, y in zip(proba, labels, strict=True):
        score.update(p, int(y))
    expected = score.summary()
    got = classification_summary(classification_losses(proba, labels))
    for key in ("log_loss", "brier", "accuracy", "ece"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["count"] == expected["count"]


def test_regression_summary_equals_the_service_score():
    rng = np.random.default_rng(1)
    values, targets = rng.normal(size=500), rng.normal(size=500)
    score = RegressionScore()
    for v, t in zip(values, targets, strict=True):
        score.update(v, t)
    got = regression_summary(regression_losses(values, targets))
    assert got["mse"] == pytest.approx(score.summary()["mse"], abs=1e-12)
    assert got["mae"] == pytest.approx(score.summary()["mae"], abs=1e-12)


def test_reliability_bins_count_every_event():
    rng = np.random.default_rng(2)
    confidence = rng.uniform(0.5, 1.0, 1_000)
    correct = (rng.uniform(size=1_000) < confidence).astype(float)
    mean_confidence, accuracy, counts = reliability_bins(confidence, correct)
    assert counts.sum() == 1_000
    filled = counts > 0
    assert np.all((mean_confidence[filled] >= 0.5) & (accuracy[filled] <= 1.0))


def test_ece_sampling_floor_is_the_ece_of_a_calibrated_forecaster():
    """Scenario: hits drawn from the confidences themselves (perfect calibration). We
    expect the floor within 3% of the mean ECE over 2,000 such draws, for confidences
    spread over bins and for a constant (whose floor is far lower on as many labels)."""
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.5, 0.95, 2_000)
    constant = np.full(2_000, 0.578)
    floors = {}
    for name, confidence in (("spread", spread), ("constant", constant)):
        draws = [expected_calibration_error(confidence, (rng.random(2_000) < confidence)
                                            .astype(np.float64)) for _ in range(2_000)]
        floors[name] = ece_sampling_floor(confidence)
        assert floors[name] == pytest.approx(np.mean(draws), rel=0.03)
    assert floors["constant"] < 0.5 * floors["spread"]
    assert ece_sampling_floor(np.array([])) == 0.0
