"""Label-free performance estimates: close to the realised accuracy when calibration
holds, and ahead of the labels under covariate shift."""

from __future__ import annotations

import math

import numpy as np

from streamweights.adapters.performance_estimate import (
    ConfidenceEstimate,
    expected_scores,
    realised_scores,
)

WINDOW = 500


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_expected_scores_are_the_means_of_the_realised_ones_under_p():
    p = [0.7, 0.2, 0.1]
    expected = expected_scores(p)
    weighted = [math.fsum(p[y] * realised_scores(p, y)[j] for y in range(3)) for j in range(3)]
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(expected, weighted,
                                                                  strict=True))


def _calibrated_stream(n: int, seed: int, n_classes: int):
    """Calibrated probabilities whose sharpness drifts (so accuracy moves over time),
    labels drawn from them."""
    rng = np.random.default_rng(seed)
    for t in range(n):
        scale = 0.5 + 2.5 * (1 + math.sin(2 * math.pi * t / 8_000)) / 2
        logits = rng.normal(scale=scale, size=n_classes)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        yield p.tolist(), int(rng.choice(n_classes, p=p))


def test_estimated_accuracy_tracks_realised_accuracy_on_calibrated_streams():
    """Scenario: calibrated probabilities with drifting confidence, labels 200 events
    late. We expect: the estimate for the last 500 predictions, made before their
    labels came, is within 0.02 on average (MAE) of the accuracy those same 500
    predictions turn out to have."""
    for n_classes, seed in ((2, 1), (4, 2)):
        estimate = ConfidenceEstimate(n_classes, WINDOW)
        stream = list(_calibrated_stream(20_000, seed, n_classes))
        hits = [1.0 if p.index(max(p)) == y else 0.0 for p, y in stream]
        errors = []
        for t, (p, _) in enumerate(stream):
            estimate.observe(p)
            if t >= WINDOW and t % 50 == 0:
                estimated = estimate.estimates()["estimated_accuracy"]
                realised = math.fsum(hits[t - WINDOW + 1:t + 1]) / WINDOW
                errors.append(abs(estimated - realised))
        mae = float(np.mean(errors))
        assert mae <= 0.02, (n_classes, mae)


def test_estimate_drops_before_the_labels_show_it_under_covariate_shift():
    """Scenario: a calibrated model p(y=1|x) = sigmoid(2x); inputs move from around
    x = 2 (confident, ~94% accurate) to around x = 0 (unsure, ~77%) at event 5,000;
    labels arrive 400 events late. We expect: the label-free estimate crosses the
    midway accuracy well before the realised accuracy over the last 500 labels does,
    by at least the label delay minus the window's lag."""
    rng = np.random.default_rng(9)
    delay, change = 400, 5_000
    estimate = ConfidenceEstimate(2, 200)
    pending = []
    before, after = None, None
    estimated_cross = realised_cross = None
    for t in range(9_000):
        x = float(rng.normal(loc=2.0 if t < change else 0.0))
        p1 = _sigmoid(2.0 * x)
        p = [1.0 - p1, p1]
        y = int(rng.random() < p1)
        estimate.observe(p)
        pending.append((p, y))
        if len(pending) > delay:
            estimate.learn(*pending.pop(0))
        values = estimate.estimates()
        if t == change - 1:
            before = values["estimated_accuracy"]
        if t >= change and values["realised_accuracy"] is not None:
            if after is None:
                after = 0.77  # about the post-shift accuracy (measured: 0.77-0.78)
            midway = (before + after) / 2
            if estimated_cross is None and values["estimated_accuracy"] < midway:
                estimated_cross = t
            if realised_cross is None and values["realised_accuracy"] < midway:
                realised_cross = t
    assert estimated_cross is not None and realised_cross is not None
    lead = realised_cross - estimated_cross
    assert estimated_cross - change < 200  # the estimate reacts within its window
    assert lead >= delay - 50, lead


def test_the_blocks_are_arrays_and_list_states_load_alike():
    """Scenario: after 1,300 served predictions and 1,250 labels on a window of 500, the
    state's blocks are ``(blocks, 4)`` float64 arrays. The state as it is and as lists
    of rows (records written before the blocks were arrays) load into two fresh
    estimates that continue with the same six numbers as the original, bit for bit; a
    block of the wrong width is refused and leaves the state as it was."""
    rng = np.random.default_rng(4)
    served = [rng.dirichlet([0.6, 0.6, 0.6]).tolist() for _ in range(2000)]
    labels = [int(rng.integers(3)) for _ in served]
    estimate = ConfidenceEstimate(n_classes=3, window=WINDOW)

    def feed(target, start, stop):
        for t in range(start, stop):
            target.observe(served[t])
            if t >= 50:
                target.learn(served[t - 50], labels[t - 50])

    feed(estimate, 0, 1300)
    state = estimate.state_dict()["state"]
    for key in ("expected", "realised"):
        assert type(state[key]) is np.ndarray and state[key].dtype == np.float64
        assert state[key].ndim == 2 and state[key].shape[1] == 4 and len(state[key]) > 1
    as_lists = {key: value.tolist() for key, value in state.items()}
    copies = []
    for form in (state, as_lists):
        copy = ConfidenceEstimate(n_classes=3, window=WINDOW)
        copy.load_state_dict({**estimate.state_dict(), "state": form})
        copies.append(copy)
    for target in (estimate, *copies):
        feed(target, 1300, 2000)
    bits = [np.array(target.values(), dtype=np.float64).view(np.int64).tolist()
            for target in (estimate, *copies)]
    assert bits[1] == bits[0] and bits[2] == bits[0]
    before = estimate.values()
    for bad in (np.zeros((3, 3)), [[1.0, 0.5, 0.5]]):
        try:
            estimate.load_state_dict({**estimate.state_dict(),
                                      "state": {**estimate.state_dict()["state"], "expected": bad}})
        except (ValueError, TypeError) as error:
            assert "blocks" in str(error) or "expected" in str(error)
        else:
            raise AssertionError(f"{bad!r} was loaded")
    assert estimate.values() == before
