"""Differential tests: the calibrators' native core against the numpy/float reference.

The production classes (``streamweights.adapters``) are thin handles over the Rust core;
``tests/reference/`` holds the pure-Python/numpy implementation they replaced. Both are
fed the same drifting streams of 10^5 events (the distortion changes abruptly, drifts
slowly in between, some scores sit exactly at 0 or 1, ``on_drift`` fires at each
change) and must serve the same probabilities within 1e-9 relative, with the same
state. Known differences (see ``native/src/newton.rs``): the projection onto the ball
evaluates the same function as numpy's eigen-decomposition with another rounding (a few
ulp, only when ``theta`` leaves the ball), and numpy's vectorised ``log`` / ``exp`` in the
reference's ``predict_many`` may differ from libm's by an ulp. Everything else is the
same expressions in the same order, and is compared bit for bit where it applies.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from streamweights.adapters import (
    Calibeating,
    OnlineBetaScaling,
    OnlinePlatt,
    OnlineTemperature,
    restore_adapter,
)
from streamweights.adapters.state_codec import dumps_state
from tests.reference import beta as reference_beta
from tests.reference import calibeating as reference_calibeating
from tests.reference import platt as reference_platt
from tests.reference import temperature as reference_temperature

N_EVENTS = 100_000
BLOCK = 1_000
CHANGES = (20_000, 45_000, 70_000)
RELATIVE = 1e-9


# -- streams ----------------------------------------------------------------------------
def _binary_stream(seed: int, n: int = N_EVENTS) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(1 - f, f)`` and 0/1 labels; the truth is ``sigmoid(a_t logit f + b_t)``
    with ``(a_t, b_t)`` jumping at ``CHANGES`` and wobbling slowly between them; one event
    in 500 has a score of exactly 0 or 1 (clipped by the calibrators)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 1.5, size=n)
    t = np.arange(n)
    regime = np.searchsorted(CHANGES, t, side="right")
    slope = np.array([2.0, 0.5, 1.2, 3.0])[regime] + 0.3 * np.sin(t / 7_000.0)
    shift = np.array([-1.0, 1.0, 0.0, -0.5])[regime] + 0.2 * np.cos(t / 5_000.0)
    truth = 1.0 / (1.0 + np.exp(-(slope * logit + shift)))
    labels = (rng.random(n) < truth).astype(np.int64)
    f = 1.0 / (1.0 + np.exp(-logit))
    extreme = rng.random(n) < 0.002
    f[extreme] = rng.integers(0, 2, size=int(extreme.sum())).astype(float)
    return np.stack([1.0 - f, f], axis=1), labels


def _multiclass_stream(seed: int, n_classes: int,
                       n: int = N_EVENTS) -> tuple[np.ndarray, np.ndarray]:
    """A model whose true temperature jumps at ``CHANGES`` (0.5 -> 2.5 -> 1 -> 4) and
    whose class mix drifts; one event in 500 has a class probability of exactly 0."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, n_classes))
    t = np.arange(n)
    regime = np.searchsorted(CHANGES, t, side="right")
    temperature = np.array([0.5, 2.5, 1.0, 4.0])[regime]
    shift = np.outer(np.sin(t / 9_000.0), np.linspace(-1.0, 1.0, n_classes))
    true_logits = logits / temperature[:, None] + shift
    truth = np.exp(true_logits - true_logits.max(axis=1, keepdims=True))
    truth /= truth.sum(axis=1, keepdims=True)
    labels = np.minimum((rng.random((n, 1)) > truth.cumsum(axis=1)).sum(axis=1), n_classes - 1)
    model = np.exp(logits - logits.max(axis=1, keepdims=True))
    model /= model.sum(axis=1, keepdims=True)
    zero = np.flatnonzero(rng.random(n) < 0.002)
    model[zero] = 0.0
    model[zero, rng.integers(0, n_classes, size=zero.size)] = 1.0
    return model, labels.astype(np.int64)


