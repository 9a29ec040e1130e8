"""Hedge and FixedShare in the native core against their numpy references (the oracles in
``tests/reference/``), over long drifting streams.

Known differences, all in the last places: the core sums left to right over the models
where the reference used ``weights @ outputs`` (BLAS) and ``math.fsum`` (exactly
rounded), and it calls the platform's ``exp`` / ``ln`` where the reference called
numpy's. Nothing accumulates them but AdaHedge's gap (relative drift ~1e-13 after 10^5
events), so 1e-9 relative holds with a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import FixedShare, Hedge
from streamweights.adapters.state_codec import dumps_state
from streamweights.adapters.validation import NonFiniteUpdate
from tests.reference.fixed_share import FixedShare as ReferenceFixedShare
from tests.reference.hedge import Hedge as ReferenceHedge

N_EVENTS = 100_000
RTOL = 1e-9

#: (name, core class, reference class, kwargs); regression when n_classes is absent.
CONFIGS = [
    ("hedge-log-auto", Hedge, ReferenceHedge, {"n_models": 4, "n_classes": 3}),
    ("hedge-brier-fixed", Hedge, ReferenceHedge,
     {"n_models": 3, "n_classes": 2, "loss": "squared", "learning_rate": 0.5}),
    ("hedge-absolute-adahedge-classes", Hedge, ReferenceHedge,
     {"n_models": 5, "n_classes": 3, "loss": "absolute"}),
    ("hedge-regression-adahedge", Hedge, ReferenceHedge, {"n_models": 3}),
    ("hedge-regression-absolute-fixed", Hedge, ReferenceHedge,
     {"n_models": 4, "loss": "absolute", "learning_rate": 2.0}),
    ("fixedshare-log-auto-floor", FixedShare, ReferenceFixedShare,
     {"n_models": 4, "n_classes": 3, "share": 0.01, "probability_floor": 1e-3}),
    ("fixedshare-brier-adahedge", FixedShare, ReferenceFixedShare,
     {"n_models": 3, "n_classes": 2, "loss": "squared"}),
    ("fixedshare-regression-absolute-adahedge", FixedShare, ReferenceFixedShare,
     {"n_models": 3, "loss": "absolute"}),
    ("fixedshare-regression-squared-fixed", FixedShare, ReferenceFixedShare,
     {"n_models": 5, "learning_rate": 0.3, "share": 0.002}),
]


def drifting_stream(kwargs: dict, n: int, seed: int) -> tuple[np.ndarray, list]:
    """A stream whose best model switches every 2,000-ish events and whose label
    distribution drifts: one model at a time is close to the truth, the others are noisy
    or confidently wrong; some probabilities are exactly 0 (the floor matters)."""
    rng = np.random.default_rng(seed)
    k = kwargs["n_models"]
    classes = kwargs.get("n_classes")
    best = np.repeat(rng.integers(0, k, size=n // 1000 + 1), 1000)[:n]
    best[rng.random(n) < 0.1] = rng.integers(0, k)  # switches are not clean
    if classes is None:
        level = np.cumsum(rng.normal(scale=0.05, size=n))  # a random walk: the drift
        target = level + rng.normal(scale=0.3, size=n)
        outputs = level[:, None] + rng.normal(scale=2.0, size=(n, k))
        outputs[np.arange(n), best] = target + rng.normal(scale=0.2, size=n)
        return outputs, target.tolist()
    prior = rng.dirichlet(np.ones(classes), size=n // 5000 + 1)
    prior = np.repeat(prior, 5000, axis=0)[:n]
    labels = (rng.random(n)[:, None] > np.cumsum(prior, axis=1)).sum(axis=1)
    labels = np.minimum(labels, classes - 1)
    logits = rng.normal(scale=2.0, size=(n, k, classes))
    logits[np.arange(n), best, labels] += 3.0
    outputs = np.exp(logits - logits.max(axis=2, keepdims=True))
    outputs /= outputs.sum(axis=2, keepdims=True)
    zero = rng.random((n, k)) < 0.01
    outputs[zero, 0] = 0.0  # an exact 0: log-loss goes through the floor
    outputs /= outputs.sum(axis=2, keepdims=True)
    return outputs, labels.tolist()


def _close(ours, reference, scale=1.0):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=RTOL,
                               atol=RTOL * scale)


@pytest.mark.parametrize(("name", "core", "oracle", "kwargs"), CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_core_matches_reference_over_a_long_drifting_stream(name, core, oracle, kwargs):
    """Scenario: 10^5 events of a drifting stream, each predicted then learned, a drift
    alarm every 20,000 events, through the core and through the numpy reference.
    We expect: every prediction, the weights and the state within 1e-9 relative."""
    outputs, labels = drifting_stream(kwargs, N_EVENTS, seed=len(name))
    ours, reference = core(**kwargs), oracle(**kwargs)
    scale = float(np.abs(outputs).max()) if "n_classes" not in kwargs else 1.0
    predictions_ours, predictions_reference = [], []
    for index, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        predictions_ours.append(ours.predict(x))
        predictions_reference.append(reference.predict(x))
        ours.learn(x, y)
        reference.learn(x, y)
        if index % 20_000 == 19_999:
            ours.on_drift()
            reference.on_drift()
        if index % 1000 == 0:
            _close(ours.weights_, reference.weights_)
    _close(np.array(predictions_ours), np.array(predictions_reference), scale)
    _close(ours.weights_, reference.weights_)
    state, expected = ours._get_state(), reference._get_state()
    assert list(state) == list(expected)  # the same keys in the same order
    for key in expected:
        _close(state[key], expected[key], scale=1.0)
    assert state["n_learned"] == expected["n_learned"] == N_EVENTS


@pytest.mark.parametrize(("name", "core", "oracle", "kwargs"), CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_reference_snapshots_load_and_continue_alike(name, core, oracle, kwargs):
    """Scenario: a snapshot written by the numpy implementation (the format of every
    snapshot taken before the port) is loaded into the core. We expect: the same state
    back, bit for bit, and the next 5,000 events within 1e-9 of the reference's."""
    outputs, labels = drifting_stream(kwargs, 7000, seed=100 + len(name))
    reference = oracle(**kwargs)
    for x, y in zip(outputs[:2000], labels[:2000], strict=True):
        reference.learn(x, y)
    ours = core(**kwargs)
    ours.load_state_dict({**reference.state_dict(), "adapter": core.__name__})
    assert dumps_state(ours._get_state()) == dumps_state(reference._get_state())
    for x, y in zip(outputs[2000:], labels[2000:], strict=True):
        _close(np.asarray(ours.predict(x)), np.asarray(reference.predict(x)),
               scale=float(np.abs(x).max()) if "n_classes" not in kwargs else 1.0)
        ours.learn(x, y)
        reference.learn(x, y)
    _close(ours.weights_, reference.weights_)


