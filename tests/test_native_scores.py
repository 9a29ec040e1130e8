"""The native core's prequential scores against the plain-Python reference: the same
per-event losses and summaries over a long drifting stream, and a bit-exact state round
trip (a snapshot restores the running sums exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.scoring import ClassificationScore, RegressionScore
from tests.reference import scoring as reference

EVENTS = 100_000


def _drifting_probabilities(rng, n, n_classes):
    """Forecasts whose sharpness drifts over the stream, with exact 0/1 rows mixed in
    (floored log-loss, the top ECE bin) and ties (the first top class counts)."""
    sharpness = np.linspace(0.2, 6.0, n)[:, None]
    logits = sharpness * rng.normal(size=(n, n_classes))
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    proba[::997] = np.eye(n_classes)[0]
    proba[::991] = 1.0 / n_classes
    return proba


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_classification_score_matches_the_reference_over_a_drifting_stream(n_classes):
    rng = np.random.default_rng(n_classes)
    proba = _drifting_probabilities(rng, EVENTS, n_classes)
    labels = rng.integers(0, n_classes, size=EVENTS)
    native, oracle = ClassificationScore(), reference.ClassificationScore()
    for p, y in zip(proba.tolist(), labels.tolist(), strict=True):
        assert native.update(p, y) == oracle.update(p, y)   # the same floats, bit for bit
    got, want = native.summary(), oracle.summary()
    assert got["count"] == want["count"] == EVENTS
    for key in ("log_loss", "brier", "accuracy", "ece"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-15), key
    assert native.state_dict()["bins"] == oracle.state_dict()["bins"]


def test_regression_score_matches_the_reference():
    rng = np.random.default_rng(4)
    values = rng.normal(size=EVENTS) * np.linspace(1, 50, EVENTS)
    targets = rng.normal(size=EVENTS)
    native, oracle = RegressionScore(), reference.RegressionScore()
    for v, t in zip(values.tolist(), targets.tolist(), strict=True):
        assert native.update(v, t) == oracle.update(v, t)
    assert native.summary() == oracle.summary()


def test_state_round_trip_is_bit_exact_and_continues_identically():
    rng = np.random.default_rng(5)
    proba = _drifting_probabilities(rng, 2_000, 4)
    labels = rng.integers(0, 4, size=2_000)
    first = ClassificationScore()
    for p, y in zip(proba[:1_000], labels[:1_000], strict=True):
        first.update(p, int(y))
    second = ClassificationScore()
    second.load_state_dict(first.state_dict())
    assert second.state_dict() == first.state_dict()
    for p, y in zip(proba[1_000:], labels[1_000:], strict=True):
        first.update(p, int(y))
        second.update(p, int(y))
    assert second.state_dict() == first.state_dict()


def test_numpy_rows_and_lists_score_alike_and_a_bad_label_changes_nothing():
    score = ClassificationScore()
    score.update(np.array([0.2, 0.8]), 1)
    score.update([0.2, 0.8], 1)
    before = score.state_dict()
    with pytest.raises(ValueError, match="label"):
        score.update([0.2, 0.8], 2)
    assert score.state_dict() == before
    assert score.summary()["count"] == 2


def test_stream_scores_one_call_equals_each_score_updated_in_turn():
    """``StreamScores.update`` scores every model and the served output in one core call
    (``update_classification_scores`` / ``update_regression_scores``): the same state,
    bit for bit, as updating each score object by itself, and a wrong number of rows
    is refused before anything changes."""
    from streamweights.scoring import StreamScores

    rng = np.random.default_rng(3)
    for classification in (True, False):
        scores = StreamScores(["a", "b", "c"], classification)
        factory = ClassificationScore if classification else RegressionScore
        singles = [factory() for _ in range(4)]
        for _ in range(2_000):
            if classification:
                rows = _drifting_probabilities(rng, 4, 3)
                label = int(rng.integers(3))
            else:
                rows = rng.normal(size=4) * 10
                label = float(rng.normal() * 10)
            scores.update(rows[:3], rows[3], label)
            for score, row in zip(singles, rows, strict=True):
                score.update(row.tolist() if classification else float(row), label)
        state = scores.state_dict()
        assert state == {"models": [s.state_dict() for s in singles[:3]],
                         "adapted": singles[3].state_dict()}
        with pytest.raises(ValueError, match="rows"):
            scores.update(rows[:2], rows[3], label)
        assert scores.state_dict() == state