# -- the pairs (production handle, reference) ---------------------------------------------
CASES = {
    "platt": (lambda: OnlinePlatt(), lambda: reference_platt.OnlinePlatt(), 2),
    "platt-paper": (lambda: OnlinePlatt(discount=1.0),
                    lambda: reference_platt.OnlinePlatt(discount=1.0), 2),
    "platt-projecting": (lambda: OnlinePlatt(discount=0.999, radius=2.5),
                         lambda: reference_platt.OnlinePlatt(discount=0.999, radius=2.5), 2),
    "beta": (lambda: OnlineBetaScaling(), lambda: reference_beta.OnlineBetaScaling(), 2),
    "beta-projecting": (lambda: OnlineBetaScaling(discount=0.999, radius=2.5),
                        lambda: reference_beta.OnlineBetaScaling(discount=0.999, radius=2.5),
                        2),
    "temperature-2": (lambda: OnlineTemperature(2),
                      lambda: reference_temperature.OnlineTemperature(2), 2),
    "temperature-4": (lambda: OnlineTemperature(4),
                      lambda: reference_temperature.OnlineTemperature(4), 4),
    "temperature-bias-2": (lambda: OnlineTemperature(2, bias=True),
                           lambda: reference_temperature.OnlineTemperature(2, bias=True), 2),
    "temperature-bias-5": (lambda: OnlineTemperature(5, bias=True, discount=0.999),
                           lambda: reference_temperature.OnlineTemperature(
                               5, bias=True, discount=0.999), 5),
    "calibeating-tracking-platt": (
        lambda: Calibeating(OnlinePlatt()),
        lambda: reference_calibeating.Calibeating(reference_platt.OnlinePlatt()), 2),
    "calibeating-hedging-beta": (
        lambda: Calibeating(OnlineBetaScaling(), mode="hedging", seed=7),
        lambda: reference_calibeating.Calibeating(reference_beta.OnlineBetaScaling(),
                                                  mode="hedging", seed=7), 2),
    "calibeating-hedging-temperature": (
        lambda: Calibeating(OnlineTemperature(2), mode="hedging", n_bins=7, seed=3),
        lambda: reference_calibeating.Calibeating(reference_temperature.OnlineTemperature(2),
                                                  mode="hedging", n_bins=7, seed=3), 2),
}


def _stream(name: str, n_classes: int, n: int = N_EVENTS):
    seed = sum(map(ord, name))
    return _binary_stream(seed, n) if n_classes == 2 else _multiclass_stream(seed, n_classes, n)


