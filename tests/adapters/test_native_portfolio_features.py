"""A portfolio whose candidates learn from features, driven by the native core, against
the same portfolio driven by the Python loop (the core left unbound), over long drifting
streams with features: served outputs, traces and snapshots equal bit for bit.

The loop is the path that ran such portfolios before (each candidate a ``Chain`` packing
its feature stage's input; the trace keeping the stage's own input and, after the other
rows, the features zero-padded to whole rows); the core must pack the same vectors, write
the same rows and learn from them the same way. Both sides run the same stage adapters,
so only the driving differs.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from streamweights.adapters import Chain, DriftMemory, Portfolio
from streamweights.adapters import portfolio as portfolio_module
from streamweights.adapters.state_codec import dumps_state
from tests.adapters.test_native_ensemble import drifting_stream
from tests.adapters.test_native_portfolio import _replay, _same_state

N_EVENTS = 100_000

CONFIGS = [
    ("binary-defaults-3-features", {"n_models": 3, "n_classes": 2, "n_features": 3}),
    ("four-classes-defaults-5-features", {"n_models": 3, "n_classes": 4, "n_features": 5}),
]


def featured_stream(kwargs: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``drifting_stream`` with features: the first two carry the label with a sign that
    flips every 3,000-ish events (a drift only the feature stage can follow), the rest
    noise; a few exact zeros and a large value now and then."""
    outputs, labels = drifting_stream(kwargs, n, seed)
    rng = np.random.default_rng(seed + 1)
    features = rng.normal(size=(n, kwargs["n_features"]))
    sign = np.repeat(rng.choice([-1.0, 1.0], size=n // 3000 + 1), 3000)[:n]
    centred = np.asarray(labels, dtype=np.float64) - (kwargs["n_classes"] - 1) / 2.0
    features[:, 0] += 1.5 * sign * centred
    features[:, 1] -= 0.7 * sign * centred
    features[rng.random((n, kwargs["n_features"])) < 0.01] = 0.0
    features[rng.random(n) < 0.001, -1] = 1e3
    return outputs, features, labels


def python_loop(monkeypatch, **kwargs) -> Portfolio:
    """The same portfolio with its core unbound: the Python loop drives the candidates."""
    with monkeypatch.context() as patch:
        patch.setattr(portfolio_module, "native_stage_specs", lambda *_, **__: None)
        loop = Portfolio(**kwargs)
    assert not loop.native
    return loop


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[name for name, _ in CONFIGS])
def test_native_feature_portfolio_equals_the_python_loop_bit_for_bit(name, kwargs,
                                                                     monkeypatch):
    ours, loop = Portfolio(**kwargs), python_loop(monkeypatch, **kwargs)
    assert ours.native, "the feature candidate's stages all have native cores"
    assert "FeatureCorrection" in ours.names[-1]
    outputs, features, labels = featured_stream(kwargs, N_EVENTS, seed=31)
    _replay([ours, loop], outputs, labels, seed=7, features=features)
    _same_state(ours, loop)
    assert ours.describe() == loop.describe()
    weights = ours.candidate_weights()
    assert weights[ours.names[-1]] > 0.5, "the features were learned (the test has teeth)"
    # the pure verb, too: nothing observed, the same rows
    for x, f in zip(outputs[:50], features[:50], strict=True):
        served = [p.predict_traced(x, features=f) for p in (ours, loop)]
        assert np.array_equal(served[0][0], served[1][0])
        assert np.array_equal(served[0][1], served[1][1])


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[name for name, _ in CONFIGS])
def test_the_default_chain_with_features_runs_in_one_core_call_with_the_same_bits(
        name, kwargs, monkeypatch):
    """The stream's default chain (the portfolio, then DriftMemory) with the portfolio
    as the chain core's head, against the chain over the loop-driven portfolio."""
    memory = {"n_classes": kwargs["n_classes"], "capacity": 64, "detector": "adwin"}
    ours = Chain([Portfolio(**kwargs), DriftMemory(**memory)])
    theirs = Chain([python_loop(monkeypatch, **kwargs), DriftMemory(**memory)])
    assert ours.native and not theirs.native
    outputs, features, labels = featured_stream(kwargs, 20_000, seed=41)
    rng = np.random.default_rng(3)
    pending: list = []
    for t, (x, f, y) in enumerate(zip(outputs, features, labels, strict=True)):
        (out_a, trace_a), (out_b, trace_b) = (c.observe_predict_trace(x, f)
                                              for c in (ours, theirs))
        assert np.array_equal(out_a, out_b), f"event {t}: served differ"
        assert len(trace_a) == len(trace_b)
        for a, b in zip(trace_a, trace_b, strict=True):
            assert np.array_equal(a, b), f"event {t}: traces differ"
        heapq.heappush(pending, (t + int(rng.integers(0, 61)), t, trace_a, trace_b, y))
        while pending and pending[0][0] <= t:
            _, _, a, b, label = heapq.heappop(pending)
            ours.learn_trace(a, label)
            theirs.learn_trace(b, label)
        if t % 5_001 == 5_000:
            ours.on_drift()
            theirs.on_drift()
    _same_state(ours, theirs)