@pytest.mark.parametrize(("name", "core", "oracle", "kwargs"), CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_batches_of_any_size_equal_the_event_loop_bit_for_bit(name, core, oracle, kwargs):
    """Scenario: 20,000 events fed once one by one and once in batches of random sizes
    (1 to 700) through ``predict_many`` / ``learn_many``. We expect: the same predictions
    and the same state, bit for bit, and a snapshot round trip mid-stream changes nothing."""
    outputs, labels = drifting_stream(kwargs, 20_000, seed=200 + len(name))
    loop, batched = core(**kwargs), core(**kwargs)
    rng = np.random.default_rng(5)
    start = 0
    while start < len(labels):
        stop = min(len(labels), start + int(rng.integers(1, 700)))
        many = batched.predict_many(outputs[start:stop])
        one = np.stack([np.asarray(loop.predict(x)) for x in outputs[start:stop]])
        assert many.tobytes() == one.tobytes()
        batched.learn_many(outputs[start:stop], labels[start:stop])
        for x, y in zip(outputs[start:stop], labels[start:stop], strict=True):
            loop.learn(x, y)
        if rng.random() < 0.05:
            restored = core(**kwargs)
            restored.load_state_dict(batched.state_dict())
            batched = restored
        start = stop
    assert dumps_state(batched.state_dict()) == dumps_state(loop.state_dict())


@pytest.mark.parametrize("core", [Hedge, FixedShare])
def test_inputs_the_core_does_not_clear_take_the_checked_path_to_the_same_bits(core):
    """The core clears float64 arrays and Python int / float labels itself; lists, other
    dtypes, numpy integer labels and rows whose sum sits at the tolerance's edge go
    through Python's full check. We expect the two paths to give the same bits."""
    kwargs = {"n_models": 3, "n_classes": 2}
    outputs, labels = drifting_stream(kwargs, 3000, seed=9)
    outputs[::7, :, 1] += 0.000999  # the edge of the 1e-3 tolerance: renormalised
    fast, checked = core(**kwargs), core(**kwargs)
    for x, y in zip(outputs, labels, strict=True):
        as_list = x.tolist()
        assert fast.predict(x).tobytes() == checked.predict(as_list).tobytes()
        fast.learn(x, y)
        checked.learn(as_list, np.int64(y))
    assert dumps_state(fast.state_dict()) == dumps_state(checked.state_dict())


@pytest.mark.parametrize("core", [Hedge, FixedShare])
def test_refused_update_in_a_batch_changes_nothing(core):
    """Scenario: a batch whose last event's squared loss overflows. We expect:
    NonFiniteUpdate, and the state bit-identical to before (the first events are not
    learned either: all or nothing)."""
    adapter = core(n_models=2)
    adapter.learn(np.array([1.0, 2.0]), 1.5)
    before = dumps_state(adapter.state_dict())
    with pytest.raises(NonFiniteUpdate, match="loss: not finite"):
        adapter.learn_many(np.array([[1.0, 2.0], [3.0, 4.0], [2e154, 1.0]]), [1.0, 2.0, 1.0])
    with pytest.raises(NonFiniteUpdate):
        adapter.learn(np.array([1e200, 1e200]), -1e200)
    assert dumps_state(adapter.state_dict()) == before


@pytest.mark.parametrize("core", [Hedge, FixedShare])
def test_snapshot_of_another_size_is_refused_with_the_field_named(core):
    adapter = core(n_models=3, n_classes=2)
    state = adapter.state_dict()
    state["state"]["cumulative_loss"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="cumulative_loss: expected 3 values"):
        adapter.load_state_dict(state)


@pytest.mark.parametrize("core", [Hedge, FixedShare])
@pytest.mark.parametrize("n_classes", [None, 2])
def test_byte_swapped_and_strided_arrays_read_as_their_values(core, n_classes):
    """A big-endian (``>f8``) or non-contiguous float64 array holds the same numbers as a
    native one; the core once read a byte-swapped one's raw bytes (1.5 came out as
    1.5e-319). We expect the same predictions and the same state, bit for bit."""
    native, swapped, strided = (core(n_models=3, n_classes=n_classes) for _ in range(3))
    outputs, labels = drifting_stream({"n_models": 3, "n_classes": n_classes}, 500, seed=4)
    for x, y in zip(outputs, labels, strict=True):
        wide = np.repeat(x, 2, axis=-1)[..., ::2]  # same values, stride 2
        expected = np.asarray(native.predict(x)).tobytes()
        assert np.asarray(swapped.predict(x.astype(">f8"))).tobytes() == expected
        assert np.asarray(strided.predict(wide)).tobytes() == expected
        native.learn(x, y)
        swapped.learn(x.astype(">f8"), y)
        strided.learn(wide, y)
    assert dumps_state(swapped.state_dict()) == dumps_state(native.state_dict())
    assert dumps_state(strided.state_dict()) == dumps_state(native.state_dict())


@pytest.mark.parametrize("core", [Hedge, FixedShare])
def test_pickle_and_deepcopy_carry_the_core_state(core):
    """The numpy adapters pickled and deep-copied; the handles still do (the compiled
    core travels as its state). We expect the copies to continue bit for bit."""
    import copy
    import pickle

    adapter = core(n_models=3, n_classes=2, loss="squared")
    outputs, labels = drifting_stream({"n_models": 3, "n_classes": 2}, 400, seed=8)
    for x, y in zip(outputs[:200], labels[:200], strict=True):
        adapter.learn(x, y)
    copies = [pickle.loads(pickle.dumps(adapter)), copy.deepcopy(adapter)]
    for x, y in zip(outputs[200:], labels[200:], strict=True):
        for each in (adapter, *copies):
            each.learn(x, y)
    for each in copies:
        assert dumps_state(each.state_dict()) == dumps_state(adapter.state_dict())