def _flat_state(state):
    """A state dict as ``{path: float64 array}`` (a nested base's header dropped), so a
    production state and a reference state compare entry by entry."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            if "state" in value and "adapter" in value:  # a nested adapter snapshot
                value = value["state"]
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, str):
            flat[prefix] = value
        else:
            flat[prefix] = np.asarray(value, dtype=np.float64)

    walk("", state)
    return flat


def _assert_states_close(core_state, reference_state, where):
    core, reference = _flat_state(core_state), _flat_state(reference_state)
    assert core.keys() == reference.keys(), where
    for key, value in core.items():
        if isinstance(value, str):
            assert value == reference[key], (where, key)
        else:
            np.testing.assert_allclose(value, reference[key], rtol=RELATIVE, atol=1e-300,
                                       err_msg=f"{where}: {key}")


@pytest.mark.parametrize("name", CASES)
def test_core_serves_what_the_reference_serves_over_a_drifting_stream(name):
    """Scenario: 10^5 events of a drifting stream, fed in blocks of 1,000 (predict_many,
    then learn_many, on_drift at each change point) to the core and to the reference.
    We expect: every served probability within 1e-9 relative of the reference's, and the
    state too after every block."""
    make_core, make_reference, n_classes = CASES[name]
    xs, ys = _stream(name, n_classes)
    core, reference = make_core(), make_reference()
    worst = 0.0
    for start in range(0, N_EVENTS, BLOCK):
        if start in CHANGES:
            core.on_drift()
            reference.on_drift()
        block_xs, block_ys = xs[start:start + BLOCK], ys[start:start + BLOCK]
        served, expected = core.predict_many(block_xs), reference.predict_many(block_xs)
        np.testing.assert_allclose(served, expected, rtol=RELATIVE, atol=1e-300,
                                   err_msg=f"{name}: events {start}..{start + BLOCK}")
        nonzero = expected != 0.0
        worst = max(worst, float(np.max(np.abs(served - expected)[nonzero]
                                        / np.abs(expected[nonzero]))))
        core.learn_many(block_xs, block_ys)
        reference.learn_many(block_xs, block_ys)
        _assert_states_close(core._get_state(), reference._get_state(), f"{name} @ {start}")
    print(f"{name}: worst relative difference of a served probability {worst:.3g}")


@pytest.mark.parametrize("name", ["platt", "beta", "temperature-4", "temperature-bias-5",
                                  "calibeating-hedging-beta",
                                  "calibeating-hedging-temperature"])
def test_core_per_event_verbs_equal_the_reference_bit_for_bit(name):
    """Scenario: 10^4 events through the per-event verbs (predict, then learn), as the
    service calls them, on a stream whose default settings never leave the ball.
    We expect: the same bits as the reference, output by output and in the state (the
    same expressions in the same order, libm's log and exp on both sides)."""
    make_core, make_reference, n_classes = CASES[name]
    xs, ys = _stream(name, n_classes, 10_000)
    core, reference = make_core(), make_reference()
    for index, (x, y) in enumerate(zip(xs, ys.tolist(), strict=True)):
        assert core.predict(x).tobytes() == reference.predict(x).tobytes(), (name, index)
        core.learn(x, y)
        reference.learn(x, y)
    _assert_states_close(core._get_state(), reference._get_state(), name)
    core_flat, reference_flat = _flat_state(core._get_state()), _flat_state(
        reference._get_state())
    for key, value in core_flat.items():
        if not isinstance(value, str) and not key.endswith("inverse"):
            assert value.tobytes() == reference_flat[key].tobytes(), (name, key)


@pytest.mark.parametrize("name", ["platt", "beta", "temperature-2", "temperature-bias-2",
                                  "calibeating-tracking-platt", "calibeating-hedging-beta"])
def test_a_snapshot_of_the_numpy_version_loads_and_continues_identically(name):
    """Scenario: the numpy version ran 3,000 events and wrote its state (the old
    snapshot layout); a production adapter loads it.
    We expect: the next 3,000 events served bit for bit as the numpy version serves them,
    and the production state's own round trip is bit exact."""
    make_core, make_reference, n_classes = CASES[name]
    xs, ys = _stream(name, n_classes, 6_000)
    reference = make_reference()
    reference.learn_many(xs[:3_000], ys[:3_000])
    core = make_core()
    old_state = reference._get_state()
    if "base" in old_state:  # the production snapshot nests the base's full state dict
        old_state = dict(old_state, base={**core.base.state_dict(), "state": old_state["base"]})
    core.load_state_dict({**core.state_dict(), "state": old_state})
    restored = restore_adapter(core.state_dict())
    for x, y in zip(xs[3_000:], ys[3_000:].tolist(), strict=True):
        expected = reference.predict(x).tobytes()
        assert core.predict(x).tobytes() == expected
        assert restored.predict(x).tobytes() == expected
        for adapter in (core, reference, restored):
            adapter.learn(x, y)
    assert dumps_state(restored.state_dict()) == dumps_state(core.state_dict())


@pytest.mark.parametrize("name", list(CASES))
def test_core_batches_equal_the_per_event_loop_whatever_the_boundaries(name):
    """Scenario: 20,000 events, once through learn_many in random-sized batches (1 to
    2,000, on_drift between some), once one event at a time.
    We expect: the same state bytes, and the same predict_many bytes as the predict loop
    (the core has one arithmetic for both)."""
    make_core, _, n_classes = CASES[name]
    xs, ys = _stream(name, n_classes, 20_000)
    rng = np.random.default_rng(11)
    batched, looped = make_core(), make_core()
    start = 0
    while start < len(ys):
        stop = min(len(ys), start + int(rng.integers(1, 2_001)))
        batched.learn_many(xs[start:stop], ys[start:stop])
        for x, y in zip(xs[start:stop], ys[start:stop].tolist(), strict=True):
            looped.learn(x, y)
        if rng.random() < 0.2:
            batched.on_drift()
            looped.on_drift()
        start = stop
    assert dumps_state(batched.state_dict()) == dumps_state(looped.state_dict())
    probe = xs[:3_000]
    many = batched.predict_many(probe)
    loop = np.stack([looped.predict(x) for x in probe])
    assert many.tobytes() == loop.tobytes()


def test_core_generator_continues_numpys_pcg64_stream():
    """The hedging draws come from the core's PCG64, which must be numpy's: after n
    records the stored generator state and the drawn-ahead uniform are those of numpy's
    ``default_rng(seed)`` after n + 1 draws."""
    calibrator = Calibeating(OnlinePlatt(), mode="hedging", seed=2023)
    xs, ys = _binary_stream(5, 5_000)
    calibrator.learn_many(xs, ys)
    generator = np.random.default_rng(2023)
    draws = generator.random(5_001)
    state = calibrator.state_dict()["state"]
    inner = generator.bit_generator.state["state"]
    assert state["uniform"] == float(draws[-1])
    assert (int(state["random"]["state"]), int(state["random"]["inc"])) == (
        inner["state"], inner["inc"])


def test_core_projection_is_the_references_within_a_few_ulp():
    """The projection solves the shifted system per bisection step instead of numpy's
    eigen-decomposition: the same minimiser, within 1e-12 relative, on the ball."""
    from streamweights.adapters.calibration._newton import project_onto_ball
    from tests.reference.newton import _project_onto_ball

    rng = np.random.default_rng(12)
    for d in (2, 3, 5):
        for _ in range(200):
            root = rng.normal(size=(d, d))
            curvature = (root @ root.T + 0.1 * np.eye(d)).ravel().tolist()
            theta = rng.normal(scale=10.0, size=d).tolist()
            radius = float(rng.uniform(0.5, 3.0))
            core = np.array(project_onto_ball(theta, curvature, d, radius))
            reference = np.array(_project_onto_ball(theta, curvature, d, radius))
            np.testing.assert_allclose(core, reference, rtol=1e-12, atol=1e-12)
            assert math.sqrt(float(core @ core)) <= radius * (1 + 1e-15)


# -- the core's per-event input check ----------------------------------------------------
def _input_forms(p):
    """The same probability vector as the forms a caller may hand over: the core clears
    the first three itself, the others go through Python's checks."""
    array = np.asarray(p, dtype=np.float64)
    strided = np.empty(2 * array.size)
    strided[::2] = array
    return {"array": array, "list": array.tolist(), "tuple": tuple(array.tolist()),
            "numpy floats": [np.float64(v) for v in array], "strided view": strided[::2],
            "float32": array.astype(np.float32), "2-d row": array[None, :][0]}


@pytest.mark.parametrize("name", ["platt", "beta", "temperature-4", "temperature-bias-2",
                                  "calibeating-hedging-beta"])
def test_core_input_check_and_python_checks_give_the_same_numbers(name):
    """Scenario: each event handed over in several forms (numpy row, list, tuple, numpy
    floats, a strided view, float32, with an int or a numpy-int label), some summing to 1
    only within the tolerance.
    We expect: the same served bytes and the same state whichever form, i.e. the core's
    fast check and Python's checks accept with the same arithmetic."""
    make_core, _, n_classes = CASES[name]
    xs, ys = _stream(name, n_classes, 600)
    rng = np.random.default_rng(13)
    xs = xs * (1.0 + rng.uniform(-9e-4, 9e-4, size=(len(xs), 1)))  # off 1 within tolerance
    forms = list(_input_forms(xs[0]))
    adapters = {form: make_core() for form in forms}
    for index, (x, y) in enumerate(zip(xs, ys.tolist(), strict=True)):
        served = {}
        for form, adapter in adapters.items():
            value = _input_forms(x)[form]
            if form == "float32":  # float32 input differs by design; only check it runs
                adapter.predict(value)
                adapter.learn(value, y)
                continue
            served[form] = adapter.predict(value).tobytes()
            adapter.learn(value, np.int64(y) if index % 2 else y)
        assert len(set(served.values())) == 1, (name, index)
    states = {form: dumps_state(adapter.state_dict()) for form, adapter in adapters.items()
              if form != "float32"}
    assert len(set(states.values())) == 1


@pytest.mark.parametrize("name", ["platt", "temperature-4", "calibeating-tracking-platt"])
@pytest.mark.parametrize(("x", "y", "word"), [
    ([0.5, float("nan")], 0, "NaN"), ([0.4, 0.4], 0, "sum"), ([1.2, -0.2], 0, "[0, 1]"),
    ([0.5, 0.5], 7, "unknown class"), ([0.5, 0.5], -1, "unknown class"),
    ([0.5, 0.5], True, None), ([0.5, 0.5], 1.0, None), ([0.5, 0.5], "1", "integer")])
def test_core_input_check_refuses_what_python_refuses(name, x, y, word):
    """The core's check clears nothing Python refuses: a bad input or label raises the
    Python error and leaves the state as it was; labels Python accepts (True, 1.0) are
    learnt as Python learns them."""
    make_core, _, n_classes = CASES[name]
    if n_classes != 2:
        x = [*x, 0.0, 0.0]
    adapter, twin = make_core(), make_core()
    before = dumps_state(adapter.state_dict())
    if word is None:
        adapter.learn(x, y)
        twin.learn(x, int(y))
        assert dumps_state(adapter.state_dict()) == dumps_state(twin.state_dict())
        return
    with pytest.raises(ValueError, match=re.escape(word)):
        adapter.learn(x, y)
    if y in (0,):
        with pytest.raises(ValueError, match=re.escape(word)):
            adapter.predict(x)
    assert dumps_state(adapter.state_dict()) == before
