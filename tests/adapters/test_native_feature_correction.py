"""The native FeatureCorrection core against its numpy reference (``tests/reference``):
same outputs within 1e-9 relative over 10^5 events of a drifting stream, state round
trip bit exact, batch verbs equal to the per-event loop bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import FeatureCorrection, dumps_state
from tests.reference.feature_correction import ReferenceFeatureCorrection


def _drifting(n, n_classes, n_models, n_features, seed):
    """Packed inputs and labels whose concept flips every ``n // 5`` events: the label
    follows feature 0 (sign flipping), each model a noisy view of feature 1 (no two
    models' or classes' logits exactly collinear: weights along an exactly collinear direction are
    unidentified and their rounding differences show only where the ±5 clip breaks the
    collinearity), and the last feature changes scale at each flip."""
    rng = np.random.default_rng(seed)
    period = max(n // 5, 1)
    era = np.arange(n) // period
    features = rng.normal(size=(n, n_features))
    features[:, -1] *= 1.0 + 9.0 * (era % 2)
    sign = np.where(era % 2 == 0, 1.0, -1.0)
    strength = np.linspace(0.5, 2.0, n_classes)
    logits = np.outer(sign * features[:, 0], strength) + np.outer(features[:, 1], strength[::-1])
    truth = np.exp(logits - logits.max(axis=1, keepdims=True))
    truth /= truth.sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1).clip(0, n_classes - 1)
    scale = rng.uniform(0.3, 3.0, size=n_models)
    seen = features[:, 1, None] + 0.5 * rng.normal(size=(n, n_models))  # each model's view
    rows = np.einsum("nk,c,k->nkc", seen, strength[::-1], scale)
    rows += 0.3 * rng.normal(size=rows.shape)  # and class logits that are not collinear
    rows = np.exp(rows - rows.max(axis=2, keepdims=True))
    rows /= rows.sum(axis=2, keepdims=True)
    upstream = rows.mean(axis=1)
    packed = np.concatenate([upstream, rows.reshape(n, -1), features], axis=1)
    return packed, labels.astype(int)


@pytest.mark.parametrize(("n", "n_classes", "n_models", "n_features", "options"), [
    (100_000, 2, 3, 4, {}),
    (20_000, 3, 2, 3, {"forgetting": 0.999, "scaling_window": 300, "guard": False}),
])
def test_core_matches_the_numpy_reference_on_a_drifting_stream(n, n_classes, n_models,
                                                                n_features, options):
    packed, labels = _drifting(n, n_classes, n_models, n_features, seed=n_classes)
    core = FeatureCorrection(n_classes=n_classes, n_models=n_models, n_features=n_features,
                             **options)
    reference = ReferenceFeatureCorrection(n_classes, n_models, n_features, **options)
    worst = 0.0
    for t in range(n):
        ours = core.predict(packed[t])
        theirs = reference.predict(packed[t])
        worst = max(worst, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
        core.learn(packed[t], labels[t])
        reference.learn(packed[t], int(labels[t]))
        if t % 25_000 == 12_345:
            core.on_drift()
            reference.on_drift()
    assert worst < 1e-9, worst
    np.testing.assert_allclose(core.head_weights_, reference.head_weights_, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(core.covariance_, reference.covariance_, rtol=1e-9,
                               atol=1e-12)
    assert core.guard_weight_ == pytest.approx(reference.guard_weight_, rel=1e-9)
    assert core.state_dict()["state"]["n_learned"] == reference.n_learned_ == n


def test_state_round_trip_through_the_core_is_bit_exact():
    packed, labels = _drifting(3_000, 2, 3, 4, seed=11)
    original = FeatureCorrection(n_classes=2, n_models=3, n_features=4)
    for x, y in zip(packed[:1_500], labels[:1_500], strict=True):
        original.learn(x, y)
    restored = FeatureCorrection(n_classes=2, n_models=3, n_features=4)
    restored.load_state_dict(original.state_dict())
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())
    for x, y in zip(packed[1_500:], labels[1_500:], strict=True):
        assert restored.predict(x).tobytes() == original.predict(x).tobytes()
        original.learn(x, y)
        restored.learn(x, y)
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())


def test_batch_verbs_equal_the_per_event_loop_bit_for_bit():
    packed, labels = _drifting(2_000, 3, 2, 3, seed=12)
    looped = FeatureCorrection(n_classes=3, n_models=2, n_features=3)
    batched = FeatureCorrection(n_classes=3, n_models=2, n_features=3)
    for start in range(0, 2_000, 487):  # batch boundaries that do not divide the stream
        chunk, chunk_labels = packed[start:start + 487], labels[start:start + 487]
        many = batched.predict_many(chunk)
        loop = np.stack([looped.predict(x) for x in chunk])
        assert many.tobytes() == loop.tobytes()
        batched.learn_many(chunk, chunk_labels)
        for x, y in zip(chunk, chunk_labels, strict=True):
            looped.learn(x, y)
        assert dumps_state(batched.state_dict()) == dumps_state(looped.state_dict())


def test_a_bad_row_in_a_batch_is_refused_before_anything_is_learned():
    packed, labels = _drifting(50, 2, 3, 4, seed=13)
    stage = FeatureCorrection(n_classes=2, n_models=3, n_features=4)
    before = dumps_state(stage.state_dict())
    bad = packed.copy()
    bad[30, -1] = np.nan
    with pytest.raises(ValueError, match=r"xs\[30\]"):
        stage.learn_many(bad, labels)
    with pytest.raises(ValueError, match=r"ys\[3\]"):
        stage.learn_many(packed, [*labels[:3], 5, *labels[4:]])
    assert dumps_state(stage.state_dict()) == before
