"""KalmanWeights in the native core against its numpy reference (``tests/reference``).

The core sums every dot and matrix product left to right; the reference used numpy's
``@`` (BLAS, other groupings) and pairwise ``sum``, and inverted the ``b × b`` innovation
by LU where the core uses its Cholesky factor. So the two agree to rounding, not bit for
bit: measured here over 10^5 events on drifting streams, outputs within 1e-9 relative.
Round trips and batch forms of the core itself are bit exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamweights.adapters import KalmanWeights
from streamweights.adapters.base import restore_adapter
from streamweights.adapters.state_codec import dumps_state, encode_state, loads_state
from streamweights.adapters.validation import NonFiniteUpdate
from tests.reference.kalman import KalmanWeights as ReferenceKalmanWeights

N_EVENTS = 100_000
#: Outputs and states must agree within this, relative to the magnitude of the vector
#: they belong to (a prediction near 0 in one output is compared at the scale of the
#: others, where a relative error per entry would be ill-defined).
RELATIVE = 1e-9


def _drifting_stream(seed: int, n_events: int, n_features: int, n_outputs: int,
                     classify: bool) -> tuple[np.ndarray, list]:
    """Features, and targets or classes, from linear weights that jump every 5,000
    events and rotate slowly in between; 1 % of the rows are 30 times larger."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_events, n_features))
    features[rng.random(n_events) < 0.01] *= 30.0
    segments = rng.normal(size=(-(-n_events // 5000), n_features, n_outputs))
    jumps = np.repeat(segments, 5000, axis=0)[:n_events]
    angle = np.linspace(0.0, 6.0, n_events)[:, None, None]
    weights = jumps * np.cos(angle) + np.roll(jumps, 1, axis=1) * np.sin(angle)
    scores = np.einsum("nd,ndk->nk", features, weights)
    if classify:
        logits = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cumulative = p.cumsum(axis=1)
        labels = (rng.random((n_events, 1)) > cumulative).sum(axis=1)
        return features, [int(v) for v in np.minimum(labels, n_outputs - 1)]
    targets = scores + 0.5 * rng.normal(size=(n_events, n_outputs))
    if n_outputs == 1:
        return features, [float(v) for v in targets[:, 0]]
    return features, list(targets)


CONFIGS = {
    "regression-learned-forgetting-and-noise-prior-mean": (
        dict(n_features=4, n_outputs=2, noise_variance="learn", prior_mean=[0.5, 0, -0.5, 1],
             forgetting_learning_rate=0.05), False),
    "regression-one-output-defaults": (dict(n_features=5), False),
    "classification-probit-learned-calibration": (
        dict(n_features=4, n_outputs=3, task="classification"), True),
    "classification-monte-carlo": (
        dict(n_features=3, n_outputs=2, task="classification", probabilities="monte_carlo",
             n_samples=16, seed=3, noise_variance="learn"), True),
}


def _relative_gap(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| of each row relative to the row's largest |want|."""
    scale = np.maximum(np.abs(want).max(axis=-1, keepdims=True), 1e-300)
    return float(np.max(np.abs(got - want) / scale))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_core_matches_numpy_reference_over_100k_drifting_events(name):
    """Scenario: the core and the numpy reference see the same 10^5 drifting events
    (observe-free: predict, then learn), with a drift alarm every 20,000. We expect:
    every prediction within 1e-9 relative, and the final mean, covariance, γ, σ² and β
    within 1e-9 relative too (the filter is stable: rounding does not grow)."""
    config, classify = CONFIGS[name]
    core, reference = KalmanWeights(**config), ReferenceKalmanWeights(**config)
    features, labels = _drifting_stream(11, N_EVENTS, config["n_features"],
                                        config.get("n_outputs", 1), classify)
    got = np.empty((N_EVENTS, core.n_outputs))
    want = np.empty_like(got)
    for index in range(N_EVENTS):
        x = features[index]
        got[index] = core.predict(x)
        want[index] = reference.predict(x)
        core.learn(x, labels[index])
        reference.learn(x, labels[index])
        if index % 20_000 == 19_999:
            core.on_drift()
            reference.on_drift()
    gap = _relative_gap(got, want)
    print(f"{name}: largest relative gap of an output {gap:.3g}")  # for the closing note
    assert gap < RELATIVE
    assert _relative_gap(core.mean_.T, reference.mean_.T) < RELATIVE
    assert _relative_gap(core.covariance_, reference.covariance_) < RELATIVE
    for attribute in ("forgetting_", "noise_variance_", "calibration_"):
        assert getattr(core, attribute) == pytest.approx(getattr(reference, attribute),
                                                         rel=RELATIVE)
    assert core.n_updates_ == reference.n_updates_ == N_EVENTS


@pytest.mark.slow
@pytest.mark.parametrize("classify", [False, True])
def test_learn_rows_blocks_match_the_reference(classify):
    """Scenario: 10^5 events arrive in blocks of 1 to 5 rows through ``learn_rows``
    (learned γ and σ²; learned β for classification). We expect: predictions between
    blocks and the final state within 1e-9 relative of the reference (its ``b × b``
    inverse is LU, the core's is Cholesky)."""
    config = (dict(n_features=4, n_outputs=3, task="classification", noise_variance="learn")
              if classify else dict(n_features=4, n_outputs=2, noise_variance="learn",
                                    prior_mean=[0.2, -0.3, 0.0, 0.4]))
    core, reference = KalmanWeights(**config), ReferenceKalmanWeights(**config)
    features, labels = _drifting_stream(12, N_EVENTS, 4, config["n_outputs"], classify)
    sizes = np.random.default_rng(13).integers(1, 6, size=N_EVENTS)
    got, want, start = [], [], 0
    for size in sizes:
        if start >= N_EVENTS:
            break
        rows = features[start:start + size]
        block = labels[start:start + size]
        got.append(core.predict(rows[0]))
        want.append(reference.predict(rows[0]))
        core.learn_rows(rows, block)
        reference.learn_rows(rows, block)
        start += size
    gap = _relative_gap(np.array(got), np.array(want))
    print(f"learn_rows classify={classify}: largest relative gap of an output {gap:.3g}")
    assert gap < RELATIVE
    assert _relative_gap(core.mean_.T, reference.mean_.T) < RELATIVE
    assert _relative_gap(core.covariance_, reference.covariance_) < RELATIVE
    assert core.forgetting_ == pytest.approx(reference.forgetting_, rel=RELATIVE)


def _layout(value):
    """The keys and value types of a state, with array shapes and dtypes."""
    if isinstance(value, dict):
        return {key: _layout(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, str(value.dtype))
    if isinstance(value, list):
        return ("list", [_layout(item) for item in value])
    return type(value).__name__


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_snapshots_have_the_reference_layout_and_load_both_ways(name):
    """Scenario: after 2,000 events, snapshots of the core and of the reference are taken
    and each is loaded into the other. We expect: the same keys and value types (old
    snapshots load), and both pairs then continue within 1e-9 relative."""
    config, classify = CONFIGS[name]
    core, reference = KalmanWeights(**config), ReferenceKalmanWeights(**config)
    features, labels = _drifting_stream(14, 3000, config["n_features"],
                                        config.get("n_outputs", 1), classify)
    for adapter in (core, reference):
        adapter.learn_many(features[:2000], labels[:2000])
    assert _layout(core.state_dict()) == _layout(reference.state_dict())
    from_reference, from_core = KalmanWeights(**config), ReferenceKalmanWeights(**config)
    from_reference.load_state_dict(reference.state_dict())
    from_core.load_state_dict(core.state_dict())
    for x, y in zip(features[2000:], labels[2000:], strict=True):
        assert _relative_gap(from_reference.predict(x), reference.predict(x)) < RELATIVE
        assert _relative_gap(core.predict(x), from_core.predict(x)) < RELATIVE
        for adapter in (core, reference, from_reference, from_core):
            adapter.learn(x, y)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_core_round_trip_and_batches_are_bit_exact(name):
    """Scenario: a core head learns 5,000 events, is saved through JSON and restored;
    then the original learns the next 5,000 one event at a time while a copy learns them
    through ``learn_many`` in batches of 1 to 700. We expect: the restored head's
    predictions and state equal the original's bit for bit, ``predict_many`` equals the
    ``predict`` loop bit for bit, and the batched copy's state equals the loop's."""
    config, classify = CONFIGS[name]
    features, labels = _drifting_stream(15, 10_000, config["n_features"],
                                        config.get("n_outputs", 1), classify)
    original = KalmanWeights(**config)
    original.learn_many(features[:5000], labels[:5000])
    original.on_drift()
    restored = restore_adapter(loads_state(json.dumps(encode_state(original.state_dict()))))
    batched = KalmanWeights(**config)
    batched.load_state_dict(original.state_dict())
    probes = features[5000:5500]
    loop = np.stack([original.predict(x) for x in probes])
    assert original.predict_many(probes).tobytes() == loop.tobytes()
    assert restored.predict_many(probes).tobytes() == loop.tobytes()
    for x, y in zip(features[5000:], labels[5000:], strict=True):
        original.learn(x, y)
        restored.learn(x, y)
    bounds = np.cumsum(np.random.default_rng(16).integers(1, 701, size=100)) + 5000
    for start, stop in zip([5000, *bounds], [*bounds, 10_000], strict=False):
        if start < 10_000:
            batched.learn_many(features[start:min(stop, 10_000)],
                               labels[start:min(stop, 10_000)])
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())
    assert dumps_state(batched.state_dict()) == dumps_state(original.state_dict())


def _finite_state(head: KalmanWeights) -> bool:
    state = head.state_dict()["state"]
    arrays = [state["deviation"], state["covariance"], np.array(state["adam_moments"])]
    scalars = [state[key] for key in ("rho", "log_noise", "log_calibration",
                                      "calibration_square_sum")]
    return all(np.isfinite(a).all() for a in arrays) and all(np.isfinite(scalars))


@pytest.mark.parametrize("huge", [1e155, -1e200, 1.7e308])
@pytest.mark.parametrize("config", [dict(n_features=3, noise_variance="learn"),
                                    dict(n_features=3, n_outputs=2, task="classification")])
def test_an_update_that_would_go_non_finite_is_refused_and_changes_nothing(config, huge):
    """Scenario: a trained head gets one event whose features (or target) are too large
    for the arithmetic (before the core, the reference turned its state NaN for good on
    these). We expect: ``NonFiniteUpdate`` (a ValueError) and the state bit-identical,
    the whole batch refused when the row comes through ``learn_many``; and the next
    ordinary event is learned as if the refused one never came."""
    rng = np.random.default_rng(17)
    head = KalmanWeights(**config)
    classify = config.get("task") == "classification"
    features, labels = _drifting_stream(18, 200, 3, config.get("n_outputs", 1), classify)
    head.learn_many(features, labels)
    before = dumps_state(head.state_dict())
    reference_twin = restore_adapter(head.state_dict())
    bad_x = np.array([huge, 1.0, -huge])
    with pytest.raises(NonFiniteUpdate):
        head.learn(bad_x, labels[0])
    with pytest.raises(ValueError):
        head.learn_many(np.stack([features[0], bad_x]), labels[:2])
    if not classify:
        with pytest.raises(NonFiniteUpdate):
            head.learn(features[0], huge)
    assert dumps_state(head.state_dict()) == before
    assert _finite_state(head)
    x = rng.normal(size=3)
    head.learn(x, labels[1])
    reference_twin.learn(x, labels[1])
    assert dumps_state(head.state_dict()) == dumps_state(reference_twin.state_dict())


def test_every_input_layout_gives_the_same_numbers():
    """Scenario: the same features reach the core as a contiguous float64 row, a strided
    column view, a byte-swapped ('>f8') array, float32 and a list. We expect: identical
    predictions and states (the core reads float64 buffers directly; before this test a
    byte-swapped buffer was read as garbage by the fast path)."""
    rng = np.random.default_rng(19)
    columns = rng.normal(size=(3, 400))
    targets = [float(v) for v in rng.normal(size=400)]
    layouts = {
        "contiguous": lambda i: np.ascontiguousarray(columns[:, i]),
        "strided": lambda i: columns[:, i],
        "byte-swapped": lambda i: columns[:, i].astype(">f8"),
        "list": lambda i: columns[:, i].tolist(),
    }
    heads = {name: KalmanWeights(3, noise_variance="learn") for name in layouts}
    for i in range(400):
        outputs = {name: heads[name].predict(make(i)).tobytes()
                   for name, make in layouts.items()}
        assert len(set(outputs.values())) == 1, outputs
        for name, make in layouts.items():
            heads[name].learn(make(i), targets[i])
    states = {dumps_state(head.state_dict()) for head in heads.values()}
    assert len(states) == 1
    swapped = KalmanWeights(3, noise_variance="learn")
    swapped.learn_many(columns.T.astype(">f8"), targets)
    assert dumps_state(swapped.state_dict()) in states
