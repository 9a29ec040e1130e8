"""OnlineStacking with its per-event arithmetic in the native core against the numpy
reference (``tests/reference/stacking.py``) over long drifting streams.

The reference's Kalman filter is the numpy one (``tests/reference/kalman.py`` where
KalmanWeights runs in the core); the differences are then the filter's, documented in
its own differential test. With the same filter on both sides the stacking arithmetic
itself agrees bit for bit (its sums have fewer than 8 terms, where numpy's are left to
right too).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import OnlineStacking
from streamweights.adapters.state_codec import dumps_state
from tests.reference.stacking import OnlineStacking as ReferenceStacking

N_EVENTS = 100_000
RTOL = 1e-9

CONFIGS = [
    ("regression-intercept-learned", {"n_models": 3, "fit_intercept": True}),
    ("classification-3", {"n_models": 4, "n_classes": 3}),
]


def drifting_stream(kwargs: dict, n: int, seed: int) -> tuple[np.ndarray, list]:
    """Models whose quality changes every 2,000 events; for regression a target that
    random-walks and one model that extrapolates (a negative weight helps); for
    classification a drifting class mix and one anti-informative model at times."""
    rng = np.random.default_rng(seed)
    k = kwargs["n_models"]
    classes = kwargs.get("n_classes")
    period = np.arange(n) // 2000
    if classes is None:
        level = np.cumsum(rng.normal(scale=0.05, size=n))
        target = level + rng.normal(scale=0.3, size=n)
        noise = rng.normal(size=(n, k)) * (0.2 + (period[:, None] + np.arange(k)) % k)
        outputs = target[:, None] + noise
        outputs[:, 0] = 0.5 * target + rng.normal(scale=0.1, size=n)  # biased: stack it
        return outputs, target.tolist()
    prior = np.repeat(rng.dirichlet(np.ones(classes), size=n // 5000 + 1), 5000, axis=0)[:n]
    labels = np.minimum((rng.random(n)[:, None] > np.cumsum(prior, axis=1)).sum(axis=1),
                        classes - 1)
    logits = rng.normal(scale=1.5, size=(n, k, classes))
    good = (period + 1) % k
    logits[np.arange(n), good, labels] += 2.5
    logits[np.arange(n), period % k, labels] -= 1.5  # anti-informative for a while
    outputs = np.exp(logits - logits.max(axis=2, keepdims=True))
    outputs /= outputs.sum(axis=2, keepdims=True)
    return outputs, labels.tolist()


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_core_matches_reference_over_a_long_drifting_stream(name, kwargs):
    """Scenario: 10^5 drifting events, each predicted then learned, a drift alarm every
    25,000. We expect: every prediction and the final weights within 1e-9 relative."""
    outputs, labels = drifting_stream(kwargs, N_EVENTS, seed=len(name))
    ours, reference = OnlineStacking(**kwargs), ReferenceStacking(**kwargs)
    scale = float(np.abs(outputs).max()) if "n_classes" not in kwargs else 1.0
    mine, theirs = [], []
    for index, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        mine.append(ours.predict(x))
        theirs.append(reference.predict(x))
        ours.learn(x, y)
        reference.learn(x, y)
        if index % 25_000 == 24_999:
            ours.on_drift()
            reference.on_drift()
    np.testing.assert_allclose(np.array(mine), np.array(theirs), rtol=RTOL, atol=RTOL * scale)
    np.testing.assert_allclose(ours.weights_, reference.weights_, rtol=RTOL, atol=RTOL)
    assert ours.filter_.n_updates_ == reference.filter_.n_updates_ >= N_EVENTS


#: Binary classification: two design rows and one output, with 3-6 features (3-6 models,
#: or 2-5 and an intercept) the Kalman block update's compiled sizes; 2 features take the
#: instantiation with only the rows and output compiled (the fully general one runs in
#: ``CONFIGS``' three-class case).
BINARY = [{"n_models": k, "n_classes": 2} for k in (2, 3, 4, 5, 6)] + [
    {"n_models": 3, "n_classes": 2, "fit_intercept": True}]


@pytest.mark.parametrize("kwargs", BINARY, ids=lambda kw: f"{kw['n_models']}-models"
                         f"{'-intercept' if kw.get('fit_intercept') else ''}")
def test_binary_classification_matches_reference_at_every_compiled_size(kwargs):
    """Scenario: 20,000 drifting binary events, each predicted then learned. We expect:
    every prediction and the final weights within 1e-9 relative of the numpy
    reference, whichever compiled size of the block update ran."""
    outputs, labels = drifting_stream(kwargs, 20_000, seed=kwargs["n_models"])
    ours, reference = OnlineStacking(**kwargs), ReferenceStacking(**kwargs)
    mine, theirs = [], []
    for x, y in zip(outputs, labels, strict=True):
        mine.append(ours.predict(x))
        theirs.append(reference.predict(x))
        ours.learn(x, y)
        reference.learn(x, y)
    np.testing.assert_allclose(np.array(mine), np.array(theirs), rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(ours.weights_, reference.weights_, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_reference_snapshot_loads_and_batches_equal_the_loop(name, kwargs):
    """Scenario: a snapshot of the numpy implementation loads into the core's handle
    (same layout); then 3,000 events one by one and in batches of random sizes.
    We expect: the state back bit for bit, and batch = loop bit for bit."""
    outputs, labels = drifting_stream(kwargs, 4000, seed=50 + len(name))
    reference = ReferenceStacking(**kwargs)
    for x, y in zip(outputs[:1000], labels[:1000], strict=True):
        reference.learn(x, y)
    loop, batched = OnlineStacking(**kwargs), OnlineStacking(**kwargs)
    for adapter in (loop, batched):
        adapter.load_state_dict({**reference.state_dict(), "adapter": "OnlineStacking"})
        assert dumps_state(adapter._get_state()) == dumps_state(reference._get_state())
    rng = np.random.default_rng(1)
    start = 1000
    while start < len(labels):
        stop = min(len(labels), start + int(rng.integers(1, 300)))
        many = batched.predict_many(outputs[start:stop])
        one = np.stack([np.asarray(loop.predict(x)) for x in outputs[start:stop]])
        assert many.tobytes() == one.tobytes()
        batched.learn_many(outputs[start:stop], labels[start:stop])
        for x, y in zip(outputs[start:stop], labels[start:stop], strict=True):
            loop.learn(x, y)
        start = stop
    assert dumps_state(batched.state_dict()) == dumps_state(loop.state_dict())


def test_inputs_the_core_does_not_clear_take_the_checked_path_to_the_same_bits():
    """Lists, numpy integer labels and rows at the tolerance's edge go through Python's
    full check; float64 arrays and int labels through the core's quick one: same bits."""
    kwargs = {"n_models": 3, "n_classes": 2, "fit_intercept": True}
    outputs, labels = drifting_stream(kwargs, 2000, seed=3)
    outputs[::5, :, 0] += 0.000999
    fast, checked = OnlineStacking(**kwargs), OnlineStacking(**kwargs)
    for x, y in zip(outputs, labels, strict=True):
        assert fast.predict(x).tobytes() == checked.predict(x.tolist()).tobytes()
        fast.learn(x, y)
        checked.learn(x.tolist(), np.int64(y))
    assert dumps_state(fast.state_dict()) == dumps_state(checked.state_dict())


@pytest.mark.parametrize("kwargs", [{"n_models": 3}, {"n_models": 3, "n_classes": 2}])
def test_byte_swapped_arrays_read_as_their_values(kwargs):
    """A big-endian (``>f8``) array holds the same numbers as a native one: the same
    predictions and state, bit for bit (the core must not read its raw bytes)."""
    native, swapped = OnlineStacking(**kwargs), OnlineStacking(**kwargs)
    outputs, labels = drifting_stream(kwargs, 300, seed=6)
    for x, y in zip(outputs, labels, strict=True):
        assert (np.asarray(swapped.predict(x.astype(">f8"))).tobytes()
                == np.asarray(native.predict(x)).tobytes())
        native.learn(x, y)
        swapped.learn(x.astype(">f8"), y)
    assert dumps_state(swapped.state_dict()) == dumps_state(native.state_dict())