def test_snapshots_move_between_native_and_loop_and_continue_alike(monkeypatch):
    kwargs = CONFIGS[0][1]
    outputs, features, labels = featured_stream(kwargs, 6_000, seed=5)
    loop = python_loop(monkeypatch, **kwargs)
    _replay([loop], outputs[:3_000], labels[:3_000], seed=1, features=features[:3_000])
    ours = Portfolio(**kwargs)
    ours.load_state_dict(loop.state_dict())
    _same_state(ours, loop)
    _replay([ours, loop], outputs[3_000:], labels[3_000:], seed=2, features=features[3_000:])
    back = python_loop(monkeypatch, **kwargs)
    back.load_state_dict(ours.state_dict())
    _same_state(back, ours)


def test_bad_inputs_raise_the_loops_errors_and_change_nothing(monkeypatch):
    """Missing or malformed features, a bad x with them, a trace whose feature row is cut
    off or not finite, a bad label: the same error on both paths, nothing changed; inputs
    the quick check does not clear (lists, a Fortran-ordered array) give the same bits."""
    kwargs = CONFIGS[1][1]
    ours, loop = Portfolio(**kwargs), python_loop(monkeypatch, **kwargs)
    outputs, features, labels = featured_stream(kwargs, 600, seed=9)
    _replay([ours, loop], outputs[:500], labels[:500], seed=4, features=features[:500])
    before = dumps_state(ours.state_dict())
    _same_state(ours, loop)
    x, f = outputs[500], features[500]
    _, trace = ours.predict_traced(x, features=f)
    nan_feature = trace.copy()
    nan_feature[-1, 0] = np.nan
    bad_x = np.full_like(x, 0.9)
    calls = [lambda p: p.observe_predict_traced(x),
             lambda p: p.observe_predict_traced(x, features=f[:-1]),
             lambda p: p.observe_predict_traced(x, features=[*f[:-1], np.inf]),
             lambda p: p.observe_predict_traced(bad_x, features=f[:-1]),
             lambda p: p.predict_traced(bad_x, features=f),
             lambda p: p.learn_traced(x, trace[:-1], 1),
             lambda p: p.learn_traced(x, nan_feature, 1),
             lambda p: p.learn_traced(x, trace, 4)]
    for call in calls:
        errors = []
        for portfolio in (ours, loop):
            with pytest.raises(ValueError) as caught:
                call(portfolio)
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
        assert dumps_state(ours.state_dict()) == before
    _same_state(ours, loop)
    forms = [lambda v: v.tolist(), np.asfortranarray, lambda v: v]
    for t in range(500, 600):
        x, f = forms[t % 3](outputs[t]), forms[(t + 1) % 3](features[t])
        served = [p.observe_predict_traced(x, features=f) for p in (ours, loop)]
        assert np.array_equal(served[0][0], served[1][0])
        assert np.array_equal(served[0][1], served[1][1])
        for p, (_, trace) in zip((ours, loop), served, strict=True):
            p.learn_traced(x, trace.tolist() if t % 2 else trace, labels[t])
    _same_state(ours, loop)
